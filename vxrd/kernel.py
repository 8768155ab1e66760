"""The host agent's kernel layer: the only module that speaks netlink.

Why raw netlink instead of pyroute2 calls: the flood list is written and read
back in bulk (tens of thousands of entries). Messages packed with `struct` on a
plain NETLINK_ROUTE socket are one to two orders of magnitude faster than
pyroute2's fdb()/dump helpers, and a bounded window of requests per send with a
large receive buffer means ACKs are never dropped (pyroute2 can wait forever
when they are). Link messages are parsed here too because pyroute2 0.9.7's
VXLAN attribute map stops before IFLA_VXLAN_VNIFILTER. Namespaces are entered
with libc setns() (Python 3.11 has no os.setns; pyroute2's helper would create
a missing namespace instead of failing).

Two sockets per Kernel, both created inside the requested network namespace:
one for requests and dumps (serialised by a lock, answers matched by sequence
number) and one subscribed to link and neighbour notifications. The event
socket is bound in open(), before the caller's first dump, so no change between
the dump and the first read of events() is lost (bind -> dump -> stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import ipaddress
import os
import socket
import struct
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import NamedTuple

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

# --- netlink constants (linux/netlink.h, rtnetlink.h, neighbour.h, if_link.h) ---
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
SO_RCVBUFFORCE = 33  # not exported by Python's socket module

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NLM_F_CAPPED = 0x100  # on NLMSG_ERROR: original payload not echoed
NLM_F_ACK_TLVS = 0x200  # on NLMSG_ERROR: extended-ack TLVs follow
NLMSGERR_ATTR_MSG = 1

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWNEIGH = 28
RTM_DELNEIGH = 29
RTM_GETNEIGH = 30
RTNLGRP_LINK = 1
RTNLGRP_NEIGH = 3

AF_BRIDGE = 7
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
NDA_DST = 1
NDA_LLADDR = 2
NDA_CACHEINFO = 3
NDA_PORT = 6
NDA_VNI = 7
NDA_IFINDEX = 8

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
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER
CLONE_NEWNET = 0x40000000

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NDMSG = struct.Struct("=BBHiHBB")  # family, pad1, pad2, ifindex, state, flags, type
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_NLATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
# Whole fdb write requests: header + ndmsg + NDA_LLADDR(6 + 2 pad) + NDA_DST.
_FDB4 = struct.Struct("=IHHIIBBHiHBBHH6s2xHH4s")
_FDB6 = struct.Struct("=IHHIIBBHiHBBHH6s2xHH16s")
_ZERO_MAC = bytes(6)
_ADD_FLAGS = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND
_DEL_FLAGS = NLM_F_REQUEST | NLM_F_ACK
_HEAD = struct.Struct("=IH")  # nlmsg len, type
_ACK = struct.Struct("=IHHI4xi")  # len, type, flags, seq, (pid), error
# A flood entry exactly as the kernel dumps ours: header, ndmsg, NDA_LLADDR,
# NDA_DST, then the header of NDA_CACHEINFO (its 16-byte body ends the message).
_FLOOD4 = struct.Struct("=6x10xB3xi2xBxHH6s2xHH4s2xH16x")
_FLOOD6 = struct.Struct("=6x10xB3xi2xBxHH6s2xHH16s2xH16x")
_FLOOD_SHAPE = (AF_BRIDGE, 10, NDA_LLADDR, NDA_DST, NDA_CACHEINFO)

WINDOW = 256  # requests in flight per send; their ACKs fit the receive buffer
RCVBUF = 8 << 20  # request socket: window of ACKs plus 32 KiB dump chunks
EVENT_RCVBUF = 32 << 20  # event socket: absorbs our own bulk writes' notifications
RECV_SIZE = 1 << 16
ADDR_CACHE_MAX = 1 << 20  # interned dump addresses; cleared when full
EVENT_BATCH = 8192  # notifications read (and collapsed) before yielding
ACK_TIMEOUT = 10.0  # seconds without progress before outstanding requests fail


class KernelError(OSError):
    """A netlink request (not a single fdb entry) failed as a whole."""


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


# --- message helpers ------------------------------------------------------------


def _attrs(data: bytes | memoryview, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """Yield (type, value start, value end) of the netlink attributes in data[start:end]."""
    unpack = _NLATTR.unpack_from
    while start + 4 <= end:
        alen, atype = unpack(data, start)
        if alen < 4:
            return
        yield atype & NLA_TYPE_MASK, start + 4, start + alen
        start += (alen + 3) & ~3


def _address(raw: bytes) -> Address | None:
    """Kernel address bytes -> address; None for the unspecified address."""
    # From an int: three times faster than from bytes, which matters in dumps.
    if len(raw) == 4:
        a: Address = ipaddress.IPv4Address(int.from_bytes(raw, "big"))
    elif len(raw) == 16:
        a = ipaddress.IPv6Address(int.from_bytes(raw, "big"))
    else:
        return None
    return None if a.is_unspecified else a


def _parse_link(msg: bytes, off: int, end: int) -> tuple[int, str | None, VxlanDevice | None]:
    """Parse an ifinfomsg at msg[off:end] -> (ifindex, kind, VxlanDevice if VXLAN)."""
    _family, _type, ifindex, ifflags, _change = _IFINFOMSG.unpack_from(msg, off)
    name = ""
    operstate = 0
    kind: str | None = None
    data: tuple[int, int] | None = None
    for atype, s, e in _attrs(msg, off + _IFINFOMSG.size, end):
        if atype == IFLA_IFNAME:
            name = msg[s:e].rstrip(b"\0").decode(errors="replace")
        elif atype == IFLA_OPERSTATE:
            operstate = msg[s]
        elif atype == IFLA_LINKINFO:
            for itype, s2, e2 in _attrs(msg, s, e):
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
        for vtype, s, e in _attrs(msg, data[0], data[1]):
            if vtype == IFLA_VXLAN_ID:
                vni = _U32.unpack_from(msg, s)[0]
            elif vtype in (IFLA_VXLAN_LOCAL, IFLA_VXLAN_LOCAL6):
                local = _address(msg[s:e])
            elif vtype in (IFLA_VXLAN_GROUP, IFLA_VXLAN_GROUP6):
                group = _address(msg[s:e])
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


def _flood_entry(msg: bytes, off: int, end: int) -> tuple[int, bytes] | None:
    """(ifindex, raw dst) if the ndmsg at msg[off:end] is a flood entry as we write them.

    Flood entry: AF_BRIDGE, NTF_SELF, lladdr all-zero, with NDA_DST and no
    per-destination port/VNI/ifindex. Entries with those extras were written by
    someone else for another purpose; a delete by dst alone would not match them.
    """
    family, _p1, _p2, ifindex, _state, flags, _type = _NDMSG.unpack_from(msg, off)
    if family != AF_BRIDGE or not flags & NTF_SELF:
        return None
    dst: bytes | None = None
    zero = False
    pos = off + 12
    unpack = _NLATTR.unpack_from
    while pos + 4 <= end:
        alen, atype = unpack(msg, pos)
        if alen < 4:
            break
        if atype == NDA_LLADDR:
            if msg[pos + 4 : pos + alen] != _ZERO_MAC:
                return None
            zero = True
        elif atype == NDA_DST:
            dst = msg[pos + 4 : pos + alen]
        elif atype in (NDA_PORT, NDA_VNI, NDA_IFINDEX):
            return None
        pos += (alen + 3) & ~3
    if not zero or dst is None:
        return None
    return ifindex, dst


def _iter_messages(buf: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield (type, flags, seq, payload start, message end) for each message in buf."""
    pos = 0
    size = len(buf)
    unpack = _NLMSGHDR.unpack_from
    while pos + 16 <= size:
        mlen, mtype, mflags, seq, _pid = unpack(buf, pos)
        if mlen < 16 or pos + mlen > size:
            return
        yield mtype, mflags, seq, pos + 16, pos + mlen
        pos += (mlen + 3) & ~3


