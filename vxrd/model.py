"""The data vxrd's layers hand each other, and the kernel they drive (pure: no I/O).

Defined here, below every module that uses them: the netlink layers
(floodnl, kernel) produce and consume these types, the pure cores (mirror,
reconcile, planner) reason about them, and the agent drives a `KernelPort`
(vxrd.kernel.Kernel on a real host, a fake in unit tests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from vxflood.schema.validate import Address

__all__ = [
    "Address",
    "ApplyError",
    "ApplyResult",
    "FdbChanged",
    "FdbListener",
    "FloodChange",
    "FloodDiff",
    "KernelEvent",
    "KernelPort",
    "LinkChanged",
    "LinkRemoved",
    "Resync",
    "VxlanDevice",
]


class FloodChange(NamedTuple):
    """One flood destination appeared (present=True) or went away on one device."""

    ifindex: int
    address: Address
    present: bool


@dataclass(frozen=True, slots=True)
class FloodDiff:
    """Destinations to append to and delete from one device's all-zero fdb entry."""

    add: frozenset[Address] = frozenset()
    remove: frozenset[Address] = frozenset()

    @property
    def empty(self) -> bool:
        """True when the kernel already matches: nothing to send."""
        return not self.add and not self.remove


@dataclass(frozen=True, slots=True)
class VxlanDevice:
    """One VXLAN netdevice as the kernel reports it.

    `group` is IFLA_VXLAN_GROUP/GROUP6: a multicast group, or the unicast
    `remote` of a point-to-point device. Either way the device already has a
    default destination (and an all-zero fdb entry for it) and is not ours.
    """

    ifindex: int
    name: str
    vni: int | None  # None for external (collect-metadata) devices
    local: Address | None
    port: int
    group: Address | None
    up: bool
    external: bool
    vnifilter: bool


class ApplyError(NamedTuple):
    """One fdb request the kernel refused (errno), or whose ACK never came."""

    ifindex: int
    address: Address
    errno: int
    message: str


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """Counts are requests that succeeded, not entries that changed: appending a
    present dst and deleting an absent one both succeed silently (a delete on a
    device with no flood entry at all, ENOENT, counts as done too). Read back
    with `flood_entries()` when the truth matters."""

    added: int = 0
    removed: int = 0
    errors: list[ApplyError] = field(default_factory=list)


@dataclass(frozen=True)
class LinkChanged:
    """A VXLAN device appeared or changed: `device` as the notification describes
    it, or None when the notification lacked attributes needed for it (the
    caller then re-reads the device with get_vxlan)."""

    ifindex: int
    device: VxlanDevice | None = None


@dataclass(frozen=True)
class LinkRemoved:
    """A VXLAN device was deleted."""

    ifindex: int


@dataclass(frozen=True)
class FdbChanged:
    """Flood destinations (all-zero fdb entries) that appeared or went away, in
    kernel order; repeats of one (device, destination) collapsed into the last."""

    changes: tuple[FloodChange, ...]


@dataclass(frozen=True)
class Resync:
    """Notifications were lost (ENOBUFS): the caller must rescan everything."""

    reason: str


KernelEvent = LinkChanged | LinkRemoved | FdbChanged | Resync
FdbListener = Callable[[FdbChanged | Resync], None]


class KernelPort(Protocol):
    """What the agent needs from the kernel: the seam its unit tests fake."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def list_vxlan(self) -> list[VxlanDevice]: ...

    async def get_vxlan(self, ifindex: int) -> VxlanDevice | None: ...

    async def flood_entries(self, ifindex: int | None = None) -> dict[int, set[Address]]: ...

    async def apply(self, changes: Mapping[int, FloodDiff]) -> ApplyResult: ...

    def apply_now(self, changes: Mapping[int, FloodDiff]) -> ApplyResult | None:
        """Write without waiting, or None (nothing written) when that would wait."""
        ...

    def read_fdb(self) -> list[FdbChanged | Resync]:
        """The flood-entry events queued now (the echo of a write just made),
        returned to the caller instead of handed to the events() listener."""
        ...

    def events(self, on_fdb: FdbListener | None = None) -> AsyncIterator[KernelEvent]: ...
