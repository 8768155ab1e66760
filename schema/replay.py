"""Replay protection: a datagram is fresh once per sender incarnation and sequence.

Each sender process picks a random incarnation at start and numbers its
datagrams. A receiver accepts a datagram whose timestamp is within the window
and whose sequence number it has not seen for that incarnation (a 64-wide
sliding window tolerates reordering). State older than the time window can be
forgotten: the timestamp check already refuses anything that old.

Nothing in a datagram may make the guard costly or turn it against the sender:

- A forward jump costs O(1): past the window width the bitmap simply restarts.
- A jump further ahead than the sender could have counted since it was last
  heard (`MAX_AHEAD` plus `MAX_RATE` per second) is refused as "ahead" and moves
  nothing, so one forged or corrupted datagram cannot push the window out of
  the real sender's reach.
- A datagram far behind the window but stamped later than the datagram that set
  the window's top proves that top was not the sender's own (a real sender's
  sequence and clock rise together): the window restarts at the later datagram,
  so a lock-out lasts at most until the real clock passes the forged stamp,
  never for the rest of the incarnation. A true replay is stamped earlier than
  the top and stays refused.
- At most `MAX_INCARNATIONS` windows per sender and `max_senders` in all.

A receiver that restarts takes up where it was with `marks()` (kept somewhere
that outlives the process) and `remember()`: vxsnd keeps them in the registry,
vxrd in its state directory (vxrd.marks).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

WINDOW_BITS = 64
_MASK = (1 << WINDOW_BITS) - 1
MAX_AHEAD = 1 << 20  # sequence numbers a sender may use between two datagrams we see
MAX_RATE = 1_000_000  # ... plus this many per second since we last accepted one
MAX_INCARNATIONS = 4  # windows kept per sender id (restarts in quick succession)


class Mark(NamedTuple):
    """The top of one sender incarnation's window: what `remember` takes up."""

    sender: str
    incarnation: int
    seq: int
    time_ms: int


@dataclass(slots=True)
class _Window:
    highest: int
    highest_ms: int  # the timestamp of the datagram that set `highest`
    bitmap: int  # bit i set: highest - i seen
    accepted: float  # receiver time of the last accepted datagram
    prior: tuple[int, int] | None = None  # (highest, bitmap) before the last long jump


class ReplayGuard:
    def __init__(self, window_seconds: float = 60.0, max_senders: int = 100_000) -> None:
        self.window_seconds = window_seconds
        self.max_senders = max_senders
        self._windows: OrderedDict[tuple[str, int], _Window] = OrderedDict()
        self._incarnations: dict[str, list[int]] = {}
        self.accepted = 0  # datagrams accepted so far: moved when the marks may have

    def check(
        self, sender: str, incarnation: int, seq: int, time_ms: int, now: float
    ) -> str | None:
        """Return None and record the datagram if fresh, else the rejection reason
        ("stale", "replay" or "ahead"). Constant time and memory whatever the fields."""
        if abs(now - time_ms / 1000.0) > self.window_seconds:
            return "stale"
        key = (sender, incarnation)
        win = self._windows.get(key)
        if win is None:
            self._prune(now)
            self._add(key, _Window(seq, time_ms, 1, now))
            self.accepted += 1
            return None
        self._windows.move_to_end(key)
        if seq > win.highest:
            if seq - win.highest > MAX_AHEAD + MAX_RATE * max(0.0, now - win.accepted):
                return "ahead"
            _advance(win, seq, time_ms, now)
            self.accepted += 1
            return None
        if win.highest - seq >= WINDOW_BITS:
            if time_ms <= win.highest_ms:
                return "replay"
            # the top was not the sender's own: go back to the window it jumped from
            # (what the sender really sent stays refused), or restart here
            win.highest, win.bitmap = win.prior if win.prior is not None else (seq, 0)
            win.highest_ms, win.prior = time_ms, None
            if seq > win.highest:
                _advance(win, seq, time_ms, now)
                self.accepted += 1
                return None
        offset = win.highest - seq
        if offset >= WINDOW_BITS or win.bitmap & (1 << offset):
            return "replay"
        win.bitmap |= 1 << offset
        win.accepted = now
        self.accepted += 1
        return None

    def marks(self, now: float) -> list[Mark]:
        """The top of every window used within the time window: all a restarted
        receiver needs (anything older is `stale` by its timestamp anyway)."""
        horizon = now - self.window_seconds
        return [
            Mark(sender, incarnation, w.highest, w.highest_ms)
            for (sender, incarnation), w in self._windows.items()
            if w.accepted >= horizon
        ]

    def remember(self, sender: str, incarnation: int, seq: int, time_ms: int, now: float) -> None:
        """Take up what an earlier process accepted (kept in the registry): every
        sequence number up to `seq` of this incarnation counts as seen, and a datagram
        far behind it is a replay unless stamped after `time_ms`."""
        if seq <= 0:
            return
        key = (sender, incarnation)
        if key not in self._windows:
            self._prune(now)
            self._add(key, _Window(seq, time_ms, _MASK, now))

    def _add(self, key: tuple[str, int], win: _Window) -> None:
        sender, incarnation = key
        known = self._incarnations.setdefault(sender, [])
        if len(known) >= MAX_INCARNATIONS:
            self._windows.pop((sender, known.pop(0)), None)
        known.append(incarnation)
        self._windows[key] = win

    def _drop(self, key: tuple[str, int]) -> None:
        del self._windows[key]
        sender, incarnation = key
        known = self._incarnations.get(sender)
        if known is not None:
            if incarnation in known:
                known.remove(incarnation)
            if not known:
                del self._incarnations[sender]

    def _prune(self, now: float) -> None:
        horizon = now - self.window_seconds
        while self._windows:
            key, win = next(iter(self._windows.items()))
            if win.accepted >= horizon and len(self._windows) < self.max_senders:
                break
            self._drop(key)

    def __len__(self) -> int:
        return len(self._windows)


def _advance(win: _Window, seq: int, time_ms: int, now: float) -> None:
    """Move the window's top to `seq` (> highest) in constant time."""
    shift = seq - win.highest
    if shift >= WINDOW_BITS:
        win.prior = (win.highest, win.bitmap)
        win.bitmap = 1
    else:
        win.bitmap = ((win.bitmap << shift) | 1) & _MASK
    win.highest, win.highest_ms, win.accepted = seq, time_ms, now
