"""Pushes: who gets which membership datagram, when it is resent, what it is encoded as.

No I/O and no clock. This module holds the push state of the service node:
the current generation of every VNI, one `InFlight` per (node, VNI) (on the
node), the retransmit timer heap and the round-trip estimate; what each push is
encoded as comes from vxsnd.encoded. The rules it applies are the pure
functions of vxsnd.push.

Planning never waits for the registry: a push whose bytes need a registry
read (a snapshot of members this process has not seen, a delta that spans
another writer's change) is put aside and `plan` returns what to read
(`NeedSnapshot`, `NeedDelta`). The driver reads, feeds the answers back
(`snapshot_read`, `delta_read`) and calls `plan` again, which then sends the
pushes put aside; `finish(sent)` arms their retransmit timers from the time
they actually go out.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from vxflood.schema.wire import COMPACT_SINCE, Codec, Sequencer
from vxsnd import push
from vxsnd import registry as store
from vxsnd.encoded import Encodings, Need, NeedDelta, NeedSnapshot
from vxsnd.metrics import Metrics
from vxsnd.push import Backoff, InFlight, Plan
from vxsnd.stamp import Stamped, sender_prefix

__all__ = ["Need", "NeedDelta", "NeedSnapshot", "Node", "Outgoing", "PeerAddr", "Pushes"]

BURST_ALLOWANCE = 0.0001  # extra ack wait per datagram still ahead in the burst
# datagrams one step plans at most; the rest stay due for the next step (one batch
# window later). A storm's first step would otherwise hold every member's snapshot
# at once (2,000 agents in 10 shared VNIs: 176k datagrams, 237 MB) and send them in
# one burst no receiver absorbs.
STEP_DATAGRAMS = 4096

PeerAddr = tuple[str, int]  # (host, port) as given by the socket (v6 may carry more)
Outgoing = tuple[bytes, PeerAddr, int]  # datagram, destination, listening socket index


@dataclass(slots=True)
class Node:
    """What this daemon knows of one registered agent (from its last register)."""

    node_id: str
    incarnation: int
    addr: PeerAddr  # where pushes go: the source of the last register
    via: int  # which listening socket it came in on
    hold_time: int
    last_refresh: float
    vnis: dict[int, str] = field(default_factory=dict)  # vni -> local VTEP (canonical)
    applied: dict[int, int] = field(default_factory=dict)
    inflight: dict[int, InFlight] = field(default_factory=dict)
    reads: int = 0  # the newest protocol version its register said it reads (0: not said)

    @property
    def compact(self) -> bool:
        """Its memberships go out in the compact form (protocol version 3)."""
        return self.reads >= COMPACT_SINCE


class Pushes:
    """The push rules applied to the nodes of one protocol core (see the module doc)."""

    def __init__(
        self,
        nodes: Mapping[str, Node],
        vni_nodes: Mapping[int, set[str]],
        codec: Codec,
        seq: Sequencer,
        metrics: Metrics,
        budget: int,
        backoff: Backoff,
    ) -> None:
        self.nodes = nodes
        self.vni_nodes = vni_nodes
        self.seq = seq
        self._prefix = sender_prefix(seq.sender, seq.incarnation)
        self.metrics = metrics
        self.backoff = backoff
        self.generations: dict[int, int] = {}
        self.member_count: dict[int, int] = {}
        self.rtt = push.RttEstimator()
        self.dirty: set[tuple[str, int]] = set()
        self._timers: list[tuple[float, str, int]] = []  # (due, node, vni) heap
        self.encoded = Encodings(codec, seq.sender, budget)
        self._started: list[tuple[str, int, InFlight]] = []
        self._deferred: list[tuple[str, int, bool]] = []  # (node, vni, retransmit)
        self._planned = False  # the dirty set and the due timers were taken this step
        self._limit = 0  # len(out) at which this step stops planning pushes
        self._drained_at = 0.0  # when what was sent so far is through, at the nominal rate
        self._pushes = {k: metrics.pushes.labels(kind=k) for k in ("delta", "snapshot")}
        # counted per push, added to the metrics once per step (a storm step plans
        # thousands of pushes; each metric increment takes a lock)
        self._counts = {"delta": 0, "snapshot": 0, "datagrams": 0, "retransmits": 0}

    # ------------------------------------------------------------ state

    def set_codec(self, codec: Codec) -> None:
        """Sign with `codec` from now on: every encoded push goes."""
        self.encoded.set_codec(codec)

    def set_identity(self, registry_id: str, learning: bool) -> None:
        self.encoded.set_identity(registry_id, learning)

    def load(self, vnis: Iterable[store.VniSummary]) -> None:
        """Generations and member counts as the registry holds them (at start)."""
        for v in vnis:
            self.generations[v.vni] = v.generation
            self.member_count[v.vni] = v.members
            self.metrics.set_members(v.vni, v.members)
        self._vni_gauge()

    def _vni_gauge(self) -> None:
        self.metrics.vnis.set(sum(1 for c in self.member_count.values() if c))

    def changed(self, result: store.BatchResult) -> None:
        """A batch moved VNIs on: remember the change, push it to their nodes."""
        for vni, change in result.changed.items():
            if change.generation <= self.generations.get(vni, 0):
                continue
            self.generations[vni] = change.generation
            count = self.member_count.get(vni, 0) + len(change.added) - len(change.removed)
            self.member_count[vni] = max(count, 0)
            self.metrics.set_members(vni, self.member_count[vni])
            self.encoded.moved(change)
            for node_id in self.vni_nodes.get(vni, ()):
                self.dirty.add((node_id, vni))
        self._vni_gauge()

    def watched(self, current: Mapping[int, int]) -> int:
        """The registry's generations as read by the watch: every VNI that moved
        without this instance writing it is planned like a change of our own.
        Returns how many moved."""
        moved = 0
        for vni, gen in current.items():
            if gen <= self.generations.get(vni, 0):
                continue
            moved += 1
            self.generations[vni] = gen
            for node_id in self.vni_nodes.get(vni, ()):
                self.dirty.add((node_id, vni))
        return moved

    def acked(self, node: Node, vni: int, gen: int, now: float) -> bool:
        """The node acked `gen` of `vni` (already recorded in node.applied): settle its
        in-flight push. True when it needs another push right away."""
        inflight = node.inflight.get(vni)
        if inflight is not None and inflight.acked_by(gen):
            self.metrics.push_ack_latency.observe(max(0.0, now - inflight.first_sent))
            if inflight.attempt == 0:
                self.rtt.sample(max(0.0, now - inflight.sent))
            del node.inflight[vni]
        elif inflight is not None and inflight.stranded_by(gen):
            del node.inflight[vni]  # re-planned from the acked generation below
        if push.follow_up(node.inflight.get(vni), gen, self.generations.get(vni, 0)):
            self.dirty.add((node.node_id, vni))
            return True
        return False

    def next_timer(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    # ------------------------------------------------------------ planning

    def plan(self, now: float, out: list[Outgoing]) -> list[Need]:
        """Append the pushes and retransmits due at `now` to `out`; return the reads
        that pushes put aside wait for (call again after feeding them)."""
        needs: dict[Need, None] = {}
        if not self._planned:
            self._planned = True
            self._limit = limit = len(out) + STEP_DATAGRAMS  # replies ahead do not count
            self._plan_dirty(now, out, needs, limit)
            self._plan_timers(now, out, needs, limit)
        else:
            deferred, self._deferred = self._deferred, []
            for i, (node_id, vni, retransmit) in enumerate(deferred):
                if len(out) >= self._limit:  # the next step goes on with the rest
                    self._postpone(deferred[i:], now)
                    break
                node = self.nodes.get(node_id)
                if node is not None and vni in node.vnis:
                    self._push(node, vni, now, out, retransmit, needs)
        return list(needs)

    def _postpone(self, items: list[tuple[str, int, bool]], now: float) -> None:
        """Pushes the step had no room for: first pushes stay dirty, retransmits due
        (their timers were taken) are due again at once."""
        for node_id, vni, retransmit in items:
            node = self.nodes.get(node_id)
            inflight = node.inflight.get(vni) if node is not None else None
            if retransmit and inflight is not None:
                inflight.due = now
                heapq.heappush(self._timers, (now, node_id, vni))
            else:
                self.dirty.add((node_id, vni))

    def finish(self, now: float, sent: float, out_count: int) -> None:
        """End the step: arm the timers of the pushes planned at `now` and sent at
        `sent`. A burst takes the receivers a while to work through: every push of
        the step gets that much longer before its ack counts as missing."""
        for node_id, vni, _ in self._deferred:
            self.dirty.add((node_id, vni))  # a read failed: try again next step
        self._deferred = []
        shift = max(0.0, sent - now)
        # the burst goes on across steps (each holds at most STEP_DATAGRAMS): its
        # datagrams drain at about 1/BURST_ALLOWANCE a second, and an ack can only
        # come after the receivers got through what went out before
        self._drained_at = max(sent, self._drained_at) + out_count * BURST_ALLOWANCE
        allowance = self._drained_at - sent
        for node_id, vni, inflight in self._started:
            inflight.sent += shift
            if inflight.attempt == 0:
                inflight.first_sent += shift
            inflight.due += shift + allowance
            heapq.heappush(self._timers, (inflight.due, node_id, vni))
        self._started = []
        self.encoded.end_step()
        self._planned = False
        self._count()

    def _count(self) -> None:
        counts = self._counts
        for kind in ("delta", "snapshot"):
            if counts[kind]:
                self._pushes[kind].inc(counts[kind])
        if counts["datagrams"]:
            self.metrics.datagrams_sent.inc(counts["datagrams"])
        if counts["retransmits"]:
            self.metrics.retransmits.inc(counts["retransmits"])
        self._counts = dict.fromkeys(counts, 0)

    def _plan_dirty(
        self, now: float, out: list[Outgoing], needs: dict[Need, None], limit: int
    ) -> None:
        dirty = sorted(self.dirty, key=lambda d: d[1])
        self.dirty = set()
        for i, (node_id, vni) in enumerate(dirty):
            if len(out) >= limit:
                self.dirty.update(dirty[i:])  # the next step goes on from here
                return
            node = self.nodes.get(node_id)
            if node is None or vni not in node.vnis:
                continue
            if not push.may_push(node.inflight.get(vni), now):
                continue  # one push in flight: its ack or retransmit timer follows up
            self._push(node, vni, now, out, False, needs)

    def _plan_timers(
        self, now: float, out: list[Outgoing], needs: dict[Need, None], limit: int
    ) -> None:
        while self._timers and self._timers[0][0] <= now and len(out) < limit:
            due, node_id, vni = heapq.heappop(self._timers)
            node = self.nodes.get(node_id)
            inflight = node.inflight.get(vni) if node is not None else None
            if node is None or inflight is None or inflight.due != due:
                continue  # acked, re-planned or gone
            if vni not in node.vnis:
                node.inflight.pop(vni, None)
                continue
            self._push(node, vni, now, out, True, needs)

    def _push(
        self,
        node: Node,
        vni: int,
        now: float,
        out: list[Outgoing],
        retransmit: bool,
        needs: dict[Need, None],
    ) -> None:
        inflight = node.inflight.get(vni)
        gen = self.generations.get(vni, 0)
        attempt = inflight.attempt + 1 if inflight is not None else 0
        plan = push.plan(vni, node.applied.get(vni, 0), gen, log_floor=0, attempt=attempt)
        if plan is None:
            node.inflight.pop(vni, None)
            return
        parts = self._parts(plan, node.compact)
        if not isinstance(parts, list):
            needs[parts] = None
            self._deferred.append((node.node_id, vni, retransmit))
            return
        if not parts:
            return
        counts = self._counts
        if retransmit:
            counts["retransmits"] += 1
        counts["snapshot" if parts[0].message.base is None else "delta"] += 1
        counts["datagrams"] += len(parts)
        seq, time_ms = self.seq.take(len(parts))
        prefix = self._prefix
        for part in parts:
            out.append((part.stamp_at(prefix, seq, time_ms), node.addr, node.via))
            seq += 1
        rto = self.rtt.rto()
        if inflight is None:
            inflight = node.inflight[vni] = InFlight.start(plan.generation, now, self.backoff, rto)
        else:
            inflight.resent(plan.generation, now, self.backoff, rto)
        inflight.base = parts[0].message.base
        self._started.append((node.node_id, vni, inflight))

    def _parts(self, plan: Plan, compact: bool) -> list[Stamped] | Need:
        """The encoded parts for a plan in the node's form, or the read they wait for."""
        parts, seen = self.encoded.parts(plan, compact, self.member_count.get(plan.vni))
        if seen is not None:
            self.member_count[seen.vni] = seen.members
            self.metrics.set_members(seen.vni, seen.members)
            if seen.generation != plan.generation:  # another instance wrote meanwhile
                gen = max(seen.generation, self.generations.get(seen.vni, 0))
                self.generations[seen.vni] = gen
        return parts

    # ------------------------------------------------------------ registry answers

    def snapshot_read(self, vni: int, generation: int, members: frozenset[str]) -> None:
        """The answer to a NeedSnapshot: the members of `vni` at `generation`."""
        self.encoded.snapshot_read(vni, generation, members)

    def delta_read(self, need: NeedDelta, delta: store.Delta | None) -> None:
        """The answer to a NeedDelta (None: the change log does not reach `base`)."""
        self.encoded.delta_read(need, delta, self.member_count.get(need.vni))
