"""The host agent's kernel layer: VXLAN discovery, flood lists, change events.

The hand-packed netlink for the flood entries (the measured hot path) lives in
vxrd.floodnl. Link messages are parsed here because pyroute2 0.9.7's VXLAN
attribute map stops before IFLA_VXLAN_VNIFILTER.

Sockets per Kernel, all created inside the requested network namespace: one
for requests and dumps (vxrd.floodnl.FloodNetlink) and one subscribed to link
and neighbour notifications. The event socket is bound in open(), before the
caller's first dump, so no change between the dump and the first read of
events() is lost (bind -> dump -> stream).
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import NamedTuple

from vxrd import floodnl
from vxrd.floodnl import (
    NLMSG_OVERRUN,
    RTM_DELNEIGH,
    RTM_NEWNEIGH,
    RTNLGRP_NEIGH,
    Channel,
    FloodOp,
    KernelError,
    address,
    attrs,
    flood_entry,
    iter_messages,
    netlink_socket,
)
from vxrd.reconcile import Address, FloodDiff

__all__ = [
    "Address",
    "ApplyError",
    "ApplyResult",
    "FdbChanged",
    "FloodDiff",
    "Kernel",
    "KernelError",
    "KernelEvent",
    "LinkChanged",
    "LinkRemoved",
    "Resync",
    "VxlanDevice",
]

# --- link constants (linux/rtnetlink.h, if_link.h) ---
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTNLGRP_LINK = 1
IFF_UP = 0x1
IFLA_IFNAME = 3
IFLA_OPERSTATE = 16
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IF_OPER_DOWN = 2
IF_OPER_LOWERLAYERDOWN = 5
IFLA_VXLAN_ID = 1
IFLA_VXLAN_GROUP = 2
IFLA_VXLAN_LOCAL = 4
IFLA_VXLAN_PORT = 15
IFLA_VXLAN_GROUP6 = 16
IFLA_VXLAN_LOCAL6 = 17
IFLA_VXLAN_COLLECT_METADATA = 25
IFLA_VXLAN_VNIFILTER = 30

_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_NLATTR = struct.Struct("=HH")
_NLMSGHDR = struct.Struct("=IHHII")
_U32 = struct.Struct("=I")

EVENT_RCVBUF = 32 << 20  # event socket: absorbs our own bulk writes' notifications
EVENT_BATCH = 8192  # notifications read (and collapsed) before yielding


# --- data --------------------------------------------------------------------


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
    with `Kernel.flood_entries()` when the truth matters."""

    added: int = 0
    removed: int = 0
    errors: list[ApplyError] = field(default_factory=list)


@dataclass(frozen=True)
class LinkChanged:
    """A VXLAN device appeared or changed; the caller re-reads it."""

    ifindex: int


@dataclass(frozen=True)
class LinkRemoved:
    """A VXLAN device was deleted."""

    ifindex: int


@dataclass(frozen=True)
class FdbChanged:
    """An all-zero (flood) fdb entry changed on this device."""

    ifindex: int


@dataclass(frozen=True)
class Resync:
    """Notifications were lost (ENOBUFS): the caller must rescan everything."""

    reason: str


KernelEvent = LinkChanged | LinkRemoved | FdbChanged | Resync


# --- link messages ----------------------------------------------------------------


def _parse_link(msg: bytes, off: int, end: int) -> tuple[int, str | None, VxlanDevice | None]:
    """Parse an ifinfomsg at msg[off:end] -> (ifindex, kind, VxlanDevice if VXLAN)."""
    _family, _type, ifindex, ifflags, _change = _IFINFOMSG.unpack_from(msg, off)
    name = ""
    operstate = 0
    kind: str | None = None
    data: tuple[int, int] | None = None
    for atype, s, e in attrs(msg, off + _IFINFOMSG.size, end):
        if atype == IFLA_IFNAME:
            name = msg[s:e].rstrip(b"\0").decode(errors="replace")
        elif atype == IFLA_OPERSTATE:
            operstate = msg[s]
        elif atype == IFLA_LINKINFO:
            for itype, s2, e2 in attrs(msg, s, e):
                if itype == IFLA_INFO_KIND:
                    kind = msg[s2:e2].rstrip(b"\0").decode(errors="replace")
                elif itype == IFLA_INFO_DATA:
                    data = (s2, e2)
    if kind != "vxlan":
        return ifindex, kind, None
    vni: int | None = None
    local: Address | None = None
    group: Address | None = None
    port = 4789
    external = vnifilter = False
    if data is not None:
        for vtype, s, e in attrs(msg, data[0], data[1]):
            if vtype == IFLA_VXLAN_ID:
                vni = _U32.unpack_from(msg, s)[0]
            elif vtype in (IFLA_VXLAN_LOCAL, IFLA_VXLAN_LOCAL6):
                local = address(msg[s:e])
            elif vtype in (IFLA_VXLAN_GROUP, IFLA_VXLAN_GROUP6):
                group = address(msg[s:e])
            elif vtype == IFLA_VXLAN_PORT:
                port = int.from_bytes(msg[s:e], "big")
            elif vtype == IFLA_VXLAN_COLLECT_METADATA:
                external = bool(msg[s])
            elif vtype == IFLA_VXLAN_VNIFILTER:
                vnifilter = bool(msg[s])
    up = bool(ifflags & IFF_UP) and operstate not in (IF_OPER_DOWN, IF_OPER_LOWERLAYERDOWN)
    dev = VxlanDevice(
        ifindex=ifindex,
        name=name,
        vni=None if external else vni,
        local=local,
        port=port,
        group=group,
        up=up,
        external=external,
        vnifilter=vnifilter,
    )
    return ifindex, kind, dev


