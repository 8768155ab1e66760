"""The control protocol between vxrd and vxsnd: one encode and one decode path.

Datagram layout (network byte order)::

    magic "VF" | version u8 | type u8 | key-id length u8 | key id | msgpack body | tag

The tag (HMAC-SHA256 over everything before it, 32 bytes) and the key id are
present when the sender has a keyring; key-id length 0 means unsigned. The body
is a msgpack map with short keys; every message carries the sender envelope
(sender id, incarnation, sequence, timestamp) used for replay protection.
Addresses travel packed (4 or 16 bytes). Long lists are split into parts that
each fit the datagram budget.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, TypeAlias, TypeVar

import msgpack

from vxflood.schema.keys import TAG_BYTES, Key, Keyring
from vxflood.schema.validate import (
    NODE_ID_MAX,
    Address,
    InvalidValue,
    check_node_id,
    check_vni,
    is_node_id,
    vtep_from_packed,
)

MAGIC = b"VF"
VERSION = 1
HEADER = struct.Struct("!2sBBB")
DEFAULT_BUDGET = 1400
MAX_DATAGRAM = 9000  # receive limit: jumbo underlays may raise the send budget to this
MAX_PARTS = 4096
MAX_LIST = 4096
MAX_SENDER = NODE_ID_MAX  # sender ids are node ids (schema.validate.check_node_id)
MAX_REGISTRY_ID = 64
U64_MAX = 2**64 - 1
MAX_HOLD_TIME = 65_535

Message: TypeAlias = "Register | Membership | Ack"


class Rejected(Exception):
    """A datagram that is dropped; `reason` is a short label counted by receivers."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Envelope:
    """Who sent a datagram and when: the replay-protection fields."""

    sender: str
    incarnation: int
    seq: int
    time_ms: int


@dataclass(frozen=True, slots=True)
class VniEntry:
    """One VNI a node serves: its local VTEP and the generation it has applied."""

    vni: int
    local: Address
    applied: int = 0


@dataclass(frozen=True, slots=True)
class Register:
    """vxrd -> vxsnd: the node's full list (all parts of one round), refresh and anti-entropy."""

    TYPE: ClassVar[int] = 1
    env: Envelope
    hold_time: int
    registry: str  # registry id the node last heard from this server ("" if none)
    round: int  # parts of one register share the round number
    part: int
    parts: int
    vnis: tuple[VniEntry, ...]


@dataclass(frozen=True, slots=True)
class Membership:
    """vxsnd -> vxrd: members of a VNI at a generation, as a snapshot or a delta."""

    TYPE: ClassVar[int] = 2
    env: Envelope
    registry: str
    vni: int
    generation: int
    base: int | None  # None: snapshot (add = all members); else delta from base
    add: tuple[Address, ...]
    remove: tuple[Address, ...]
    part: int = 0
    parts: int = 1

    @property
    def is_snapshot(self) -> bool:
        return self.base is None


@dataclass(frozen=True, slots=True)
class Ack:
    """vxrd -> vxsnd: the generations the node has applied."""

    TYPE: ClassVar[int] = 3
    env: Envelope
    registry: str
    applied: tuple[tuple[int, int], ...]  # (vni, generation)


_TYPES: dict[int, type[Register | Membership | Ack]] = {}


def _register_type(cls: type[Register] | type[Membership] | type[Ack]) -> None:
    if cls.TYPE in _TYPES:
        raise ValueError(f"message type {cls.TYPE} registered twice")
    _TYPES[cls.TYPE] = cls


for _cls in (Register, Membership, Ack):
    _register_type(_cls)


# ---------------------------------------------------------------- body mapping


def _pack_addr(a: Address) -> bytes:
    return a.packed


def _env_body(env: Envelope) -> dict[str, Any]:
    return {"s": env.sender, "i": env.incarnation, "q": env.seq, "t": env.time_ms}


def _to_body(msg: Message) -> dict[str, Any]:
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
    elif isinstance(msg, Membership):
        body.update(r=msg.registry, x=msg.vni, g=msg.generation)
        if msg.base is not None:
            body["b"] = msg.base
        body.update(
            a=[_pack_addr(a) for a in msg.add],
            d=[_pack_addr(a) for a in msg.remove],
            p=msg.part,
            n=msg.parts,
        )
    else:
        body.update(r=msg.registry, v=[[vni, gen] for vni, gen in msg.applied])
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


