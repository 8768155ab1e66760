"""What each service node told this agent: its per-server protocol core (pure).

`ServerState` is fed decoded memberships and register answers with `now` (a
monotonic time) and returns an `Outcome`: which VNIs changed, which acks to
send after the kernel has them, which re-acks to send at once. It never sends,
reads a clock or touches the kernel; vxrd.client wraps it in a UDP endpoint.

Authority (issue 9, fail-static across registry loss): a server whose answers
say `learning` (its registry is new and still filling), or whose registry id
changed from the one last heard from it, is *additive*: what it says is added
to the flood lists, nothing is removed because of it, until it answers without
`learning` and one hold time has passed since the change was seen (`additive`).

Cost (issue 11): a delta edits the member set in place and is logged
(`VniState.edits`), so what it costs here, and in the planner that follows the
log (`VniState.changed_since`), is the size of the delta, not of the VNI.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field

from vxflood.schema.validate import Address
from vxflood.schema.wire import Ack, Membership, VniEntry

log = logging.getLogger("vxrd.client")

ASSEMBLY_TIMEOUT = 10.0  # seconds a partial snapshot/delta waits for its other parts
MAX_ASSEMBLIES = 1024
EDITS = 16  # deltas logged per server and VNI (enough for a reconcile that lags behind)
EDIT_MAX = 1024  # addresses a logged delta may touch; a larger one is logged as a replace

__all__ = [
    "ASSEMBLY_TIMEOUT",
    "EDITS",
    "EDIT_MAX",
    "MAX_ASSEMBLIES",
    "Outcome",
    "ServerState",
    "VniState",
    "contributors",
    "counting",
    "union_members",
]


@dataclass(slots=True)
class VniState:
    """What one server said about one VNI.

    `applied` is the generation the members correspond to. `stale` is set when the
    server's registry id changed: the members are kept (fail-static) until the new
    registry answers, but count as generation 0 (the empty set) for deltas.

    `members` is edited in place by deltas (a copy would cost the whole VNI per
    change); readers must not keep it across a change. So that they can follow
    it without comparing whole sets, `epoch` counts the times it was replaced
    (a snapshot), and `edits` logs the addresses each of the last deltas
    touched, by generation: it covers every change from generation `since` on.
    """

    members: set[Address] = field(default_factory=set)
    applied: int = 0
    stale: bool = False
    epoch: int = 0
    since: int = 0
    edits: deque[tuple[int, tuple[Address, ...]]] = field(default_factory=deque)

    def replace(self, members: set[Address], generation: int) -> None:
        """A snapshot (or a delta from the empty set): followers compare it all."""
        self.members = members
        self.epoch += 1
        self.edits.clear()
        self.since = generation

    def edit(self, add: tuple[Address, ...], remove: tuple[Address, ...], generation: int) -> None:
        """A delta on top of `applied`: edited in place (a removal wins over an add
        of the same address, as in a set difference taken after the union) and
        logged for the followers."""
        self.members.update(add)
        self.members.difference_update(remove)
        touched = add + remove
        if len(touched) > EDIT_MAX:  # too large to log: followers compare it all
            self.edits.clear()
            self.since = generation
            return
        if len(self.edits) >= EDITS:
            self.since = self.edits.popleft()[0]
        self.edits.append((generation, touched))

    def changed_since(self, generation: int) -> list[Address] | None:
        """Addresses that may be members now and not at `generation`, or the other way
        round (a superset: check each); None when `generation` is not one the log
        went through (too far back, ahead, or skipped by a delta that spanned it):
        compare the whole set instead."""
        if generation == self.applied:
            return []
        out: list[Address] = []
        for gen, touched in reversed(self.edits):
            if gen == generation:
                return out
            if gen < generation:
                return None
            out += touched
        return out if generation == self.since else None


@dataclass(slots=True)
class Outcome:
    """What feeding one datagram changed, and what the caller must do about it."""

    changed: set[int] = field(default_factory=set)  # VNIs whose member set may differ
    acks: list[tuple[int, int]] = field(default_factory=list)  # to send after reconcile
    reacks: list[tuple[int, int]] = field(default_factory=list)  # to send now (no change)
    reset: bool = False  # the registry id changed: register again at once
    authority: bool = False  # the server stopped learning: plan again (it may remove now)
    answered: bool = False  # an answer to our register round (an Ack)
    ignored: str = ""  # reason label when nothing was applied
    dropped: bool = False  # refused before the state saw it: `ignored` is a drop reason


@dataclass(slots=True)
class _Assembly:
    started: float
    parts: dict[int, Membership] = field(default_factory=dict)


class ServerState:
    """Per-server protocol state: registry id, per-VNI members and applied generations,
    when it was last heard and whether its answers count with authority."""

    def __init__(self) -> None:
        self.registry = ""
        self.vnis: dict[int, VniState] = {}
        self.heard: float | None = None  # monotonic time of the last valid datagram
        self.learning = False  # the last answer said its registry is still filling
        self.changed_at: float | None = None  # monotonic time the registry id changed
        self._assembling: dict[tuple[int, int, int | None, int], _Assembly] = {}

    def applied(self, vni: int) -> int:
        st = self.vnis.get(vni)
        return 0 if st is None or st.stale else st.applied

    def answered(self, vni: int) -> bool:
        """True once this server has told us anything about the VNI."""
        return vni in self.vnis

    def members(self, vni: int) -> Set[Address] | None:
        """The VNI's members as this server told them (live: read, do not keep)."""
        st = self.vnis.get(vni)
        return None if st is None else st.members

    def entries(self, serve: Mapping[int, Address]) -> list[VniEntry]:
        """Register entries for the VNIs this node serves, with applied generations."""
        return [VniEntry(vni, local, self.applied(vni)) for vni, local in sorted(serve.items())]

    def additive(self, now: float, hold: float) -> bool:
        """Whether this server may only add: learning, or its registry id changed
        less than `hold` seconds ago."""
        return self.learning or (self.changed_at is not None and now < self.changed_at + hold)

    def additive_until(self, hold: float) -> float | None:
        """When the hold-time half of `additive` ends (None: not pending)."""
        return None if self.changed_at is None else self.changed_at + hold

    def _reset(self, registry: str) -> None:
        for st in self.vnis.values():
            st.applied = 0
            st.stale = True
        self._assembling.clear()
        self.registry = registry

    def _heard(self, msg: Membership | Ack, now: float, out: Outcome) -> None:
        """Every valid datagram: the registry id and the learning flag it carries."""
        self.heard = now
        if msg.registry != self.registry:
            if self.registry:
                log.warning(
                    "registry id changed from %s to %s: generations start over, "
                    "flood entries only added until it is complete",
                    self.registry,
                    msg.registry,
                )
                out.reset = True
                self.changed_at = now
            self._reset(msg.registry)
        learning = msg.learning
        if self.learning and not learning:
            out.authority = True
        self.learning = learning

    def handle_reply(self, msg: Ack, now: float) -> Outcome:
        """The server's answer to a register round. Only its registry id and learning
        flag matter here: a VNI where the server is ahead is pushed on its own."""
        out = Outcome(answered=True)
        self._heard(msg, now, out)
        return out

    def handle(self, msg: Membership, now: float) -> Outcome:
        """Apply one membership part."""
        out = Outcome()
        self._heard(msg, now, out)
        current = self.applied(msg.vni)
        if msg.generation <= current:
            out.reacks.append((msg.vni, current))
            out.ignored = "duplicate"
            return out
        if msg.base is not None and msg.base != current:
            # A gap: tell the server where we are so it answers with a delta from
            # there or a snapshot, instead of retransmitting this one.
            out.reacks.append((msg.vni, current))
            out.ignored = "base-mismatch"
            return out
        parts = self._assemble(msg, now)
        if parts is None:
            out.ignored = "partial"
            return out
        st = self.vnis.setdefault(msg.vni, VniState())
        add = tuple(a for p in parts for a in p.add) if len(parts) > 1 else msg.add
        remove = tuple(a for p in parts for a in p.remove) if len(parts) > 1 else msg.remove
        if msg.base is None or st.stale:
            # a snapshot, or a delta from generation 0 (the empty set) of a new
            # registry: replaces the members
            members = set(add)
            members.difference_update(remove)
            st.replace(members, msg.generation)
        else:  # any other delta edits them, in place: its size, not the VNI's
            st.edit(add, remove, msg.generation)
        st.applied = msg.generation
        st.stale = False
        out.changed.add(msg.vni)
        out.acks.append((msg.vni, msg.generation))
        return out

    def _assemble(self, msg: Membership, now: float) -> list[Membership] | None:
        if msg.parts == 1:
            return [msg]
        for key in [k for k, a in self._assembling.items() if now - a.started > ASSEMBLY_TIMEOUT]:
            del self._assembling[key]
        key = (msg.vni, msg.generation, msg.base, msg.parts)
        asm = self._assembling.get(key)
        if asm is None:
            if len(self._assembling) >= MAX_ASSEMBLIES:
                oldest = min(self._assembling, key=lambda k: self._assembling[k].started)
                del self._assembling[oldest]
            asm = self._assembling[key] = _Assembly(now)
        asm.parts[msg.part] = msg
        if len(asm.parts) < msg.parts:
            return None
        del self._assembling[key]
        # a newer complete answer makes older partial ones for the VNI useless
        for k in [k for k in self._assembling if k[0] == msg.vni and k[1] <= msg.generation]:
            del self._assembling[k]
        return [asm.parts[i] for i in range(msg.parts)]


