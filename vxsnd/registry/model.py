"""The registry's write model: what one transaction writes, and what it changed.

Plain data with validation, no SQL (this module imports no SQLAlchemy): the
protocol engine and the REST API build a `Batch`, `vxsnd.registry.writer`
writes it, `BatchResult` says what changed. Addresses are canonical text
(`ipaddress` form) from here on.

Expiry is decided here and only here: `expiry(now, hold_time)` is when a
registration or a static entry runs out, and `is_expired` is the one rule
(`expires_at <= now`) that the writer's SQL applies to its columns.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, overload

from vxflood.schema.limits import DESCRIPTION_MAX, NODE_ID_MAX
from vxflood.schema.validate import check_vni, check_vtep

__all__ = [
    "Ack",
    "Batch",
    "BatchResult",
    "Key",
    "NodeOp",
    "Refresh",
    "Registration",
    "StaticVtep",
    "VniChange",
    "Withdrawal",
    "expiry",
    "is_expired",
]

_MAX_INCARNATION: Final = 2**63 - 1

Key = tuple[int, str]  # (VNI, canonical VTEP address)


def replay_mark(value: int) -> int:
    """A sequence number or timestamp as the registry keeps it: BIGINT (a forged u64
    must not make the write fail; clamping only makes the guard stricter)."""
    return min(max(int(value), 0), _MAX_INCARNATION)


@overload
def expiry(now: float, hold_time: float) -> float: ...
@overload
def expiry(now: float, hold_time: None) -> None: ...
def expiry(now: float, hold_time: float | None) -> float | None:
    """When something refreshed (or enrolled) at `now` with `hold_time` runs out.

    None (never) for a static entry enrolled without a hold time."""
    return None if hold_time is None else now + hold_time


def is_expired(expires_at: float | None, now: float) -> bool:
    """The expiry rule; the writer's sweep is the same comparison in SQL."""
    return expires_at is not None and expires_at <= now


@dataclass(frozen=True, slots=True)
class Holder:
    """The live registration a node id has: who a conflicting claim is refused for."""

    incarnation: int
    address: str  # the source address of its registers
    expires_at: float


def conflicts(holder: Holder, incarnation: int, address: str, now: float) -> bool:
    """The node-id conflict rule (issue 10), for the core's memory and the writer alike:
    another process (incarnation) from another place, while the holder is live. A new
    incarnation from the holder's address is a restart and takes the id over; so does
    anyone once the holder has expired or withdrawn."""
    return (
        holder.incarnation != incarnation
        and holder.address != address
        and not is_expired(holder.expires_at, now)
    )


