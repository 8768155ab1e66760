"""vxrd against the real kernel: VXLAN devices in a fresh network namespace, a fake
service node speaking the schema codec over loopback UDP.

Most tests run the agent in-process (`serve` with `Kernel(netns=NS)`); its UDP
socket then lives in the host namespace and the fake server listens on the host's
127.0.0.1. The signal and vxrdctl tests run `python -m vxrd` through
`ip netns exec`, with the fake server's socket created inside the namespace.
Every wait is a poll under a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from tests.conftest import require_root
from vxflood.schema.keys import Key, Keyring
from vxflood.schema.wire import Ack, Codec, Membership, Register, Sequencer, address
from vxrd.agent import Agent
from vxrd.cli import serve
from vxrd.config import Config, ServerAddr
from vxrd.kernel import NO_NET_ADMIN, Kernel
from vxrd.model import Address, ApplyError, ApplyResult, FdbChanged, FloodDiff, Resync

REPO = Path(__file__).resolve().parents[2]
ZERO = "00:00:00:00:00:00"
OWN = "10.77.0.1"
_names = itertools.count()


# ------------------------------------------------------------------ helpers


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True)


async def arun(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{args}: {err.decode()}")
    return out.decode()


async def flood(ns: str, dev: str) -> set[str]:
    """The all-zero destinations on a device, as `bridge` reports them."""
    out = await arun("bridge", "-n", ns, "-j", "fdb", "show", "dev", dev)
    return {e["dst"] for e in json.loads(out or "[]") if e.get("mac") == ZERO and "dst" in e}


async def until(
    check: Callable[[], Awaitable[bool]], within: float = 3.0, what: str = "condition"
) -> float:
    """Poll `check` until true; return the seconds it took, fail after `within` s."""
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        if time.monotonic() - start > within:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


async def has_flood(ns: str, dev: str, expected: set[str], within: float = 3.0) -> float:
    async def check() -> bool:
        return await flood(ns, dev) == expected

    return await until(check, within, f"{dev} flood list == {sorted(expected)}")


def add_vxlan(ns: str, name: str, vni: int, *extra: str, up: bool = True) -> None:
    run("ip", "-n", ns, "link", "add", name, "type", "vxlan", "id", str(vni), *extra)
    if up:
        run("ip", "-n", ns, "link", "set", name, "up")


def local_vxlan(ns: str, name: str, vni: int, local: str = OWN, up: bool = True) -> None:
    add_vxlan(ns, name, vni, "local", local, "dstport", "4789", "nolearning", up=up)


@pytest.fixture
def ns() -> Iterator[str]:
    require_root()
    name = f"vxrdt{os.getpid()}x{next(_names)}"
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)


def socket_in(ns: str | None) -> socket.socket:
    """A UDP socket on 127.0.0.1 (any port), created inside `ns` when given."""
    if ns is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    else:
        from pyroute2 import netns as pr_netns

        pr_netns.pushns(ns)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        finally:
            pr_netns.popns()
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


# ------------------------------------------------------------------ fake vxsnd


class FakeServer(asyncio.DatagramProtocol):
    """Records what the agent sends; sends memberships back to the register source."""

    def __init__(self, keyring: Keyring | None = None) -> None:
        self.codec = Codec(keyring)
        self.seq = Sequencer("fake-snd")
        self.registers: list[Register] = []
        self.acks: list[Ack] = []
        self.peer: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.changed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        msg = self.codec.decode(data)
        if isinstance(msg, Register):
            self.registers.append(msg)
            self.peer = (addr[0], addr[1])
        elif isinstance(msg, Ack):
            self.acks.append(msg)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def vnis(self, reg: Register) -> dict[int, tuple[str, int]]:
        return {e.vni: (str(e.local), e.applied) for e in reg.vnis}

    async def wait_register(
        self, pred: Callable[[Register], bool], within: float = 3.0, after: int = 0
    ) -> Register:
        found: list[Register] = []

        async def check() -> bool:
            found[:] = [r for r in self.registers[after:] if pred(r)]
            return bool(found)

        await until(check, within, "a matching register")
        return found[0]

    async def wait_ack(self, vni: int, gen: int, within: float = 3.0) -> None:
        async def check() -> bool:
            return any((vni, gen) in a.applied for a in self.acks)

        await until(check, within, f"ack of VNI {vni} generation {gen}")

    def membership(
        self,
        vni: int,
        gen: int,
        add: tuple[str, ...],
        remove: tuple[str, ...] = (),
        base: int | None = None,
        registry: str = "reg-1",
        codec: Codec | None = None,
    ) -> bytes:
        msg = Membership(
            self.seq.next(),
            registry,
            vni,
            gen,
            base,
            tuple(address(a) for a in add),
            tuple(address(a) for a in remove),
        )
        return (codec or self.codec).encode(msg)

    def send(self, data: bytes) -> None:
        assert self.transport is not None and self.peer is not None
        self.transport.sendto(data, self.peer)


@contextlib.asynccontextmanager
async def fake_server(
    keyring: Keyring | None = None, in_ns: str | None = None
) -> AsyncIterator[FakeServer]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: FakeServer(keyring), sock=socket_in(in_ns)
    )
    try:
        yield proto
    finally:
        transport.close()


@dataclass
class Running:
    task: asyncio.Task[Agent]
    stop: asyncio.Event
    config: Config

    async def finish(self, within: float = 5.0) -> Agent:
        self.stop.set()
        return await asyncio.wait_for(self.task, within)


@contextlib.asynccontextmanager
async def agent(
    ns: str, server: FakeServer, tmp_path: Path, keyring: Keyring | None = None, **options: Any
) -> AsyncIterator[Running]:
    config = Config(
        servers=(ServerAddr("127.0.0.1", server.port),),
        node_id="node-a",
        status_socket=tmp_path / "vxrd.sock",
        **options,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, Kernel(netns=ns), keyring, stop=stop, signals=False))
    running = Running(task, stop, config)
    try:
        yield running
    finally:
        if not task.done():
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5.0)
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def ctl(sock: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vxrd.ctl",
        "--socket",
        str(sock),
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def serves(vni: int) -> Callable[[Register], bool]:
    return lambda r: any(e.vni == vni for e in r.vnis)


# ------------------------------------------------------------------ tests


async def test_registers_programs_and_follows_deltas(ns: str, tmp_path: Path) -> None:
    local_vxlan(ns, "vx100", 100)
    async with fake_server() as srv, agent(ns, srv, tmp_path):
        reg = await srv.wait_register(serves(100))
        assert reg.hold_time == 90 and reg.registry == "" and reg.parts == 1
        assert srv.vnis(reg) == {100: (OWN, 0)}
        assert reg.env.sender == "node-a"

        srv.send(srv.membership(100, 1, (OWN, "10.77.0.2", "10.77.0.3")))
        took = await has_flood(ns, "vx100", {"10.77.0.2", "10.77.0.3"})  # never OWN
        await srv.wait_ack(100, 1)
        print(f"snapshot -> kernel: {took * 1000:.1f} ms (incl. polling)")

        srv.send(srv.membership(100, 2, ("10.77.0.4",), ("10.77.0.3",), base=1))
        await has_flood(ns, "vx100", {"10.77.0.2", "10.77.0.4"})
        await srv.wait_ack(100, 2)
        # a delta whose base is not what we applied changes nothing, and is answered
        # with an ack of the generation we are at
        n_acks = len(srv.acks)
        srv.send(srv.membership(100, 9, ("10.77.0.9",), base=7))
        await until(lambda: _true(len(srv.acks) > n_acks), what="re-ack")
        assert srv.acks[-1].applied == ((100, 2),)
        assert await flood(ns, "vx100") == {"10.77.0.2", "10.77.0.4"}


async def _true(value: bool) -> bool:
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def scrape(port: int) -> dict[str, float]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        assert resp.status == 200
        text = await resp.text()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def test_repairs_hand_changes_within_a_second(ns: str, tmp_path: Path) -> None:
    local_vxlan(ns, "vx100", 100)
    port = free_port()
    async with fake_server() as srv, agent(ns, srv, tmp_path, metrics=("127.0.0.1", port)):
        await srv.wait_register(serves(100))
        srv.send(srv.membership(100, 1, ("10.77.0.2", "10.77.0.3")))
        await has_flood(ns, "vx100", {"10.77.0.2", "10.77.0.3"})

        run("bridge", "-n", ns, "fdb", "del", ZERO, "dev", "vx100", "dst", "10.77.0.2")
        took = await has_flood(ns, "vx100", {"10.77.0.2", "10.77.0.3"}, within=1.0)
        print(f"hand-deleted entry restored in {took * 1000:.1f} ms")

        run("bridge", "-n", ns, "fdb", "append", ZERO, "dev", "vx100", "dst", "10.77.0.66")
        took = await has_flood(ns, "vx100", {"10.77.0.2", "10.77.0.3"}, within=1.0)
        print(f"hand-added entry removed in {took * 1000:.1f} ms")
        m = await scrape(port)
        assert m["vxrd_reconcile_repairs_total"] == 2
        assert m["vxrd_fdb_adds_total"] == 3 and m["vxrd_fdb_removes_total"] == 1
        assert m["vxrd_apply_seconds_count"] >= 3
        assert 0 <= m[f'vxrd_server_last_contact_seconds{{server="127.0.0.1:{srv.port}"}}'] < 60


class CountingKernel(Kernel):
    """Kernel that records every flood-entry dump (None for a full one, else the
    ifindex) and what read_fdb() returned, and can fail the next synchronous write."""

    def __init__(self, netns: str) -> None:
        super().__init__(netns)
        self.dumps: list[int | None] = []
        self.echoes: list[FdbChanged | Resync] = []
        self.fail_next = False

    async def flood_entries(self, ifindex: int | None = None) -> dict[int, set[Address]]:
        self.dumps.append(ifindex)
        return await super().flood_entries(ifindex)

    def read_fdb(self) -> list[FdbChanged | Resync]:
        events = super().read_fdb()
        self.echoes += events
        return events

    def apply_now(self, changes: Mapping[int, FloodDiff]) -> ApplyResult | None:
        if self.fail_next:  # as the kernel refusing every add: nothing written
            self.fail_next = False
            errors = [
                ApplyError(i, a, errno.EIO, "injected") for i, d in changes.items() for a in d.add
            ]
            return ApplyResult(errors=errors)
        return super().apply_now(changes)


async def test_mirror_follows_hand_changes_and_repairs_without_dumps(
    ns: str, tmp_path: Path
) -> None:
    """After the first dump the agent knows the kernel from fdb events alone: a
    hand-made entry shows up in its mirror, membership changes and repairs are
    written from the mirror, and none of it reads the flood list again."""
    local_vxlan(ns, "vx100", 100)
    async with fake_server() as srv:
        config = Config(
            servers=(ServerAddr("127.0.0.1", srv.port),),
            node_id="node-a",
            status_socket=tmp_path / "vxrd.sock",
        )
        kern = CountingKernel(ns)
        agent_ = Agent(config, kern)
        await agent_.open()
        task = asyncio.create_task(agent_.run())
        try:
            await srv.wait_register(serves(100))
            await until(lambda: _true(kern.dumps == [None]), what="the first (full) dump")
            (idx,) = agent_.devices

            def mirror() -> set[str]:
                return {str(a) for a in agent_.mirror.get(idx)}

            # no server has answered: the agent adopts the entry, its mirror follows
            run("bridge", "-n", ns, "fdb", "append", ZERO, "dev", "vx100", "dst", "10.77.0.50")
            await until(lambda: _true(mirror() == {"10.77.0.50"}), what="mirror has the entry")

            srv.send(srv.membership(100, 1, ("10.77.0.2", "10.77.0.3")))
            await has_flood(ns, "vx100", {"10.77.0.2", "10.77.0.3"})

            run("bridge", "-n", ns, "fdb", "del", ZERO, "dev", "vx100", "dst", "10.77.0.2")
            run("bridge", "-n", ns, "fdb", "append", ZERO, "dev", "vx100", "dst", "10.77.0.66")
            repairs = "vxrd_reconcile_repairs_total"
            await until(
                lambda: _true(agent_.metrics.registry.get_sample_value(repairs) == 2),
                what="two repairs",
            )
            await has_flood(ns, "vx100", {"10.77.0.2", "10.77.0.3"}, within=1.0)
            await until(lambda: _true(mirror() == {"10.77.0.2", "10.77.0.3"}), what="mirror")
            assert kern.dumps == [None]

            await agent_._tick()  # the reconcile timer reads everything again
            await until(lambda: _true(kern.dumps == [None, None]), what="the timer's dump")
            assert mirror() == await flood(ns, "vx100")
        finally:
            agent_.stop.set()
            await asyncio.wait_for(task, 5.0)
            await agent_.close()


@contextlib.asynccontextmanager
async def running_agent(
    ns: str, srv: FakeServer, tmp_path: Path, kern: Kernel | None = None
) -> AsyncIterator[Agent]:
    """An Agent run in-process (open, run) for tests that reach into it."""
    config = Config(
        servers=(ServerAddr("127.0.0.1", srv.port),),
        node_id="node-a",
        status_socket=tmp_path / "vxrd.sock",
    )
    agent_ = Agent(config, kern or Kernel(netns=ns))
    await agent_.open()
    task = asyncio.create_task(agent_.run())
    try:
        yield agent_
    finally:
        agent_.stop.set()
        await asyncio.wait_for(task, 5.0)
        await agent_.close()


async def settled(agent_: Agent, srv: FakeServer, ns: str) -> int:
    """Register, answer with a snapshot, wait for it in the kernel and the ack;
    return the device's ifindex."""
    await srv.wait_register(serves(100))
    srv.send(srv.membership(100, 1, ("10.77.0.2", "10.77.0.3")))
    await has_flood(ns, "vx100", {"10.77.0.2", "10.77.0.3"})
    await srv.wait_ack(100, 1)
    await until(lambda: _true(not agent_._lock.locked()), what="the reconciler idle")
    (idx,) = agent_.devices
    return idx


