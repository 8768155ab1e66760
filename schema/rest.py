"""REST payload shapes: what the API accepts and returns, and how it is checked.

Each request body has a parser (`parse_*`) that turns decoded JSON into a
frozen dataclass or raises `PayloadError`, and a JSON Schema (`*_SCHEMA`) that
says the same thing to clients; vxsnd/openapi.py publishes the schemas and the
tests check both agree. Responses have schemas only: the API builds them.

VNIs and addresses go through schema.validate, so the REST API refuses exactly
what the wire decoder and the config loaders refuse. Addresses are returned in
canonical (compressed) text form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from vxflood.schema.jsonbody import ABSENT, Absent, PayloadError, cut, decode_json
from vxflood.schema.validate import (
    ADDRESS_TEXT_MAX,
    NODE_ID_MAX,
    NODE_ID_PATTERN,
    VNI_MAX,
    VNI_MIN,
    VTEP_TEXT_PATTERN,
    Address,
    InvalidValue,
    check_node_id,
    check_vni,
    parse_vni,
    parse_vtep,
)

Json = dict[str, Any]
# the body decoder lives in schema/jsonbody.py; these names are part of this module's API
__all__ = ["ABSENT", "Absent", "PayloadError", "decode_json"]

DESCRIPTION_MAX: Final = 200
HOLD_TIME_MAX: Final = 2**31 - 1  # seconds; ~68 years is "for all practical purposes"
BODY_MAX: Final = 64 * 1024  # bytes, for single-VTEP requests
IMPORT_BODY_MAX: Final = 1024 * 1024  # bytes, for the replace-all import
# Descriptions: printable, i.e. no C0/C1 control character and no lone surrogate
# (which JSON can spell as an escape but no registry can store as text).
_DESCRIPTION_REFUSED: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
DESCRIPTION_PATTERN: Final = r"^[^\x00-\x1f\x7f-\x9f]*$"

ORIGINS: Final = ("registered", "static")


def vni_from_path(text: str) -> int:
    """A VNI from a URL path segment (ASCII decimal digits only)."""
    if text != text.strip():
        raise PayloadError(f"VNI must be a decimal integer, got {cut(text)!r}", "invalid-vni")
    try:
        return parse_vni(text)
    except InvalidValue as exc:
        raise PayloadError(str(exc), "invalid-vni") from None


def node_from_path(text: str) -> str:
    """A node id from a URL path segment (schema.validate's node-id rule)."""
    try:
        return check_node_id(text)
    except InvalidValue as exc:
        raise PayloadError(str(exc), "invalid-node-id") from None


def _json_integer(value: object) -> object:
    """JSON Schema's integer is any number without a fractional part: 7.0 and 7e0 too."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def vni_from_json(value: object, where: str = "vni") -> int:
    try:
        return check_vni(_json_integer(value))
    except InvalidValue as exc:
        raise PayloadError(f"{where}: {exc}", "invalid-vni") from None


def address_from_text(text: object, where: str = "address") -> Address:
    if not isinstance(text, str):
        raise PayloadError(
            f"{where}: address must be a string, got {_type_name(text)}", "invalid-address"
        )
    if text != text.strip() or not text or len(text) > ADDRESS_TEXT_MAX or "%" in text:
        raise PayloadError(
            f"{where}: {cut(text)!r} is not an IPv4 or IPv6 address", "invalid-address"
        )
    try:
        return parse_vtep(text)
    except InvalidValue as exc:
        raise PayloadError(f"{where}: {exc}", "invalid-address") from None


def hold_time_from_json(value: object, where: str = "hold_time") -> int | None:
    if value is None:
        return None
    value = _json_integer(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{where}: must be an integer number of seconds or null")
    if not 0 < value <= HOLD_TIME_MAX:
        shown = value if value.bit_length() <= 64 else f"a number of {len(str(value))} digits"
        raise PayloadError(f"{where}: must be between 1 and {HOLD_TIME_MAX} seconds, got {shown}")
    return value


def description_from_json(value: object, where: str = "description") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise PayloadError(f"{where}: must be a string or null, got {_type_name(value)}")
    if len(value) > DESCRIPTION_MAX:
        raise PayloadError(f"{where}: {len(value)} characters, at most {DESCRIPTION_MAX}")
    if _DESCRIPTION_REFUSED.search(value):
        raise PayloadError(f"{where}: control characters and lone surrogates are not allowed")
    return value


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _object(value: object, where: str, allowed: frozenset[str], required: frozenset[str]) -> Json:
    if not isinstance(value, dict):
        raise PayloadError(f"{where}: expected a JSON object, got {_type_name(value)}")
    unknown = sorted(repr(cut(str(k))) for k in value if k not in allowed)
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        shown = ", ".join(unknown[:5]) + more
        raise PayloadError(
            f"{where}: unknown field(s) {shown}; allowed: {', '.join(sorted(allowed))}"
        )
    missing = sorted(required - value.keys())
    if missing:
        raise PayloadError(f"{where}: missing field(s) {', '.join(missing)}")
    return value


# ------------------------------------------------------------------- requests


@dataclass(frozen=True)
class EnrolRequest:
    """Body of PUT /v1/vnis/{vni}/vteps/{address} (all optional)."""

    hold_time: int | None = None
    description: str | None = None


_ENROL_FIELDS = frozenset({"hold_time", "description"})


def parse_enrol(body: object) -> EnrolRequest:
    """An absent body (`ABSENT`) means no hold time, no description; any body that is
    not a JSON object (null included) is refused."""
    if body is ABSENT:
        return EnrolRequest()
    obj = _object(body, "body", _ENROL_FIELDS, frozenset())
    return EnrolRequest(
        hold_time=hold_time_from_json(obj.get("hold_time")),
        description=description_from_json(obj.get("description")),
    )


@dataclass(frozen=True)
class StaticVtep:
    """One static VTEP, as enrolled or imported."""

    vni: int
    address: Address
    hold_time: int | None = None
    description: str | None = None


_STATIC_FIELDS = frozenset({"vni", "address", "hold_time", "description"})


def parse_static_vtep(value: object, where: str) -> StaticVtep:
    obj = _object(value, where, _STATIC_FIELDS, frozenset({"vni", "address"}))
    return StaticVtep(
        vni=vni_from_json(obj["vni"], f"{where}.vni"),
        address=address_from_text(obj["address"], f"{where}.address"),
        hold_time=hold_time_from_json(obj.get("hold_time"), f"{where}.hold_time"),
        description=description_from_json(obj.get("description"), f"{where}.description"),
    )


def parse_replace_all(body: object) -> tuple[StaticVtep, ...]:
    """Body of PUT /v1/static: the complete new set of static VTEPs."""
    obj = _object(body, "body", frozenset({"vteps"}), frozenset({"vteps"}))
    items = obj["vteps"]
    if not isinstance(items, list):
        raise PayloadError(f"vteps: expected an array, got {_type_name(items)}")
    vteps = tuple(parse_static_vtep(item, f"vteps[{i}]") for i, item in enumerate(items))
    return _refuse_duplicates(vteps, [f"vteps[{i}]" for i in range(len(vteps))], merge=True)


def _refuse_duplicates(
    vteps: tuple[StaticVtep, ...], labels: list[str], merge: bool = False
) -> tuple[StaticVtep, ...]:
    """Refuse a VTEP listed twice. With `merge` (the REST import) a repetition that
    says exactly the same is kept once and one that disagrees is a 409: JSON Schema
    cannot say "unique by (vni, address)", and a schema-valid request must not get 400."""
    first: dict[tuple[int, Address], tuple[str, StaticVtep]] = {}
    kept: list[StaticVtep] = []
    for vtep, label in zip(vteps, labels, strict=True):
        key = (vtep.vni, vtep.address)
        seen = first.get(key)
        if seen is None:
            first[key] = (label, vtep)
            kept.append(vtep)
            continue
        if merge and seen[1] == vtep:
            continue
        differs = " with other settings" if merge else ""
        raise PayloadError(
            f"{label}: VNI {vtep.vni} address {vtep.address} is listed twice{differs} "
            f"(first at {seen[0]})",
            "conflicting-duplicate" if merge else "duplicate",
            409 if merge else 400,
        )
    return tuple(kept)


def parse_static_file(text: str, source: str = "<input>") -> tuple[StaticVtep, ...]:
    """The import file: lines `VNI ADDRESS [description...]`, `#` comments.

    Errors name the source and line. The description is the rest of the line.
    """
    vteps: list[StaticVtep] = []
    labels: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}:{number}"
        fields = line.split(None, 2)
        if len(fields) < 2:
            raise PayloadError(f"{where}: expected 'VNI ADDRESS [description]'")
        try:
            vni = parse_vni(fields[0])
        except InvalidValue as exc:
            raise PayloadError(f"{where}: {exc}", "invalid-vni") from None
        address = address_from_text(fields[1], where)
        description = description_from_json(fields[2], where) if len(fields) == 3 else None
        vteps.append(StaticVtep(vni, address, None, description))
        labels.append(where)
    result = tuple(vteps)
    _refuse_duplicates(result, labels)
    return result


def static_vtep_json(vtep: StaticVtep) -> Json:
    out: Json = {"vni": vtep.vni, "address": str(vtep.address)}
    if vtep.hold_time is not None:
        out["hold_time"] = vtep.hold_time
    if vtep.description is not None:
        out["description"] = vtep.description
    return out


# ---------------------------------------------------------------- JSON Schema

VNI_SCHEMA: Final[Json] = {
    "type": "integer",
    "minimum": VNI_MIN,
    "maximum": VNI_MAX,
    "example": 100,
}
ADDRESS_SCHEMA: Final[Json] = {
    "type": "string",
    "maxLength": ADDRESS_TEXT_MAX,
    "pattern": VTEP_TEXT_PATTERN,
    "description": (
        "a VTEP address: unicast IPv4 outside 0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16 and "
        "224.0.0.0/3, or IPv6 in 2000::/3 or fc00::/7 (the pattern is exactly that rule)"
    ),
    "example": "192.0.2.10",
}
NODE_ID_SCHEMA: Final[Json] = {
    "type": "string",
    "minLength": 1,
    "maxLength": NODE_ID_MAX,
    "pattern": NODE_ID_PATTERN,
    "description": "a node id: 1..64 of A-Z a-z 0-9 . _ - : @",
    "example": "hv-1",
}
_HOLD_TIME: Final[Json] = {
    "type": ["integer", "null"],
    "minimum": 1,
    "maximum": HOLD_TIME_MAX,
    "description": "seconds until the static VTEP expires; null or absent: never",
}
_DESCRIPTION: Final[Json] = {
    "type": ["string", "null"],
    "maxLength": DESCRIPTION_MAX,
    "pattern": DESCRIPTION_PATTERN,
    "description": "free text without control characters",
}
_TIME: Final[Json] = {"type": "number", "description": "epoch seconds"}
_TIME_OR_NULL: Final[Json] = {"type": ["number", "null"], "description": "epoch seconds"}


def _obj(properties: Json, required: list[str] | None = None) -> Json:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


ERROR_SCHEMA: Final = _obj({"error": {"type": "string"}, "detail": {"type": "string"}})

ENROL_SCHEMA: Final = _obj({"hold_time": _HOLD_TIME, "description": _DESCRIPTION}, [])

STATIC_VTEP_SCHEMA: Final = _obj(
    {
        "vni": VNI_SCHEMA,
        "address": ADDRESS_SCHEMA,
        "hold_time": _HOLD_TIME,
        "description": _DESCRIPTION,
    },
    ["vni", "address"],
)
REPLACE_ALL_SCHEMA: Final = _obj({"vteps": {"type": "array", "items": STATIC_VTEP_SCHEMA}})

MEMBER_SCHEMA: Final = _obj(
    {
        "address": {"type": "string"},
        "origin": {"type": "string", "enum": list(ORIGINS)},
        "node": {"type": ["string", "null"], "description": "agent id; null for static"},
        "expires_at": _TIME_OR_NULL,
        "description": {"type": ["string", "null"]},
    }
)
VNI_SUMMARY_SCHEMA: Final = _obj(
    {
        "vni": VNI_SCHEMA,
        "generation": {"type": "integer", "minimum": 0},
        "members": {"type": "integer", "minimum": 0},
        "static": {"type": "integer", "minimum": 0},
    }
)
VNI_LIST_SCHEMA: Final = _obj({"vnis": {"type": "array", "items": VNI_SUMMARY_SCHEMA}})
VNI_DETAIL_SCHEMA: Final = _obj(
    {
        "vni": VNI_SCHEMA,
        "generation": {"type": "integer", "minimum": 0},
        "members": {"type": "array", "items": MEMBER_SCHEMA},
    }
)
ENROL_RESULT_SCHEMA: Final = _obj(
    {
        "vni": VNI_SCHEMA,
        "generation": {"type": "integer", "minimum": 0},
        "created": {"type": "boolean"},
        "member": MEMBER_SCHEMA,
    }
)
REMOVE_RESULT_SCHEMA: Final = _obj(
    {
        "vni": VNI_SCHEMA,
        "address": {"type": "string"},
        "generation": {"type": "integer", "minimum": 0},
    }
)
REPLACE_RESULT_SCHEMA: Final = _obj(
    {
        "added": {"type": "integer", "minimum": 0},
        "removed": {"type": "integer", "minimum": 0},
        "kept": {"type": "integer", "minimum": 0},
        "changed_vnis": {"type": "array", "items": VNI_SCHEMA},
    }
)
NODE_VNI_SCHEMA: Final = _obj(
    {
        "vni": VNI_SCHEMA,
        "local_address": {"type": "string"},
        "applied_generation": {"type": "integer"},
        "generation": {"type": ["integer", "null"], "description": "the VNI's current one"},
    }
)
_NODE_COMMON: Final[Json] = {
    "id": {"type": "string"},
    "address": {"type": "string"},
    "port": {"type": "integer"},
    "incarnation": {"type": "integer"},
    "hold_time": {"type": "number"},
    "last_seen": _TIME,
    "expires_at": _TIME,
}
NODE_SUMMARY_SCHEMA: Final = _obj(_NODE_COMMON)
NODE_LIST_SCHEMA: Final = _obj({"nodes": {"type": "array", "items": NODE_SUMMARY_SCHEMA}})
NODE_DETAIL_SCHEMA: Final = _obj(
    {**_NODE_COMMON, "vnis": {"type": "array", "items": NODE_VNI_SCHEMA}}
)
CONFLICT_SCHEMA: Final = _obj(
    {
        "node_id": {"type": "string"},
        "holder": {"type": "string", "description": "where the node id is registered from"},
        "claimant": {"type": "string", "description": "the refused agent's address"},
        "first_refused": _TIME,
        "last_refused": _TIME,
        "refused": {"type": "integer", "minimum": 1, "description": "register rounds refused"},
    }
)
CONFLICT_LIST_SCHEMA: Final = _obj({"conflicts": {"type": "array", "items": CONFLICT_SCHEMA}})
HEALTH_SCHEMA: Final = _obj(
    {"status": {"type": "string", "enum": ["ok", "degraded"]}, "reason": {"type": "string"}},
    ["status"],
)