def _vtep(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Canonical text of a VTEP address (raises schema.validate.InvalidValue)."""
    if isinstance(address, str):
        try:
            address = ipaddress.ip_address(address.strip())
        except ValueError:
            raise ValueError(f"{address!r} is not an IPv4 or IPv6 address") from None
    return str(check_vtep(address))


def _node_id(node_id: str) -> str:
    if not node_id or len(node_id) > NODE_ID_MAX:
        raise ValueError(f"node id must be 1..{NODE_ID_MAX} characters, got {node_id!r}")
    return node_id


def _hold(hold_time: float) -> float:
    hold = float(hold_time)
    if hold != hold or hold in (float("inf"), float("-inf")):
        raise ValueError(f"hold time must be a finite number, got {hold_time!r}")
    return hold


@dataclass(frozen=True, slots=True)
class Registration:
    """A node's full state, from a register message.

    `vnis` maps every VNI the node serves to its local VTEP address; VNIs it
    no longer lists are withdrawn. `applied` maps VNIs to the generation the
    node reports as applied (VNIs not in it keep their recorded value, new
    ones start at 0). `hold_time` <= 0 withdraws the node.
    """

    node_id: str
    incarnation: int
    address: str  # where the node registered from: where pushes go
    port: int
    hold_time: float
    vnis: Mapping[int, str]
    applied: Mapping[int, int] = field(default_factory=dict)
    seq: int = 0  # the round's envelope (replay marks kept with the node)
    sent_ms: int = 0

    def canonical(self) -> Registration:
        """Validated copy with canonical addresses (raises ValueError)."""
        if not 0 <= self.incarnation <= _MAX_INCARNATION:
            raise ValueError(f"incarnation {self.incarnation} does not fit 63 bits")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} out of range")
        return Registration(
            node_id=_node_id(self.node_id),
            incarnation=self.incarnation,
            address=str(ipaddress.ip_address(self.address)),
            port=self.port,
            hold_time=_hold(self.hold_time),
            vnis={check_vni(v): _vtep(a) for v, a in self.vnis.items()},
            applied={check_vni(v): int(g) for v, g in self.applied.items()},
            seq=replay_mark(self.seq),
            sent_ms=replay_mark(self.sent_ms),
        )


@dataclass(frozen=True, slots=True)
class Refresh:
    """A register that changes nothing: the node's expiry moves to `expiry(now, hold_time)`
    with the `now` of the transaction (cheap path)."""

    node_id: str
    hold_time: float
    seq: int = 0  # the round's envelope, as in Registration
    sent_ms: int = 0


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """The node leaves: its node row, claims and members go. With `incarnation`, only
    if that incarnation is the one registered (a withdrawal is the owner's alone)."""

    node_id: str
    incarnation: int | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    node_id: str
    vni: int
    generation: int


@dataclass(frozen=True, slots=True)
class StaticVtep:
    """A VTEP enrolled by an operator; `hold_time` None means it never expires."""

    vni: int
    address: str
    hold_time: float | None = None
    description: str | None = None

    def canonical(self) -> StaticVtep:
        if self.description is not None and len(self.description) > DESCRIPTION_MAX:
            raise ValueError(f"description longer than {DESCRIPTION_MAX} characters")
        hold = None if self.hold_time is None else _hold(self.hold_time)
        return StaticVtep(check_vni(self.vni), _vtep(self.address), hold, self.description)


NodeOp = Registration | Refresh | Withdrawal


class Batch:
    """Writes collected for one transaction (see `vxsnd.registry.writer.apply_batch`).

    Per node the last operation wins (a register or a withdrawal is the whole
    state of the node), except that a refresh never downgrades a pending
    register or withdrawal. Acks keep the highest generation per (node, VNI).
    Static operations are keyed by (VNI, address), last wins; `replace_static`
    discards the static operations queued before it.

    Applied in this order: static replace, static enrol/remove, withdrawals,
    registrations, refreshes, acks, expiry sweep.
    """

    __slots__ = ("acks", "node_ops", "static_ops", "static_replace", "sweep")

    def __init__(self) -> None:
        self.node_ops: dict[str, NodeOp] = {}
        self.acks: dict[tuple[str, int], int] = {}
        self.static_replace: list[StaticVtep] | None = None
        self.static_ops: dict[Key, StaticVtep | None] = {}  # None: remove
        self.sweep = False

    def __bool__(self) -> bool:
        return bool(self.node_ops or self.acks or self.static_ops or self.sweep) or (
            self.static_replace is not None
        )

    def __len__(self) -> int:
        replace = 0 if self.static_replace is None else 1
        return len(self.node_ops) + len(self.acks) + len(self.static_ops) + replace

    def register(self, registration: Registration) -> None:
        reg = registration.canonical()
        self.node_ops[reg.node_id] = reg

    def refresh(self, node_id: str, *, hold_time: float, seq: int = 0, sent_ms: int = 0) -> None:
        """Extend the node's expiry by `hold_time` from the transaction's `now`."""
        if not isinstance(self.node_ops.get(node_id), Registration | Withdrawal):
            self.node_ops[_node_id(node_id)] = Refresh(
                node_id, _hold(hold_time), replay_mark(seq), replay_mark(sent_ms)
            )

    def withdraw(self, node_id: str, incarnation: int | None = None) -> None:
        self.node_ops[_node_id(node_id)] = Withdrawal(node_id, incarnation)

    def ack(self, node_id: str, vni: int, generation: int) -> None:
        key = (_node_id(node_id), check_vni(vni))
        self.acks[key] = max(generation, self.acks.get(key, generation))

    def enrol_static(self, vtep: StaticVtep) -> None:
        vtep = vtep.canonical()
        self.static_ops[(vtep.vni, vtep.address)] = vtep

    def remove_static(self, vni: int, address: str) -> None:
        self.static_ops[(check_vni(vni), _vtep(address))] = None

    def replace_static(self, vteps: Iterable[StaticVtep]) -> None:
        """After this batch the static VTEPs are exactly `vteps` (plus later ops)."""
        self.static_replace = [v.canonical() for v in vteps]
        self.static_ops.clear()

    def expire(self) -> None:
        """Also sweep: whatever `is_expired` at the transaction's `now` goes."""
        self.sweep = True


@dataclass(frozen=True, slots=True)
class VniChange:
    """A VNI whose membership changed in a batch: its new generation and net change."""

    vni: int
    generation: int
    added: frozenset[str]
    removed: frozenset[str]


@dataclass(frozen=True, slots=True)
class BatchResult:
    changed: Mapping[int, VniChange]  # VNI -> change; each bumped exactly once
    registered: frozenset[str]  # new nodes and new incarnations (agent restarts)
    withdrawn: frozenset[str]  # withdrawals and hold_time 0 registrations of known nodes
    expired: frozenset[str]  # nodes removed by the sweep
    unknown: frozenset[str]  # refreshed or acked node ids that are not registered
    missing_static: frozenset[Key]  # remove_static for entries that are not static members
    not_owner: frozenset[str] = frozenset()  # withdrawals by another incarnation: refused
    # registrations refused because another live agent holds the node id (`conflicts`)
    conflicts: Mapping[str, Holder] = field(default_factory=dict)

    @property
    def generations(self) -> dict[int, int]:
        return {vni: c.generation for vni, c in self.changed.items()}