def _parts(b: _Body) -> tuple[int, int]:
    parts = b.uint("n", MAX_PARTS)
    part = b.uint("p", MAX_PARTS)
    if parts < 1 or part >= parts:
        raise Rejected("invalid", f"part {part} of {parts}")
    return part, parts


def _from_body(mtype: int, raw: object) -> Message:
    b = _Body(raw)
    env = Envelope(_sender(b.raw.get("s", _MISSING)), b.uint("i"), b.uint("q"), b.uint("t"))
    if mtype == Register.TYPE:
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
        )
    if mtype == Membership.TYPE:
        part, parts = _parts(b)
        base = b.uint("b") if "b" in b.raw else None
        gen = b.uint("g")
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
        )
    applied: list[tuple[int, int]] = []
    for item in b.items("v"):
        if not isinstance(item, list) or len(item) != 2:
            raise Rejected("invalid", "ack entry must be [vni, generation]")
        gen = item[1]
        if isinstance(gen, bool) or not isinstance(gen, int) or not 0 <= gen <= U64_MAX:
            raise Rejected("invalid", "acked generation must be an unsigned integer")
        applied.append((_vni(item[0]), gen))
    return Ack(env, b.text("r", MAX_REGISTRY_ID, allow_empty=True), tuple(applied))


# ---------------------------------------------------------------- codec


class Codec:
    """Encodes and decodes datagrams; signs and verifies when given a keyring."""

    def __init__(self, keyring: Keyring | None = None, max_size: int = MAX_DATAGRAM) -> None:
        self.keyring = keyring
        self.max_size = max_size
        self._key_id = keyring.signing.key_id.encode("ascii") if keyring else b""

    @property
    def overhead(self) -> int:
        """Bytes a datagram carries besides its msgpack body."""
        return HEADER.size + len(self._key_id) + (TAG_BYTES if self.keyring else 0)

    def encode(self, msg: Message) -> bytes:
        body = msgpack.packb(_to_body(msg), use_bin_type=True)
        head = HEADER.pack(MAGIC, VERSION, msg.TYPE, len(self._key_id)) + self._key_id
        data: bytes = head + body
        if self.keyring is not None:
            data += Keyring.tag(self.keyring.signing, data)
        return data

    def decode(self, data: bytes) -> Message:
        """Return the message or raise Rejected with the reason it is dropped."""
        if len(data) > self.max_size:
            raise Rejected("oversize", f"{len(data)} bytes")
        if len(data) < HEADER.size:
            raise Rejected("short", f"{len(data)} bytes")
        magic, version, mtype, klen = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise Rejected("magic")
        if version != VERSION:
            raise Rejected("version", f"protocol version {version} (this speaks {VERSION})")
        if mtype not in _TYPES:
            raise Rejected("type", f"unknown message type {mtype}")
        start = HEADER.size + klen
        key: Key | None = None
        if klen:
            if len(data) < start + TAG_BYTES:
                raise Rejected("short", "signed datagram without room for its tag")
            end = len(data) - TAG_BYTES
            if self.keyring is not None:
                key_id = data[HEADER.size : start]
                key = self.keyring.lookup(key_id)
                if key is None:
                    raise Rejected("unknown-key", key_id.decode("ascii", "replace"))
                if not hmac.compare_digest(Keyring.tag(key, data[:end]), data[end:]):
                    raise Rejected("bad-tag")
        else:
            end = len(data)
            if self.keyring is not None:
                raise Rejected("unsigned")
        try:
            raw = msgpack.unpackb(
                data[start:end],
                raw=False,
                strict_map_key=True,
                max_array_len=MAX_LIST,
                max_map_len=32,
                max_str_len=MAX_REGISTRY_ID * 4,
                max_bin_len=16,
                max_ext_len=0,
            )
        except (
            ValueError,
            TypeError,
            msgpack.ExtraData,
            msgpack.FormatError,
            msgpack.StackError,
            UnicodeDecodeError,
        ) as exc:
            raise Rejected("malformed", type(exc).__name__) from None
        msg = _from_body(mtype, raw)
        if key is not None and key.bound:
            _check_binding(key, msg)
        return msg