def _error_text(buf: bytes, mflags: int, payload: int, end: int) -> str:
    """The extended-ack message the kernel attached to an NLMSG_ERROR, if any."""
    if not mflags & NLM_F_ACK_TLVS:
        return ""
    tlv = payload + 4 + 16
    if not mflags & NLM_F_CAPPED:
        orig_len = _U32.unpack_from(buf, payload + 4)[0]
        tlv = payload + 4 + ((orig_len + 3) & ~3)
    for atype, s, e in _attrs(buf, tlv, end):
        if atype == NLMSGERR_ATTR_MSG:
            return buf[s:e].rstrip(b"\0").decode(errors="replace")
    return ""


# --- sockets ----------------------------------------------------------------------

_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    """Move the calling thread to the network namespace open at fd."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _netlink_socket(netns: str | None, rcvbuf: int, groups: Iterable[int] = ()) -> socket.socket:
    """A non-blocking NETLINK_ROUTE socket, created inside netns when given.

    A socket stays in the namespace it was created in, so we enter the namespace
    just for socket() and return at once; nothing awaits in between.
    """
    if netns is None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    else:
        path = netns if "/" in netns else f"/run/netns/{netns}"
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            finally:
                _setns(home)
        finally:
            os.close(target)
            os.close(home)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
            sock.setsockopt(SOL_NETLINK, opt, 1)
        sock.bind((0, 0))
        for group in groups:
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Channel:
    """One netlink socket driven by the event loop (add_reader), no threads."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None

    async def readable(self) -> None:
        """Wait until the socket has data (or the channel is closed)."""
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiter = fut

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        fd = self.sock.fileno()
        loop.add_reader(fd, wake)
        try:
            await fut
        finally:
            self._waiter = None
            if not self.closed:
                loop.remove_reader(fd)

    def recv_nowait(self) -> bytes | None:
        """One datagram, or None when nothing is queued. Raises OSError (ENOBUFS)."""
        try:
            return self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return None

    async def recv(self) -> bytes:
        while True:
            if self.closed:
                raise KernelError(errno.EBADF, "netlink socket closed")
            data = self.recv_nowait()
            if data is not None:
                return data
            await self.readable()

    def send(self, data: bytes) -> None:
        """Requests to the kernel are processed synchronously inside send()."""
        self.sock.send(data)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._waiter is not None:
            with contextlib.suppress(RuntimeError):  # no running loop: no reader either
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            if not self._waiter.done():
                self._waiter.set_result(None)
        self.sock.close()


