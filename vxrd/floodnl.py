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

Sockets are created inside the requested network namespace by pyroute2's
netns.create_socket() (a forked child enters the namespace and passes the
socket back), with flags=0 so that a missing namespace is never created.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
import struct
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import NamedTuple

from vxrd.model import Address, ApplyError, ApplyResult, FdbChanged, FloodChange, Resync
from vxrd.rtnl import netns as pr_netns

# linux/netlink.h, rtnetlink.h, neighbour.h
NETLINK_ROUTE, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP = 0, 270, 1
NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 10, 11, 12
SO_RCVBUFFORCE = 33  # not exported by Python's socket module
NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 2, 3, 4
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP_INTR, NLM_F_DUMP = 0x1, 0x4, 0x10, 0x300
NLM_F_CREATE, NLM_F_APPEND = 0x400, 0x800
NLM_F_CAPPED = 0x100  # on NLMSG_ERROR: original payload not echoed
NLM_F_ACK_TLVS = 0x200  # on NLMSG_ERROR: extended-ack TLVs follow
NLMSGERR_ATTR_MSG = 1
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH, RTNLGRP_NEIGH = 28, 29, 30, 3
AF_BRIDGE, NUD_PERMANENT, NTF_SELF = 7, 0x80, 0x02
NDA_DST, NDA_LLADDR, NDA_CACHEINFO, NDA_PORT, NDA_VNI, NDA_IFINDEX = 1, 2, 3, 6, 7, 8

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
_FIXED = {_FLOOD4.size: _FLOOD4.unpack_from, _FLOOD6.size: _FLOOD6.unpack_from}

WINDOW = 256  # requests in flight per send; their ACKs fit the receive buffer
RCVBUF = 8 << 20  # request socket: window of ACKs plus 32 KiB dump chunks
RECV_SIZE = 1 << 16
ADDR_CACHE_MAX = 1 << 20  # interned dump addresses; cleared when full
ACK_TIMEOUT = 10.0  # seconds without progress before outstanding requests fail
EVENT_BATCH = 8192  # notifications read (and collapsed) before yielding


class KernelError(OSError):
    """A netlink request (not a single fdb entry) failed as a whole."""


class Lost(NamedTuple):
    """Neighbour notifications were lost; the reader must rescan."""

    reason: str


def events_of(batch: Sequence[FloodChange | Lost]) -> list[FdbChanged | Resync]:
    """A batch read from the notification socket as events: Resync for each loss,
    one FdbChanged for the changes."""
    out: list[FdbChanged | Resync] = [Resync(i.reason) for i in batch if isinstance(i, Lost)]
    changes = tuple(i for i in batch if not isinstance(i, Lost))
    if changes:
        out.append(FdbChanged(changes))
    return out


class FloodOp(NamedTuple):
    """One flood-list write: append (add=True) or delete one destination."""

    add: bool
    ifindex: int
    address: Address


# --- message helpers ------------------------------------------------------------


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


class Interner:
    """One Address object per kernel address: building them is costly (dumps and
    notifications repeat the same peers), and sets of the same objects compare
    by identity. Shared by the request and the notification socket; written
    addresses are remembered, so their echoes and the next dump meet them again."""

    def __init__(self) -> None:
        self._cache: dict[bytes, Address] = {}

    def get(self, raw: bytes) -> Address | None:
        a = self._cache.get(raw)
        if a is None:
            a = address(raw)
            if a is not None:
                if len(self._cache) >= ADDR_CACHE_MAX:
                    self._cache.clear()
                self._cache[raw] = a
        return a

    def remember(self, addrs: Iterable[Address]) -> None:
        """Map these addresses' bytes to these very objects (the ones vxrd wrote)."""
        cache = self._cache
        for a in addrs:
            if len(cache) >= ADDR_CACHE_MAX:
                cache.clear()
            cache[a.packed] = a


