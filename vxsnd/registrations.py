"""Registrations: what the core knows of each agent, and the batch that records it.

No I/O and no clock. A complete register round is classified here (a full
registration, or a refresh that only moves the expiry), acks are recorded,
and everything waits in one `store.Batch` for the next transaction; once the
registry has applied it (`applied`), the nodes it adopted are pushed to (their
VNIs marked dirty in vxsnd.pushes), or, when the write failed (`failed`), its
operations go back into the next batch.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from vxflood.schema.wire import Ack, Register, VniEntry
from vxsnd import registry as store
from vxsnd.metrics import Metrics
from vxsnd.pushes import Node, PeerAddr, Pushes

log = logging.getLogger("vxsnd.engine")


def host_text(addr: PeerAddr) -> str:
    """Canonical text of a peer address (IPv4-mapped IPv6 as plain IPv4)."""
    ip = ipaddress.ip_address(addr[0].split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@dataclass(frozen=True, slots=True)
class Pending:
    """A complete register round waiting for the next batch."""

    node: Node  # the node as it will be once the batch is applied
    full: bool  # a full registration (False: a refresh that changes nothing)


class Registrations:
    """The nodes registered through this core and the batch being collected."""

    def __init__(self, metrics: Metrics, pushes: Pushes) -> None:
        self.metrics = metrics
        self.pushes = pushes
        self.nodes: dict[str, Node] = {}
        self.vni_nodes: dict[int, set[str]] = {}
        self._batch = store.Batch()
        self._pending: dict[str, Pending] = {}  # rounds waiting for the next batch
        self.applying: dict[str, Pending] = {}  # rounds in the batch being written
        self.acks_since = 0.0  # when the oldest unwritten ack arrived

    @property
    def batch(self) -> store.Batch:
        return self._batch

    def known(self, node_id: str) -> Node | None:
        """The node as last registered here (a round waiting for the batch included)."""
        pending = self._pending.get(node_id)
        return pending.node if pending is not None else self.nodes.get(node_id)

    def conflicting(
        self, node_id: str, incarnation: int, addr: PeerAddr, now: float
    ) -> store.Holder | None:
        """The live registration of `node_id` a round from `incarnation` at `addr` must
        not displace (vxsnd.registry.model.conflicts), as this core knows it; None when
        the round may go on. A refresh (the same incarnation) costs one comparison."""
        node = self.known(node_id)
        if node is None or node.incarnation == incarnation or node.hold_time < 0:
            return None
        holder = store.Holder(
            node.incarnation, host_text(node.addr), node.last_refresh + node.hold_time
        )
        return holder if store.conflicts(holder, incarnation, host_text(addr), now) else None

    def withdraw(self, node_id: str, incarnation: int | None = None) -> None:
        self._batch.withdraw(node_id, incarnation)
        self._pending.pop(node_id, None)

    def sweep(self) -> None:
        self._batch.expire()

    def register(
        self,
        first: Register,
        entries: tuple[VniEntry, ...],
        addr: PeerAddr,
        via: int,
        now: float,
        ours: bool,
    ) -> None:
        """A complete round of a node (hold time above 0): `ours` when it names our
        registry (its applied generations count, else they are 0)."""
        node_id = first.env.sender
        vnis = {e.vni: str(e.local) for e in entries}
        applied = {e.vni: e.applied if ours else 0 for e in entries}
        old = self._pending.get(node_id)
        known = old.node if old is not None else self.nodes.get(node_id)
        same = (
            known is not None
            and known.incarnation == first.env.incarnation
            and known.addr == addr
            and known.via == via
            and known.hold_time == first.hold_time
            and known.vnis == vnis
            and known.reads == first.max_version
            and (old is None or not old.full)
        )
        node = Node(node_id, first.env.incarnation, addr, via, first.hold_time, now, vnis)
        node.reads = first.max_version
        if same and known is not None:
            # a refresh: only the expiry moves; applied generations travel as acks
            node.applied = dict(known.applied)
            for vni, gen in applied.items():
                if gen > node.applied.get(vni, 0):
                    node.applied[vni] = gen
                    self._batch.ack(node_id, vni, gen)
            self._batch.refresh(
                node_id, hold_time=first.hold_time, seq=first.env.seq, sent_ms=first.env.time_ms
            )
        else:
            node.applied = applied
            self._batch.register(
                store.Registration(
                    node_id,
                    first.env.incarnation,
                    host_text(addr),
                    addr[1],
                    first.hold_time,
                    vnis,
                    applied,
                    first.env.seq,
                    first.env.time_ms,
                )
            )
        self._pending[node_id] = Pending(node, full=not same)

    def ack(self, msg: Ack, registry_id: str, now: float) -> None:
        node = self.nodes.get(msg.env.sender)
        if node is None or node.incarnation != msg.env.incarnation:
            return  # not registered here (yet): its next register brings it in
        if msg.registry != registry_id:
            return
        for vni, gen in msg.applied:
            self.metrics.acks.inc()
            if vni not in node.vnis:
                continue
            if gen > node.applied.get(vni, 0):
                node.applied[vni] = gen
                if not self._batch.acks:
                    self.acks_since = now
                self._batch.ack(node.node_id, vni, gen)
            self.pushes.acked(node, vni, gen, now)

    def take(self) -> store.Batch:
        """The batch for this step's transaction; a new one collects from now on."""
        batch, self._batch = self._batch, store.Batch()
        self.applying, self._pending = self._pending, {}
        return batch

    def failed(self, failed: store.Batch) -> None:
        """The write failed: keep its operations for the next batch."""
        self.metrics.batch_errors.inc()
        pending, self.applying = self.applying, {}
        for node_id, op in failed.node_ops.items():
            if node_id not in self._batch.node_ops:
                self._batch.node_ops[node_id] = op
                if node_id in pending:
                    self._pending[node_id] = pending[node_id]
        for key, gen in failed.acks.items():
            self._batch.acks[key] = max(gen, self._batch.acks.get(key, gen))
        self._batch.sweep = self._batch.sweep or failed.sweep

    def applied(self, batch: store.Batch, result: store.BatchResult) -> None:
        m = self.metrics
        m.batches.inc()
        pending = self.applying
        for node_id, op in batch.node_ops.items():
            if isinstance(op, store.Withdrawal) and node_id in result.not_owner:
                # registered by another incarnation (another vxsnd's, or since a restart)
                m.rejected.labels(reason="not-owner").inc()
                log.warning("withdrawal of %s refused: not its registered incarnation", node_id)
            elif isinstance(op, store.Withdrawal):
                m.withdrawals.inc()
                log.info("withdraw node=%s", node_id)
                self._drop(node_id)
            elif node_id in pending and node_id not in result.conflicts:
                self._adopt(pending[node_id], node_id in result.registered)
        for node_id in sorted(result.expired):
            m.expiries.inc()
            log.info("expire node=%s", node_id)
            self._drop(node_id)
        for node_id in result.unknown:
            # refreshed or acked, but the registry no longer has it (swept, or removed
            # by another instance): its next register must be a full one
            node = self.nodes.get(node_id)
            if node is not None:
                node.hold_time = -1
        self.pushes.changed(result)
        m.nodes.set(len(self.nodes))

    def _adopt(self, p: Pending, registered: bool) -> None:
        new = p.node
        old = self.nodes.get(new.node_id)
        if old is not None and old.incarnation == new.incarnation:
            new.inflight = old.inflight
            for vni, gen in old.applied.items():  # acks that overtook the register
                if vni in new.vnis and gen > new.applied.get(vni, 0):
                    new.applied[vni] = gen
        gone = set(old.vnis) - set(new.vnis) if old is not None else set()
        for vni in gone:
            new.inflight.pop(vni, None)
            self.vni_nodes.get(vni, set()).discard(new.node_id)
        self.nodes[new.node_id] = new
        joined = sorted(set(new.vnis) - set(old.vnis if old else ()))
        if registered:
            self.metrics.registrations.inc()
            log.info(
                "register node=%s at %s vnis=%s", new.node_id, new.addr[0], _short(list(new.vnis))
            )
        elif p.full and (joined or gone):
            self.metrics.registrations.inc()
            if joined and old is not None:
                log.info("join node=%s vnis=%s", new.node_id, _short(joined))
            if gone:
                log.info("leave node=%s vnis=%s", new.node_id, _short(sorted(gone)))
        else:
            self.metrics.refreshes.inc()
        for vni in new.vnis:
            self.vni_nodes.setdefault(vni, set()).add(new.node_id)
            self.pushes.dirty.add((new.node_id, vni))  # anti-entropy: compare applied

    def _drop(self, node_id: str) -> None:
        node = self.nodes.pop(node_id, None)
        if node is not None:
            for vni in node.vnis:
                self.vni_nodes.get(vni, set()).discard(node_id)


def _short(vnis: list[int]) -> str:
    text = ",".join(str(v) for v in sorted(vnis)[:8])
    return text + (f",... ({len(vnis)})" if len(vnis) > 8 else "")
