"""Register-round assembly: parts keyed by (sender, incarnation, round).

Bounded memory: an incomplete round is dropped after `max_age` seconds, and at
most `max_rounds` rounds are held (the oldest goes first). A round older than
the newest completed round of the same sender incarnation is stale and ignored
(the agent already said something newer).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from vxflood.schema.wire import Register, VniEntry


class AssemblyError(Exception):
    """Parts of one round that disagree; `reason` is the rejection label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(slots=True)
class _Round:
    first: Register
    started: float
    parts: dict[int, Register] = field(default_factory=dict)


class Assembler:
    def __init__(self, max_age: float = 5.0, max_rounds: int = 16384) -> None:
        self.max_age = max_age
        self.max_rounds = max_rounds
        self._rounds: OrderedDict[tuple[str, int, int], _Round] = OrderedDict()
        self._done: OrderedDict[tuple[str, int], int] = OrderedDict()  # newest completed round
        self.dropped = 0  # incomplete rounds given up

    def add(self, msg: Register, now: float) -> tuple[Register, tuple[VniEntry, ...]] | None:
        """Add one part; return (first part, all entries) once the round is complete."""
        sender = (msg.env.sender, msg.env.incarnation)
        done = self._done.get(sender)
        if done is not None and msg.round <= done:
            return None  # stale or duplicate round
        if msg.parts == 1:
            self._complete(sender, msg.round)
            return msg, msg.vnis
        self._expire(now)
        key = (msg.env.sender, msg.env.incarnation, msg.round)
        rnd = self._rounds.get(key)
        if rnd is None:
            while len(self._rounds) >= self.max_rounds:
                self._rounds.popitem(last=False)
                self.dropped += 1
            rnd = self._rounds[key] = _Round(msg, now)
        first = rnd.first
        if (msg.parts, msg.hold_time, msg.registry) != (
            first.parts,
            first.hold_time,
            first.registry,
        ):
            del self._rounds[key]
            raise AssemblyError("invalid", "parts of one register round disagree")
        rnd.parts[msg.part] = msg
        if len(rnd.parts) < first.parts:
            return None
        del self._rounds[key]
        self._complete(sender, msg.round)
        entries = tuple(e for i in range(first.parts) for e in rnd.parts[i].vnis)
        if len({e.vni for e in entries}) != len(entries):
            raise AssemblyError("invalid", "VNI listed twice in one register round")
        return first, entries

    def _complete(self, sender: tuple[str, int], rnd: int) -> None:
        self._done[sender] = rnd
        self._done.move_to_end(sender)
        while len(self._done) > self.max_rounds * 4:
            self._done.popitem(last=False)
        # Older incomplete rounds of this sender can no longer complete (their late
        # parts are refused as stale above); they age out with the rest.

    def _expire(self, now: float) -> None:
        while self._rounds:
            key, rnd = next(iter(self._rounds.items()))
            if now - rnd.started < self.max_age:
                break
            del self._rounds[key]
            self.dropped += 1

    def __len__(self) -> int:
        return len(self._rounds)
