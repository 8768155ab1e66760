"""Replay protection: a datagram is fresh once per sender incarnation and sequence.

Each sender process picks a random incarnation at start and numbers its
datagrams. A receiver accepts a datagram whose timestamp is within the window
and whose sequence number it has not seen for that incarnation (a 64-wide
sliding window tolerates reordering). State older than the time window can be
forgotten: the timestamp check already refuses anything that old.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

WINDOW_BITS = 64


@dataclass(slots=True)
class _Window:
    highest: int
    bitmap: int  # bit i set: highest - i seen
    last_used: float


class ReplayGuard:
    def __init__(self, window_seconds: float = 60.0, max_senders: int = 100_000) -> None:
        self.window_seconds = window_seconds
        self.max_senders = max_senders
        self._windows: OrderedDict[tuple[str, int], _Window] = OrderedDict()

    def check(
        self, sender: str, incarnation: int, seq: int, time_ms: int, now: float
    ) -> str | None:
        """Return None and record the datagram if fresh, else the rejection reason."""
        if abs(now - time_ms / 1000.0) > self.window_seconds:
            return "stale"
        key = (sender, incarnation)
        win = self._windows.get(key)
        if win is None:
            self._prune(now)
            self._windows[key] = _Window(seq, 1, now)
            return None
        self._windows.move_to_end(key)
        win.last_used = now
        if seq > win.highest:
            shift = seq - win.highest
            win.bitmap = ((win.bitmap << shift) | 1) & ((1 << WINDOW_BITS) - 1)
            win.highest = seq
            return None
        offset = win.highest - seq
        if offset >= WINDOW_BITS or win.bitmap & (1 << offset):
            return "replay"
        win.bitmap |= 1 << offset
        return None

    def _prune(self, now: float) -> None:
        horizon = now - self.window_seconds
        while self._windows:
            key, win = next(iter(self._windows.items()))
            if win.last_used >= horizon and len(self._windows) < self.max_senders:
                break
            del self._windows[key]

    def __len__(self) -> int:
        return len(self._windows)