# --- the kernel layer -----------------------------------------------------------------


class Kernel:
    """Discover VXLAN devices, read and write their flood lists, stream changes."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._nl = floodnl.FloodNetlink(netns)
        self._ev: Channel | None = None

    async def open(self) -> None:
        """Create the sockets; the event socket is bound here, before any dump."""
        if self._ev is not None:
            return
        self._nl.open()
        try:
            groups = (RTNLGRP_LINK, RTNLGRP_NEIGH)
            self._ev = Channel(netlink_socket(self.netns, EVENT_RCVBUF, groups))
        except BaseException:
            self._nl.close()
            raise

    async def close(self) -> None:
        """Close the sockets; a running events() iterator ends."""
        self._nl.close()
        if self._ev is not None:
            self._ev.close()
        self._ev = None

    async def __aenter__(self) -> Kernel:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- links -------------------------------------------------------------------

    async def list_vxlan(self) -> list[VxlanDevice]:
        """All VXLAN devices. The dump is filtered by kind in the kernel (strict
        checking) and again here, for kernels that ignore the filter."""
        kind = b"vxlan\0"
        kind_attr = _NLATTR.pack(4 + len(kind), IFLA_INFO_KIND) + kind + b"\0\0"
        linkinfo = _NLATTR.pack(4 + len(kind_attr), IFLA_LINKINFO) + kind_attr
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + linkinfo
        devices: list[VxlanDevice] = []
        for buf in await self._nl.dump(RTM_GETLINK, body):
            for t, _fl, _s, p, e in iter_messages(buf):
                if t == RTM_NEWLINK:
                    dev = _parse_link(buf, p, e)[2]
                    if dev is not None:
                        devices.append(dev)
        return devices

    async def get_vxlan(self, ifindex: int) -> VxlanDevice | None:
        """The VXLAN device with this ifindex, or None if absent or not VXLAN."""
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0)
        try:
            msgs = await self._nl.request(RTM_GETLINK, 0, body)
        except KernelError as exc:
            if exc.errno in (errno.ENODEV, errno.EINVAL):
                return None
            raise
        for m in msgs:
            if _NLMSGHDR.unpack_from(m)[1] == RTM_NEWLINK:
                return _parse_link(m, 16, len(m))[2]
        return None

    # -- flood entries ----------------------------------------------------------------

    async def flood_entries(self) -> dict[int, set[Address]]:
        """All flood destinations per ifindex, from one AF_BRIDGE fdb dump (raw: floodnl)."""
        return await self._nl.flood_entries()

    async def apply(self, changes: Mapping[int, FloodDiff]) -> ApplyResult:
        """Write flood-list changes (raw, windowed: floodnl.FloodNetlink.write).

        Only devices that are VXLAN right now are written: the generic fdb
        handler of other Ethernet devices would accept an all-zero lladdr and
        install it as a secondary unicast MAC. Removes go before adds. Per-entry
        failures are collected, never raised.
        """
        errors: list[ApplyError] = []
        vxlan = {d.ifindex for d in await self.list_vxlan()}
        ops: list[FloodOp] = []
        for ifindex, diff in changes.items():
            if ifindex not in vxlan:
                for a in sorted(diff.remove | diff.add, key=str):
                    errors.append(ApplyError(ifindex, a, errno.ENODEV, "not a VXLAN device"))
                continue
            ops.extend(FloodOp(False, ifindex, a) for a in diff.remove)
        for ifindex, diff in changes.items():
            if ifindex in vxlan:
                ops.extend(FloodOp(True, ifindex, a) for a in diff.add)
        added = removed = 0
        for op, (code, text) in zip(ops, await self._nl.write(ops), strict=True):
            if code:
                errors.append(ApplyError(op.ifindex, op.address, code, text))
            elif op.add:
                added += 1
            else:
                removed += 1
        return ApplyResult(added=added, removed=removed, errors=errors)

    # -- events ------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[KernelEvent]:
        """Link and flood-entry changes, in kernel order, until close().

        Everything already queued is read at once and repeats collapse: a bulk
        write of 10k entries on one device becomes a few FdbChanged, not 10k.
        On ENOBUFS notifications were lost: yield Resync and carry on.
        """
        if self._ev is None:
            raise KernelError(errno.EBADF, "Kernel is not open")
        ch = self._ev
        while not ch.closed:
            batch: list[KernelEvent] = []
            last: dict[int, KernelEvent] = {}
            for _ in range(EVENT_BATCH):
                try:
                    buf = ch.recv_nowait()
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    batch.append(Resync("netlink event overflow (ENOBUFS)"))
                    last.clear()
                    continue
                if buf is None:
                    break
                for event in _events_in(buf):
                    key = getattr(event, "ifindex", -1)
                    if last.get(key) != event:
                        last[key] = event
                        batch.append(event)
            for event in batch:
                yield event
            if not batch:
                await ch.readable()


def _events_in(buf: bytes) -> Iterator[KernelEvent]:
    """Translate notifications; only VXLAN links and flood entries matter."""
    for t, _fl, _s, p, e in iter_messages(buf):
        if t in (RTM_NEWLINK, RTM_DELLINK):
            ifindex, kind, _dev = _parse_link(buf, p, e)
            if kind == "vxlan":
                yield LinkChanged(ifindex) if t == RTM_NEWLINK else LinkRemoved(ifindex)
        elif t in (RTM_NEWNEIGH, RTM_DELNEIGH):
            hit = flood_entry(buf, p, e)
            if hit is not None:
                yield FdbChanged(hit[0])
        elif t == NLMSG_OVERRUN:
            yield Resync("netlink overrun")