async def test_membership_change_is_written_and_acked_in_the_datagram_callback(
    ns: str, tmp_path: Path
) -> None:
    """The hot path: a delta is decoded, written to the kernel and acked inside
    the callback that received it, without the reconciler task; the echo of
    the write is read there too."""
    local_vxlan(ns, "vx100", 100)
    kern = CountingKernel(ns)
    async with fake_server() as srv, running_agent(ns, srv, tmp_path, kern) as agent_:
        idx = await settled(agent_, srv, ns)
        runs = agent_.reconciles
        kern.echoes.clear()
        (client,) = agent_.clients
        data = srv.membership(100, 2, ("10.77.0.4",), ("10.77.0.2",), base=1)
        agent_.datagram(client, data, "127.0.0.1")
        # no await since: written, recorded, echo read, ack sent
        assert agent_._pending_acks == {}
        assert {str(a) for a in agent_.mirror.get(idx)} == {"10.77.0.3", "10.77.0.4"}
        heard = [ev for ev in kern.echoes if isinstance(ev, FdbChanged)]
        assert {(str(c.address), c.present) for ev in heard for c in ev.changes} == {
            ("10.77.0.2", False),
            ("10.77.0.4", True),
        }
        assert await flood(ns, "vx100") == {"10.77.0.3", "10.77.0.4"}
        await srv.wait_ack(100, 2)

        # the same over the socket
        srv.send(srv.membership(100, 3, ("10.77.0.5",), base=2))
        await srv.wait_ack(100, 3)
        assert await flood(ns, "vx100") == {"10.77.0.3", "10.77.0.4", "10.77.0.5"}
        assert agent_.reconciles == runs