def _check_binding(key: Key, msg: Message) -> None:
    """A bound key speaks only for its node ids and VTEP prefixes (schema/keys.py)."""
    if not key.allows_node(msg.env.sender):
        raise Rejected("not-allowed", f"key {key.key_id} may not speak for {msg.env.sender!r}")
    if isinstance(msg, Register):
        for entry in msg.vnis:
            if not key.allows_vtep(entry.local):
                raise Rejected("not-allowed", f"key {key.key_id} may not claim {entry.local}")


# ---------------------------------------------------------------- splitting into parts

T = TypeVar("T")


def _chunks(items: Sequence[T], room: int, size: Callable[[T], int]) -> list[list[T]]:
    """Greedy split so that each chunk's item sizes add up to at most `room`."""
    chunks: list[list[T]] = [[]]
    used = 0
    for item in items:
        n = size(item)
        if n > room:
            raise ValueError("one item does not fit the datagram budget")
        if used + n > room and chunks[-1]:
            chunks.append([])
            used = 0
        chunks[-1].append(item)
        used += n
    return chunks


# A list header grows from 1 byte (fixarray, < 16) to 3 bytes (array16); parts of one
# datagram never reach array32. Reserve the difference for each list in the message.
_LIST_SLACK = 2
_PART_SLACK = 6  # part/parts counters may grow from fixint to uint16


def _room(codec: Codec, empty: Message, budget: int, lists: int) -> int:
    room = budget - len(codec.encode(empty)) - lists * _LIST_SLACK - _PART_SLACK
    if room <= 0:
        raise ValueError(f"datagram budget {budget} too small")
    return room


def _packed_len(obj: object) -> int:
    return len(msgpack.packb(obj, use_bin_type=True))


def split_register(
    codec: Codec,
    template: Register,
    entries: Sequence[VniEntry],
    envelopes: Iterable[Envelope],
    budget: int = DEFAULT_BUDGET,
) -> list[Register]:
    """One register round as parts that each fit `budget` bytes (the last envelope
    has the largest sequence number the round uses)."""
    room = _room(codec, replace(template, vnis=()), budget, 1)
    chunks = _chunks(entries, room, lambda e: _packed_len([e.vni, e.local.packed, e.applied]))
    envs = iter(envelopes)
    return [
        replace(template, env=next(envs), part=i, parts=len(chunks), vnis=tuple(chunk))
        for i, chunk in enumerate(chunks)
    ]


def split_membership(
    codec: Codec,
    template: Membership,
    envelopes: Iterable[Envelope],
    budget: int = DEFAULT_BUDGET,
) -> list[Membership]:
    """A snapshot or delta as parts that each fit `budget` bytes."""
    room = _room(codec, replace(template, add=(), remove=()), budget, 2)
    tagged: list[tuple[bool, Address]] = [(True, a) for a in template.add] + [
        (False, a) for a in template.remove
    ]
    chunks = _chunks(tagged, room, lambda t: _packed_len(t[1].packed))
    envs = iter(envelopes)
    return [
        replace(
            template,
            env=next(envs),
            add=tuple(a for is_add, a in chunk if is_add),
            remove=tuple(a for is_add, a in chunk if not is_add),
            part=i,
            parts=len(chunks),
        )
        for i, chunk in enumerate(chunks)
    ]


def address(text: str) -> Address:
    """Shorthand used by tests and tools."""
    return ipaddress.ip_address(text)


class Sequencer:
    """Stamps outgoing datagrams: this process's incarnation and the next sequence."""

    def __init__(
        self, sender: str, incarnation: int | None = None, clock: Callable[[], float] | None = None
    ) -> None:
        try:
            check_node_id(sender)
        except InvalidValue as exc:
            raise ValueError(f"sender id: {exc}") from None
        self.sender = sender
        self.incarnation = secrets.randbits(63) if incarnation is None else incarnation
        self.seq = 0
        self._clock = clock or time.time

    def next(self) -> Envelope:
        self.seq += 1
        return Envelope(self.sender, self.incarnation, self.seq, int(self._clock() * 1000))

    def many(self) -> Iterable[Envelope]:
        """Endless envelopes for split_*; only the ones consumed use a sequence number."""
        while True:
            yield self.next()
