"""The control protocol between vxrd and vxsnd: one encode and one decode path.

Datagram layout (network byte order)::

    magic "VF" | version u8 | type u8 | key-id length u8 | key id | msgpack body | tag

The tag (HMAC-SHA256 over everything before it, 32 bytes) and the key id are
present when the sender has a keyring; key-id length 0 means unsigned. The body
is a msgpack map with short keys; every message carries the sender envelope
(sender id, incarnation, sequence, timestamp) used for replay protection.
Addresses travel packed (4 or 16 bytes): as lists of packings, or (compact
Membership, version 3, for agents that read it) as runs of packings. Long lists
are split into parts that each fit the datagram budget.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TypeVar

import msgpack

from vxflood.schema.body import from_body, to_body
from vxflood.schema.keys import TAG_BYTES, Key, Keyring
from vxflood.schema.messages import (
    COMPACT_SINCE,
    DEFAULT_BUDGET,
    HEADER,
    MAGIC,
    MAX_DATAGRAM,
    MAX_HOLD_TIME,
    MAX_LIST,
    MAX_PARTS,
    MAX_REGISTRY_ID,
    MAX_SENDER,
    MIN_VERSION,
    NODE_ID_CONFLICT,
    TYPES,
    U64_MAX,
    VERSION,
    Ack,
    Envelope,
    Membership,
    Message,
    Refusal,
    Register,
    Rejected,
    Sequencer,
    VniEntry,
    address,
    wire_version,
)
from vxflood.schema.validate import (
    Address,
)

__all__ = [
    "COMPACT_SINCE",
    "DEFAULT_BUDGET",
    "HEADER",
    "MAGIC",
    "MAX_DATAGRAM",
    "MAX_HOLD_TIME",
    "MAX_LIST",
    "MAX_PARTS",
    "MAX_REGISTRY_ID",
    "MAX_SENDER",
    "MIN_VERSION",
    "NODE_ID_CONFLICT",
    "U64_MAX",
    "VERSION",
    "Ack",
    "Codec",
    "Envelope",
    "Membership",
    "Message",
    "Refusal",
    "Register",
    "Rejected",
    "Sequencer",
    "VniEntry",
    "address",
    "split_membership",
    "split_register",
]


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
        body = msgpack.packb(to_body(msg), use_bin_type=True)
        head = HEADER.pack(MAGIC, wire_version(msg), msg.TYPE, len(self._key_id)) + self._key_id
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
        if not MIN_VERSION <= version <= VERSION:
            raise Rejected(
                "version", f"protocol version {version} (this speaks {MIN_VERSION}..{VERSION})"
            )
        cls = TYPES.get(mtype)
        if cls is None:
            raise Rejected("type", f"unknown message type {mtype}")
        if version < cls.SINCE:
            raise Rejected("version", f"type {mtype} in protocol version {version}")
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
                max_bin_len=MAX_DATAGRAM,  # compact address runs; the datagram bounds it
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
        msg = from_body(mtype, raw, version)
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
# compact runs: "a" and "d" grow from bin8 (empty) to bin16 (+1 each); "A" and "D",
# absent when empty, may come with their key and a bin16 header (+5 each)
_RUNS_SLACK = 12


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
    empty = replace(template, add=(), remove=())
    if template.compact:  # an address costs its packing; the runs' headers may grow
        room = _room(codec, empty, budget, 0) - _RUNS_SLACK
        size: Callable[[tuple[bool, Address]], int] = lambda t: len(t[1].packed)  # noqa: E731
    else:
        room = _room(codec, empty, budget, 2)
        size = lambda t: _packed_len(t[1].packed)  # noqa: E731
    tagged: list[tuple[bool, Address]] = [(True, a) for a in template.add] + [
        (False, a) for a in template.remove
    ]
    chunks = _chunks(tagged, room, size)
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