async def test_membership_change_falls_back_to_the_reconciler(ns: str, tmp_path: Path) -> None:
    """Whenever the change cannot be written at once, the reconciler task does it
    and acks: a reconcile in progress, the request socket busy, the mirror not
    trusted, a write that failed (the device is read again first)."""
    local_vxlan(ns, "vx100", 100)
    kern = CountingKernel(ns)
    async with fake_server() as srv, running_agent(ns, srv, tmp_path, kern) as agent_:
        idx = await settled(agent_, srv, ns)
        runs = agent_.reconciles
        (client,) = agent_.clients
        want = {"10.77.0.2", "10.77.0.3"}
        gen = 1

        def push(peer: str) -> None:
            nonlocal gen
            gen += 1
            want.add(peer)
            agent_.datagram(client, srv.membership(100, gen, (peer,), base=gen - 1), "127.0.0.1")

        async with agent_._lock:  # a reconcile (or leave) in progress
            push("10.77.0.4")
            assert agent_._pending_acks == {0: {100: gen}}
            await asyncio.sleep(0.05)
            assert await flood(ns, "vx100") == want - {"10.77.0.4"}
        await srv.wait_ack(100, gen)
        assert await flood(ns, "vx100") == want and agent_.reconciles - runs == 1

        async with kern._nl._lock:  # the request socket is waiting for a dump
            push("10.77.0.5")
            assert agent_._pending_acks == {0: {100: gen}}
        await srv.wait_ack(100, gen)
        assert await flood(ns, "vx100") == want and agent_.reconciles - runs == 2

        agent_.mirror.invalidate()  # events lost, or the timer: read everything first
        push("10.77.0.6")
        assert agent_._pending_acks == {0: {100: gen}}
        await srv.wait_ack(100, gen)
        assert await flood(ns, "vx100") == want and agent_.reconciles - runs == 3
        assert kern.dumps == [None, None]

        kern.fail_next = True
        push("10.77.0.7")  # nothing written, and not acked
        assert agent_._pending_acks == {0: {100: gen}} and idx in agent_.mirror.stale()
        await srv.wait_ack(100, gen)
        assert await flood(ns, "vx100") == want and agent_.reconciles - runs == 4
        assert kern.dumps == [None, None, idx]  # the failed device read again
        assert agent_.metrics.registry.get_sample_value("vxrd_fdb_errors_total") == 1

        push("10.77.0.8")  # and the fast path is back
        assert agent_._pending_acks == {}
        await srv.wait_ack(100, gen)
        assert await flood(ns, "vx100") == want and agent_.reconciles - runs == 4