def flood_messages(buf: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(message type, ifindex, raw dst) of each flood entry in a datagram of
    RTM_NEWNEIGH/RTM_DELNEIGH messages (a dump chunk or notifications).

    A flood entry as we write it is dumped and notified with a fixed layout
    (lladdr, dst, cacheinfo), so one unpack decides it; anything of another
    size or layout takes the general attribute walk (flood_entry). An
    NLMSG_OVERRUN is yielded as (NLMSG_OVERRUN, 0, b"").
    """
    head = _HEAD.unpack_from
    fixed = _FIXED
    pos, size = 0, len(buf)
    while pos + 16 <= size:
        mlen, mtype = head(buf, pos)
        if mlen < 16 or pos + mlen > size:
            return
        if mtype in (RTM_NEWNEIGH, RTM_DELNEIGH):
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
                yield mtype, hit[0], hit[1]
        elif mtype == NLMSG_OVERRUN:
            yield mtype, 0, b""
        pos += (mlen + 3) & ~3


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
    while tlv + 4 <= end:
        alen, atype = _NLATTR.unpack_from(buf, tlv)
        if alen < 4:
            break
        if atype & 0x3FFF == NLMSGERR_ATTR_MSG:  # type without NLA_F_* bits
            return buf[tlv + 4 : tlv + alen].rstrip(b"\0").decode(errors="replace")
        tlv += (alen + 3) & ~3
    return ""


# --- sockets ----------------------------------------------------------------------


def netlink_socket(netns: str | None, rcvbuf: int, groups: Iterable[int] = ()) -> socket.socket:
    """A non-blocking NETLINK_ROUTE socket, created inside netns when given.

    netns is a name under /run/netns or a path. pyroute2 creates the socket in
    a short-lived child that enters the namespace (a socket stays in the
    namespace it was created in); flags=0: a missing namespace is an error
    (FileNotFoundError), never created.
    """
    sock: socket.socket = pr_netns.create_socket(
        netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE, flags=0
    )
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
    """One netlink socket driven by the event loop (add_reader), no threads.

    The socket stays registered with the loop from the first wait on, not
    added and removed around every wait: the notification socket waits once
    per event, and two epoll_ctl calls plus the selector bookkeeping each
    time were a visible part of handling one.

    epoll is level-triggered, and the loop may report the socket readable
    once more after the data was read (it polled before the reader ran): a
    waiter then wakes for nothing and simply waits again. A socket that stays
    readable while nobody waits would make the callback fire on every loop
    turn; on the second such turn in a row the callback unregisters it, and
    the next wait registers it again.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # registered with this loop
        self._unwanted = 0  # consecutive callbacks with nobody waiting

    def _wake(self) -> None:
        fut = self._waiter
        if fut is None:
            self._unwanted += 1
            if self._unwanted > 1:
                self._unwatch()
            return
        self._unwanted = 0
        if not fut.done():
            fut.set_result(None)

    def _unwatch(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to remove
                self._loop.remove_reader(self.sock.fileno())
            self._loop = None

    async def readable(self) -> None:
        """Wait until the socket has data (or the channel is closed)."""
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiter = fut
        if self._loop is not loop:
            self._unwatch()
            loop.add_reader(self.sock.fileno(), self._wake)
            self._loop = loop
            self._unwanted = 0
        try:
            await fut
        finally:
            if self._waiter is fut:
                self._waiter = None

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
        self._unwatch()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self.sock.close()


# --- requests: dump and write the flood entries -------------------------------------


class FloodNetlink:
    """The request socket: flood-entry dumps and windowed writes.

    Requests are serialised by a lock; answers are matched by sequence number.
    """

    def __init__(self, netns: str | None, interner: Interner | None = None) -> None:
        self.netns = netns
        self._ch: Channel | None = None
        self._lock = asyncio.Lock()
        self._seq = 0
        self.interner = interner or Interner()

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
                interrupted = done = False
                while not done:
                    buf = await ch.recv()
                    keep = False
                    for t, fl, s, p, _e in iter_messages(buf):
                        if s != seq:
                            continue
                        if t == NLMSG_ERROR:
                            code = -_I32.unpack_from(buf, p)[0]
                            raise KernelError(code, f"dump failed: {os.strerror(code)}")
                        interrupted |= bool(fl & NLM_F_DUMP_INTR)
                        if t == NLMSG_DONE:
                            done = True
                            break
                        keep = True
                    if keep:
                        chunks.append(buf)
                if not interrupted:
                    return chunks
            return chunks

    async def flood_entries(self, ifindex: int = 0) -> dict[int, set[Address]]:
        """Flood destinations per ifindex, from one AF_BRIDGE fdb dump: of every
        device, or of the one device `ifindex` (the kernel filters on ndm_ifindex).

        The kernel fills the dump; selecting the flood entries is one pass over
        the raw bytes (flood_messages).
        """
        body = _NDMSG.pack(AF_BRIDGE, 0, 0, ifindex, 0, 0, 0)
        out: dict[int, set[Address]] = {}
        intern = self.interner.get
        for buf in await self.dump(RTM_GETNEIGH, body):
            for mtype, index, raw in flood_messages(buf):
                if mtype != RTM_NEWNEIGH:
                    continue
                addr = intern(raw)
                if addr is not None:
                    entries = out.get(index)
                    if entries is None:
                        entries = out[index] = set()
                    entries.add(addr)
        return out

    def _send_window(self, ch: Channel, window: Sequence[FloodOp]) -> int:
        """Pack and send one window of requests; return the first sequence number."""
        base = self._seq_block(len(window))
        buf = bytearray()
        for k, (add, ifindex, addr) in enumerate(window):
            raw = addr.packed
            packer = _FDB4 if len(raw) == 4 else _FDB6
            buf += packer.pack(
                packer.size, RTM_NEWNEIGH if add else RTM_DELNEIGH,
                _ADD_FLAGS if add else _DEL_FLAGS, base + k, 0,
                AF_BRIDGE, 0, 0, ifindex, NUD_PERMANENT, NTF_SELF, 0,
                10, NDA_LLADDR, _ZERO_MAC,
                4 + len(raw), NDA_DST, raw,
            )  # fmt: skip
        ch.send(bytes(buf))
        return base

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
        self.interner.remember(op.address for op in ops)  # met again in echoes and dumps
        async with self._lock:
            for start in range(0, len(ops), WINDOW):
                window = ops[start : start + WINDOW]
                base = self._send_window(ch, window)
                codes, texts = await self._collect_acks(ch, base, len(window))
                out += _outcomes(window, codes, texts, errno.ETIMEDOUT, "no ACK from the kernel")
        return out

    def write_now(self, ops: Sequence[FloodOp]) -> list[tuple[int, str]] | None:
        """write() without waiting, for the few requests of one membership change.

        rtnetlink handles a request inside send() and queues its ACK before
        send() returns, so the ACKs are read at once and nothing needs the event
        loop: the caller can write from a datagram callback. Returns None, with
        nothing sent, when the socket is busy (another request is waiting for its
        answers: its reader would meet these ACKs) or the ops need more than one
        window. A request whose ACK is not queued after send() (never seen on
        rtnetlink) is reported as EINPROGRESS: its outcome is unknown, and the
        late ACK is skipped by the next reader (its sequence number is old).
        """
        if self._lock.locked() or len(ops) > WINDOW:
            return None
        ch = self._channel()
        self.interner.remember(op.address for op in ops)
        base = self._send_window(ch, ops)
        codes: list[int | None] = [None] * len(ops)
        texts: dict[int, str] = {}
        missing = len(ops)
        while missing:
            try:
                buf = ch.recv_nowait()
            except OSError as exc:  # ENOBUFS (the window prevents it): ACKs lost
                if exc.errno != errno.ENOBUFS:
                    raise
                break
            if buf is None:
                break
            missing -= _take_acks(buf, base, codes, texts)
        return _outcomes(ops, codes, texts, errno.EINPROGRESS, "no ACK queued after the request")

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
            missing -= _take_acks(buf, base, codes, texts)
        return codes, texts


def _take_acks(buf: bytes, base: int, codes: list[int | None], texts: dict[int, str]) -> int:
    """Record the ACKs in buf for sequence numbers base..base+len(codes)-1 (others,
    of earlier requests, are skipped); return how many were new."""
    count = len(codes)
    found = 0
    ack = _ACK.unpack_from
    pos, size = 0, len(buf)
    while pos + _ACK.size <= size:
        mlen, mtype, mflags, seq, err = ack(buf, pos)
        if mlen < 16:
            break
        k = seq - base
        if mtype == NLMSG_ERROR and 0 <= k < count and codes[k] is None:
            codes[k] = -err
            found += 1
            if err:
                texts[k] = error_text(buf, mflags, pos + 16, pos + mlen)
        pos += (mlen + 3) & ~3
    return found


def _outcomes(
    ops: Sequence[FloodOp],
    codes: list[int | None],
    texts: dict[int, str],
    missing: int,
    missing_text: str,
) -> list[tuple[int, str]]:
    """(errno, text) per op from its ACK: 0 = done; ENOENT on a delete counts as
    done (already absent); no ACK is `missing`."""
    out: list[tuple[int, str]] = []
    for k, code in enumerate(codes):
        if code is None:
            out.append((missing, missing_text))
        elif code == 0 or (code == errno.ENOENT and not ops[k].add):
            out.append((0, ""))
        else:
            out.append((code, texts.get(k) or os.strerror(code)))
    return out


# --- notifications ----------------------------------------------------------------


class FloodWatch:
    """A socket subscribed to neighbour notifications, reporting flood-entry changes.

    Bound in open(), before the caller's first dump, so that no change between
    that dump and the first read is lost (bind -> dump -> stream).
    """

    def __init__(self, netns: str | None, rcvbuf: int, interner: Interner | None = None) -> None:
        self._ch = Channel(netlink_socket(netns, rcvbuf, (RTNLGRP_NEIGH,)))
        self.interner = interner or Interner()

    def close(self) -> None:
        """A running changes() iterator ends."""
        self._ch.close()

    def read_now(self) -> list[FloodChange | Lost]:
        """The flood destinations that appeared or went away in every notification
        queued now (up to EVENT_BATCH datagrams), in kernel order; [] when none.

        Repeats of one (device, destination) collapse into the last. On ENOBUFS
        notifications were lost: what came before is moot (the reader must dump
        everything), so the batch restarts with a Lost and reading goes on.
        """
        ch = self._ch
        if ch.closed:
            return []
        lost: Lost | None = None
        last: dict[tuple[int, bytes], bool] = {}
        for _ in range(EVENT_BATCH):
            try:
                buf = ch.recv_nowait()
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                lost = Lost("netlink neighbour notifications lost (ENOBUFS)")
                last.clear()
                continue
            if buf is None:
                break
            for mtype, ifindex, raw in flood_messages(buf):
                if mtype == NLMSG_OVERRUN:
                    lost = Lost("netlink overrun")
                    last.clear()
                else:
                    last[ifindex, raw] = mtype == RTM_NEWNEIGH
        batch: list[FloodChange | Lost] = [] if lost is None else [lost]
        intern = self.interner.get
        for (ifindex, raw), present in last.items():
            addr = intern(raw)
            if addr is not None:
                batch.append(FloodChange(ifindex, addr, present))
        return batch

    async def changes(self) -> AsyncIterator[list[FloodChange | Lost]]:
        """Batches of read_now(), waiting for the socket in between.

        Between batches the iterator only waits for the socket; it holds no
        datagram it has read. So read_now() may also be called directly (a
        writer collecting the echo of its own write at once) and kernel order
        is kept, as long as the consumer handles each batch before asking for
        the next.
        """
        ch = self._ch
        while not ch.closed:
            batch = self.read_now()
            if batch:
                yield batch
            else:
                await ch.readable()


def apply_result(
    ops: list[FloodOp], codes: list[tuple[int, str]], errors: list[ApplyError]
) -> ApplyResult:
    """Count the requests the kernel took; the others join `errors`."""
    added = removed = 0
    for op, (code, text) in zip(ops, codes, strict=True):
        if code:
            errors.append(ApplyError(op.ifindex, op.address, code, text))
        elif op.add:
            added += 1
        else:
            removed += 1
    return ApplyResult(added=added, removed=removed, errors=errors)
