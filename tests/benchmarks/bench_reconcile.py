"""The agent's cost per membership change on a device with many flood entries.

Run as root: `python -m tests.benchmarks.bench_reconcile [--entries 10 1000 4000 10000]
[--changes 50]` (`--pure-only`: the pure rows alone, no root needed).

Pure rows first (issue 11): vxrd's CPU per one-member delta, in process, over an
in-memory kernel (no netlink, no syscalls: the Python work alone). An Agent
with one or two configured servers is given a snapshot of N members (its own
address among them; with two servers both send it, each under a registry id
of its own), then one-member deltas (add one, remove it again), each an
encoded datagram handed to `Agent.datagram`, the transport's callback: decode,
checks, per-server state, plan, write (into a dict, its echo queued and read
back as the kernel's would be), Ack encoded. Reported: median CPU
(process_time) per delta at each N, and the ratio to the 10-member row of the
same run: near 1 means the cost does not grow with the VNI.

Kernel rows, per N: in a fresh network namespace, one VXLAN device; an in-process Agent (kernel
event stream and reconciler running, no service node: memberships are fed to
its client state directly) is given a snapshot of N peers, then a series of
one-peer deltas (add one, remove it again). Each change is reconciled with
`Agent.reconcile_now()` two ways, alternating, in the same run:

- mirror: what vxrd does on a membership change: diff against the mirror of
  the kernel's flood lists that fdb events keep current, write the one entry;
- full dump: the mirror invalidated first, so the reconcile reads every entry
  back from the kernel (one AF_BRIDGE dump) before the diff, as every reconcile
  did before the mirror (and as the periodic reconcile still does).

Reported per change: wall time of the reconcile (median and p90) and process
CPU (reconcile + handling the echoed fdb events + the delta itself; the CPU
between changes, while the loop idles for the echoes to arrive, is included),
and the user part of it (rusage; the rest is system time, mostly the kernel's
own work on the write: it walks the all-zero entry's list of destinations, so
that part grows with N whoever writes). The snapshot's echo is read before
the first measured change.
The ratio is full dump / mirror: above 1 means the mirror path is cheaper;
"/ first row" is the CPU against the mirror path's at the smallest N.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

from vxflood.schema.wire import Codec, Envelope, Membership, Sequencer, split_membership
from vxrd.agent import Agent
from vxrd.client import ServerClient
from vxrd.config import Config, ServerAddr
from vxrd.kernel import Address, Kernel
from vxrd.model import (
    ApplyResult,
    FdbChanged,
    FdbListener,
    FloodChange,
    FloodDiff,
    KernelEvent,
    Resync,
    VxlanDevice,
)

VNI = 100
LOCAL = "10.0.0.1"
ENV = Envelope("bench", 1, 1, 0)
SETTLE = 0.005  # seconds after each change for the fdb echoes to be read
SIZES = (10, 1_000, 4_000, 10_000)  # members per VNI in the pure rows


def run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")


def peers(count: int) -> list[Address]:
    base = ipaddress.ip_address("11.0.0.0")
    return [base + i for i in range(count)]


def _user() -> float:
    """User CPU of the process (rusage: its split from system time is sampled)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


async def settle(agent: Agent, ifindex: int, expect: int) -> None:
    """Wait until the mirror holds `expect` entries on the device."""
    deadline = time.monotonic() + 30
    while len(agent.mirror.get(ifindex)) != expect:
        if time.monotonic() > deadline:
            raise RuntimeError("mirror did not settle")
        await asyncio.sleep(0.01)