async def test_adopts_kernel_entries_until_a_server_answers(ns: str, tmp_path: Path) -> None:
    local_vxlan(ns, "vx100", 100)
    run("bridge", "-n", ns, "fdb", "append", ZERO, "dev", "vx100", "dst", "10.77.0.50")
    async with fake_server() as srv, agent(ns, srv, tmp_path, reconcile_interval=0.1):
        await srv.wait_register(serves(100))
        # several timer reconciles pass; with no answer nothing is removed
        _, out, _ = await ctl(tmp_path / "vxrd.sock", "--json", "status")
        first = json.loads(out)["last_reconcile"]

        async def reconciled_again() -> bool:
            _, out, _ = await ctl(tmp_path / "vxrd.sock", "--json", "status")
            return bool(json.loads(out)["last_reconcile"] != first)

        await until(reconciled_again, what="a timer reconcile")
        assert await flood(ns, "vx100") == {"10.77.0.50"}
        srv.send(srv.membership(100, 1, ("10.77.0.2",)))
        await has_flood(ns, "vx100", {"10.77.0.2"})


async def test_fail_static_when_server_silent_and_on_stop(ns: str, tmp_path: Path) -> None:
    local_vxlan(ns, "vx100", 100)
    async with fake_server() as srv, agent(ns, srv, tmp_path, hold_time=3) as run_:
        await srv.wait_register(serves(100))
        srv.send(srv.membership(100, 1, ("10.77.0.2",)))
        await has_flood(ns, "vx100", {"10.77.0.2"})
        # the server never answers again: refreshes go out (every hold/3 = 1 s), the
        # flood list stays
        n = len(srv.registers)
        await srv.wait_register(lambda r: True, after=n, within=2.5)
        await srv.wait_register(lambda r: True, after=n + 1, within=2.5)
        assert await flood(ns, "vx100") == {"10.77.0.2"}
        refresh = srv.registers[-1]
        assert srv.vnis(refresh) == {100: (OWN, 1)} and refresh.registry == "reg-1"
        agent_obj = await run_.finish()
    assert agent_obj.left is None
    assert await flood(ns, "vx100") == {"10.77.0.2"}
    assert not (tmp_path / "vxrd.sock").exists()


