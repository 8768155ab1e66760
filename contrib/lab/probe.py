"""Data-plane probes for the lab: does an overlay broadcast / unicast get through?

The probes run in the calling process: sockets are created inside the hosts'
namespaces (``Node.socket``, a setns() in a short-lived thread) and then used from
here, so a probe over 100 hosts starts no processes and costs milliseconds.

- A listener is one UDP socket per overlay bridge of the host, bound to the device
  (SO_BINDTODEVICE ``br<vni>``) and to 0.0.0.0:<port>: the receipt records *which* VNI
  the datagram arrived in, so a leak into another VNI would be seen.
- The sender binds its socket to ``br<vni>`` and its overlay address and sends a
  random token to the VNI's broadcast address ``count`` times.
- ``unicast_works`` is an ICMP echo over a raw socket (ARP happens first, as usual); no
  dependency on iputils-ping.

Every wait is bounded by a deadline; every socket is closed on return.
"""

from __future__ import annotations

import contextlib
import secrets
import select
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from contrib.lab.topology import LabError, overlay_broadcast

if TYPE_CHECKING:
    from contrib.lab.topology import Host, Lab

_TAG = b"vxflood-probe "
_ECHO_BODY = b"vxflood-ping"


def _check_hosts(lab: Lab, hosts: Sequence[Host]) -> None:
    for h in hosts:
        if h not in lab.hosts:
            raise LabError(f"{h!r} is not a host of lab {lab.prefix}")


def _bound_udp(host: Host, dev: str, addr: str, port: int) -> socket.socket:
    sock = host.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
        sock.bind((addr, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _wait_readable(
    socks: Sequence[socket.socket],
    deadline: float,
    on_ready: Callable[[socket.socket], None],
    done: Callable[[], bool],
    wake_at: Callable[[], float | None] = lambda: None,
) -> None:
    """select() loop until ``done()`` or ``deadline``; ``wake_at`` lets the caller act
    at its own times (the sender's schedule)."""
    while not done():
        now = time.monotonic()
        if now >= deadline:
            return
        until = deadline
        wake = wake_at()
        if wake is not None:
            until = min(until, wake)
        readable, _, _ = select.select(list(socks), [], [], max(0.0, until - now))
        for sock in readable:
            on_ready(sock)


def broadcast_receipts(
    lab: Lab,
    vni: int,
    sender: Host,
    listeners: Sequence[Host],
    *,
    timeout: float = 1.0,
    count: int = 3,
    interval: float = 0.1,
    stop_when_all: bool = False,
) -> dict[Host, set[str]]:
    """Broadcast a UDP datagram on ``br<vni>`` of ``sender``; report, per listener, the
    overlay bridges (``br<vni>``, ``br<other>``...) on which it arrived.

    Waits ``timeout`` seconds from the first send, or, with ``stop_when_all``, only until
    every listener has it on ``br<vni>``. ``count`` copies go out ``interval`` apart.
    """
    _check_hosts(lab, [sender, *listeners])
    if vni not in sender.vnis:
        raise LabError(f"{sender.name} has no VNI {vni} to send from")
    token = _TAG + secrets.token_hex(8).encode()
    want = f"br{vni}"
    got: dict[Host, set[str]] = {h: set() for h in listeners}
    where: dict[socket.socket, tuple[Host, str]] = {}
    out: socket.socket | None = None
    try:
        # One port for every listener: the first bind picks it, the rest reuse it.
        port = 0
        for h in listeners:
            for v in sorted(h.vnis):
                dev = f"br{v}"
                sock = _bound_udp(h, dev, "0.0.0.0", port)
                where[sock] = (h, dev)
                port = port or sock.getsockname()[1]
        out = _bound_udp(sender, want, sender.overlay(vni), 0)
        dst = (overlay_broadcast(vni), port or 9)  # no listener sockets: discard port

        def on_ready(sock: socket.socket) -> None:
            with contextlib.suppress(BlockingIOError):
                while True:
                    if sock.recv(2048) == token:
                        host, dev = where[sock]
                        got[host].add(dev)

        def done() -> bool:
            return stop_when_all and all(want in devs for devs in got.values())

        sent = 0
        next_send = time.monotonic()

        def wake_at() -> float | None:
            nonlocal sent, next_send
            now = time.monotonic()
            if sent < count and now >= next_send:
                assert out is not None
                out.sendto(token, dst)
                sent += 1
                next_send = now + interval
            return next_send if sent < count else None

        deadline = time.monotonic() + timeout
        wake_at()
        _wait_readable(list(where), deadline, on_ready, done, wake_at)
    finally:
        for sock in where:
            sock.close()
        if out is not None:
            out.close()
    return got


def broadcast_reaches(
    lab: Lab,
    vni: int,
    sender: Host,
    receivers: Sequence[Host],
    timeout: float = 1.0,
) -> set[Host]:
    """The receivers at which a broadcast sent by ``sender`` in ``vni`` arrived on their
    ``br<vni>``. Returns as soon as all have it; otherwise after ``timeout`` seconds."""
    got = broadcast_receipts(lab, vni, sender, receivers, timeout=timeout, stop_when_all=True)
    return {h for h, devs in got.items() if f"br{vni}" in devs}


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _echo_request(ident: int, seq: int) -> bytes:
    unsummed = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + _ECHO_BODY
    return struct.pack("!BBHHH", 8, 0, _checksum(unsummed), ident, seq) + _ECHO_BODY


def _is_echo_reply(packet: bytes, ident: int) -> bool:
    if len(packet) < 20:
        return False
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 8:
        return False
    kind, code, _, got_ident, _ = struct.unpack_from("!BBHHH", packet, ihl)
    return bool(kind == 0 and code == 0 and got_ident == ident)


def unicast_works(
    lab: Lab, vni: int, a: Host, b: Host, timeout: float = 2.0, every: float = 0.25
) -> bool:
    """ICMP echo from ``a``'s ``br<vni>`` to ``b``'s overlay address: True on the first
    reply within ``timeout`` (requests repeat every ``every`` seconds meanwhile)."""
    _check_hosts(lab, [a, b])
    dst = b.overlay(vni)
    ident = secrets.randbelow(0xFFFF) + 1
    replied = False
    sock = a.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, f"br{vni}".encode())
        sock.setblocking(False)
        seq = 0
        next_send = time.monotonic()

        def wake_at() -> float:
            nonlocal seq, next_send
            now = time.monotonic()
            if now >= next_send:
                seq += 1
                sock.sendto(_echo_request(ident, seq), (dst, 0))
                next_send = now + every
            return next_send

        def on_ready(s: socket.socket) -> None:
            nonlocal replied
            with contextlib.suppress(BlockingIOError):
                while True:
                    packet, addr = s.recvfrom(65535)
                    if addr[0] == dst and _is_echo_reply(packet, ident):
                        replied = True

        deadline = time.monotonic() + timeout
        wake_at()
        _wait_readable([sock], deadline, on_ready, lambda: replied, wake_at)
    finally:
        sock.close()
    return replied