def contributors(states: Iterable[ServerState], vni: int) -> list[tuple[str, VniState]]:
    """The answers union_members joins, each with the registry id it is the newest
    answer of ("" for one joined as it is: stale, or from a server with no
    registry id yet).

    Servers on one registry (same registry id) tell the same membership at
    different generations: the newest answer wins, so a server that went silent
    holding an old answer cannot keep a host that left in the flood list while
    another server of that registry reports the leave. Answers of different
    registries, and answers kept from before a registry change (stale), cannot be
    ordered: they are joined, because keeping an entry is safer than dropping one.
    """
    newest: dict[str, VniState] = {}
    joined: list[tuple[str, VniState]] = []
    for st in states:
        v = st.vnis.get(vni)
        if v is None:
            continue
        if v.stale or not st.registry:
            joined.append(("", v))
            continue
        best = newest.get(st.registry)
        if best is None or v.applied > best.applied:
            newest[st.registry] = v
    joined += newest.items()
    return joined


def union_members(states: Iterable[ServerState], vni: int) -> Set[Address] | None:
    """Members of a VNI as the servers tell them (see contributors); None when none
    has answered. One answer is returned as it is (live: read, do not keep)."""
    joined = contributors(states, vni)
    if not joined:
        return None
    if len(joined) == 1:
        return joined[0][1].members
    return frozenset().union(*(v.members for _, v in joined))


def counting(
    states: Sequence[ServerState], vni: int, now: float, hold: float
) -> Sequence[ServerState]:
    """The servers whose answers count for `vni`: those heard within the hold time
    if any of them answered for it, else all. A server silent for longer (three
    missed register answers) is presumed down: its last answer no longer counts
    while a live server answers for the VNI, so it cannot hold back a leave. With
    no live answer, every last answer counts (fail-static)."""
    cutoff = now - hold
    live = [s for s in states if s.heard is not None and s.heard >= cutoff]
    if len(live) == len(states):
        return states
    return live if any(s.answered(vni) for s in live) else states
