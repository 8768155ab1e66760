"""A small protocol client that behaves like vxrd towards one vxsnd (no kernel).

Registers a VNI list, assembles membership snapshots and deltas as
docs/protocol.md describes, acks them and keeps the member set per VNI. An
optional lossy shim drops a fraction of datagrams in both directions with a
seeded RNG. Used by the integration tests and the benchmark.

`fast=True` swaps `Codec.decode` for a light decoder of membership datagrams
(header, msgpack, fields; each distinct packed address validated once and
memoised): a benchmark with thousands of simulated agents in one Python
process would otherwise measure address validation in the simulator rather
than the service node.
"""

from __future__ import annotations

import asyncio
import functools
import random
import socket
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, cast

import msgpack

from vxflood.schema.keys import Keyring
from vxflood.schema.validate import Address, vtep_from_packed
from vxflood.schema.wire import (
    HEADER,
    VERSION,
    Ack,
    Codec,
    Envelope,
    Membership,
    Refusal,
    Register,
    Rejected,
    Sequencer,
    VniEntry,
    split_register,
)

Addr = tuple[str, int]


@dataclass(frozen=True, slots=True)
class RawMembership:
    """A membership whose addresses stay packed bytes (fast mode)."""

    registry: str
    vni: int
    generation: int
    base: int | None
    add: tuple[bytes, ...]
    remove: tuple[bytes, ...]
    part: int
    parts: int


_VALID: set[bytes] = set()


def fast_decode(data: bytes) -> RawMembership | None:
    """Unsigned membership datagrams only (None for anything else); addresses stay
    packed, each distinct one validated once."""
    if len(data) < HEADER.size or data[:2] != b"VF" or data[3] != Membership.TYPE or data[4]:
        return None
    b = msgpack.unpackb(data[HEADER.size :], raw=False)
    if type(b["a"]) is bytes:  # the compact form (version 3): runs of packings
        add, remove = _runs(b["a"], b.get("A", b"")), _runs(b["d"], b.get("D", b""))
    else:
        add, remove = tuple(b["a"]), tuple(b["d"])
    for raw in (add, remove):
        if not _VALID.issuperset(raw):  # C speed for the addresses seen before
            for packed in raw:
                vtep_from_packed(packed)
            _VALID.update(raw)
    return RawMembership(b["r"], b["x"], b["g"], b.get("b"), add, remove, b["p"], b["n"])


@functools.cache
def _splitter(width: int, count: int) -> struct.Struct:
    return struct.Struct(f"{width}s" * count)


