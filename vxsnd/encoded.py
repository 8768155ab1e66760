"""What pushes are encoded as: snapshots and deltas of each VNI, cached for its
current generation only, in each form a node reads (lists, or compact for
protocol version 3).

No I/O and no clock. A push planned at (VNI, generation) asks `parts`; the bytes
come from the cache, from what our own batches carried forward (the member set,
the change of each generation), or, when neither reaches, `parts` answers with
the registry read they wait for (`NeedSnapshot`, `NeedDelta`), and the answer
comes back through `snapshot_read` / `delta_read`. Memory is bounded by VNIs and
members, not by generations.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from vxflood.schema.validate import Address
from vxflood.schema.wire import Codec, Envelope, Membership, split_membership
from vxsnd import push
from vxsnd import registry as store
from vxsnd.push import Plan
from vxsnd.stamp import Stamped

CACHE_MAX = 65536  # carried changes kept before the cache is cleared


@dataclass(frozen=True, slots=True)
class NeedSnapshot:
    """Read the members of `vni` (`Registry.member_addresses`), then `snapshot_read`."""

    vni: int


@dataclass(frozen=True, slots=True)
class NeedDelta:
    """Read the change of `vni` since `base` (`Registry.delta`), then `delta_read`."""

    vni: int
    base: int
    generation: int  # the generation the push is planned at


Need = NeedSnapshot | NeedDelta


@dataclass(frozen=True, slots=True)
class Seen:
    """A snapshot was built from the members of `vni` at `generation`: the push
    state learns the member count (and a generation another instance wrote)."""

    vni: int
    generation: int
    members: int


@dataclass(slots=True)
class _Delta:
    """One delta of a VNI (base -> current generation): its addresses, encoded in
    each form a push asked for."""

    add: list[Address]
    remove: list[Address]
    parts: dict[bool, list[Stamped]] = field(default_factory=dict)  # compact? -> parts


# Registry text address -> (sort key, address). The same members are listed in every
# snapshot and delta of a storm; parsing their text each time was a quarter of
# vxsnd's CPU in a 1,000 x 10 shared-VNI storm.
_PARSED: dict[str, tuple[tuple[int, int], Address]] = {}
PARSED_MAX = 1 << 17  # addresses; cleared when full


def addresses(texts: Iterable[str]) -> list[Address]:
    """Registry text addresses as wire addresses, IPv4 first, in address order."""
    parsed = _PARSED
    keyed = []
    for text in texts:
        hit = parsed.get(text)
        if hit is None:
            addr = ipaddress.ip_address(text)
            if len(parsed) >= PARSED_MAX:
                parsed.clear()
            hit = parsed[text] = ((addr.version, int(addr)), addr)
        keyed.append(hit)
    keyed.sort(key=_sort_key)
    return [addr for _, addr in keyed]


def _sort_key(item: tuple[tuple[int, int], Address]) -> tuple[int, int]:
    return item[0]


class Encodings:
    """The encode caches of one protocol core (see the module doc)."""

    def __init__(self, codec: Codec, sender: str, budget: int) -> None:
        self.codec = codec
        self.sender = sender
        self.budget = budget
        self.registry_id = ""
        self.learning = False
        # (vni, compact form?) -> (generation, encoded parts)
        self._snap: dict[tuple[int, bool], tuple[int, list[Stamped]]] = {}
        # members per VNI at a generation, carried forward by our own batches so that
        # a snapshot after a change needs no registry read
        self._members: dict[int, tuple[int, frozenset[str]]] = {}
        self._fresh: dict[int, tuple[int, frozenset[str]]] = {}  # read in this step
        # vni -> (generation, base -> the delta to it, None: a snapshot is better);
        # only the current generation's: a push is always planned at the current one
        self._delta: dict[int, tuple[int, dict[int, _Delta | None]]] = {}
        # (vni, generation) -> what our own batch changed: the delta from the generation
        # before, encoded only if a push needs it
        self._changes: dict[tuple[int, int], store.VniChange] = {}

    def forget(self) -> None:
        """Drop every encoded push: keys, registry id or learning flag changed."""
        self._snap.clear()
        self._delta.clear()

    def set_codec(self, codec: Codec) -> None:
        self.codec = codec
        self.forget()

    def set_identity(self, registry_id: str, learning: bool) -> None:
        if (registry_id, learning) != (self.registry_id, self.learning):
            self.registry_id, self.learning = registry_id, learning
            self.forget()

    def moved(self, change: store.VniChange) -> None:
        """Our own batch moved a VNI on. What it changed is exactly the delta from the
        generation before (each batch bumps a VNI once), and moves the member set on:
        agents one generation behind (all of them, normally) get their push without
        a registry read. The member set only moves on from the generation before;
        after a gap (another instance wrote in between) the next snapshot reads the
        registry."""
        vni, gen = change.vni, change.generation
        self._snap.pop((vni, False), None)
        self._snap.pop((vni, True), None)
        prev = self._members.pop(vni, None)
        if prev is not None and prev[0] == gen - 1:
            self._members[vni] = (gen, (prev[1] - change.removed) | change.added)
        if gen > 1:
            self._changes[(vni, gen)] = change
        if len(self._changes) > CACHE_MAX:
            self._changes.clear()

    def end_step(self) -> None:
        self._fresh.clear()

    def parts(
        self, plan: Plan, compact: bool, members: int | None
    ) -> tuple[list[Stamped] | Need, Seen | None]:
        """The encoded parts for a plan in the node's form, or the read they wait for;
        and the member set a new snapshot was built from. `members`: the VNI's
        member count as known (a delta larger than a snapshot is not sent)."""
        if plan.base is not None:
            deltas = self._deltas_at(plan.vni, plan.generation)
            if plan.base not in deltas:
                own = (
                    self._changes.pop((plan.vni, plan.generation), None)
                    if plan.base == plan.generation - 1
                    else None
                )
                if own is None:
                    return NeedDelta(plan.vni, plan.base, plan.generation), None
                deltas[plan.base] = _delta_of(own.added, own.removed, members)
            delta = deltas[plan.base]
            if delta is not None:
                parts = delta.parts.get(compact)
                if parts is None:
                    parts = delta.parts[compact] = self._encode(
                        plan.vni, plan.generation, plan.base, delta.add, delta.remove, compact
                    )
                return parts, None
        snap = self._snap.get((plan.vni, compact))
        if snap is not None and snap[0] == plan.generation:
            return snap[1], None
        known = self._members.get(plan.vni)
        if known is None or known[0] != plan.generation:
            known = self._fresh.get(plan.vni)
            if known is None:
                return NeedSnapshot(plan.vni), None
        gen, member_set = known
        snap = (gen, self._encode(plan.vni, gen, None, addresses(member_set), (), compact))
        self._snap[(plan.vni, compact)] = snap
        return snap[1], Seen(plan.vni, gen, len(member_set))

    def snapshot_read(self, vni: int, generation: int, members: frozenset[str]) -> None:
        """The answer to a NeedSnapshot: the members of `vni` at `generation`."""
        self._members[vni] = self._fresh[vni] = (generation, members)

    def delta_read(self, need: NeedDelta, delta: store.Delta | None, members: int | None) -> None:
        """The answer to a NeedDelta (None: the change log does not reach `base`)."""
        deltas = self._deltas_at(need.vni, need.generation)
        if delta is None or delta.generation != need.generation:
            deltas[need.base] = None  # a snapshot then
        else:
            deltas[need.base] = _delta_of(delta.added, delta.removed, members)

    def _deltas_at(self, vni: int, generation: int) -> dict[int, _Delta | None]:
        """The delta cache of `vni` at `generation`; an older generation's goes (a
        read answered after the VNI moved on is used once, not kept)."""
        entry = self._delta.get(vni)
        if entry is not None and entry[0] > generation:
            return {}
        if entry is None or entry[0] != generation:
            entry = self._delta[vni] = (generation, {})
        return entry[1]

    def _encode(
        self,
        vni: int,
        gen: int,
        base: int | None,
        add: Iterable[Address],
        remove: Iterable[Address],
        compact: bool,
    ) -> list[Stamped]:
        probe = Envelope(self.sender, 0, 0, 0)
        template = Membership(
            probe,
            self.registry_id,
            vni,
            gen,
            base,
            tuple(add),
            tuple(remove),
            learning=self.learning,
            compact=compact,
        )
        envs = (probe for _ in iter(int, 1))
        parts = split_membership(self.codec, template, envs, self.budget)
        return [Stamped(self.codec, p) for p in parts]


def _delta_of(added: Iterable[str], removed: Iterable[str], members: int | None) -> _Delta | None:
    """A delta to encode, or None when a snapshot is the better push."""
    add = addresses(added)
    remove = addresses(removed)
    if members is not None and not push.delta_worth_it(len(add) + len(remove), members):
        return None
    return _Delta(add, remove)
