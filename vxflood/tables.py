"""How vxsndctl and vxrdctl print for people: aligned tables and short durations.

One spelling for both tools, so `1m05s` or `-` means the same wherever it shows.
"""

from __future__ import annotations

from collections.abc import Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns two spaces apart, no trailing blanks; None or "" prints as '-'."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _cell(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def duration(seconds: float) -> str:
    """5s, 1m05s, 1h01m, 1d01h: two units at most, whole seconds."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def ago(ts: float | None, now: float) -> str:
    """An epoch time in the past as `5s ago` ('-' for none)."""
    if ts is None:
        return "-"
    return f"{duration(now - ts)} ago" if ts <= now else f"in {duration(ts - now)}"


def since(seconds: float | None) -> str:
    """An age in seconds as `5s ago` ('never' for none)."""
    return "never" if seconds is None else f"{duration(seconds)} ago"


def until(ts: float | None, now: float) -> str:
    """An expiry time as `in 1m05s`, `expired`, or `never` for none."""
    if ts is None:
        return "never"
    return f"in {duration(ts - now)}" if ts > now else "expired"
