"""Replay marks that outlive vxrd: a push captured before a restart stays a replay after it.

Each server client's replay guard (schema.replay) knows, per server incarnation,
the highest sequence number accepted. A new vxrd process starts with empty
guards, so without more a datagram captured in the last replay window (60 s)
would be accepted once more after a restart. So the guards' marks are written
to ``<state_dir>/replay-marks`` (JSON, replaced atomically) at most every
`WRITE_EVERY` seconds while datagrams are accepted and once more at a clean
stop, and read back at start (`ReplayGuard.remember`).

Only when the state directory exists (the systemd unit's StateDirectory, or one
given with --state-dir): vxrd never creates it for this. A crash loses at most
the marks of the last `WRITE_EVERY` seconds. A missing, unreadable or broken
file is logged and ignored: the guard starts empty, as before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from vxflood.schema.replay import Mark, ReplayGuard
from vxflood.schema.validate import is_node_id

log = logging.getLogger("vxrd.marks")

MARKS_FILE: Final = "replay-marks"
WRITE_EVERY: Final = 1.0  # seconds between writes while datagrams are accepted
FORMAT: Final = 1
MAX_MARKS: Final = 4096  # more than any fleet of servers needs; a bigger file is refused

__all__ = ["MARKS_FILE", "Keeper", "decode", "encode"]


def encode(marks: Sequence[Mark]) -> str:
    rows = [[m.sender, m.incarnation, m.seq, m.time_ms] for m in marks]
    return json.dumps({"format": FORMAT, "marks": rows}, separators=(",", ":")) + "\n"


def decode(text: str) -> list[Mark]:
    """The marks in `text`; ValueError (saying why) for anything else."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not a format {FORMAT} marks file")
    rows = data.get("marks")
    if not isinstance(rows, list) or len(rows) > MAX_MARKS:
        raise ValueError(f"'marks' must be a list of at most {MAX_MARKS}")
    out: list[Mark] = []
    for row in rows:
        if not (
            isinstance(row, list)
            and len(row) == 4
            and isinstance(row[0], str)
            and is_node_id(row[0])
            and all(type(v) is int and 0 <= v < 2**64 for v in row[1:])
        ):
            raise ValueError(f"bad mark {str(row)[:80]}")
        out.append(Mark(row[0], row[1], row[2], row[3]))
    return out


class Keeper:
    """Reads the marks into the guards at start, writes them back while vxrd runs."""

    def __init__(self, state_dir: Path, guards: Sequence[ReplayGuard]) -> None:
        self.path = state_dir / MARKS_FILE
        self.guards = guards
        self._written = -1  # sum of the guards' accepted counters at the last write
        self._warned = False

    def load(self, now: float | None = None) -> int:
        """Seed every guard with the stored marks; how many there were."""
        if not self.path.parent.is_dir():
            return 0
        try:
            marks = decode(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", self.path, exc)
            return 0
        now = time.time() if now is None else now
        for guard in self.guards:
            for m in marks:
                guard.remember(m.sender, m.incarnation, m.seq, m.time_ms, now)
        self._written = self._accepted()
        return len(marks)

    def save(self, now: float | None = None) -> bool:
        """Write the marks if anything was accepted since the last write."""
        accepted = self._accepted()
        if accepted == self._written:
            return False
        if not self.path.parent.is_dir():
            self._written = accepted  # look again only once something new is accepted
            return False
        now = time.time() if now is None else now
        marks = {(m.sender, m.incarnation): m for g in self.guards for m in g.marks(now)}
        tmp = self.path.with_name(f".{MARKS_FILE}.{os.getpid()}.tmp")
        try:
            tmp.write_text(encode(sorted(marks.values())), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot keep replay marks in %s: %s", self.path, exc)
            tmp.unlink(missing_ok=True)
            return False
        self._written = accepted
        return True

    async def run(self, interval: float = WRITE_EVERY) -> None:
        """Save every `interval` until cancelled (the agent saves once more at stop)."""
        while True:
            await asyncio.sleep(interval)
            self.save()

    def _accepted(self) -> int:
        return sum(g.accepted for g in self.guards)
