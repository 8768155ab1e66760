"""Hand-packed netlink for the flood list: the hot path vxrd.kernel cannot give to pyroute2.

vxrd.kernel discovers and watches VXLAN devices with pyroute2. This module does
only what was measured too slow there (kernel 6.18, pyroute2 0.9.7): writing,
deleting and dumping the all-zero (flood) fdb entries, and noticing when they
change. pyroute2's fdb() writes about 4-10k entries/s and its dump of 10,000
entries takes about 1 s (each entry is parsed into Python objects and filtered
in Python); messages packed with `struct` on a plain AF_NETLINK socket go at
250k entries/s and more, and reading the flood entries out of the raw dump
takes about 15 ms. pyroute2 can also wait forever for ACKs the kernel dropped
when more than a few hundred requests are in flight; here a bounded window of
requests per send, with a receive buffer that holds all their ACKs, means no
ACK is ever dropped, and a silent kernel ends in a timeout, not a hang.

Namespaces are entered with libc setns() just for socket() (Python 3.11 has
no os.setns).
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
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from vxrd.reconcile import Address

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
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NLM_F_CAPPED = 0x100  # on NLMSG_ERROR: original payload not echoed
NLM_F_ACK_TLVS = 0x200  # on NLMSG_ERROR: extended-ack TLVs follow
NLMSGERR_ATTR_MSG = 1

RTM_NEWNEIGH = 28
RTM_DELNEIGH = 29
RTM_GETNEIGH = 30
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
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER
CLONE_NEWNET = 0x40000000

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NDMSG = struct.Struct("=BBHiHBB")  # family, pad1, pad2, ifindex, state, flags, type
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
RECV_SIZE = 1 << 16
ADDR_CACHE_MAX = 1 << 20  # interned dump addresses; cleared when full
ACK_TIMEOUT = 10.0  # seconds without progress before outstanding requests fail


class KernelError(OSError):
    """A netlink request (not a single fdb entry) failed as a whole."""


class FloodOp(NamedTuple):
    """One flood-list write: append (add=True) or delete one destination."""

    add: bool
    ifindex: int
    address: Address


# --- message helpers ------------------------------------------------------------


def attrs(data: bytes | memoryview, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """Yield (type, value start, value end) of the netlink attributes in data[start:end]."""
    unpack = _NLATTR.unpack_from
    while start + 4 <= end:
        alen, atype = unpack(data, start)
        if alen < 4:
            return
        yield atype & NLA_TYPE_MASK, start + 4, start + alen
        start += (alen + 3) & ~3


def address(raw: bytes) -> Address | None:
    """Kernel address bytes -> address; None for the unspecified address."""
    # From an int: three times faster than from bytes, which matters in dumps.
    if len(raw) == 4:
        a: Address = ipaddress.IPv4Address(int.from_bytes(raw, "big"))
    elif len(raw) == 16:
        a = ipaddress.IPv6Address(int.from_bytes(raw, "big"))
    else:
        return None
    return None if a.is_unspecified else a


def flood_entry(msg: bytes, off: int, end: int) -> tuple[int, bytes] | None:
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


def iter_messages(buf: bytes) -> Iterator[tuple[int, int, int, int, int]]:
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


def error_text(buf: bytes, mflags: int, payload: int, end: int) -> str:
    """The extended-ack message the kernel attached to an NLMSG_ERROR, if any."""
    if not mflags & NLM_F_ACK_TLVS:
        return ""
    tlv = payload + 4 + 16
    if not mflags & NLM_F_CAPPED:
        orig_len = _U32.unpack_from(buf, payload + 4)[0]
        tlv = payload + 4 + ((orig_len + 3) & ~3)
    for atype, s, e in attrs(buf, tlv, end):
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


def netlink_socket(netns: str | None, rcvbuf: int, groups: Iterable[int] = ()) -> socket.socket:
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


class Channel:
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


# --- requests: dump and write the flood entries -------------------------------------


class FloodNetlink:
    """The request socket: flood-entry dumps and windowed writes.

    Requests are serialised by a lock; answers are matched by sequence number.
    """

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._ch: Channel | None = None
        self._lock = asyncio.Lock()
        self._seq = 0
        self._addr_cache: dict[bytes, Address] = {}

    def open(self) -> None:
        if self._ch is None:
            self._ch = Channel(netlink_socket(self.netns, RCVBUF))

    def close(self) -> None:
        if self._ch is not None:
            self._ch.close()
            self._ch = None

    def _channel(self) -> Channel:
        if self._ch is None:
            raise KernelError(errno.EBADF, "Kernel is not open")
        return self._ch

    def _seq_block(self, count: int) -> int:
        """Reserve count consecutive sequence numbers; ACKs map back by offset."""
        if self._seq + count >= 0xFFFFFFFF:
            self._seq = 0
        base = self._seq + 1
        self._seq += count
        return base

    async def dump(self, mtype: int, body: bytes) -> list[bytes]:
        """Run one dump; return the raw datagrams. Retries if the kernel says the
        dump was interrupted by a concurrent change (NLM_F_DUMP_INTR)."""
        ch = self._channel()
        async with self._lock:
            for _attempt in range(3):
                seq = self._seq_block(1)
                hdr = _NLMSGHDR.pack(16 + len(body), mtype, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
                ch.send(hdr + body)
                chunks: list[bytes] = []
                interrupted = False
                done = False
                while not done:
                    buf = await ch.recv()
                    keep = False
                    for t, fl, s, p, _e in iter_messages(buf):
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

    async def request(self, mtype: int, flags: int, body: bytes) -> list[bytes]:
        """One non-dump request; returns the datagrams carrying answers for it."""
        ch = self._channel()
        async with self._lock:
            seq = self._seq_block(1)
            hdr = _NLMSGHDR.pack(16 + len(body), mtype, NLM_F_REQUEST | flags, seq, 0)
            ch.send(hdr + body)
            out: list[bytes] = []
            while True:
                buf = await ch.recv()
                for t, fl, s, p, e in iter_messages(buf):
                    if s != seq:
                        continue
                    if t == NLMSG_ERROR:
                        code = -_I32.unpack_from(buf, p)[0]
                        if code:
                            raise KernelError(code, error_text(buf, fl, p, e) or os.strerror(code))
                        return out
                    out.append(buf[p - 16 : e])
                    if not flags & NLM_F_ACK:
                        return out

    def _intern(self, raw: bytes) -> Address | None:
        """Address objects are costly to build; a dump repeats the same peers."""
        a = self._addr_cache.get(raw)
        if a is None:
            a = address(raw)
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
        for buf in await self.dump(RTM_GETNEIGH, body):
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
                            hit = flood_entry(buf, pos + 16, pos + mlen)
                        elif fl & NTF_SELF and mac == _ZERO_MAC:
                            hit = ifindex, raw
                    elif mlen >= 40:
                        hit = flood_entry(buf, pos + 16, pos + mlen)
                    if hit is not None:
                        addr = cache.get(hit[1]) or self._intern(hit[1])
                        if addr is not None:
                            entries = out.get(hit[0])
                            if entries is None:
                                entries = out[hit[0]] = set()
                            entries.add(addr)
                pos += (mlen + 3) & ~3
        return out

    async def write(self, ops: Sequence[FloodOp]) -> list[tuple[int, str]]:
        """Send ops, WINDOW requests per send; return (errno, text) per op, 0 = done.

        Each request carries NLM_F_ACK; the kernel handles a whole send before
        send() returns, so after a window its ACKs are all queued and are read
        before the next window goes out: the receive buffer never overflows.
        A delete on a device with no flood entry at all (ENOENT) counts as done;
        a request whose ACK never came is ETIMEDOUT.
        """
        ch = self._channel()
        out: list[tuple[int, str]] = []
        cache = self._addr_cache
        if len(cache) + len(ops) > ADDR_CACHE_MAX:
            cache.clear()
        async with self._lock:
            for start in range(0, len(ops), WINDOW):
                window = ops[start : start + WINDOW]
                base = self._seq_block(len(window))
                buf = bytearray()
                for k, (add, ifindex, addr) in enumerate(window):
                    raw = addr.packed
                    cache.setdefault(raw, addr)  # the next dump will meet it again
                    packer = _FDB4 if len(raw) == 4 else _FDB6
                    buf += packer.pack(
                        packer.size, RTM_NEWNEIGH if add else RTM_DELNEIGH,
                        _ADD_FLAGS if add else _DEL_FLAGS, base + k, 0,
                        AF_BRIDGE, 0, 0, ifindex, NUD_PERMANENT, NTF_SELF, 0,
                        10, NDA_LLADDR, _ZERO_MAC,
                        4 + len(raw), NDA_DST, raw,
                    )  # fmt: skip
                ch.send(bytes(buf))
                codes, texts = await self._collect_acks(ch, base, len(window))
                for k, code in enumerate(codes):
                    if code is None:
                        out.append((errno.ETIMEDOUT, "no ACK from the kernel"))
                    elif code == 0 or (code == errno.ENOENT and not window[k].add):
                        out.append((0, ""))  # ENOENT on delete: already absent
                    else:
                        out.append((code, texts.get(k) or os.strerror(code)))
        return out

    async def _collect_acks(
        self, ch: Channel, base: int, count: int
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
                        texts[k] = error_text(buf, mflags, pos + 16, pos + mlen)
                pos += (mlen + 3) & ~3
        return codes, texts