async def bench(ns: str, entries: int, changes: int) -> dict[str, dict[str, float]]:
    config = Config(
        servers=(ServerAddr("127.0.0.1", 9),),  # nobody answers; nothing is sent to us
        node_id="bench",
        reconcile_interval=3600.0,
    )
    agent = Agent(config, Kernel(ns))
    await agent.open()
    task = asyncio.create_task(agent.run())
    try:
        (ifindex,) = agent.devices
        client = agent.clients[0]
        gen = 1
        client.state.handle(
            Membership(ENV, "bench", VNI, gen, None, tuple(peers(entries)), ()), 0.0
        )
        await agent.reconcile_now()
        await settle(agent, ifindex, entries)
        # the echo of the snapshot's writes is read before the first measured change,
        # not in it (N notifications: that is the snapshot's cost, not a change's)
        while events := agent.kernel.read_fdb():
            for ev in events:
                agent._fdb_event(ev)
        extra = ipaddress.ip_address("12.0.0.1")
        wall: dict[str, list[float]] = {"mirror": [], "full dump": []}
        cpu: dict[str, float] = dict.fromkeys(wall, 0.0)
        user: dict[str, float] = dict.fromkeys(wall, 0.0)
        for i in range(changes * 2):
            mode = "mirror" if i % 2 == 0 else "full dump"
            add = (extra,) if (i // 2) % 2 == 0 else ()
            c0, u0 = time.process_time(), _user()
            gen += 1
            client.state.handle(
                Membership(ENV, "bench", VNI, gen, gen - 1, add, () if add else (extra,)), 0.0
            )
            if mode == "full dump":
                agent.mirror.invalidate()
            t0 = time.perf_counter()
            await agent.reconcile_now()
            wall[mode].append(time.perf_counter() - t0)
            await asyncio.sleep(SETTLE)
            cpu[mode] += time.process_time() - c0
            user[mode] += _user() - u0
            if len(agent.mirror.get(ifindex)) != entries + len(add):
                raise RuntimeError("the change did not reach the mirror")
        out = {}
        for mode, times in wall.items():
            times.sort()
            out[mode] = {
                "p50": statistics.median(times) * 1000,
                "p90": times[int(len(times) * 0.9)] * 1000,
                "cpu": cpu[mode] / len(times) * 1000,
                "user": user[mode] / len(times) * 1000,
            }
        return out
    finally:
        agent.stop.set()
        await asyncio.wait_for(task, 10)
        await agent.close()


# ---------------------------------------------------------------- pure rows (no kernel)


class MemoryKernel:
    """KernelPort in memory: one VXLAN device; a write changes a dict and queues
    its echo, which read_fdb() returns, as the kernel's notifications would."""

    def __init__(self) -> None:
        self.dev = VxlanDevice(1, "vx100", VNI, ipaddress.ip_address(LOCAL), 4789, None,
                               True, False, False)  # fmt: skip
        self.entries: dict[int, set[Address]] = {1: set()}
        self.echo: list[FloodChange] = []

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def list_vxlan(self) -> list[VxlanDevice]:
        return [self.dev]

    async def get_vxlan(self, ifindex: int) -> VxlanDevice | None:
        return self.dev if ifindex == 1 else None

    async def flood_entries(self, ifindex: int | None = None) -> dict[int, set[Address]]:
        return {i: set(a) for i, a in self.entries.items() if ifindex in (None, i) and a}

    async def apply(self, changes: Mapping[int, FloodDiff]) -> ApplyResult:
        return self.apply_now(changes)

    def apply_now(self, changes: Mapping[int, FloodDiff]) -> ApplyResult:
        added = removed = 0
        for ifindex, diff in changes.items():
            have = self.entries.setdefault(ifindex, set())
            for a in diff.remove:
                have.discard(a)
                self.echo.append(FloodChange(ifindex, a, False))
            for a in diff.add:
                have.add(a)
                self.echo.append(FloodChange(ifindex, a, True))
            added, removed = added + len(diff.add), removed + len(diff.remove)
        return ApplyResult(added, removed)

    def read_fdb(self) -> list[FdbChanged | Resync]:
        echo, self.echo = self.echo, []
        return [FdbChanged(tuple(echo))] if echo else []

    async def events(self, on_fdb: FdbListener | None = None) -> AsyncIterator[KernelEvent]:
        return
        yield  # an async generator that ends at once


class SocketlessClient(ServerClient):
    """A server client with its address set and no socket: what it sends is encoded
    (the Ack is part of the cost) and dropped."""

    async def _ensure_socket(self) -> bool:
        self.address = (self.server.host, self.server.port)
        return True


class PureAgent(Agent):
    client_class = SocketlessClient


async def pure_row(members: int, servers: int, changes: int, state_dir: Path) -> float:
    """Median CPU ms per one-member delta on a VNI of `members` members."""
    config = Config(
        servers=tuple(ServerAddr(f"192.0.2.{i + 1}", 10001) for i in range(servers)),
        node_id="bench",
        state_dir=state_dir,
        reconcile_interval=3600.0,
    )
    kernel = MemoryKernel()
    agent = PureAgent(config, kernel)
    await agent.open()
    await agent.reconcile_now()  # the first full read of the (empty) kernel
    codec = Codec()
    seqs = [Sequencer(f"snd{i}") for i in range(servers)]
    own = ipaddress.ip_address(LOCAL)
    snapshot = (own, *peers(members - 1))
    for i, (client, seq) in enumerate(zip(agent.clients, seqs, strict=True)):
        template = Membership(seq.next(), f"r{i}", VNI, 1, None, snapshot, ())
        for part in split_membership(codec, template, seq.many()):
            agent.datagram(client, codec.encode(part), client.server.host)
    if len(kernel.entries[1]) != members - 1:
        raise RuntimeError("the snapshot was not written")
    extra = ipaddress.ip_address("12.0.0.1")
    times: list[float] = []
    gens = [1] * servers
    for step in range(changes):
        add = (extra,) if step % 2 == 0 else ()
        for i, (client, seq) in enumerate(zip(agent.clients, seqs, strict=True)):
            gens[i] += 1  # every server sends the same change, one after the other
            msg = Membership(seq.next(), f"r{i}", VNI, gens[i], gens[i] - 1, add,
                             () if add else (extra,))  # fmt: skip
            data = codec.encode(msg)
            c0 = time.process_time()
            agent.datagram(client, data, client.server.host)
            times.append(time.process_time() - c0)
        if len(kernel.entries[1]) != members - 1 + len(add):
            raise RuntimeError("the change did not reach the kernel")
    await agent.close()
    return statistics.median(times) * 1000


def pure(sizes: Sequence[int], changes: int) -> None:
    """The pure rows: one and two servers, at every size."""
    print("vxrd CPU per one-member delta, in process, in-memory kernel (Agent.datagram)")
    print(f"{'members':>8}  {'servers':>7}  {'CPU ms/delta':>12}  {'/ 10-member row':>15}")
    with tempfile.TemporaryDirectory() as state_dir:
        for servers in (1, 2):
            first: float | None = None
            for n in sizes:
                cpu = asyncio.run(pure_row(n, servers, changes * 4, Path(state_dir)))
                first = cpu if first is None else first
                print(f"{n:>8,}  {servers:>7}  {cpu:>12.3f}  {cpu / first:>14.2f}x")


def kernel(ns: str, sizes: Sequence[int], changes: int) -> None:
    """The kernel rows: one namespace per size, both paths."""
    print("\none-peer membership change on a device with N flood entries (real kernel)")
    print(f"{'entries':>8}  {'path':<10}  {'wall p50 ms':>11}  {'wall p90 ms':>11}  "
          f"{'CPU ms/change':>13}  {'of it user':>10}  {'/ first row':>11}")  # fmt: skip
    first: float | None = None
    for n in sizes:
        name = f"{ns}-{n}"
        run("ip", "netns", "add", name)
        try:
            run("ip", "-n", name, "link", "add", "vx100", "type", "vxlan", "id", str(VNI),
                "local", LOCAL, "dstport", "4789", "nolearning")  # fmt: skip
            run("ip", "-n", name, "link", "set", "vx100", "up")
            res = asyncio.run(bench(name, n, changes))
        finally:
            subprocess.run(["ip", "netns", "del", name], check=False)
        first = res["mirror"]["cpu"] if first is None else first
        for mode, r in res.items():
            print(f"{n:>8,}  {mode:<10}  {r['p50']:>11.2f}  {r['p90']:>11.2f}  "
                  f"{r['cpu']:>13.2f}  {r['user']:>10.2f}  {r['cpu'] / first:>10.2f}x")  # fmt: skip
        m, f = res["mirror"], res["full dump"]
        print(f"{'':>8}  full dump / mirror: wall p50 {f['p50'] / m['p50']:.1f}x, "
              f"CPU {f['cpu'] / m['cpu']:.1f}x")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `python -m tests.benchmarks.bench_reconcile` and runners."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--entries",
        type=int,
        nargs="+",
        default=list(SIZES),
        help="members (flood entries on the device) per row",
    )
    parser.add_argument("--changes", type=int, default=50, help="changes measured per path")
    parser.add_argument("--pure-only", action="store_true", help="no kernel rows (no root)")
    args = parser.parse_args(argv)
    pure(args.entries, args.changes)
    if args.pure_only:
        return 0
    if os.geteuid() != 0:
        print("bench_reconcile: the kernel rows need root (network namespaces)", file=sys.stderr)
        return 2
    kernel(f"vxbench-rc-{os.getpid()}", args.entries, args.changes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