async def test_leave_withdraws_and_flushes(ns: str, tmp_path: Path) -> None:
    local_vxlan(ns, "vx100", 100)
    add_vxlan(ns, "vx300", 300, "group", "239.1.1.1", "dev", "lo", "dstport", "4789")
    async with fake_server() as srv, agent(ns, srv, tmp_path) as run_:
        await srv.wait_register(serves(100))
        srv.send(srv.membership(100, 1, ("10.77.0.2", "10.77.0.3")))
        await has_flood(ns, "vx100", {"10.77.0.2", "10.77.0.3"})
        n = len(srv.registers)
        rc, out, err = await ctl(tmp_path / "vxrd.sock", "leave")
        assert rc == 0, err
        assert "flushed 2 flood entries on 1 device(s)" in out
        bye = await srv.wait_register(lambda r: r.hold_time == 0, after=n)
        assert bye.vnis == ()
        await asyncio.wait_for(run_.task, 5.0)
    assert await flood(ns, "vx100") == set()
    assert await flood(ns, "vx300") == {"239.1.1.1"}  # not ours, untouched


async def test_flush_on_exit(ns: str, tmp_path: Path) -> None:
    local_vxlan(ns, "vx100", 100)
    async with fake_server() as srv, agent(ns, srv, tmp_path, flush_on_exit=True) as run_:
        await srv.wait_register(serves(100))
        srv.send(srv.membership(100, 1, ("10.77.0.2",)))
        await has_flood(ns, "vx100", {"10.77.0.2"})
        n = len(srv.registers)
        done = await run_.finish()
        assert done.left is not None and done.left["flushed"] == 1
        assert any(r.hold_time == 0 for r in srv.registers[n:])
    assert await flood(ns, "vx100") == set()


