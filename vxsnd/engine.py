"""The service node's protocol core.

Sans-IO apart from the registry: `receive(data, addr, via, now)` takes one
datagram (synchronous, never raises) and queues what it means; `step(now)`
(async: it awaits the registry) applies the queued batch in one registry call
and returns the datagrams to send. The UDP server and the timers around it are
in vxsnd.server; no sockets here, so tests feed bytes and read bytes.

Per node this keeps, in memory: where to push (the source address:port of its
last register and which listening socket it came in on), the VNIs it lists,
the generation it has applied per VNI (from registers and acks) and at most one
unacked push per VNI (see vxsnd.push for the rules).
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from vxflood.schema.replay import ReplayGuard
from vxflood.schema.validate import Address
from vxflood.schema.wire import (
    Ack,
    Codec,
    Envelope,
    Membership,
    Register,
    Rejected,
    Sequencer,
    split_membership,
)
from vxsnd import push
from vxsnd import registry as store
from vxsnd.assemble import Assembler, AssemblyError
from vxsnd.metrics import Metrics
from vxsnd.push import Backoff, InFlight, Plan
from vxsnd.ratelog import RateLimitedLog
from vxsnd.stamp import Stamped

log = logging.getLogger("vxsnd.engine")

ACK_FLUSH = 1.0  # seconds an ack may wait to be written when nothing else is
REPLY_VNIS = 64  # at most this many (vni, generation) pairs in one register reply
BURST_ALLOWANCE = 0.0001  # extra ack wait per datagram sent in the same step

PeerAddr = tuple[str, int]  # (host, port) as given by the socket (v6 may carry more)


class Registry(Protocol):
    """What the engine needs of vxsnd.store.Store (tests may pass a fake)."""

    @property
    def registry_id(self) -> str: ...

    async def apply(self, batch: store.Batch, now: float) -> store.BatchResult: ...

    async def member_addresses(self, vni: int) -> tuple[int, frozenset[str]]: ...

    async def delta(self, vni: int, base: int) -> store.Delta | None: ...

    async def vnis(self) -> list[store.VniSummary]: ...

    async def nodes(self) -> list[store.Node]: ...

    async def generations(self, vnis: Iterable[int] | None = None) -> dict[int, int]: ...


@dataclass(frozen=True, slots=True)
class Settings:
    server_id: str
    hold_time_max: int = 3600
    budget: int = 1400
    replay_window: float = 60.0
    retransmit: Backoff = field(default_factory=Backoff)


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


@dataclass(frozen=True, slots=True)
class _Pending:
    """A complete register round waiting for the next batch."""

    node: Node  # the node as it will be once the batch is applied
    full: bool  # a full registration (False: a refresh that changes nothing)


Outgoing = tuple[bytes, PeerAddr, int]  # datagram, destination, listening socket index


def host_text(addr: PeerAddr) -> str:
    """Canonical text of a peer address (IPv4-mapped IPv6 as plain IPv4)."""
    ip = ipaddress.ip_address(addr[0].split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class Engine:
    def __init__(
        self,
        registry: Registry,
        codec: Codec,
        settings: Settings,
        metrics: Metrics,
        wall_clock: Callable[[], float],
    ) -> None:
        self.registry = registry
        self.codec = codec
        self.settings = settings
        self.metrics = metrics
        self._clock = wall_clock
        self.seq = Sequencer(settings.server_id, clock=wall_clock)
        self.replay = ReplayGuard(settings.replay_window)
        self.assembler = Assembler()
        self.nodes: dict[str, Node] = {}
        self.vni_nodes: dict[int, set[str]] = {}
        self.generations: dict[int, int] = {}
        self.on_work: Callable[[], None] = lambda: None
        self._batch = store.Batch()
        self._pending: dict[str, _Pending] = {}
        self._dirty: set[tuple[str, int]] = set()
        self._timers: list[tuple[float, str, int]] = []  # (due, node, vni) heap
        self._snap: dict[int, tuple[int, list[Stamped]]] = {}
        # members per VNI at a generation, carried forward by our own batches so that
        # a snapshot after a change needs no registry read
        self._members: dict[int, tuple[int, frozenset[str]]] = {}
        self._delta: dict[tuple[int, int, int], list[Stamped] | None] = {}
        # (vni, generation) -> what our own batch changed: the delta from the generation
        # before, encoded only if a push needs it
        self._changes: dict[tuple[int, int], store.VniChange] = {}
        self._member_count: dict[int, int] = {}
        self._acks_since = 0.0
        self._watch = False  # a registry watch was asked for (see request_watch)
        self.rtt = push.RttEstimator()
        self._started: list[tuple[str, int, InFlight]] = []
        self._pushes = {k: metrics.pushes.labels(kind=k) for k in ("delta", "snapshot")}
        self._sent = metrics.datagrams_sent
        self._latency = metrics.push_ack_latency
        self._rlog = RateLimitedLog(log)

    def set_codec(self, codec: Codec) -> None:
        """Sign and verify with `codec` from now on (keys reloaded); the encoded pushes
        cached so far were signed with the old keys, so they go."""
        self.codec = codec
        self._snap.clear()
        self._delta.clear()

    async def start(self, now: float | None = None) -> None:
        """Load generations and member counts (after a restart they carry on).

        Registrations whose hold time ran out while this daemon was down (or runs
        out sooner than a hold time from now) get one hold time of grace: their
        agents kept refreshing into the void and must have a refresh interval to
        report in before they are swept, or the first to refresh would be pushed
        lists without the others."""
        now = self._clock() if now is None else now
        grace = store.Batch()
        for n in await self.registry.nodes():
            if n.expires_at < now + n.hold_time:
                grace.refresh(n.node_id, hold_time=n.hold_time)
        if grace:
            await self.registry.apply(grace, now)
            log.info("restart grace: %d registrations kept for one hold time", len(grace))
        for v in await self.registry.vnis():
            self.generations[v.vni] = v.generation
            self._member_count[v.vni] = v.members
            self.metrics.set_members(v.vni, v.members)
        self.metrics.vnis.set(sum(1 for c in self._member_count.values() if c))

    # ------------------------------------------------------------ input

    def receive(self, data: bytes, addr: PeerAddr, via: int, now: float) -> None:
        """Handle one datagram; every failure is counted and logged, never raised."""
        try:
            msg = self.codec.decode(data)
            env = msg.env
            reason = self.replay.check(env.sender, env.incarnation, env.seq, env.time_ms, now)
            if reason is not None:
                raise Rejected(reason, f"from {env.sender}")
            if isinstance(msg, Register):
                self._register(msg, addr, via, now)
            elif isinstance(msg, Ack):
                self._ack(msg, now)
            else:
                raise Rejected("not-for-us", "membership sent to the service node")
        except Rejected as exc:
            self._reject(exc.reason, exc.detail, addr)
        except AssemblyError as exc:
            self._reject(exc.reason, str(exc), addr)
        except Exception:
            self.metrics.handler_errors.inc()
            self._rlog.log(logging.ERROR, "exc", "error handling a datagram from %s", addr[0])
            log.debug("handler error", exc_info=True)

    def _reject(self, reason: str, detail: str, addr: PeerAddr) -> None:
        self.metrics.rejected.labels(reason=reason).inc()
        self._rlog.log(
            logging.WARNING, reason, "dropped datagram from %s: %s %s", addr[0], reason, detail
        )

    def _register(self, msg: Register, addr: PeerAddr, via: int, now: float) -> None:
        if push.check_hold_time(msg.hold_time, self.settings.hold_time_max):
            raise Rejected(
                "hold-time",
                f"{msg.env.sender} asks {msg.hold_time} s, at most "
                f"{self.settings.hold_time_max} s allowed",
            )
        done = self.assembler.add(msg, now)
        if done is None:
            return
        first, entries = done
        node_id = first.env.sender
        if first.hold_time == 0:
            self._batch.withdraw(node_id)
            self._pending.pop(node_id, None)
            self.on_work()
            return
        ours = first.registry == self.registry.registry_id
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
            and (old is None or not old.full)
        )
        node = Node(node_id, first.env.incarnation, addr, via, first.hold_time, now, vnis)
        if same and known is not None:
            # a refresh: only the expiry moves; applied generations travel as acks
            node.applied = dict(known.applied)
            for vni, gen in applied.items():
                if gen > node.applied.get(vni, 0):
                    node.applied[vni] = gen
                    self._batch.ack(node_id, vni, gen)
            self._batch.refresh(node_id, hold_time=first.hold_time)
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
                )
            )
        self._pending[node_id] = _Pending(node, full=not same)
        self.on_work()

    def _ack(self, msg: Ack, now: float) -> None:
        node = self.nodes.get(msg.env.sender)
        if node is None or node.incarnation != msg.env.incarnation:
            return  # not registered here (yet): its next register brings it in
        if msg.registry != self.registry.registry_id:
            return
        for vni, gen in msg.applied:
            self.metrics.acks.inc()
            if vni not in node.vnis:
                continue
            if gen > node.applied.get(vni, 0):
                node.applied[vni] = gen
                if not self._batch.acks:
                    self._acks_since = now
                self._batch.ack(node.node_id, vni, gen)
            inflight = node.inflight.get(vni)
            if inflight is not None and inflight.acked_by(gen):
                self._latency.observe(max(0.0, now - inflight.first_sent))
                if inflight.attempt == 0:
                    self.rtt.sample(max(0.0, now - inflight.sent))
                del node.inflight[vni]
            elif inflight is not None and inflight.stranded_by(gen):
                del node.inflight[vni]  # re-planned from the acked generation below
            if push.follow_up(node.inflight.get(vni), gen, self.generations.get(vni, 0)):
                self._dirty.add((node.node_id, vni))
                self.on_work()

    # ------------------------------------------------------------ batch and pushes

    def has_work(self, now: float | None = None) -> bool:
        """Anything to do now? Acks alone wait up to ACK_FLUSH (they only record what
        nodes applied; pushes never wait for them to be written)."""
        b = self._batch
        if b.node_ops or b.sweep or b.static_ops or self._dirty or self._watch:
            return True
        if not b.acks:
            return False
        return now is None or now - self._acks_since >= ACK_FLUSH

    def next_timer(self) -> float | None:
        due = self._timers[0][0] if self._timers else None
        if self._batch.acks:
            flush = self._acks_since + ACK_FLUSH
            due = flush if due is None else min(due, flush)
        return due

    def request_sweep(self) -> None:
        self._batch.expire()
        self.on_work()

    def request_watch(self) -> None:
        """Compare the registry's generations with ours in the next step (vxsnd.watch)."""
        self._watch = True
        self.on_work()

    async def _watch_registry(self) -> None:
        """One read of every VNI's generation; each VNI that moved without this
        instance writing it (another vxsnd on the same registry did) is planned like
        a change of our own: every node registered here that is behind gets a push."""
        self._watch = False
        try:
            current = await self.registry.generations()
        except Exception:
            self._rlog.log(logging.WARNING, "watch", "registry watch: read failed, will retry")
            log.debug("registry watch failed", exc_info=True)
            return
        moved = 0
        for vni, gen in current.items():
            if gen <= self.generations.get(vni, 0):
                continue
            moved += 1
            self.generations[vni] = gen
            for node_id in self.vni_nodes.get(vni, ()):
                self._dirty.add((node_id, vni))
        if moved:
            log.debug("registry watch: %d VNIs changed by another instance", moved)

    async def step(self, now: float) -> list[Outgoing]:
        """Apply the queued batch (one transaction), then plan pushes and retransmits."""
        batch, self._batch = self._batch, store.Batch()
        pending, self._pending = self._pending, {}
        if batch:
            try:
                with self.metrics.batch_seconds.time():
                    result = await self.registry.apply(batch, now)
            except Exception:
                self.metrics.batch_errors.inc()
                self._rlog.log(logging.ERROR, "batch", "registry write failed, will retry")
                log.debug("batch failed", exc_info=True)
                self._requeue(batch, pending)
                raise
            self.metrics.batches.inc()
            self._absorb(batch, pending, result)
        if self._watch:  # after our own batch: what moved now was written elsewhere
            await self._watch_registry()
        out: list[Outgoing] = []
        if pending:  # register replies first: an agent hears the answer, then the pushes
            self._reply(pending, out)
        self._started = []
        await self._push_dirty(now, out)
        await self._retransmit(now, out)
        # A burst takes the receivers a while to work through: give every push of
        # this step that much longer before its ack counts as missing.
        allowance = len(out) * BURST_ALLOWANCE
        for node_id, vni, inflight in self._started:
            inflight.due += allowance
            heapq.heappush(self._timers, (inflight.due, node_id, vni))
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "step: %d node ops, %d acks, sweep %s; %d datagrams out; %.1f ms",
                len(batch.node_ops),
                len(batch.acks),
                batch.sweep,
                len(out),
                (self._clock() - now) * 1000,
            )
        return out

    def _reply(self, pending: dict[str, _Pending], out: list[Outgoing]) -> None:
        """Answer every register round applied in this step with an Ack: the registry
        id and its current generation of each VNI the node listed (from memory, no
        registry read). Tells the agent this server is alive and heard it."""
        registry = self.registry.registry_id
        for node_id, p in pending.items():
            node = self.nodes.get(node_id)
            if node is not None and node.hold_time < 0:
                continue  # the registry lost it: no answer, so the agent retries soon
            if node is not p.node:
                continue  # not adopted (withdrawn or expired in the same batch)
            gens = [(vni, self.generations.get(vni, 0)) for vni in sorted(node.vnis)]
            for data in self._reply_datagrams(registry, gens):
                out.append((data, node.addr, node.via))
                self._sent.inc()

    def _reply_datagrams(self, registry: str, gens: list[tuple[int, int]]) -> list[bytes]:
        chunks = [gens[i : i + REPLY_VNIS] for i in range(0, len(gens), REPLY_VNIS)] or [[]]
        out: list[bytes] = []
        while chunks:
            chunk = chunks.pop(0)
            data = self.codec.encode(Ack(self.seq.next(), registry, tuple(chunk)))
            if len(data) > self.settings.budget and len(chunk) > 1:
                half = len(chunk) // 2
                chunks[:0] = [chunk[:half], chunk[half:]]  # a small budget: split further
                continue
            out.append(data)
        return out

    def _requeue(self, failed: store.Batch, pending: dict[str, _Pending]) -> None:
        for node_id, op in failed.node_ops.items():
            if node_id not in self._batch.node_ops:
                self._batch.node_ops[node_id] = op
                if node_id in pending:
                    self._pending[node_id] = pending[node_id]
        for key, gen in failed.acks.items():
            self._batch.acks[key] = max(gen, self._batch.acks.get(key, gen))
        self._batch.sweep = self._batch.sweep or failed.sweep

    def _absorb(
        self, batch: store.Batch, pending: dict[str, _Pending], result: store.BatchResult
    ) -> None:
        m = self.metrics
        for node_id, op in batch.node_ops.items():
            if isinstance(op, store.Withdrawal):
                m.withdrawals.inc()
                log.info("withdraw node=%s", node_id)
                self._drop(node_id)
            elif node_id in pending:
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
        self._changed(result)
        m.nodes.set(len(self.nodes))
        if len(self._delta) > 65536:
            self._delta.clear()
        if len(self._changes) > 65536:
            self._changes.clear()

    def absorb_external(self, result: store.BatchResult) -> None:
        """A batch applied outside the engine (the REST API's static VTEPs): push it."""
        self._changed(result)
        if result.changed:
            self.on_work()

    def _changed(self, result: store.BatchResult) -> None:
        m = self.metrics
        for vni, change in result.changed.items():
            if change.generation <= self.generations.get(vni, 0):
                continue
            self.generations[vni] = change.generation
            self._snap.pop(vni, None)
            count = self._member_count.get(vni, 0) + len(change.added) - len(change.removed)
            self._member_count[vni] = max(count, 0)
            m.set_members(vni, self._member_count[vni])
            self._carry_forward(change)
            for node_id in self.vni_nodes.get(vni, ()):
                self._dirty.add((node_id, vni))
        m.vnis.set(sum(1 for c in self._member_count.values() if c))

    def _carry_forward(self, change: store.VniChange) -> None:
        """What our own batch changed is exactly the delta from the generation before
        (each batch bumps a VNI once), and moves the member set on: agents one
        generation behind (all of them, normally) get their push without a registry
        read. The member set only moves on from the generation before; after a gap
        (another instance wrote in between) the next snapshot reads the registry."""
        vni, gen = change.vni, change.generation
        prev = self._members.pop(vni, None)
        if prev is not None and prev[0] == gen - 1:
            self._members[vni] = (gen, (prev[1] - change.removed) | change.added)
        if gen > 1:
            self._changes[(vni, gen)] = change

    def _adopt(self, p: _Pending, registered: bool) -> None:
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
            log.info("register node=%s at %s vnis=%s", new.node_id, new.addr[0], _short(joined))
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
            self._dirty.add((new.node_id, vni))  # anti-entropy: compare applied

    def _drop(self, node_id: str) -> None:
        node = self.nodes.pop(node_id, None)
        if node is not None:
            for vni in node.vnis:
                self.vni_nodes.get(vni, set()).discard(node_id)

    async def _push_dirty(self, now: float, out: list[Outgoing]) -> None:
        dirty, self._dirty = self._dirty, set()
        for node_id, vni in sorted(dirty, key=lambda d: d[1]):
            node = self.nodes.get(node_id)
            if node is None or vni not in node.vnis:
                continue
            inflight = node.inflight.get(vni)
            if not push.may_push(inflight, now):
                continue  # one push in flight: its ack or retransmit timer follows up
            await self._push(node, vni, now, out, inflight)

    async def _retransmit(self, now: float, out: list[Outgoing]) -> None:
        while self._timers and self._timers[0][0] <= now:
            due, node_id, vni = heapq.heappop(self._timers)
            node = self.nodes.get(node_id)
            inflight = node.inflight.get(vni) if node is not None else None
            if node is None or inflight is None or inflight.due != due:
                continue  # acked, re-planned or gone
            if vni not in node.vnis:
                node.inflight.pop(vni, None)
                continue
            self.metrics.retransmits.inc()
            await self._push(node, vni, now, out, inflight)

    async def _push(
        self, node: Node, vni: int, now: float, out: list[Outgoing], inflight: InFlight | None
    ) -> None:
        gen = self.generations.get(vni, 0)
        applied = node.applied.get(vni, 0)
        attempt = inflight.attempt + 1 if inflight is not None else 0
        plan = push.plan(vni, applied, gen, log_floor=0, attempt=attempt)
        if plan is None:
            node.inflight.pop(vni, None)
            return
        parts = await self._parts(plan)
        if not parts:
            return
        kind = "snapshot" if parts[0].message.base is None else "delta"
        for part in parts:
            out.append((part.stamp(self.seq.next()), node.addr, node.via))
        self._pushes[kind].inc()
        self._sent.inc(len(parts))
        backoff = self.settings.retransmit
        sent = self._clock()  # planning a storm takes a while: time from the real send
        rto = self.rtt.rto()
        if inflight is None:
            inflight = node.inflight[vni] = InFlight.start(plan.generation, sent, backoff, rto)
        else:
            inflight.resent(plan.generation, sent, backoff, rto)
        inflight.base = parts[0].message.base
        self._started.append((node.node_id, vni, inflight))

    async def _parts(self, plan: Plan) -> list[Stamped]:
        """The encoded parts for a plan; snapshots and deltas are cached per generation."""
        if plan.base is not None:
            key = (plan.vni, plan.base, plan.generation)
            if key not in self._delta:
                own = (
                    self._changes.pop((plan.vni, plan.generation), None)
                    if plan.base == plan.generation - 1
                    else None
                )
                self._delta[key] = (
                    await self._build_delta(plan.vni, plan.base, plan.generation)
                    if own is None
                    else self._delta_parts(
                        plan.vni, plan.base, plan.generation, own.added, own.removed
                    )
                )
            cached = self._delta[key]
            if cached is not None:
                return cached
        snap = self._snap.get(plan.vni)
        if snap is None or snap[0] != plan.generation:
            known = self._members.get(plan.vni)
            if known is not None and known[0] == plan.generation:
                gen, members = known
            else:
                gen, members = await self.registry.member_addresses(plan.vni)
                self._members[plan.vni] = (gen, members)
            addrs = _addresses(members)
            snap = (gen, self._encode(plan.vni, gen, None, addrs, ()))
            self._snap[plan.vni] = snap
            self._member_count[plan.vni] = len(members)
            self.metrics.set_members(plan.vni, len(members))
            if gen != plan.generation:  # the registry moved on (another instance wrote)
                self.generations[plan.vni] = max(gen, self.generations.get(plan.vni, 0))
        return snap[1]

    async def _build_delta(self, vni: int, base: int, gen: int) -> list[Stamped] | None:
        delta = await self.registry.delta(vni, base)
        if delta is None or delta.generation != gen:
            return None
        return self._delta_parts(vni, base, gen, delta.added, delta.removed)

    def _delta_parts(
        self, vni: int, base: int, gen: int, added: Iterable[str], removed: Iterable[str]
    ) -> list[Stamped] | None:
        """Encoded delta parts, or None when a snapshot is the better push."""
        add = _addresses(added)
        remove = _addresses(removed)
        members = self._member_count.get(vni)
        if members is not None and not push.delta_worth_it(len(add) + len(remove), members):
            return None
        return self._encode(vni, gen, base, add, remove)

    def _encode(
        self,
        vni: int,
        gen: int,
        base: int | None,
        add: Iterable[Address],
        remove: Iterable[Address],
    ) -> list[Stamped]:
        probe = Envelope(self.settings.server_id, 0, 0, 0)
        template = Membership(
            probe, self.registry.registry_id, vni, gen, base, tuple(add), tuple(remove)
        )
        envs = (probe for _ in iter(int, 1))
        parts = split_membership(self.codec, template, envs, self.settings.budget)
        return [Stamped(self.codec, p) for p in parts]


def _short(vnis: list[int]) -> str:
    text = ",".join(str(v) for v in sorted(vnis)[:8])
    return text + (f",... ({len(vnis)})" if len(vnis) > 8 else "")


def _addresses(texts: Iterable[str]) -> list[Address]:
    """Registry text addresses as wire addresses, IPv4 first, in address order."""
    addrs = [ipaddress.ip_address(a) for a in texts]
    return sorted(addrs, key=lambda a: (a.version, int(a)))
