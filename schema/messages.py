"""The control protocol's messages: what vxrd and vxsnd say to each other.

Plain frozen dataclasses, the protocol's limits and the `Rejected` error; the
bytes they travel as (one encode and one decode path) are schema.wire's.
"""

from __future__ import annotations

import ipaddress
import secrets
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import ClassVar, TypeAlias

from vxflood.schema.validate import NODE_ID_MAX, Address, InvalidValue, check_node_id

MAGIC = b"VF"
VERSION = 3  # the newest this code speaks; each message goes out in the version that
MIN_VERSION = 1  # defined its form (`wire_version`), so older peers read all they knew
COMPACT_SINCE = 3  # Membership with its addresses as packed runs (`compact`)
HEADER = struct.Struct("!2sBBB")
DEFAULT_BUDGET = 1400
MAX_DATAGRAM = 9000  # receive limit: jumbo underlays may raise the send budget to this
MAX_PARTS = 4096
MAX_LIST = 4096
MAX_SENDER = NODE_ID_MAX  # sender ids are node ids (schema.validate.check_node_id)
MAX_REGISTRY_ID = 64
U64_MAX = 2**64 - 1
MAX_HOLD_TIME = 65_535

MAX_REASON = 32

Message: TypeAlias = "Register | Membership | Ack | Refusal"


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


@dataclass(frozen=True, slots=True, repr=False)
class Register:
    """vxrd -> vxsnd: the node's full list (all parts of one round), refresh and anti-entropy."""

    TYPE: ClassVar[int] = 1
    SINCE: ClassVar[int] = 1  # the protocol version that defined the type
    env: Envelope
    hold_time: int
    registry: str  # registry id the node last heard from this server ("" if none)
    round: int  # parts of one register share the round number
    part: int
    parts: int
    vnis: tuple[VniEntry, ...]
    # the newest protocol version the sender reads (key "c", version 3 on; 0: not
    # said, a peer from before it, which reads versions 1 and 2)
    max_version: int = 0

    def __repr__(self) -> str:
        return _repr_flagged(self)


_OPTIONAL = frozenset({"learning", "compact", "max_version"})


def _repr_flagged(msg: object) -> str:
    """The dataclass repr, leaving out optional fields that are not set (so the
    repr of every message older peers know stays what it was)."""
    shown = (
        f"{f.name}={getattr(msg, f.name)!r}"
        for f in fields(msg)  # type: ignore[arg-type]
        if f.name not in _OPTIONAL or getattr(msg, f.name)
    )
    return f"{type(msg).__name__}({', '.join(shown)})"


@dataclass(frozen=True, slots=True, repr=False)
class Membership:
    """vxsnd -> vxrd: members of a VNI at a generation, as a snapshot or a delta."""

    TYPE: ClassVar[int] = 2
    SINCE: ClassVar[int] = 1
    env: Envelope
    registry: str
    vni: int
    generation: int
    base: int | None  # None: snapshot (add = all members); else delta from base
    add: tuple[Address, ...]
    remove: tuple[Address, ...]
    part: int = 0
    parts: int = 1
    learning: bool = False  # the server's registry is still filling: only add (key "l")
    # the addresses as packed runs (protocol version 3), for a receiver that said
    # it reads version 3 (Register.max_version); the same members either way
    compact: bool = False

    @property
    def is_snapshot(self) -> bool:
        return self.base is None

    def __repr__(self) -> str:
        return _repr_flagged(self)


@dataclass(frozen=True, slots=True, repr=False)
class Ack:
    """vxrd -> vxsnd: the generations the node has applied."""

    TYPE: ClassVar[int] = 3
    SINCE: ClassVar[int] = 1
    env: Envelope
    registry: str
    applied: tuple[tuple[int, int], ...]  # (vni, generation)
    learning: bool = False  # from vxsnd: its registry is still filling (key "l")

    def __repr__(self) -> str:
        return _repr_flagged(self)


NODE_ID_CONFLICT = "node-id-conflict"


@dataclass(frozen=True, slots=True)
class Refusal:
    """vxsnd -> vxrd (protocol version 2): the register round was refused.

    `reason` "node-id-conflict": another live agent, at `holder` (the source
    address of its registers), holds the node id; its registration runs out in
    `expires_in` seconds unless it refreshes. The refused agent retries; it takes
    the node id over once the holder withdraws or expires."""

    TYPE: ClassVar[int] = 4
    SINCE: ClassVar[int] = 2
    env: Envelope
    registry: str
    reason: str
    holder: ipaddress.IPv4Address | ipaddress.IPv6Address
    expires_in: int


TYPES: dict[int, type[Register | Membership | Ack | Refusal]] = {}  # message type -> class


def _register_type(cls: type[Register] | type[Membership] | type[Ack] | type[Refusal]) -> None:
    if cls.TYPE in TYPES:
        raise ValueError(f"message type {cls.TYPE} registered twice")
    TYPES[cls.TYPE] = cls


for _cls in (Register, Membership, Ack, Refusal):
    _register_type(_cls)


def wire_version(msg: Message) -> int:
    """The version a message is stamped with: the oldest that defined its form."""
    if isinstance(msg, Membership) and msg.compact:
        return COMPACT_SINCE
    return msg.SINCE


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

    def take(self, count: int) -> tuple[int, int]:
        """Sequence numbers for `count` datagrams sent together: the first of them
        and the one send time they share (ms), without building an Envelope each."""
        first = self.seq + 1
        self.seq += count
        return first, int(self._clock() * 1000)

    def many(self) -> Iterable[Envelope]:
        """Endless envelopes for split_*; only the ones consumed use a sequence number."""
        while True:
            yield self.next()