async def test_device_down_withdraws_at_once_keeps_entries(ns: str, tmp_path: Path) -> None:
    local_vxlan(ns, "vx100", 100)
    local_vxlan(ns, "vx200", 200)
    async with fake_server() as srv, agent(ns, srv, tmp_path):
        await srv.wait_register(lambda r: set(srv.vnis(r)) == {100, 200})
        srv.send(srv.membership(200, 1, ("10.77.0.2",)))
        await has_flood(ns, "vx200", {"10.77.0.2"})
        n = len(srv.registers)
        t0 = time.monotonic()
        run("ip", "-n", ns, "link", "set", "vx200", "down")
        reg = await srv.wait_register(lambda r: set(srv.vnis(r)) == {100}, after=n, within=2.0)
        print(f"down -> register without VNI 200: {(time.monotonic() - t0) * 1000:.1f} ms")
        assert reg.hold_time == 90
        assert await flood(ns, "vx200") == {"10.77.0.2"}  # kept while it exists

        n = len(srv.registers)
        run("ip", "-n", ns, "link", "set", "vx200", "up")
        reg = await srv.wait_register(lambda r: 200 in srv.vnis(r), after=n, within=2.0)
        assert srv.vnis(reg)[200] == (OWN, 1)

        n = len(srv.registers)
        run("ip", "-n", ns, "link", "del", "vx200")
        await srv.wait_register(lambda r: set(srv.vnis(r)) == {100}, after=n, within=2.0)

        n = len(srv.registers)
        local_vxlan(ns, "vx201", 201)
        await srv.wait_register(lambda r: set(srv.vnis(r)) == {100, 201}, after=n, within=2.0)


async def test_ignores_multicast_and_unaddressed_devices(ns: str, tmp_path: Path) -> None:
    local_vxlan(ns, "vx100", 100)
    add_vxlan(ns, "vx300", 300, "group", "239.1.1.1", "dev", "lo", "dstport", "4789")
    add_vxlan(ns, "vx400", 400, "dstport", "4789", "nolearning")  # no local address
    add_vxlan(ns, "skip500", 500, "local", OWN, "dstport", "4789", "nolearning")
    async with fake_server() as srv, agent(ns, srv, tmp_path, exclude=("skip*",)):
        reg = await srv.wait_register(serves(100))
        assert set(srv.vnis(reg)) == {100}
        srv.send(srv.membership(300, 1, ("10.77.0.2",)))
        srv.send(srv.membership(100, 1, ("10.77.0.3",)))
        await has_flood(ns, "vx100", {"10.77.0.3"})
        assert await flood(ns, "vx300") == {"239.1.1.1"}
        assert await flood(ns, "vx400") == set()
        rc, out, err = await ctl(tmp_path / "vxrd.sock", "--json", "devices")
        assert rc == 0, err
        states = {d["name"]: (d["state"], d["reason"]) for d in json.loads(out)}
        assert states["vx100"] == ("managed", None)
        assert "multicast group 239.1.1.1" in states["vx300"][1]
        assert "no local address" in states["vx400"][1]
        assert "excluded" in states["skip500"][1]
        _, out, _ = await ctl(tmp_path / "vxrd.sock", "--json", "status")
        assert json.loads(out)["servers"][0]["dropped"] == {"not-for-us": 1}


async def test_local_option_manages_unaddressed_devices(ns: str, tmp_path: Path) -> None:
    add_vxlan(ns, "vx400", 400, "dstport", "4789", "nolearning")
    async with fake_server() as srv, agent(ns, srv, tmp_path, local=address("10.77.0.9")):
        reg = await srv.wait_register(serves(400))
        assert srv.vnis(reg) == {400: ("10.77.0.9", 0)}
        srv.send(srv.membership(400, 1, ("10.77.0.9", "10.77.0.2")))
        await has_flood(ns, "vx400", {"10.77.0.2"})


async def test_ignores_unexpected_source_and_bad_tags(ns: str, tmp_path: Path) -> None:
    local_vxlan(ns, "vx100", 100)
    key = Keyring([Key("k1", bytes(range(32)))])
    wrong = Codec(Keyring([Key("k1", bytes(32))]))
    async with fake_server(key) as srv, agent(ns, srv, tmp_path, keyring=key):
        await srv.wait_register(serves(100))
        assert srv.peer is not None
        # right key, wrong source address (127.0.0.2 is loopback too)
        intruder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            intruder.bind(("127.0.0.2", 0))
            intruder.sendto(srv.membership(100, 1, ("10.77.0.66",)), srv.peer)
        finally:
            intruder.close()
        srv.send(srv.membership(100, 2, ("10.77.0.67",), codec=wrong))  # bad tag
        srv.send(srv.membership(100, 3, ("10.77.0.68",), codec=Codec()))  # unsigned

        async def all_dropped() -> bool:
            _, out, _ = await ctl(tmp_path / "vxrd.sock", "--json", "status")
            drops = json.loads(out)["servers"][0]["dropped"]
            return bool(drops == {"unexpected-source": 1, "bad-tag": 1, "unsigned": 1})

        await until(all_dropped, what="three drops counted")
        assert await flood(ns, "vx100") == set()
        assert srv.acks == []
        srv.send(srv.membership(100, 4, ("10.77.0.2",)))
        await has_flood(ns, "vx100", {"10.77.0.2"})
        await srv.wait_ack(100, 4)


