"""The msgpack body of each message: short keys, checked on the way in.

`to_body` maps a message to the map schema.wire packs; `from_body` checks a
decoded map field by field and builds the message, raising `Rejected` with
the reason a receiver counts. Optional fields (the delta base "b", the
`learning` flag "l", a register's newest readable version "c") are absent
when unset, so their default costs no bytes. A compact Membership (version 3)
carries its addresses as packed runs ("a"/"d" IPv4, "A"/"D" IPv6) instead of
lists of packings.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from vxflood.schema.messages import (
    COMPACT_SINCE,
    MAX_HOLD_TIME,
    MAX_LIST,
    MAX_PARTS,
    MAX_REASON,
    MAX_REGISTRY_ID,
    U64_MAX,
    Ack,
    Envelope,
    Membership,
    Message,
    Refusal,
    Register,
    Rejected,
    VniEntry,
)
from vxflood.schema.validate import (
    Address,
    InvalidValue,
    check_node_id,
    check_vni,
    is_node_id,
    vtep_from_packed,
)


def _pack_addr(a: Address) -> bytes:
    return a.packed


def _pack_runs(body: dict[str, Any], addrs: tuple[Address, ...], v4: str, v6: str) -> None:
    """The compact form (version 3): IPv4 addresses as one run of 4-byte packings
    under `v4` (always there, maybe empty), IPv6 as one of 16-byte under `v6`
    (only when there is one)."""
    body[v4] = b"".join(a.packed for a in addrs if a.version == 4)
    six = b"".join(a.packed for a in addrs if a.version == 6)
    if six:
        body[v6] = six


def _env_body(env: Envelope) -> dict[str, Any]:
    return {"s": env.sender, "i": env.incarnation, "q": env.seq, "t": env.time_ms}


def to_body(msg: Message) -> dict[str, Any]:
    body = _env_body(msg.env)
    if isinstance(msg, Register):
        body.update(
            h=msg.hold_time,
            r=msg.registry,
            k=msg.round,
            p=msg.part,
            n=msg.parts,
            v=[[e.vni, _pack_addr(e.local), e.applied] for e in msg.vnis],
        )
        if msg.max_version:  # only when said: a register without it is as it was
            body["c"] = msg.max_version
    elif isinstance(msg, Membership):
        body.update(r=msg.registry, x=msg.vni, g=msg.generation)
        if msg.base is not None:
            body["b"] = msg.base
        if msg.compact:
            _pack_runs(body, msg.add, "a", "A")
            _pack_runs(body, msg.remove, "d", "D")
        else:
            body.update(a=[_pack_addr(a) for a in msg.add], d=[_pack_addr(a) for a in msg.remove])
        body.update(p=msg.part, n=msg.parts)
        if msg.learning:  # only when set: a false flag leaves the bytes as they were
            body["l"] = True
    elif isinstance(msg, Ack):
        body.update(r=msg.registry, v=[[vni, gen] for vni, gen in msg.applied])
        if msg.learning:
            body["l"] = True
    else:
        body.update(r=msg.registry, w=msg.reason, o=msg.holder.packed, e=msg.expires_in)
    return body


_MISSING = object()


class _Body:
    """Typed access to a decoded msgpack map; every failure is a Rejected("invalid")."""

    def __init__(self, raw: object) -> None:
        if not isinstance(raw, dict):
            raise Rejected("malformed", "body is not a map")
        self.raw: dict[Any, Any] = raw

    # Every datagram goes through these a dozen times: one dict lookup each, and
    # exact type checks (msgpack builds exact ints, strs and lists; `type(v) is
    # int` also refuses bool), the error path only when a check fails.

    def _missing(self, key: str) -> Rejected:
        return Rejected("invalid", f"missing field {key!r}")

    def uint(self, key: str, high: int = U64_MAX) -> int:
        value = self.raw.get(key, _MISSING)
        if type(value) is int and 0 <= value <= high:
            return value
        if value is _MISSING:
            raise self._missing(key)
        raise Rejected("invalid", f"field {key!r} must be an integer 0..{high}")

    def text(self, key: str, limit: int, allow_empty: bool = False) -> str:
        value = self.raw.get(key, _MISSING)
        if type(value) is str and len(value) <= limit and (value or allow_empty):
            return value
        if value is _MISSING:
            raise self._missing(key)
        raise Rejected("invalid", f"field {key!r} must be a string of 1..{limit} chars")

    def items(self, key: str) -> list[Any]:
        value = self.raw.get(key, _MISSING)
        if type(value) is list and len(value) <= MAX_LIST:
            return value
        if value is _MISSING:
            raise self._missing(key)
        raise Rejected("invalid", f"field {key!r} must be a list of at most {MAX_LIST}")


def _sender(value: object) -> str:
    if type(value) is str and is_node_id(value):
        return value
    if value is _MISSING:
        raise Rejected("invalid", "missing field 's'")
    try:
        check_node_id(value)
    except InvalidValue as exc:
        raise Rejected("invalid", f"sender: {exc}") from None
    raise Rejected("invalid", "sender: not a node id")  # a str subclass; msgpack builds none


def _vni(value: object) -> int:
    try:
        return check_vni(value)
    except InvalidValue as exc:
        raise Rejected("invalid", str(exc)) from None


# Valid VTEP addresses decoded so far, by packed bytes. The same peers come back in
# every push and refresh, and building and validating an ipaddress object costs
# more than the rest of a delta's decoding; the cache also hands out one object
# per address, which set operations downstream compare by identity first.
_ADDR_CACHE: dict[bytes, Address] = {}
ADDR_CACHE_MAX = 1 << 16  # addresses; cleared when full


def _addr(value: object) -> Address:
    if not isinstance(value, bytes):
        raise Rejected("invalid", "address must be packed bytes")
    hit = _ADDR_CACHE.get(value)
    if hit is not None:
        return hit
    try:
        addr = vtep_from_packed(value)
    except InvalidValue as exc:
        raise Rejected("invalid", str(exc)) from None
    if len(_ADDR_CACHE) >= ADDR_CACHE_MAX:
        _ADDR_CACHE.clear()
    _ADDR_CACHE[value] = addr
    return addr


def _addresses(values: list[Any]) -> tuple[Address, ...]:
    out = tuple(map(_addr, values))
    # on the packed bytes (all bytes by now): one address has one packing, and
    # hashing bytes is C code where an ipaddress hash is Python code
    if len(set(values)) != len(values):
        raise Rejected("invalid", "duplicate address in list")
    return out


def _flag(b: _Body, key: str) -> bool:
    """An optional boolean: absent is False."""
    value = b.raw.get(key, False)
    if type(value) is not bool:
        raise Rejected("invalid", f"field {key!r} must be a boolean")
    return value


def _parts(b: _Body) -> tuple[int, int]:
    parts = b.uint("n", MAX_PARTS)
    part = b.uint("p", MAX_PARTS)
    if parts < 1 or part >= parts:
        raise Rejected("invalid", f"part {part} of {parts}")
    return part, parts


def from_body(mtype: int, raw: object, version: int = COMPACT_SINCE) -> Message:
    """The message of type `mtype` in a datagram stamped `version`."""
    b = _Body(raw)
    env = Envelope(_sender(b.raw.get("s", _MISSING)), b.uint("i"), b.uint("q"), b.uint("t"))
    if mtype == Register.TYPE:
        return _register(b, env)
    if mtype == Membership.TYPE:
        return _membership(b, env, version)
    if mtype == Refusal.TYPE:
        return _refusal(b, env)
    return _ack(b, env)


def _register(b: _Body, env: Envelope) -> Register:
    part, parts = _parts(b)
    entries: list[VniEntry] = []
    for item in b.items("v"):
        if not isinstance(item, list) or len(item) != 3:
            raise Rejected("invalid", "VNI entry must be [vni, address, generation]")
        gen = item[2]
        if isinstance(gen, bool) or not isinstance(gen, int) or not 0 <= gen <= U64_MAX:
            raise Rejected("invalid", "applied generation must be an unsigned integer")
        entries.append(VniEntry(_vni(item[0]), _addr(item[1]), gen))
    if len({e.vni for e in entries}) != len(entries):
        raise Rejected("invalid", "VNI listed twice")
    return Register(
        env,
        b.uint("h", MAX_HOLD_TIME),
        b.text("r", MAX_REGISTRY_ID, allow_empty=True),
        b.uint("k"),
        part,
        parts,
        tuple(entries),
        b.uint("c", 255) if "c" in b.raw else 0,
    )


def _runs(b: _Body, v4: str, v6: str) -> list[bytes]:
    """The packings of a compact address list: `v4` a run of 4-byte packings
    (required), `v6` one of 16-byte (optional, never empty)."""
    out: list[bytes] = []
    for key, width in ((v4, 4), (v6, 16)):
        run = b.raw.get(key, _MISSING)
        if run is _MISSING and key == v6:
            continue
        if run is _MISSING:
            raise b._missing(key)
        if type(run) is not bytes or len(run) % width or (key == v6 and not run):
            raise Rejected("invalid", f"field {key!r} must be packed {width}-byte addresses")
        out += [run[i : i + width] for i in range(0, len(run), width)]
    return out


def _membership(b: _Body, env: Envelope, version: int) -> Membership:
    part, parts = _parts(b)
    base = b.uint("b") if "b" in b.raw else None
    gen = b.uint("g")
    compact = type(b.raw.get("a")) is bytes
    if compact:
        if version < COMPACT_SINCE:
            raise Rejected("version", f"compact membership in protocol version {version}")
        raw_add, raw_remove = _runs(b, "a", "A"), _runs(b, "d", "D")
    else:
        raw_add, raw_remove = b.items("a"), b.items("d")
    add = _addresses(raw_add)
    remove = _addresses(raw_remove)
    if base is None and remove:
        raise Rejected("invalid", "a snapshot carries no removals")
    if base is not None and base >= gen:
        raise Rejected("invalid", f"delta base {base} not below generation {gen}")
    if raw_remove and not set(raw_add).isdisjoint(raw_remove):  # packed, as above
        raise Rejected("invalid", "address both added and removed")
    return Membership(
        env,
        b.text("r", MAX_REGISTRY_ID),
        _vni(b.uint("x")),
        gen,
        base,
        add,
        remove,
        part,
        parts,
        _flag(b, "l"),
        compact,
    )


def _ack(b: _Body, env: Envelope) -> Ack:
    applied: list[tuple[int, int]] = []
    for item in b.items("v"):
        if not isinstance(item, list) or len(item) != 2:
            raise Rejected("invalid", "ack entry must be [vni, generation]")
        gen = item[1]
        if isinstance(gen, bool) or not isinstance(gen, int) or not 0 <= gen <= U64_MAX:
            raise Rejected("invalid", "acked generation must be an unsigned integer")
        applied.append((_vni(item[0]), gen))
    return Ack(env, b.text("r", MAX_REGISTRY_ID, allow_empty=True), tuple(applied), _flag(b, "l"))


def _refusal(b: _Body, env: Envelope) -> Refusal:
    reason = b.text("w", MAX_REASON)
    if not all(c.islower() or c == "-" for c in reason):
        raise Rejected("invalid", "reason must be a label of a-z and -")
    holder = b.raw.get("o", _MISSING)
    if holder is _MISSING:
        raise b._missing("o")
    if not isinstance(holder, bytes) or len(holder) not in (4, 16):
        raise Rejected("invalid", "holder must be a packed IPv4 or IPv6 address")
    return Refusal(
        env,
        b.text("r", MAX_REGISTRY_ID),
        reason,
        ipaddress.ip_address(holder),
        b.uint("e", MAX_HOLD_TIME),
    )