def _runs(v4: bytes, v6: bytes) -> tuple[bytes, ...]:
    """A compact run as its packings (struct slices in C; a Python loop over a
    318-address part would be most of the simulator's time)."""
    out: tuple[bytes, ...] = _splitter(4, len(v4) // 4).unpack(v4)
    if v6:
        out += _splitter(16, len(v6) // 16).unpack(v6)
    return out


@dataclass
class Stats:
    sent: int = 0
    received: int = 0
    dropped_out: int = 0
    dropped_in: int = 0
    rejected: int = 0
    acks: int = 0
    versions: dict[int, int] = field(default_factory=dict)  # header version -> datagrams


@dataclass
class _Parts:
    parts: int
    got: dict[int, Membership | RawMembership] = field(default_factory=dict)


class Agent(asyncio.DatagramProtocol):
    """One simulated agent; create with `await Agent.create(...)`."""

    def __init__(
        self,
        node_id: str,
        server: Addr,
        *,
        keyring: Keyring | None = None,
        loss: float = 0.0,
        seed: int = 0,
        hold_time: int = 90,
        fast: bool = False,
        on_change: Callable[[], None] | None = None,
        reads: int = VERSION,
    ) -> None:
        self.node_id = node_id
        self.server = server
        self.codec = Codec(keyring)
        self.seq = Sequencer(node_id)
        self.loss = loss
        self.rng = random.Random(seed)
        self.hold_time = hold_time
        self.fast = fast
        self.on_change = on_change
        self.reads = reads  # what its registers say it reads (0: as a version-2 vxrd)
        self.vnis: dict[int, Address] = {}
        self.registry = ""
        self.applied: dict[int, int] = {}
        self.round = 0
        self.stats = Stats()
        self.changed = asyncio.Event()
        self.transport: asyncio.DatagramTransport | None = None
        self._parts: dict[tuple[int, int, int | None], _Parts] = {}
        # members per VNI: Address objects, or packed bytes in fast mode
        self.members: dict[int, set[Any]] = {}
        self._refresher: asyncio.Task[None] | None = None
        self.refusals: list[Refusal] = []  # register rounds the server refused

    @classmethod
    async def create(
        cls, node_id: str, server: Addr, host: str = "127.0.0.1", **kw: object
    ) -> Agent:
        """`host`: the loopback address to send from (127.0.0.0/8: a "different host")."""
        loop = asyncio.get_running_loop()
        agent = cls(node_id, server, **kw)  # type: ignore[arg-type]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # snapshot bursts
        sock.bind((host, 0))
        await loop.create_datagram_endpoint(lambda: agent, sock=sock)
        return agent

    # ------------------------------------------------------------ sending

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (3.11's selector transport does not subclass DatagramTransport)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def send(self, data: bytes) -> None:
        if self.loss and self.rng.random() < self.loss:
            self.stats.dropped_out += 1
            return
        assert self.transport is not None
        self.transport.sendto(data, self.server)
        self.stats.sent += 1

    def register(self, vnis: Mapping[int, Address] | None = None, hold: int | None = None) -> None:
        """Send a register round (the full list; `vnis` replaces it when given)."""
        if vnis is not None:
            self.vnis = dict(vnis)
            for vni in list(self.members):
                if vni not in self.vnis:
                    del self.members[vni]
                    self.applied.pop(vni, None)
        self.round += 1
        template = Register(
            self.seq.next(),
            self.hold_time if hold is None else hold,
            self.registry,
            self.round,
            0,
            1,
            (),
            max_version=self.reads,
        )
        entries = [VniEntry(v, a, self.applied.get(v, 0)) for v, a in sorted(self.vnis.items())]
        for part in split_register(self.codec, template, entries, self.seq.many()):
            self.send(self.codec.encode(part))

    def withdraw(self) -> None:
        self.register(hold=0)

    def start_refresh(self, interval: float | None = None) -> None:
        """Re-register every `interval` (default hold/3) like vxrd."""
        period = self.hold_time / 3 if interval is None else interval

        async def loop() -> None:
            while True:
                await asyncio.sleep(period)
                self.register()

        self._refresher = asyncio.ensure_future(loop())

    def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        if self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------ receiving

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        if self.loss and self.rng.random() < self.loss:
            self.stats.dropped_in += 1
            return
        self.stats.received += 1
        if len(data) > 2:
            self.stats.versions[data[2]] = self.stats.versions.get(data[2], 0) + 1
        try:
            msg: object = fast_decode(data) if self.fast else self.codec.decode(data)
        except (Rejected, ValueError, KeyError, TypeError):
            self.stats.rejected += 1
            return
        if isinstance(msg, Refusal):
            self.refusals.append(msg)
            return
        if not isinstance(msg, Membership | RawMembership):
            self.stats.rejected += 1
            return
        self._membership(msg)

    def _membership(self, m: Membership | RawMembership) -> None:
        if m.registry != self.registry:  # a (new) registry: start over
            self.registry = m.registry
            self.members.clear()
            self.applied.clear()
            self._parts.clear()
        if m.vni not in self.vnis:
            return
        applied = self.applied.get(m.vni, 0)
        if m.generation <= applied:
            self._ack(m.vni)  # duplicate: re-ack
            return
        if m.parts > 1:
            key = (m.vni, m.generation, m.base)
            entry = self._parts.setdefault(key, _Parts(m.parts))
            entry.got[m.part] = m
            if len(entry.got) < entry.parts:
                return
            del self._parts[key]
            parts = [entry.got[i] for i in range(entry.parts)]
            add = set().union(*(p.add for p in parts))
            remove = set().union(*(p.remove for p in parts))
        else:
            add, remove = set(m.add), set(m.remove)
        if m.base is None:
            self.members[m.vni] = add
        elif m.base == applied:  # in place: O(delta), not a copy of a big member set
            held = self.members.setdefault(m.vni, set())
            held -= remove
            held |= add
        else:
            return  # delta from a base we do not hold: the next register fixes it
        self.applied[m.vni] = m.generation
        for key in [k for k in self._parts if k[0] == m.vni and k[1] <= m.generation]:
            del self._parts[key]
        self._ack(m.vni)
        self.changed.set()
        if self.on_change is not None:
            self.on_change()

    def _ack(self, vni: int) -> None:
        self.stats.acks += 1
        ack = Ack(self.seq.next(), self.registry, ((vni, self.applied[vni]),))
        self.send(self.codec.encode(ack))

    # ------------------------------------------------------------ waiting

    def peers(self, vni: int) -> set[Any]:
        """Members of `vni` other than this agent's own VTEP (what vxrd programs)."""
        own = self.vnis.get(vni)
        mine = {own.packed if self.fast else own} if own is not None else set()
        return self.members.get(vni, set()) - mine


async def wait_until(
    predicate: Callable[[], bool], deadline_s: float, what: str = "condition", poll: float = 0.01
) -> float:
    """Poll `predicate` until true; return the seconds it took, fail after `deadline_s`."""
    start = time.monotonic()
    deadline = start + deadline_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {deadline_s}s waiting for {what}")
        await asyncio.sleep(poll)
    return time.monotonic() - start


def with_env(msg: Register, env: Envelope) -> Register:
    return replace(msg, env=env)