# --- the kernel layer -----------------------------------------------------------------


class Kernel:
    """Discover VXLAN devices, read and write their flood lists, stream changes."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._req: _Channel | None = None
        self._ev: _Channel | None = None
        self._lock = asyncio.Lock()
        self._seq = 0
        self._addr_cache: dict[bytes, Address] = {}

    async def open(self) -> None:
        """Create the sockets; the event socket is bound here, before any dump."""
        if self._req is not None:
            return
        req = _Channel(_netlink_socket(self.netns, RCVBUF))
        try:
            ev = _Channel(_netlink_socket(self.netns, EVENT_RCVBUF, (RTNLGRP_LINK, RTNLGRP_NEIGH)))
        except BaseException:
            req.close()
            raise
        self._req, self._ev = req, ev

    async def close(self) -> None:
        """Close the sockets; a running events() iterator ends."""
        for ch in (self._req, self._ev):
            if ch is not None:
                ch.close()
        self._req = self._ev = None

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

    # -- requests ---------------------------------------------------------------

    def _channel(self) -> _Channel:
        if self._req is None:
            raise KernelError(errno.EBADF, "Kernel is not open")
        return self._req

    def _next_seq(self) -> int:
        return self._seq_block(1)

    async def _dump(self, mtype: int, body: bytes) -> list[bytes]:
        """Run one dump; return the raw datagrams. Retries if the kernel says the
        dump was interrupted by a concurrent change (NLM_F_DUMP_INTR)."""
        ch = self._channel()
        async with self._lock:
            for _attempt in range(3):
                seq = self._next_seq()
                hdr = _NLMSGHDR.pack(16 + len(body), mtype, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
                ch.send(hdr + body)
                chunks: list[bytes] = []
                interrupted = False
                done = False
                while not done:
                    buf = await ch.recv()
                    keep = False
                    for t, fl, s, p, _e in _iter_messages(buf):
                        if s != seq:
                            continue
                        if t == NLMSG_DONE:
                            done = True
                            if fl & NLM_F_DUMP_INTR:
                                interrupted = True
                            break
                        if t == NLMSG_ERROR:
                            code = -_I32.unpack_from(buf, p)[0]
                            raise KernelError(code, f"dump failed: {os.strerror(code)}")
                        keep = True
                        if fl & NLM_F_DUMP_INTR:
                            interrupted = True
                    if keep:
                        chunks.append(buf)
                if not interrupted:
                    return chunks
            return chunks

    async def _request(self, mtype: int, flags: int, body: bytes) -> list[bytes]:
        """One non-dump request; returns the datagrams carrying answers for it."""
        ch = self._channel()
        async with self._lock:
            seq = self._next_seq()
            hdr = _NLMSGHDR.pack(16 + len(body), mtype, NLM_F_REQUEST | flags, seq, 0)
            ch.send(hdr + body)
            out: list[bytes] = []
            while True:
                buf = await ch.recv()
                for t, fl, s, p, e in _iter_messages(buf):
                    if s != seq:
                        continue
                    if t == NLMSG_ERROR:
                        code = -_I32.unpack_from(buf, p)[0]
                        if code:
                            text = _error_text(buf, fl, p, e) or os.strerror(code)
                            raise KernelError(code, text)
                        return out
                    out.append(buf[p - 16 : e])
                    if not flags & NLM_F_ACK:
                        return out

    # -- links -------------------------------------------------------------------

    async def list_vxlan(self) -> list[VxlanDevice]:
        """All VXLAN devices. The dump is filtered by kind in the kernel (strict
        checking) and again here, for kernels that ignore the filter."""
        kind = b"vxlan\0"
        kind_attr = _NLATTR.pack(4 + len(kind), IFLA_INFO_KIND) + kind + b"\0\0"
        linkinfo = _NLATTR.pack(4 + len(kind_attr), IFLA_LINKINFO) + kind_attr
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + linkinfo
        devices: list[VxlanDevice] = []
        for buf in await self._dump(RTM_GETLINK, body):
            for t, _fl, _s, p, e in _iter_messages(buf):
                if t == RTM_NEWLINK:
                    dev = _parse_link(buf, p, e)[2]
                    if dev is not None:
                        devices.append(dev)
        return devices

    async def get_vxlan(self, ifindex: int) -> VxlanDevice | None:
        """The VXLAN device with this ifindex, or None if absent or not VXLAN."""
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0)
        try:
            msgs = await self._request(RTM_GETLINK, 0, body)
        except KernelError as exc:
            if exc.errno in (errno.ENODEV, errno.EINVAL):
                return None
            raise
        for m in msgs:
            if _NLMSGHDR.unpack_from(m)[1] == RTM_NEWLINK:
                return _parse_link(m, 16, len(m))[2]
        return None

    # -- flood entries ----------------------------------------------------------------

    def _intern(self, raw: bytes) -> Address | None:
        """Address objects are costly to build; a dump repeats the same peers."""
        a = self._addr_cache.get(raw)
        if a is None:
            a = _address(raw)
            if a is not None:
                if len(self._addr_cache) >= ADDR_CACHE_MAX:
                    self._addr_cache.clear()
                self._addr_cache[raw] = a
        return a

    async def flood_entries(self) -> dict[int, set[Address]]:
        """All flood destinations per ifindex, from one AF_BRIDGE fdb dump.

        The kernel fills the dump; selecting the flood entries is one pass over
        the raw bytes. A flood entry as we write it is dumped with a fixed
        layout (lladdr, dst, cacheinfo), so one unpack decides it; anything of
        another size or layout takes the general attribute walk.
        """
        body = _NDMSG.pack(AF_BRIDGE, 0, 0, 0, 0, 0, 0)
        out: dict[int, set[Address]] = {}
        head = _HEAD.unpack_from
        fixed = {_FLOOD4.size: _FLOOD4.unpack_from, _FLOOD6.size: _FLOOD6.unpack_from}
        cache = self._addr_cache
        for buf in await self._dump(RTM_GETNEIGH, body):
            pos, size = 0, len(buf)
            while pos + 16 <= size:
                mlen, mtype = head(buf, pos)
                if mlen < 16:
                    break
                if mtype == RTM_NEWNEIGH:
                    hit: tuple[int, bytes] | None = None
                    unpack = fixed.get(mlen)
                    if unpack is not None:
                        fam, ifindex, fl, llen, lt, mac, dlen, dt, raw, ct = unpack(buf, pos)
                        if (fam, llen, lt, dt, ct) != _FLOOD_SHAPE or dlen != mlen - 60:
                            hit = _flood_entry(buf, pos + 16, pos + mlen)
                        elif fl & NTF_SELF and mac == _ZERO_MAC:
                            hit = ifindex, raw
                    elif mlen >= 40:
                        hit = _flood_entry(buf, pos + 16, pos + mlen)
                    if hit is not None:
                        addr = cache.get(hit[1]) or self._intern(hit[1])
                        if addr is not None:
                            entries = out.get(hit[0])
                            if entries is None:
                                entries = out[hit[0]] = set()
                            entries.add(addr)
                pos += (mlen + 3) & ~3
        return out

    async def apply(self, changes: Mapping[int, FloodDiff]) -> ApplyResult:
        """Write flood-list changes, WINDOW requests per send.

        Each request carries NLM_F_ACK; the kernel handles a whole send before
        send() returns, so after a window its ACKs are all queued and are read
        before the next window goes out: the receive buffer never overflows.
        Only devices that are VXLAN right now are written: the generic fdb
        handler of other Ethernet devices would accept an all-zero lladdr and
        install it as a secondary unicast MAC. Removes go before adds. Per-entry
        failures are collected, never raised.
        """
        errors: list[ApplyError] = []
        vxlan = {d.ifindex for d in await self.list_vxlan()}
        work: list[tuple[int, int, Address]] = []
        for ifindex, diff in changes.items():
            if ifindex not in vxlan:
                for a in sorted(diff.remove | diff.add, key=str):
                    errors.append(ApplyError(ifindex, a, errno.ENODEV, "not a VXLAN device"))
                continue
            work.extend((RTM_DELNEIGH, ifindex, a) for a in diff.remove)
        for ifindex, diff in changes.items():
            if ifindex in vxlan:
                work.extend((RTM_NEWNEIGH, ifindex, a) for a in diff.add)
        added = removed = 0
        ch = self._channel()
        cache = self._addr_cache
        if len(cache) + len(work) > ADDR_CACHE_MAX:
            cache.clear()
        async with self._lock:
            for start in range(0, len(work), WINDOW):
                window = work[start : start + WINDOW]
                base = self._seq_block(len(window))
                out = bytearray()
                for k, (op, ifindex, addr) in enumerate(window):
                    raw = addr.packed
                    cache.setdefault(raw, addr)  # the next dump will meet it again
                    packer = _FDB4 if len(raw) == 4 else _FDB6
                    out += packer.pack(
                        packer.size, op, _ADD_FLAGS if op == RTM_NEWNEIGH else _DEL_FLAGS,
                        base + k, 0,
                        AF_BRIDGE, 0, 0, ifindex, NUD_PERMANENT, NTF_SELF, 0,
                        10, NDA_LLADDR, _ZERO_MAC,
                        4 + len(raw), NDA_DST, raw,
                    )  # fmt: skip
                ch.send(bytes(out))
                codes, texts = await self._collect_acks(ch, base, len(window))
                for k, code in enumerate(codes):
                    op, ifindex, addr = window[k]
                    if code == errno.ENOENT and op == RTM_DELNEIGH:
                        code = 0  # no flood entry at all on the device: already absent
                    if code == 0:
                        if op == RTM_NEWNEIGH:
                            added += 1
                        else:
                            removed += 1
                    elif code is None:
                        errors.append(
                            ApplyError(ifindex, addr, errno.ETIMEDOUT, "no ACK from the kernel")
                        )
                    else:
                        text = texts.get(k) or os.strerror(code)
                        errors.append(ApplyError(ifindex, addr, code, text))
        return ApplyResult(added=added, removed=removed, errors=errors)

    def _seq_block(self, count: int) -> int:
        """Reserve count consecutive sequence numbers; ACKs map back by offset."""
        if self._seq + count >= 0xFFFFFFFF:
            self._seq = 0
        base = self._seq + 1
        self._seq += count
        return base

    async def _collect_acks(
        self, ch: _Channel, base: int, count: int
    ) -> tuple[list[int | None], dict[int, str]]:
        """Read ACKs for sequence numbers base..base+count-1.

        Returns the errno per request (0 = done, None = no ACK came) and the
        kernel's extended-ack text for failures. A lost ACK (ENOBUFS; the window
        prevents it) or a silent kernel ends in None instead of a hang.
        """
        codes: list[int | None] = [None] * count
        texts: dict[int, str] = {}
        missing = count
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ACK_TIMEOUT
        ack = _ACK.unpack_from
        while missing:
            try:
                buf = ch.recv_nowait()
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                buf = None
                deadline = min(deadline, loop.time() + 0.2)
            if buf is None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        await ch.readable()
                except TimeoutError:
                    break
                continue
            pos, size = 0, len(buf)
            while pos + _ACK.size <= size:
                mlen, mtype, mflags, seq, err = ack(buf, pos)
                if mlen < 16:
                    break
                k = seq - base
                if mtype == NLMSG_ERROR and 0 <= k < count and codes[k] is None:
                    codes[k] = -err
                    missing -= 1
                    if err:
                        texts[k] = _error_text(buf, mflags, pos + 16, pos + mlen)
                pos += (mlen + 3) & ~3
        return codes, texts

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
    for t, _fl, _s, p, e in _iter_messages(buf):
        if t in (RTM_NEWLINK, RTM_DELLINK):
            ifindex, kind, _dev = _parse_link(buf, p, e)
            if kind == "vxlan":
                yield LinkChanged(ifindex) if t == RTM_NEWLINK else LinkRemoved(ifindex)
        elif t in (RTM_NEWNEIGH, RTM_DELNEIGH):
            hit = _flood_entry(buf, p, e)
            if hit is not None:
                yield FdbChanged(hit[0])
        elif t == NLMSG_OVERRUN:
            yield Resync("netlink overrun")