async def test_union_of_two_servers(ns: str, tmp_path: Path) -> None:
    local_vxlan(ns, "vx100", 100)
    async with fake_server() as s1, fake_server() as s2:
        config = Config(
            servers=(ServerAddr("127.0.0.1", s1.port), ServerAddr("127.0.0.1", s2.port)),
            node_id="node-a",
            status_socket=tmp_path / "vxrd.sock",
        )
        stop = asyncio.Event()
        task = asyncio.create_task(serve(config, Kernel(netns=ns), stop=stop, signals=False))
        try:
            await s1.wait_register(serves(100))
            await s2.wait_register(serves(100))
            s1.send(s1.membership(100, 1, ("10.77.0.2", "10.77.0.3"), registry="a"))
            await has_flood(ns, "vx100", {"10.77.0.2", "10.77.0.3"})
            s2.send(s2.membership(100, 5, ("10.77.0.3", "10.77.0.4"), registry="b"))
            await has_flood(ns, "vx100", {"10.77.0.2", "10.77.0.3", "10.77.0.4"})
            s1.send(s1.membership(100, 2, (), ("10.77.0.2", "10.77.0.3"), base=1, registry="a"))
            await has_flood(ns, "vx100", {"10.77.0.3", "10.77.0.4"})
            rc, out, err = await ctl(tmp_path / "vxrd.sock", "--json", "peers", "100")
            assert rc == 0, err
            (peer,) = json.loads(out)
            assert peer["members"] == ["10.77.0.3", "10.77.0.4"]
            assert set(peer["servers"]) == {f"127.0.0.1:{s1.port}", f"127.0.0.1:{s2.port}"}
        finally:
            stop.set()
            await asyncio.wait_for(task, 5.0)


async def test_agent_started_before_the_server_converges_soon_after_it_starts(
    ns: str, tmp_path: Path
) -> None:
    """Unanswered register rounds are retried (0.5 s, 1 s, 2 s, ...), not left until
    the next refresh (hold/3 = 30 s here): a real vxsnd started 2 s after the agent."""
    from tests.integration.agent_sim import Agent as SimAgent
    from tests.integration.vxsnd_harness import make_config, running
    from vxsnd.config import ListenAddr

    local_vxlan(ns, "vx100", 100)
    port = free_port()
    config = Config(
        servers=(ServerAddr("127.0.0.1", port),),
        node_id="node-a",
        status_socket=tmp_path / "vxrd.sock",
    )
    assert config.refresh_interval == 30
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, Kernel(netns=ns), stop=stop, signals=False))
    try:
        await asyncio.sleep(2.0)  # nobody listens: the first rounds are lost
        rc, out, err = await ctl(tmp_path / "vxrd.sock", "--json", "status")
        assert rc == 0, err
        (server,) = json.loads(out)["servers"]
        assert server["answered"] is False and server["last_contact"] is None
        cfg = make_config(
            f"sqlite:///{tmp_path / 'registry.db'}",
            listen=(ListenAddr("127.0.0.1", port),),
        )
        async with running(cfg):
            peer = await SimAgent.create("node-b", ("127.0.0.1", port))
            peer.register({100: address("10.77.0.2")})
            took = await has_flood(ns, "vx100", {"10.77.0.2"}, within=6.0)
            print(f"server up -> flood list: {took:.2f} s")
            assert took < 4.0
            await until(
                lambda: _true(peer.members.get(100) == {address(OWN), address("10.77.0.2")}),
                what="the agent's registration pushed to the peer",
            )
            rc, out, err = await ctl(tmp_path / "vxrd.sock", "--json", "status")
            (server,) = json.loads(out)["servers"]
            assert server["answered"] is True and server["registry"] is not None
            peer.close()
    finally:
        stop.set()
        await asyncio.wait_for(task, 5.0)


# ------------------------------------------------------------------ the real process


async def start_vxrd(
    ns: str, srv: FakeServer, sock: Path, *args: str
) -> asyncio.subprocess.Process:
    """`python -m vxrd` in `ns` against `srv`, stderr piped (communicate() reads it)."""
    return await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, sys.executable, "-m", "vxrd",
        "--server", f"127.0.0.1:{srv.port}", "--status-socket", str(sock), *args,
        stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO,
    )  # fmt: skip


