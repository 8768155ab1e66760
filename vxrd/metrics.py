"""Metrics of one vxrd process and the optional HTTP endpoint that serves them in
the Prometheus text format (aiohttp, GET /metrics).

prometheus_client and aiohttp are imported only when the endpoint starts or is
scraped: a vxrd without --metrics does not pay their import time and memory at
start-up (issue 11)."""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (server name, wall-clock time of last valid datagram or None)
ContactSource = Callable[[], Iterable[tuple[str, float | None]]]


class Count:
    """A counter's value (exposed as NAME_total and NAME_created)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Level:
    """A gauge's value."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = value


class Labeled:
    """A counter with one label: a Count per label value."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, Count] = {}

    def labels(self, value: str) -> Count:
        count = self.counts.get(value)
        if count is None:
            count = self.counts[value] = Count()
        return count


class Timing:
    """A histogram: counts per bucket (not cumulative), sum and count."""

    __slots__ = ("bounds", "buckets", "count", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value


class Metrics:
    """vxrd's metrics as plain values; the Prometheus registry that exposes them is
    built on the first scrape (`registry`), so a vxrd without --metrics never
    imports prometheus_client (a sixth of its import time, issue 11)."""

    def __init__(self) -> None:
        self.created = time.time()
        self.fdb_adds = Count()
        self.fdb_removes = Count()
        self.fdb_errors = Count()
        self.reconcile_runs = Count()
        self.reconcile_repairs = Count()
        self.apply_seconds = Timing(
            (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
        )
        self.drops = Labeled()
        self.registers = Count()
        self.incarnations = Count()
        self.managed_devices = Level()
        self._contacts: list[ContactSource] = []
        self._registry: CollectorRegistry | None = None

    def watch_contacts(self, source: ContactSource) -> None:
        self._contacts.append(source)

    @property
    def registry(self) -> CollectorRegistry:
        if self._registry is None:
            from prometheus_client import CollectorRegistry  # lazy: see the class doc

            self._registry = CollectorRegistry(auto_describe=True)
            self._registry.register(_Collector(self))
        return self._registry

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# name, help, attribute of Metrics
_COUNTERS = (
    ("vxrd_fdb_adds", "Flood entries written", "fdb_adds"),
    ("vxrd_fdb_removes", "Flood entries deleted", "fdb_removes"),
    ("vxrd_fdb_errors", "Flood entry writes the kernel refused", "fdb_errors"),
    ("vxrd_reconcile_runs", "Reconciliations run", "reconcile_runs"),
    (
        "vxrd_reconcile_repairs",
        "Flood entries fixed after someone else changed them",
        "reconcile_repairs",
    ),
    ("vxrd_register_rounds", "Register rounds sent (all servers)", "registers"),
    (
        "vxrd_incarnation_renewals",
        "New incarnations picked because a server stopped answering this one",
        "incarnations",
    ),
)


class _Collector:
    """Metric families from a Metrics' values, at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        m = self.m
        for name, doc, attr in _COUNTERS:
            count: Count = getattr(m, attr)
            yield CounterMetricFamily(name, doc, value=count.value, created=m.created)
        drops = CounterMetricFamily(
            "vxrd_datagrams_dropped", "Control datagrams dropped, by reason", labels=["reason"]
        )
        for reason, count in sorted(m.drops.counts.items()):
            drops.add_metric([reason], count.value, created=m.created)
        yield drops
        t = m.apply_seconds
        cumulative, buckets = 0, []
        for bound, n in zip((*t.bounds, float("inf")), t.buckets, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            "vxrd_apply_seconds",
            "Time to write one batch of flood-list changes to the kernel",
            buckets=buckets,
            sum_value=t.sum,
        )
        yield GaugeMetricFamily(  # what prometheus_client's own Histogram exposes
            "vxrd_apply_seconds_created",
            "Time to write one batch of flood-list changes to the kernel",
            value=m.created,
        )
        yield GaugeMetricFamily(
            "vxrd_managed_devices",
            "VXLAN devices registered and programmed",
            value=m.managed_devices.value,
        )
        contact = GaugeMetricFamily(
            "vxrd_server_last_contact_seconds",
            "Seconds since the last valid datagram from each service node (-1: never)",
            labels=["server"],
        )
        now = time.time()
        for source in m._contacts:
            for name, last in source():
                contact.add_metric([name], -1.0 if last is None else max(0.0, now - last))
        yield contact


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
