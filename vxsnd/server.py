"""The thin UDP side of the service node.

`datagram_received` only puts (data, addr, socket index) on a bounded queue and
drops-and-counts when it is full. One receiver task takes datagrams off the queue
and feeds the engine (decode, replay check, assembly: cheap and synchronous).
One committer task waits for work, runs `engine.step` (one registry
transaction) and sends what it returns; it also wakes for retransmit timers.
The batch window is the least time between the starts of two steps: a change
after a quiet spell is written and pushed at once, while under load whatever
arrives during a step and the rest of its window goes into the next one, so a
storm of registers stays a handful of transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import math
import socket
import time
from collections.abc import Callable
from typing import cast

from vxsnd.config import ListenAddr
from vxsnd.engine import Engine, Outgoing, PeerAddr
from vxsnd.metrics import Metrics

log = logging.getLogger("vxsnd.server")

SOCKET_BUFFER = 8 * 1024 * 1024
Item = tuple[bytes, PeerAddr, int]


class UdpEndpoint(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[Item], via: int, metrics: Metrics) -> None:
        self.queue = queue
        self.via = via
        self.metrics = metrics
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (3.11's selector transport does not subclass DatagramTransport)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: PeerAddr) -> None:
        try:
            self.queue.put_nowait((data, addr, self.via))
        except asyncio.QueueFull:
            self.metrics.queue_drops.inc()

    def error_received(self, exc: Exception) -> None:
        log.debug("socket error: %s", exc)  # ICMP unreachable from a gone agent etc.


def make_socket(addr: ListenAddr) -> socket.socket:
    """A bound non-blocking UDP socket; `[::]` on a host without IPv6 (booted with
    ipv6.disable=1) falls back to `0.0.0.0` with a warning, so the default works there."""
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:
        if addr.host != "::" or exc.errno != errno.EAFNOSUPPORT:
            raise
        log.warning("IPv6 is not available on this host: listening on 0.0.0.0:%d", addr.port)
        return make_socket(ListenAddr("0.0.0.0", addr.port))
    try:
        if family == socket.AF_INET6 and addr.host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)  # *BUFFORCE (root)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        sock.bind((addr.host, addr.port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _same(ep: UdpEndpoint) -> UdpEndpoint:
    return ep


class Server:
    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        queue_size: int,
        batch_window: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.queue: asyncio.Queue[Item] = asyncio.Queue(queue_size)
        self.batch_window = batch_window
        self.clock = clock
        self.endpoints: list[UdpEndpoint] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        engine.on_work = self._wake.set

    @property
    def addresses(self) -> list[tuple[str, int]]:
        out = []
        for ep in self.endpoints:
            if ep.transport is not None:
                name = ep.transport.get_extra_info("sockname")
                out.append((name[0], name[1]))
        return out

    async def start(self, listen: tuple[ListenAddr, ...]) -> None:
        loop = asyncio.get_running_loop()
        for via, addr in enumerate(listen):
            ep = UdpEndpoint(self.queue, via, self.metrics)
            await loop.create_datagram_endpoint(
                functools.partial(_same, ep), sock=make_socket(addr)
            )
            self.endpoints.append(ep)
            log.info("listening on %s", addr)
        self._tasks = [
            asyncio.create_task(self._receiver(), name="vxsnd-receiver"),
            asyncio.create_task(self._committer(), name="vxsnd-committer"),
        ]

    def close_endpoints(self) -> None:
        for ep in self.endpoints:
            if ep.transport is not None:
                ep.transport.close()

    async def drain(self) -> None:
        """After close_endpoints: handle what is queued, commit the last batch, stop."""
        self._feed_queued()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.engine.has_work():
            await self.engine.step(self.clock())  # the sockets are closed: nothing is sent

    def _feed_queued(self) -> None:
        q = self.queue
        receive = self.engine.receive
        now = self.clock()
        while not q.empty():
            data, addr, via = q.get_nowait()
            receive(data, addr, via, now)
            self.metrics.datagrams_received.inc()

    async def _receiver(self) -> None:
        q = self.queue
        receive = self.engine.receive
        received = self.metrics.datagrams_received
        while True:
            data, addr, via = await q.get()
            now = self.clock()
            receive(data, addr, via, now)
            n = 1
            while n < 4096 and not q.empty():  # drain a burst, then let others run
                data, addr, via = q.get_nowait()
                receive(data, addr, via, now)
                n += 1
            received.inc(n)
            self.metrics.queue_depth.set(q.qsize())

    async def _committer(self) -> None:
        engine = self.engine
        last_step = -math.inf  # monotonic start of the previous step
        while True:
            timer = engine.next_timer()
            if not engine.has_work(self.clock()):
                timeout = None if timer is None else max(0.0, timer - self.clock())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            pause = last_step + self.batch_window - time.monotonic()
            if pause > 0 and engine.has_work():
                await asyncio.sleep(pause)
            last_step = time.monotonic()
            self._wake.clear()
            # acks waiting in the queue must be seen before retransmit timers are judged
            self._feed_queued()
            try:
                out = await engine.step(self.clock())
            except Exception:
                await asyncio.sleep(1.0)  # registry trouble: logged by the engine
                continue
            self.send(out)

    def send(self, out: list[Outgoing]) -> None:
        for data, addr, via in out:
            transport = self.endpoints[via].transport
            if transport is None or transport.is_closing():
                continue
            try:
                transport.sendto(data, addr)
            except OSError as exc:
                log.debug("send to %s failed: %s", addr, exc)
