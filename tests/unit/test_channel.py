"""floodnl.Channel's use of the event loop, on a socketpair (no netlink needed)."""

from __future__ import annotations

import asyncio
import socket

from vxrd.floodnl import Channel


def registered(fd: int) -> bool:
    loop = asyncio.get_running_loop()
    try:
        loop._selector.get_key(fd)  # type: ignore[attr-defined]
    except KeyError:
        return False
    return True


async def test_stays_registered_between_waits_and_lets_go_when_nobody_waits() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    fd = a.fileno()
    ch = Channel(a)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(5):
            for n in range(3):
                loop.call_later(0.01, b.send, b"x%d" % n)
                await ch.readable()
                assert ch.recv_nowait() == b"x%d" % n and ch.recv_nowait() is None
                await asyncio.sleep(0)  # a readiness reported before the read is harmless
                assert registered(fd)  # no epoll_ctl per wait
            # readable while nobody waits: the level-triggered callback must not spin
            b.send(b"late")
            for _ in range(3):
                await asyncio.sleep(0)
            assert not registered(fd)
            await ch.readable()  # registers again; the data is there
            assert ch.recv_nowait() == b"late"
            ch.close()
            assert not registered(fd) and ch.closed
            await ch.readable()  # closed: returns at once
    finally:
        ch.close()
        b.close()
