"""A request body as JSON, judged whole: the one decoder behind every REST body.

Kept apart from schema/rest.py (the payload shapes) so the hostile-input rules
are in one small place: UTF-8 only, no duplicate keys, no NaN/Infinity, no
number longer than NUMBER_TEXT_MAX characters (Python's int() refuses over
4,300 digits with a bare ValueError, a 500 before this), nesting bounded by
the interpreter's recursion limit, and every failure a `PayloadError`.
"""

from __future__ import annotations

import json
from typing import Any, Final

NUMBER_TEXT_MAX: Final = 64  # characters of one JSON number; no field needs more


class PayloadError(ValueError):
    """A request that the API refuses (400 unless `status` says 409): `error` is a short
    code, `detail` says why."""

    def __init__(self, detail: str, error: str = "invalid-payload", status: int = 400) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail
        self.status = status


# --------------------------------------------------------------------- values


class Absent:
    """The request had no body at all (which an optional body may be; JSON null is a body)."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = Absent()


def decode_json(raw: bytes) -> object:
    """A whole request body as JSON, or PayloadError: UTF-8, no duplicate keys, no
    NaN/Infinity, no number longer than NUMBER_TEXT_MAX characters (Python's int()
    refuses over 4,300 digits with a ValueError; no field needs a tenth of that)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("request body is not UTF-8") from None
    try:
        return json.loads(
            text,
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_no_constants,
            parse_int=_int,
            parse_float=_float,
        )
    except json.JSONDecodeError as exc:
        raise PayloadError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise PayloadError("request body is nested too deeply") from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise PayloadError(f"field {cut(key)!r} appears twice")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise PayloadError(f"{name} is not valid JSON")


def _int(text: str) -> int:
    if len(text) > NUMBER_TEXT_MAX:
        raise PayloadError(f"a number of {len(text)} digits; at most {NUMBER_TEXT_MAX}")
    return int(text)


def _float(text: str) -> float:
    if len(text) > NUMBER_TEXT_MAX:
        raise PayloadError(f"a number of {len(text)} characters; at most {NUMBER_TEXT_MAX}")
    return float(text)


def cut(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
