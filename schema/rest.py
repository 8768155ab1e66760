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

from dataclasses import dataclass
from typing import Any, Final

from schema.validate import VNI_MAX, VNI_MIN, Address, InvalidValue, check_vni, parse_vtep

Json = dict[str, Any]

DESCRIPTION_MAX: Final = 200
HOLD_TIME_MAX: Final = 2**31 - 1  # seconds; ~68 years is "for all practical purposes"
BODY_MAX: Final = 64 * 1024  # bytes, for single-VTEP requests
IMPORT_BODY_MAX: Final = 1024 * 1024  # bytes, for the replace-all import
ADDRESS_TEXT_MAX: Final = 45  # longest textual IPv6 address

ORIGINS: Final = ("registered", "static")


class PayloadError(ValueError):
    """A request that the API refuses with 400: `error` is a short code, `detail` says why."""

    def __init__(self, detail: str, error: str = "invalid-payload") -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail


# --------------------------------------------------------------------- values


def vni_from_path(text: str) -> int:
    """A VNI from a URL path segment (decimal digits only)."""
    if not text.isascii() or not text.isdigit():
        raise PayloadError(f"VNI must be a decimal integer, got {text!r}", "invalid-vni")
    try:
        return check_vni(int(text, 10))
    except InvalidValue as exc:
        raise PayloadError(str(exc), "invalid-vni") from None


def vni_from_json(value: object, where: str = "vni") -> int:
    try:
        return check_vni(value)
    except InvalidValue as exc:
        raise PayloadError(f"{where}: {exc}", "invalid-vni") from None


def address_from_text(text: object, where: str = "address") -> Address:
    if not isinstance(text, str):
        raise PayloadError(
            f"{where}: address must be a string, got {_type_name(text)}", "invalid-address"
        )
    if text != text.strip() or not text or len(text) > ADDRESS_TEXT_MAX or "%" in text:
        raise PayloadError(f"{where}: {text!r} is not an IPv4 or IPv6 address", "invalid-address")
    try:
        return parse_vtep(text)
    except InvalidValue as exc:
        raise PayloadError(f"{where}: {exc}", "invalid-address") from None


def hold_time_from_json(value: object, where: str = "hold_time") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{where}: must be an integer number of seconds or null")
    if not 0 < value <= HOLD_TIME_MAX:
        raise PayloadError(f"{where}: must be between 1 and {HOLD_TIME_MAX} seconds, got {value}")
    return value


def description_from_json(value: object, where: str = "description") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise PayloadError(f"{where}: must be a string or null, got {_type_name(value)}")
    if len(value) > DESCRIPTION_MAX:
        raise PayloadError(f"{where}: {len(value)} characters, at most {DESCRIPTION_MAX}")
    if not value.isprintable():
        raise PayloadError(f"{where}: control characters are not allowed")
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
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise PayloadError(
            f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
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
    """An absent body is `None` here and means no hold time, no description."""
    if body is None:
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
    _refuse_duplicates(vteps, [f"vteps[{i}]" for i in range(len(vteps))])
    return vteps


def _refuse_duplicates(vteps: tuple[StaticVtep, ...], labels: list[str]) -> None:
    first: dict[tuple[int, Address], str] = {}
    for vtep, label in zip(vteps, labels, strict=True):
        key = (vtep.vni, vtep.address)
        if key in first:
            raise PayloadError(
                f"{label}: VNI {vtep.vni} address {vtep.address} is listed twice "
                f"(first at {first[key]})",
                "duplicate",
            )
        first[key] = label


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
            vni = check_vni(int(fields[0], 10)) if fields[0].isdigit() else None
        except InvalidValue as exc:
            raise PayloadError(f"{where}: {exc}", "invalid-vni") from None
        if vni is None:
            raise PayloadError(
                f"{where}: VNI must be a decimal integer, got {fields[0]!r}", "invalid-vni"
            )
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

VNI_SCHEMA: Final[Json] = {"type": "integer", "minimum": VNI_MIN, "maximum": VNI_MAX}
ADDRESS_SCHEMA: Final[Json] = {
    "type": "string",
    "maxLength": ADDRESS_TEXT_MAX,
    "description": "unicast IPv4 or IPv6 VTEP address",
    "example": "192.0.2.10",
}
_HOLD_TIME: Final[Json] = {
    "type": ["integer", "null"],
    "minimum": 1,
    "maximum": HOLD_TIME_MAX,
    "description": "seconds until the static VTEP expires; null or absent: never",
}
_DESCRIPTION: Final[Json] = {"type": ["string", "null"], "maxLength": DESCRIPTION_MAX}
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
HEALTH_SCHEMA: Final = _obj(
    {"status": {"type": "string", "enum": ["ok", "degraded"]}, "reason": {"type": "string"}},
    ["status"],
)
