"""Prometheus metrics of one vxrd process (its own CollectorRegistry) and the
optional HTTP endpoint that serves them (aiohttp, GET /metrics).

aiohttp is imported only when the endpoint starts: a vxrd without --metrics does
not pay its import time and memory at start-up (issue 11)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from aiohttp import web

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (server name, wall-clock time of last valid datagram or None)
ContactSource = Callable[[], Iterable[tuple[str, float | None]]]


class _ContactCollector(Collector):
    def __init__(self, source: ContactSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "vxrd_server_last_contact_seconds",
            "Seconds since the last valid datagram from each service node (-1: never)",
            labels=["server"],
        )
        now = time.time()
        for name, last in self.source():
            g.add_metric([name], -1.0 if last is None else max(0.0, now - last))
        yield g


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.fdb_adds = Counter("vxrd_fdb_adds", "Flood entries written", registry=r)
        self.fdb_removes = Counter("vxrd_fdb_removes", "Flood entries deleted", registry=r)
        self.fdb_errors = Counter(
            "vxrd_fdb_errors", "Flood entry writes the kernel refused", registry=r
        )
        self.reconcile_runs = Counter("vxrd_reconcile_runs", "Reconciliations run", registry=r)
        self.reconcile_repairs = Counter(
            "vxrd_reconcile_repairs",
            "Flood entries fixed after someone else changed them",
            registry=r,
        )
        self.apply_seconds = Histogram(
            "vxrd_apply_seconds",
            "Time to write one batch of flood-list changes to the kernel",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=r,
        )
        self.drops = Counter(
            "vxrd_datagrams_dropped",
            "Control datagrams dropped, by reason",
            ["reason"],
            registry=r,
        )
        self.registers = Counter(
            "vxrd_register_rounds", "Register rounds sent (all servers)", registry=r
        )
        self.incarnations = Counter(
            "vxrd_incarnation_renewals",
            "New incarnations picked because a server stopped answering this one",
            registry=r,
        )
        self.managed_devices = Gauge(
            "vxrd_managed_devices", "VXLAN devices registered and programmed", registry=r
        )

    def watch_contacts(self, source: ContactSource) -> None:
        self.registry.register(_ContactCollector(source))

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def start_http(metrics: Metrics, host: str, port: int) -> web.AppRunner:
    """Serve GET /metrics on host:port; the caller cleans the returned runner up."""
    from aiohttp import web  # lazy: only a vxrd with --metrics pays for aiohttp

    async def handle(_request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
