"""Pure flood-list reconciliation: what to write so the kernel matches the registry.

No I/O here, so the rules can be tested exhaustively without root. The diff
type itself (`FloodDiff`) belongs to vxrd.model, below the kernel layer.

Two ways to the same diff: `reconcile` compares whole sets (the full reconcile,
after a dump: O(members)); `FloodState` keeps one device's desired set and its
difference from the kernel up to date change by change (a membership delta, a
kernel notification: O(size of the change), issue 11).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Iterator, Sequence, Set
from itertools import chain, repeat

from vxflood.schema.validate import Address
from vxrd.model import FloodDiff

__all__ = ["Decided", "FloodState", "desired_for", "desired_set", "reconcile", "wants"]


def reconcile(desired: Set[Address], actual: Set[Address]) -> FloodDiff:
    """Only the difference is written, so repeated runs are cheap and idempotent."""
    return FloodDiff(add=frozenset(desired - actual), remove=frozenset(actual - desired))


def desired_for(members: Iterable[Address], own: Address | None) -> frozenset[Address]:
    """Peers this host must flood to: every member except itself.

    A VTEP never floods to its own address (that would loop BUM traffic back).
    When the own address is known, members of the other IP version are dropped
    too: a device bound to an IPv4 local address cannot reach IPv6 peers.

    Avoids per-member Python code: building a set from the members would call
    ipaddress's Python-level __hash__ for each, while a frozenset passed in is
    kept, filtered with set operations that reuse its stored hashes, and the
    family check is one C-level pass (isinstance through map).
    """
    peers = members if isinstance(members, frozenset) else frozenset(members)
    if own is None:
        return peers
    kind = type(own)
    if not all(map(isinstance, peers, repeat(kind))):
        peers = peers - {m for m in peers if not isinstance(m, kind)}
    return peers - {own} if own in peers else peers


def desired_set(sources: Sequence[Set[Address]], own: Address | None) -> set[Address]:
    """desired_for() of the union of `sources`, as a new set of its own (for a
    FloodState to edit). Copied from sets, so their stored hashes are reused."""
    peers: set[Address] = set().union(*sources)
    if own is not None:
        kind = type(own)
        if not all(map(isinstance, peers, repeat(kind))):
            peers -= {m for m in peers if not isinstance(m, kind)}
        peers.discard(own)
    return peers


def wants(sources: Sequence[Set[Address]], own: Address | None) -> Callable[[Address], bool]:
    """Whether one address belongs in desired_set(sources, own), without building it:
    the test a FloodState applies to the addresses a change touched."""
    if own is None:
        return lambda a: any(a in s for s in sources)
    kind = type(own)
    if len(sources) == 1:
        (only,) = sources
        return lambda a: isinstance(a, kind) and a != own and a in only
    return lambda a: isinstance(a, kind) and a != own and any(a in s for s in sources)


class FloodState:
    """One device's flood list, followed change by change.

    `desired` is what vxrd wants on the device, `missing` what of it the kernel
    lacks, `extra` what the kernel holds beyond it (as the mirror has it). Built
    from whole sets once (`FloodState(desired, actual)`: a full reconcile), then
    edited with the addresses each change touched (`update`), so the diff of a
    one-member change costs one member. The flood list last decided on
    (`decided`, for drift and repair counting) is kept as a view: what changed
    since that decision is remembered as it was (`_undo`), not copied whole.
    """

    __slots__ = ("_additive", "_peaks", "_undo", "decided", "desired", "extra", "missing")

    def __init__(self, desired: set[Address], actual: Set[Address]) -> None:
        self.desired = desired
        self.missing: set[Address] = desired - actual
        self.extra: set[Address] = set(actual - desired)
        self._undo: dict[Address, bool] = {}  # address -> in the decided list
        self._additive = False  # the decided list kept the extra entries
        self._peaks = (len(self.missing), len(self.extra))
        self.decided = Decided(self)

    def update(
        self,
        touched: Iterable[Address],
        want: Callable[[Address], bool],
        actual: Container[Address],
    ) -> None:
        """Follow a change: `touched` holds every address whose wanting (`want`) or
        presence in the kernel (`actual`) may have changed since the last update (a
        superset is fine: each is checked)."""
        desired, missing, extra, undo = self.desired, self.missing, self.extra, self._undo
        for a in touched:
            w = want(a)
            h = a in actual
            d = a in desired
            e = h and not w
            if w != d or e != (a in extra):
                if a not in undo:
                    undo[a] = d or (self._additive and a in extra)
                if w:
                    desired.add(a)
                else:
                    desired.discard(a)
                if e:
                    extra.add(a)
                else:
                    extra.discard(a)
            if w and not h:
                missing.add(a)
            else:
                missing.discard(a)
        self._trim()

    def _trim(self) -> None:
        """A set never shrinks its table, and copying it walks the table: once the
        4,000 entries a snapshot was missing are written, diff() would walk 4,000
        empty slots per change. So a set that fell below a quarter of its peak is
        copied small (amortised over the removals that emptied it)."""
        peak_missing, peak_extra = self._peaks
        n, m = len(self.missing), len(self.extra)
        if n * 4 < peak_missing:
            self.missing = set(self.missing)
            peak_missing = n
        if m * 4 < peak_extra:
            self.extra = set(self.extra)
            peak_extra = m
        self._peaks = (max(n, peak_missing), max(m, peak_extra))

    def diff(self, additive: bool) -> FloodDiff:
        """What to write: the missing entries, and the extra ones unless a server
        that counts may only add (then they are kept)."""
        return FloodDiff(
            add=frozenset(self.missing), remove=frozenset() if additive else frozenset(self.extra)
        )

    def commit(self, additive: bool) -> None:
        """The diff(additive) of now is being written: it is the decided list, and
        what the kernel holds once written. So vxrd's own write is not followed
        entry by entry afterwards (a snapshot's thousands); a write that fails
        turns the device stale, and its state is built again from a fresh read."""
        self._undo.clear()
        self._additive = additive
        self.missing = set()
        if not additive:
            self.extra = set()
        self._peaks = (0, len(self.extra))

    def _was_decided(self, a: Address) -> bool:
        undo = self._undo.get(a)
        if undo is not None:
            return undo
        return a in self.desired or (self._additive and a in self.extra)


class Decided(Set[Address]):
    """The flood list a FloodState last committed to: desired, plus the extra
    entries when they were kept. Membership costs O(1); iterating it walks the
    whole list (tests and status, not the hot path)."""

    __slots__ = ("_state",)

    def __init__(self, state: FloodState) -> None:
        self._state = state

    def __contains__(self, a: object) -> bool:
        return self._state._was_decided(a)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Address]:
        st = self._state
        candidates = set(chain(st.desired, st.extra, st._undo))
        return (a for a in candidates if st._was_decided(a))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"Decided({sorted(self, key=str)})"
