"""What the kernel's flood lists hold, as vxrd knows it between dumps (pure: no I/O).

Re-reading every flood entry on every reconcile costs a full AF_BRIDGE dump
parsed in Python (about 15 ms for 10,000 entries), while a membership push
usually changes one entry. So vxrd keeps a mirror: filled by a dump, then
followed with the kernel's own neighbour notifications and with vxrd's own
successful writes.

The mirror is only a cache of the kernel; wrong in a few edge cases, it costs
harmless no-op writes (appending a present destination and deleting an absent
one both succeed and change nothing), and the periodic reconcile dumps again
and replaces it. It is re-read as a whole when it was never read or when
notifications were lost (`invalidate`), and device by device where a write
failed, so its effect is unknown (`stale`).

Notifications are applied in kernel order, so once every queued one has been
read the mirror equals the kernel, whatever vxrd wrote in between: a write
updates the mirror early and its echo then changes nothing. A dump is a
snapshot taken while notifications keep arriving on another socket: those
read between the request (`begin_read`) and the load are applied again on
top of it, so a change made while the kernel was being read is not lost
under an older snapshot. One silent
change is not followed: `bridge fdb replace` of an all-zero entry swaps its
first destination and notifies only the new one; the periodic dump fixes it.

The planner follows the mirror without comparing whole flood lists (issue 11):
every change notified is journalled per device (`take`), and a device whose
entries were replaced wholesale (a dump) or changed too much to journal is
reported as such, to be compared in full. vxrd's own writes are not journalled:
they are the plan the planner committed to (vxrd.planner.Planner.commit), and
one that fails turns the device stale, to be read again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set

from vxflood.schema.validate import Address
from vxrd.model import FloodChange, FloodDiff

__all__ = ["JOURNAL_MAX", "FloodMirror", "drifted"]

JOURNAL_MAX = 4096  # addresses journalled per device before it counts as replaced


class FloodMirror:
    """Per device, the flood destinations the kernel holds."""

    def __init__(self) -> None:
        self._entries: dict[int, set[Address]] = {}
        self._complete = False  # False until the first full dump, and after lost events
        self._stale: set[int] = set()  # devices to re-read before they are trusted
        self._during_read: list[FloodChange] | None = None  # events since begin_read()
        # per device, the addresses changed since the last take(); None: replaced
        self._journal: dict[int, set[Address] | None] = {}

    @property
    def complete(self) -> bool:
        """False: only a full dump makes the mirror trustworthy again."""
        return self._complete

    def stale(self) -> frozenset[int]:
        """Devices to re-read (one by one) before the next reconcile trusts them."""
        return frozenset(self._stale)

    def get(self, ifindex: int) -> Set[Address]:
        """The device's destinations. Read-only: the caller must not keep it across
        an await (the mirror changes in place as notifications arrive)."""
        return self._entries.get(ifindex, _EMPTY)

    def take(self, ifindex: int) -> set[Address] | None:
        """The device's addresses whose presence may have changed since the last take
        (a superset), and a fresh journal from now on; None when its entries were
        replaced wholesale since: compare them all. One reader (the planner)."""
        return self._journal.pop(ifindex, set())

    def _replaced(self, ifindex: int) -> None:
        self._journal[ifindex] = None

    def _touched(self, ifindex: int, addresses: Iterable[Address]) -> None:
        journal = self._journal
        seen = journal.get(ifindex, _FRESH)
        if seen is None:
            return
        if seen is _FRESH:
            seen = journal[ifindex] = set(addresses)
        else:
            seen.update(addresses)
        if len(seen) > JOURNAL_MAX:  # bounded, also for devices nobody plans for
            journal[ifindex] = None

    def begin_read(self) -> None:
        """A dump is about to be requested: keep the events applied from now on, to
        apply them again on top of it (load, load_device)."""
        self._during_read = []

    def abort_read(self) -> None:
        """The dump failed: stop keeping events."""
        self._during_read = None

    def load(self, entries: Mapping[int, Iterable[Address]]) -> None:
        """Replace everything with a full dump."""
        for ifindex in self._entries:
            self._replaced(ifindex)
        self._entries = {i: set(a) for i, a in entries.items() if a}
        for ifindex in self._entries:
            self._replaced(ifindex)
        self._complete = True
        self._stale.clear()
        self._replay(None)

    def load_device(self, ifindex: int, entries: Iterable[Address]) -> None:
        """Replace one device with a dump of that device."""
        found = set(entries)
        self._replaced(ifindex)
        if found:
            self._entries[ifindex] = found
        else:
            self._entries.pop(ifindex, None)
        self._stale.discard(ifindex)
        self._replay(ifindex)

    def _replay(self, ifindex: int | None) -> None:
        late, self._during_read = self._during_read, None
        if late:
            self.apply(c for c in late if ifindex is None or c.ifindex == ifindex)

    def invalidate(self) -> None:
        """Notifications were lost, or it is time to check: dump everything next."""
        self._complete = False

    def mark_stale(self, ifindex: int) -> None:
        """The device's entries are unknown (a write failed, a device appeared)."""
        self._stale.add(ifindex)

    def forget(self, ifindex: int) -> None:
        """The device is gone."""
        self._entries.pop(ifindex, None)
        self._stale.discard(ifindex)
        self._journal.pop(ifindex, None)  # its reader forgets it too (Planner.drop_device)

    def apply(self, changes: Iterable[FloodChange]) -> list[FloodChange]:
        """Follow kernel notifications; return those the mirror did not know yet.

        The echo of vxrd's own write is already known (written() came first, or
        the same notification was applied before) and is not returned.
        """
        news: list[FloodChange] = []
        entries = self._entries
        keep = self._during_read
        for change in changes:
            if keep is not None:
                keep.append(change)
            ifindex, address, present = change
            have = entries.get(ifindex)
            if present:
                if have is None:
                    entries[ifindex] = {address}
                elif address in have:
                    continue
                else:
                    have.add(address)
            else:
                if have is None or address not in have:
                    continue
                have.discard(address)
                if not have:
                    del entries[ifindex]
            news.append(change)
            self._touched(ifindex, (address,))
        return news

    def written(
        self, changes: Mapping[int, FloodDiff], failed: Iterable[tuple[int, Address]] = ()
    ) -> None:
        """Record vxrd's own writes: the successful ones as done; a device with a
        failed one is stale (the kernel may or may not have taken it)."""
        bad: dict[int, set[Address]] = {}
        for ifindex, address in failed:
            bad.setdefault(ifindex, set()).add(address)
        for ifindex, diff in changes.items():
            skip = bad.get(ifindex)
            if skip:
                self._stale.add(ifindex)
            have = self._entries.get(ifindex)
            if have is None:
                have = set()
            remove = diff.remove if not skip else diff.remove - skip
            add = diff.add if not skip else diff.add - skip
            have.difference_update(remove)
            have.update(add)
            if have:
                self._entries[ifindex] = have
            else:
                self._entries.pop(ifindex, None)


_EMPTY: frozenset[Address] = frozenset()
_FRESH: set[Address] = set()  # journal.get()'s default: no entry yet (never filled)


def drifted(wanted: Mapping[int, Set[Address]], changes: Iterable[FloodChange]) -> set[int]:
    """Devices that a change moved away from what vxrd wants: those need a reconcile.

    `wanted` holds the flood lists vxrd last decided on, for the devices it
    programs. A change that agrees with them (the echo of vxrd's own write, or
    somebody adding an entry vxrd wants anyway) needs nothing; devices vxrd
    does not program (not managed, or no server answered yet) never drift.
    """
    out: set[int] = set()
    for ifindex, address, present in changes:
        want = wanted.get(ifindex)
        if want is not None and (address in want) != present:
            out.add(ifindex)
    return out