async def test_process_sigterm_keeps_entries_and_vxrdctl(ns: str, tmp_path: Path) -> None:
    local_vxlan(ns, "vx100", 100)
    sock = tmp_path / "vxrd.sock"
    async with fake_server(in_ns=ns) as srv:
        proc = await start_vxrd(ns, srv, sock, "--node-id", "proc-a")
        try:
            await srv.wait_register(serves(100), within=10.0)
            srv.send(srv.membership(100, 1, ("10.77.0.2",)))
            await has_flood(ns, "vx100", {"10.77.0.2"})

            async def answers() -> bool:
                return (await ctl(sock, "--json", "status"))[0] == 0

            await until(answers, what="the status socket")
            assert oct(sock.stat().st_mode & 0o777) == oct(0o660)
            rc, out, err = await ctl(sock, "--json", "status")
            status = json.loads(out)
            assert status["node_id"] == "proc-a"
            (server,) = status["servers"]
            assert server["registry"] == "reg-1" and server["seconds_since_contact"] < 60
            rc, out, err = await ctl(sock, "status")
            assert rc == 0 and "reg-1" in out and "proc-a" in out
            rc, out, err = await ctl(sock, "peers")
            assert rc == 0 and "10.77.0.2" in out

            proc.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(proc.communicate(), 10.0)
            assert proc.returncode == 0, stderr.decode()
            assert b"Traceback" not in stderr
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert await flood(ns, "vx100") == {"10.77.0.2"}
    rc, _, err = await ctl(sock, "status")
    assert rc == 3  # vxrdctl: 3 = vxrd not reachable (one set of codes with vxsndctl)
    assert err.startswith(f"vxrdctl: cannot reach vxrd at {sock}: ")
    assert err.strip().endswith("(is vxrd running?)")


async def test_process_sighup_reloads_the_key_file(ns: str, tmp_path: Path) -> None:
    """A membership signed only with a new key is refused until SIGHUP re-reads a key
    file that lists it; a broken file afterwards keeps the keys in force."""
    local_vxlan(ns, "vx100", 100)
    old, new = Key("old", bytes(range(32))), Key("new", bytes(range(100, 132)))
    key_file = tmp_path / "vxflood.keys"
    key_file.write_text(f"old {old.secret.hex()}\n")
    key_file.chmod(0o600)
    only_new = Codec(Keyring([new]))
    async with fake_server(Keyring([old, new]), in_ns=ns) as srv:
        proc = await start_vxrd(
            ns, srv, tmp_path / "s.sock", "--node-id", "proc-k", "--key-file", str(key_file)
        )
        try:
            await srv.wait_register(serves(100), within=10.0)
            srv.send(srv.membership(100, 1, ("10.77.0.2",)))
            await has_flood(ns, "vx100", {"10.77.0.2"})
            srv.send(srv.membership(100, 2, ("10.77.0.3",), base=1, codec=only_new))
            await asyncio.sleep(0.3)  # refused: vxrd does not know the new key yet
            assert await flood(ns, "vx100") == {"10.77.0.2"}

            key_file.write_text(f"new {new.secret.hex()}\nold {old.secret.hex()}\n")
            proc.send_signal(signal.SIGHUP)

            async def heard_new() -> bool:
                srv.send(srv.membership(100, 2, ("10.77.0.3",), base=1, codec=only_new))
                return await flood(ns, "vx100") == {"10.77.0.2", "10.77.0.3"}

            await until(heard_new, what="the new key to be accepted after SIGHUP")
            key_file.write_text("new not-hex\n")
            proc.send_signal(signal.SIGHUP)
            srv.send(srv.membership(100, 3, (), ("10.77.0.2",), base=2, codec=only_new))
            await has_flood(ns, "vx100", {"10.77.0.3"})  # still on the reloaded keys
            proc.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(proc.communicate(), 10.0)
            text = stderr.decode()
            assert proc.returncode == 0, text
            assert "keys reloaded" in text and "reload failed" in text
            assert "Traceback" not in text
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def test_process_without_cap_net_admin_refuses_to_start(tmp_path: Path) -> None:
    """Issue 10 item 6: without CAP_NET_ADMIN every flood-entry write would fail;
    vxrd says so in one line and exits 1 ("cannot start"; 2 is for configuration
    errors) before anything is served. It used to log "started" and then warn on
    every write."""
    require_root()
    argv = [
        *("setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin"),
        *(sys.executable, "-m", "vxrd", "--server", "127.0.0.1:9"),
        *("--status-socket", str(tmp_path / "vxrd.sock"), "--state-dir", str(tmp_path)),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "CAP_NET_ADMIN" in line]
    assert len(lines) == 1, proc.stderr
    assert lines[0].endswith(NO_NET_ADMIN) and "Traceback" not in proc.stderr
    assert "started" not in proc.stderr and not (tmp_path / "vxrd.sock").exists()
