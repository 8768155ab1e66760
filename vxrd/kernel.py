"""The host agent's kernel layer: VXLAN discovery, flood lists, change events.

Links are pyroute2's job: VXLAN devices are dumped and read with
pyroute2.AsyncIPRoute and parsed from its ifinfmsg, and link notifications come
from a second AsyncIPRoute bound to RTMGRP_LINK. The flood entries (all-zero
fdb entries) are the measured hot path and go through the hand-packed netlink
of vxrd.floodnl: windowed writes, the AF_BRIDGE dump, neighbour notifications.

Every socket is created inside the requested network namespace (a missing one
is an error, never created). The notification sockets are bound in open(),
before the caller's first dump, so no change between that dump and the first
read of events() is lost (bind -> dump -> stream).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any

from vxrd import floodnl
from vxrd.caps import NO_NET_ADMIN, NoNetAdmin, has_net_admin
from vxrd.floodnl import FloodOp, KernelError
from vxrd.links import link_event, parse_device
from vxrd.model import (
    Address,
    ApplyError,
    ApplyResult,
    FdbChanged,
    FdbListener,
    FloodChange,
    FloodDiff,
    KernelEvent,
    LinkChanged,
    LinkRemoved,
    Resync,
    VxlanDevice,
)
from vxrd.rtnl import (
    NLM_F_DUMP,
    NLM_F_REQUEST,
    RTM_GETLINK,
    RTMGRP_LINK,
    AsyncIPRoute,
    NetlinkError,
    ifinfmsg,
)

__all__ = [
    "NO_NET_ADMIN",
    "Address",
    "ApplyError",
    "ApplyResult",
    "FdbChanged",
    "FdbListener",
    "FloodChange",
    "FloodDiff",
    "Kernel",
    "KernelError",
    "KernelEvent",
    "LinkChanged",
    "LinkRemoved",
    "NoNetAdmin",
    "Resync",
    "VxlanDevice",
]

LINK_RCVBUF = 4 << 20  # link notification socket
EVENT_RCVBUF = 32 << 20  # fdb notification socket: absorbs our own bulk writes
LINK_BACKLOG = 65536  # link events kept for events() before they collapse into Resync
GET_LIMIT = 16  # apply(): up to this many devices are checked one by one, more by a dump


async def _iproute(netns: str | None, groups: int = 0, rcvbuf: int = 0) -> Any:
    """An AsyncIPRoute inside netns (flags=0: never create it); bound to groups if any."""
    ipr = AsyncIPRoute(netns=netns, flags=0, strict_check=True, groups=groups)
    try:
        if groups:
            await ipr.bind()
            try:
                ipr.setsockopt(socket.SOL_SOCKET, floodnl.SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                ipr.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        else:
            await ipr.setup_endpoint()
    except BaseException:
        ipr.close()
        raise
    return ipr


# --- the kernel layer -----------------------------------------------------------------


class Kernel:
    """Discover VXLAN devices, read and write their flood lists, stream changes."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._ipr: Any = None  # AsyncIPRoute: link requests
        self._links: Any = None  # AsyncIPRoute bound to RTMGRP_LINK
        self._interner = floodnl.Interner()  # dumps, writes and fdb events share addresses
        self._nl = floodnl.FloodNetlink(netns, self._interner)
        self._fdb: floodnl.FloodWatch | None = None
        # Link events are read from open() on, into the queue events() reads,
        # so that _vxlan (ifindexes known to be VXLAN devices) forgets deleted
        # devices at once, whether or not anyone iterates events().
        self._queue: asyncio.Queue[KernelEvent | BaseException | None] = asyncio.Queue()
        self._watcher: asyncio.Task[None] | None = None
        self._vxlan: set[int] = set()
        self._on_fdb: FdbListener | None = None  # events()' flood-entry listener

    async def open(self) -> None:
        """Create the sockets; the notification sockets are bound here, before any dump.
        Raises NoNetAdmin (an OSError) without CAP_NET_ADMIN."""
        if self._ipr is not None:
            return
        if not has_net_admin():
            raise NoNetAdmin()  # refuse to start rather than warn on every write
        try:
            self._ipr = await _iproute(self.netns)
            self._links = await _iproute(self.netns, RTMGRP_LINK, LINK_RCVBUF)
            self._nl.open()
            self._fdb = floodnl.FloodWatch(self.netns, EVENT_RCVBUF, self._interner)
            self._queue = asyncio.Queue()
            self._watcher = asyncio.create_task(self._watch_links())
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the sockets; a running events() iterator ends."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        self._vxlan.clear()
        for ipr in (self._ipr, self._links):
            if ipr is not None:
                ipr.close()
        self._ipr = self._links = None
        self._nl.close()
        if self._fdb is not None:
            self._fdb.close()
            self._fdb = None
        self._queue.put_nowait(None)

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

    def _req(self) -> Any:
        if self._ipr is None:
            raise KernelError(errno.EBADF, "Kernel is not open")
        return self._ipr

    # -- links -------------------------------------------------------------------

    async def list_vxlan(self) -> list[VxlanDevice]:
        """All VXLAN devices. The dump asks the kernel for kind vxlan only (strict
        checking); the kind is checked again here, for kernels that ignore it."""
        msg = ifinfmsg()
        msg["family"] = 0
        msg["attrs"] = [("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "vxlan")]})]
        dump = await self._req().nlm_request(msg, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP)
        devices: list[VxlanDevice] = []
        try:
            async for link in dump:
                dev = parse_device(link)
                if dev is not None:
                    devices.append(dev)
        except NetlinkError as exc:
            raise KernelError(exc.code, f"link dump failed: {exc}") from exc
        self._vxlan = {d.ifindex for d in devices}
        return devices

    async def get_vxlan(self, ifindex: int) -> VxlanDevice | None:
        """The VXLAN device with this ifindex, or None if absent or not VXLAN."""
        try:
            links = await self._req().link("get", index=ifindex)
        except NetlinkError as exc:
            if exc.code not in (errno.ENODEV, errno.EINVAL):
                raise KernelError(exc.code, f"link get failed: {exc}") from exc
            links = []
        for link in links:
            dev = parse_device(link)
            if dev is not None:
                self._vxlan.add(ifindex)
                return dev
        self._vxlan.discard(ifindex)
        return None

    # -- flood entries (raw netlink: vxrd.floodnl) --------------------------------------

    async def flood_entries(self, ifindex: int | None = None) -> dict[int, set[Address]]:
        """Flood destinations per ifindex, from one AF_BRIDGE fdb dump: of every
        device, or of the one device `ifindex` (a dump the kernel filters)."""
        if ifindex is not None and ifindex <= 0:
            return {}
        return await self._nl.flood_entries(ifindex or 0)

    async def apply(self, changes: Mapping[int, FloodDiff]) -> ApplyResult:
        """Write flood-list changes; removes go before adds.

        Only VXLAN devices are written: the generic fdb handler of other
        Ethernet devices would accept an all-zero lladdr and install it as a
        secondary unicast MAC. A device's kind never changes, so ifindexes seen
        as VXLAN (by list_vxlan, get_vxlan or a link event) are trusted until
        their deletion is notified; others are asked for with pyroute2, one by
        one when few, else with one dump. Per-entry failures are collected,
        never raised.
        """
        unknown = [i for i in changes if i not in self._vxlan]
        if len(unknown) > GET_LIMIT:
            await self.list_vxlan()
        else:
            for ifindex in unknown:
                await self.get_vxlan(ifindex)
        ops, errors = self._ops(changes)
        return floodnl.apply_result(ops, await self._nl.write(ops), errors)

    def apply_now(self, changes: Mapping[int, FloodDiff]) -> ApplyResult | None:
        """apply() without waiting, for a membership change handled as it arrives.

        Returns None, with nothing written, when that would need a wait: a
        device not yet known to be VXLAN (apply() asks the kernel), or the
        request socket busy with another request (floodnl.write_now). Raises
        OSError when the socket fails (unknown how far it got).
        """
        vxlan = self._vxlan
        for ifindex in changes:
            if ifindex not in vxlan:
                return None
        ops, errors = self._ops(changes)
        codes = self._nl.write_now(ops)
        return None if codes is None else floodnl.apply_result(ops, codes, errors)

    def _ops(self, changes: Mapping[int, FloodDiff]) -> tuple[list[FloodOp], list[ApplyError]]:
        """The requests for changes on known VXLAN devices (removes first), and an
        error for every change on any other device."""
        errors: list[ApplyError] = []
        vxlan = self._vxlan & set(changes)
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
        return ops, errors

    def read_fdb(self) -> list[FdbChanged | Resync]:
        """The flood-entry notifications queued now, in kernel order, returned
        to the caller instead of waiting for the watcher's next wake-up.

        A writer calls it right after a synchronous write: the echo of the write
        is queued by then, and reading it here costs no second wake-up of the
        process, and no call back into the writer. Never raises: a socket error
        is left for the watcher, which hits it on its next read and ends
        events() with it.
        """
        fdb = self._fdb
        if fdb is None:
            return []
        try:
            batch = fdb.read_now()
        except OSError:
            return []
        return floodnl.events_of(batch) if batch else []

    # -- events ------------------------------------------------------------------------

    async def events(self, on_fdb: FdbListener | None = None) -> AsyncIterator[KernelEvent]:
        """Link and flood-entry changes until close() (one reader at a time).

        Link events come from pyroute2, flood-entry events from floodnl, each in
        kernel order; the two streams are merged as they arrive. Whatever is
        queued is taken at once: identical link events per device collapse, and
        flood-entry changes come as one FdbChanged per batch floodnl read (each
        entry once, in its last state). When notifications were lost (ENOBUFS),
        Resync is yielded and the stream carries on.

        With `on_fdb`, flood-entry events (FdbChanged, and Resync when
        neighbour notifications were lost) are not yielded but passed to it as
        soon as the watcher reads them, synchronously: no hop through the
        stream. A writer collects the echo of its own write with read_fdb()
        instead, without a wake-up. on_fdb must not block.
        """
        if self._fdb is None:
            raise KernelError(errno.EBADF, "Kernel is not open")
        self._on_fdb = on_fdb
        fdb = asyncio.create_task(self._watch_fdb(self._fdb))
        try:
            while True:
                items = [await self._queue.get()]
                while not self._queue.empty():
                    items.append(self._queue.get_nowait())
                last: dict[int, KernelEvent] = {}  # link events per device
                for item in items:
                    if item is None:
                        return
                    if isinstance(item, BaseException):
                        raise item
                    if isinstance(item, Resync):
                        last.clear()
                    elif isinstance(item, LinkChanged | LinkRemoved):
                        if last.get(item.ifindex) == item:
                            continue
                        last[item.ifindex] = item
                    yield item
        finally:
            self._on_fdb = None
            fdb.cancel()
            await asyncio.gather(fdb, return_exceptions=True)

    def _deliver(
        self, batch: list[FloodChange | floodnl.Lost], listener: FdbListener | None
    ) -> None:
        """One batch read from the notification socket: to the listener, or into
        the stream as FdbChanged (and Resync for a loss)."""
        for ev in floodnl.events_of(batch):
            if listener is None:
                self._queue.put_nowait(ev)
            else:
                listener(ev)

    async def _watch_fdb(self, watch: floodnl.FloodWatch) -> None:
        """While events() runs: flood-entry notifications from floodnl to the
        listener or into the queue, one FdbChanged per batch read."""
        try:
            async for batch in watch.changes():
                self._deliver(batch, self._on_fdb)
        except Exception as exc:  # handed to the reader of events(), unless closing
            if self._ipr is not None:
                self._queue.put_nowait(exc)

    async def _watch_links(self) -> None:
        """From open() to close(): link events into the queue, keeping _vxlan current."""
        try:
            async for event in self._link_events():
                if isinstance(event, LinkChanged):
                    self._vxlan.add(event.ifindex)
                elif isinstance(event, LinkRemoved):
                    self._vxlan.discard(event.ifindex)
                else:
                    self._vxlan.clear()
                if self._queue.qsize() >= LINK_BACKLOG:  # nobody reads events()
                    while not self._queue.empty():
                        self._queue.get_nowait()
                    event = Resync("kernel event backlog overflow")
                self._queue.put_nowait(event)
        except Exception as exc:  # handed to the reader of events(), unless closing
            self._vxlan.clear()
            if self._ipr is not None:
                self._queue.put_nowait(exc)

    async def _link_events(self) -> AsyncIterator[KernelEvent]:
        """VXLAN link notifications from pyroute2. pyroute2 raises OSError(ENOBUFS)
        from get() when the socket overflowed, and the socket is unusable after
        that: a new one is bound first, then Resync is yielded."""
        while self._links is not None:
            try:
                async for msg in self._links.get():
                    event = link_event(msg, self._vxlan)
                    if event is not None:
                        yield event
            except OSError as exc:
                if exc.errno != errno.ENOBUFS or self._links is None:
                    raise
                self._links.close()
                self._links = await _iproute(self.netns, RTMGRP_LINK, LINK_RCVBUF)
                yield Resync("netlink link notifications lost (ENOBUFS)")
