"""What the service node counts, on a per-daemon Prometheus registry.

One `Metrics` object per daemon (tests run several in one process, so nothing
goes on prometheus_client's global registry). The REST side exposes
`metrics.registry` at /metrics; `render()` gives the text format for it.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.datagrams_received = Counter(
            "vxsnd_datagrams_received", "UDP datagrams taken off the sockets", registry=r
        )
        self.datagrams_sent = Counter(
            "vxsnd_datagrams_sent", "UDP datagrams sent to agents", registry=r
        )
        self.rejected = Counter(
            "vxsnd_rejected_datagrams", "Datagrams dropped, by reason", ["reason"], registry=r
        )
        self.queue_drops = Counter(
            "vxsnd_queue_drops", "Datagrams dropped because the input queue was full", registry=r
        )
        self.queue_depth = Gauge("vxsnd_queue_depth", "Datagrams waiting in the queue", registry=r)
        self.registrations = Counter(
            "vxsnd_registrations",
            "Register rounds that changed a node's VNI list (join, leave, new node)",
            registry=r,
        )
        self.refreshes = Counter(
            "vxsnd_refreshes", "Register rounds that only extended the expiry", registry=r
        )
        self.withdrawals = Counter(
            "vxsnd_withdrawals", "Registers with hold time 0 (withdraw everything)", registry=r
        )
        self.node_id_conflicts = Counter(
            "vxsnd_node_id_conflicts",
            "Register rounds refused: another live agent holds the node id",
            registry=r,
        )
        self.expiries = Counter("vxsnd_expiries", "Nodes expired by the hold timer", registry=r)
        self.acks = Counter("vxsnd_acks", "Acked (VNI, generation) entries", registry=r)
        self.pushes = Counter(
            "vxsnd_pushes", "Membership pushes sent (one per VNI, any parts)", ["kind"], registry=r
        )
        self.retransmits = Counter(
            "vxsnd_retransmits", "Pushes re-sent because no ack came in time", registry=r
        )
        self.batches = Counter("vxsnd_batches", "Registry write batches applied", registry=r)
        self.batch_errors = Counter(
            "vxsnd_batch_errors", "Registry write batches that failed", registry=r
        )
        self.registry_ok = Gauge(
            "vxsnd_registry_ok",
            "1 while the registry is usable (answers, is the one opened, takes writes), else 0",
            registry=r,
        )
        self.registry_ok.set(1)
        self.batch_seconds = Histogram(
            "vxsnd_batch_seconds", "Time to apply one batch to the registry", registry=r
        )
        self.handler_errors = Counter(
            "vxsnd_handler_errors", "Unexpected exceptions while handling a datagram", registry=r
        )
        self.members = Gauge("vxsnd_vni_members", "Members per VNI", ["vni"], registry=r)
        self.vnis = Gauge("vxsnd_vnis", "VNIs with at least one member", registry=r)
        self.nodes = Gauge("vxsnd_nodes", "Agents known to this daemon", registry=r)
        self.push_ack_latency = Histogram(
            "vxsnd_push_ack_seconds",
            "From a (node, VNI) falling behind and being pushed to its ack",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def set_members(self, vni: int, count: int) -> None:
        if count:
            self.members.labels(vni=str(vni)).set(count)
        else:
            with contextlib.suppress(KeyError):
                self.members.remove(str(vni))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when absent); for tests and vxsndctl."""
        v = self.registry.get_sample_value(name, labels or None)
        return 0.0 if v is None else v
