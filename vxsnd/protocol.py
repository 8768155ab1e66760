"""The service node's protocol core: no I/O and no clock.

Fed datagrams (`receive(data, addr, via, now)`: decode, replay check, register
assembly, classification), registry answers and `now`, it says what to write
(`take_batch` gives the `store.Batch` of one transaction; `batch_applied` or
`batch_failed` takes the outcome), what to read (`plan` returns `NeedSnapshot`
/ `NeedDelta`, see vxsnd.pushes) and what to send (the `Outgoing` datagrams
`plan` appends). vxsnd.engine drives it against a registry; the unit tests
drive it against an in-memory one.

Per node it keeps, in memory (vxsnd.registrations): where to push (the source
address:port of its last register and which listening socket it came in on),
the VNIs it lists, the generation it has applied per VNI (from registers and
acks); and at most one unacked push per VNI with its timer (vxsnd.pushes).

Learning (issue 9, fail-static across registry loss): a core whose registry
held no agent-learned member at start (`load`) may be serving agents whose
registry was lost. Once an agent registers carrying a registry id that is not
ours (it was served by another, lost registry), every answer says `learning`
until one hold time has passed since start: agents only add entries meanwhile,
and this core does not sweep expired registrations (nothing it never heard from
is pushed as removed). A first start, where agents come with no registry id,
does not learn.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from dataclasses import dataclass, field

from vxflood.schema.replay import ReplayGuard
from vxflood.schema.wire import (
    MAX_HOLD_TIME,
    NODE_ID_CONFLICT,
    Ack,
    Codec,
    Refusal,
    Register,
    Rejected,
    Sequencer,
)
from vxsnd import push
from vxsnd import registry as store
from vxsnd.assemble import Assembler, AssemblyError
from vxsnd.conflicts import Conflicts
from vxsnd.metrics import Metrics
from vxsnd.push import Backoff
from vxsnd.pushes import Need, NeedDelta, NeedSnapshot, Node, Outgoing, PeerAddr, Pushes
from vxsnd.ratelog import RateLimitedLog
from vxsnd.registrations import Pending, Registrations, host_text

log = logging.getLogger("vxsnd.engine")

ACK_FLUSH = 1.0  # seconds an ack may wait to be written when nothing else is
REPLY_VNIS = 64  # at most this many (vni, generation) pairs in one register reply
DEFAULT_HOLD_TIME = 90  # vxrd's default hold time

__all__ = [
    "ACK_FLUSH",
    "Core",
    "Need",
    "NeedDelta",
    "NeedSnapshot",
    "Node",
    "Outgoing",
    "PeerAddr",
    "Settings",
    "host_text",
]


@dataclass(frozen=True, slots=True)
class Settings:
    server_id: str
    hold_time_max: int = 3600
    budget: int = 1400
    replay_window: float = 60.0
    retransmit: Backoff = field(default_factory=Backoff)
    hold_time: int = DEFAULT_HOLD_TIME  # the agents' usual hold: the learning period

    @property
    def learning_period(self) -> float:
        """No agent holds longer than the maximum: all have refreshed by then."""
        return float(min(self.hold_time, self.hold_time_max))


class Core:
    """One service node's protocol state (see the module doc)."""

    def __init__(
        self, registry_id: str, codec: Codec, settings: Settings, metrics: Metrics
    ) -> None:
        self.codec = codec
        self.settings = settings
        self.metrics = metrics
        self.registry_id = registry_id
        self._now = 0.0
        self.seq = Sequencer(settings.server_id, clock=lambda: self._now)
        self.replay = ReplayGuard(settings.replay_window)
        self.assembler = Assembler()
        self.pushes = Pushes(
            {},
            {},
            codec,
            self.seq,
            metrics,
            settings.budget,
            settings.retransmit,
        )
        self.pushes.set_identity(registry_id, False)
        self.regs = Registrations(metrics, self.pushes)
        self.pushes.nodes, self.pushes.vni_nodes = self.regs.nodes, self.regs.vni_nodes
        self.watch_wanted = False  # compare the registry's generations in the next step
        self.filling_until: float | None = None  # empty at start: may learn until then
        self.lost_seen = False  # an agent came with another registry's id
        self.conflicts = Conflicts()
        self._refusals: list[Outgoing] = []  # sent with the next step's datagrams
        self._rlog = RateLimitedLog(log)

    @property
    def nodes(self) -> dict[str, Node]:
        return self.regs.nodes

    @property
    def generations(self) -> dict[int, int]:
        return self.pushes.generations

    @property
    def learning(self) -> bool:
        return self.lost_seen and self.filling_until is not None

    def set_codec(self, codec: Codec) -> None:
        """Sign and verify with `codec` from now on; pushes encoded so far go."""
        self.codec = codec
        self.pushes.set_codec(codec)

    def set_registry_id(self, registry_id: str) -> None:
        self.registry_id = registry_id
        self.pushes.set_identity(registry_id, self.learning)

    def _tick(self, now: float) -> None:
        """Time moved to `now`: the learning period may have ended."""
        self._now = now
        if self.filling_until is not None and now >= self.filling_until:
            if self.learning:
                log.info("learning period over: answering with authority")
            self.filling_until = None
            self.pushes.set_identity(self.registry_id, False)

    # ------------------------------------------------------------ start

    def grace(self, nodes: list[store.Node], now: float) -> store.Batch:
        """Registrations whose hold time ran out while this daemon was down (or runs
        out sooner than a hold time from now) get one hold time of grace: their
        agents kept refreshing into the void and must have a refresh interval to
        report in before they are swept, or the first to refresh would be pushed
        lists without the others."""
        batch = store.Batch()
        for n in nodes:
            # what this incarnation sent before the restart stays refused (issue 10)
            self.replay.remember(n.node_id, n.incarnation, n.last_seq, n.last_sent_ms, now)
            if n.expires_at < now + n.hold_time:
                batch.refresh(
                    n.node_id, hold_time=n.hold_time, seq=n.last_seq, sent_ms=n.last_sent_ms
                )
        return batch

    def load(self, vnis: list[store.VniSummary], now: float) -> None:
        """Generations and member counts from the registry (after a restart they carry
        on); a registry without agent-learned members may have been lost."""
        self._now = now
        self.pushes.load(vnis)
        if sum(v.members - v.static for v in vnis) == 0:
            self.filling_until = now + self.settings.learning_period

    # ------------------------------------------------------------ input

    def receive(self, data: bytes, addr: PeerAddr, via: int, now: float) -> None:
        """Handle one datagram; every failure is counted and logged, never raised."""
        try:
            self._tick(now)
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
            owner = self.regs.known(node_id)
            if owner is not None and owner.incarnation != first.env.incarnation:
                raise Rejected(
                    "not-owner",
                    f"withdrawal of {node_id} by incarnation {first.env.incarnation:x}, "
                    f"registered by {owner.incarnation:x}",
                )
            self.regs.withdraw(node_id, first.env.incarnation)  # the registry checks it too
            return
        holder = self.regs.conflicting(node_id, first.env.incarnation, addr, now)
        if holder is not None:
            self._refuse(node_id, first.env.incarnation, addr, via, holder)
            return
        ours = first.registry == self.registry_id
        if first.registry and not ours and self.filling_until is not None and not self.lost_seen:
            log.warning(
                "node %s was served by registry %s: learning until one hold time after start",
                node_id,
                first.registry,
            )
            self.lost_seen = True
            self.pushes.set_identity(self.registry_id, True)
        self.regs.register(first, entries, addr, via, now, ours)

    def _refuse(
        self, node_id: str, incarnation: int, addr: PeerAddr, via: int, holder: store.Holder
    ) -> None:
        """Another live agent holds `node_id`: the first keeps it; tell this one, count,
        list it (vxsnd.conflicts) and log once per claimant and interval."""
        now = self._now
        claimant = host_text(addr)
        self.metrics.node_id_conflicts.inc()
        self.conflicts.record(node_id, holder.address, claimant, now)
        self._rlog.log(
            logging.WARNING,
            f"conflict {node_id} {claimant}",
            "node id conflict: %s is registered from %s; refused the agent at %s "
            "(incarnation %x): two agents use one node id",
            node_id,
            holder.address,
            claimant,
            incarnation,
        )
        left = min(MAX_HOLD_TIME, max(0, math.ceil(holder.expires_at - now)))
        msg = Refusal(
            self.seq.next(),
            self.registry_id,
            NODE_ID_CONFLICT,
            ipaddress.ip_address(holder.address),
            left,
        )
        self._refusals.append((self.codec.encode(msg), addr, via))

    def _ack(self, msg: Ack, now: float) -> None:
        self.regs.ack(msg, self.registry_id, now)

    # ------------------------------------------------------------ work and timers

    def has_work(self, now: float | None = None) -> bool:
        """Anything to do now? Acks alone wait up to ACK_FLUSH (they only record what
        nodes applied; pushes never wait for them to be written)."""
        b = self.regs.batch
        if b.node_ops or b.sweep or b.static_ops or self.pushes.dirty or self.watch_wanted:
            return True
        if self._refusals:
            return True
        if not b.acks:
            return False
        return now is None or now - self.regs.acks_since >= ACK_FLUSH

    def next_timer(self) -> float | None:
        due = self.pushes.next_timer()
        if self.regs.batch.acks:
            flush = self.regs.acks_since + ACK_FLUSH
            due = flush if due is None else min(due, flush)
        if self.filling_until is not None and self.learning:
            due = self.filling_until if due is None else min(due, self.filling_until)
        return due

    def request_sweep(self) -> bool:
        """Sweep expired registrations in the next batch; refused (False) while
        learning: what expires then may be what this registry never heard of."""
        if self.learning:
            return False
        self.regs.sweep()
        return True

    def request_watch(self) -> None:
        self.watch_wanted = True

    def watched(self, current: dict[int, int]) -> None:
        """The registry's generations, read after our own batch of this step."""
        self.watch_wanted = False
        moved = self.pushes.watched(current)
        if moved:
            log.debug("registry watch: %d VNIs changed by another instance", moved)

    # ------------------------------------------------------------ the batch

    def take_batch(self, now: float) -> store.Batch:
        """What to write in this step's transaction (possibly empty)."""
        self._tick(now)
        return self.regs.take()

    def batch_failed(self, failed: store.Batch) -> None:
        """The write failed: keep its operations for the next batch."""
        self.regs.failed(failed)

    def batch_applied(self, batch: store.Batch, result: store.BatchResult) -> None:
        for node_id, holder in result.conflicts.items():
            # the registry knows a holder this core did not (another vxsnd's, or since
            # a restart): the round is refused as if the core had known
            p = self.regs.applying.get(node_id)
            if p is not None:
                self._refuse(node_id, p.node.incarnation, p.node.addr, p.node.via, holder)
        for node_id in result.registered:
            self.conflicts.resolved(node_id)
        self.regs.applied(batch, result)

    def absorb_external(self, result: store.BatchResult) -> None:
        """A batch applied outside the core (the REST API's static VTEPs): push it."""
        self.pushes.changed(result)

    # ------------------------------------------------------------ output

    def plan(self, now: float, out: list[Outgoing]) -> list[Need]:
        """Append this step's datagrams to `out`: register replies first (an agent
        hears the answer, then the pushes), then pushes and retransmits. Returns
        the registry reads that pushes put aside wait for: feed them
        (`pushes.snapshot_read` / `pushes.delta_read`) and call again."""
        self._tick(now)
        if self._refusals:
            out.extend(self._refusals)
            self.metrics.datagrams_sent.inc(len(self._refusals))
            self._refusals.clear()
        pending, self.regs.applying = self.regs.applying, {}
        if pending:
            self._reply(pending, out)
        return self.pushes.plan(now, out)

    def finish(self, now: float, sent: float, out: list[Outgoing]) -> None:
        """The datagrams of this step go out at `sent`: arm their timers."""
        self.pushes.finish(now, sent, len(out))

    def _reply(self, pending: dict[str, Pending], out: list[Outgoing]) -> None:
        """Answer every register round applied in this step with an Ack: the registry
        id and its current generation of each VNI the node listed (from memory, no
        registry read). Tells the agent this server is alive and heard it."""
        gens = self.pushes.generations
        for node_id, p in pending.items():
            node = self.regs.nodes.get(node_id)
            if node is not None and node.hold_time < 0:
                continue  # the registry lost it: no answer, so the agent retries soon
            if node is not p.node:
                continue  # not adopted (withdrawn or expired in the same batch)
            listed = [(vni, gens.get(vni, 0)) for vni in sorted(node.vnis)]
            for data in self._reply_datagrams(listed):
                out.append((data, node.addr, node.via))
                self.metrics.datagrams_sent.inc()

    def _reply_datagrams(self, gens: list[tuple[int, int]]) -> list[bytes]:
        chunks = [gens[i : i + REPLY_VNIS] for i in range(0, len(gens), REPLY_VNIS)] or [[]]
        out: list[bytes] = []
        learning = self.learning
        while chunks:
            chunk = chunks.pop(0)
            msg = Ack(self.seq.next(), self.registry_id, tuple(chunk), learning=learning)
            data = self.codec.encode(msg)
            if len(data) > self.settings.budget and len(chunk) > 1:
                half = len(chunk) // 2
                chunks[:0] = [chunk[:half], chunk[half:]]  # a small budget: split further
                continue
            out.append(data)
        return out
