"""The agent's cost per membership change on a device with many flood entries.

Run as root: `python -m tests.benchmarks.bench_reconcile [--entries 10000] [--changes 50]`.

In a fresh network namespace, one VXLAN device; an in-process Agent (kernel
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
between changes, while the loop idles for the echoes to arrive, is included).
The ratio is full dump / mirror: above 1 means the mirror path is cheaper.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

from vxflood.schema.wire import Envelope, Membership
from vxrd.agent import Agent
from vxrd.config import Config, ServerAddr
from vxrd.kernel import Address, Kernel

VNI = 100
LOCAL = "10.0.0.1"
ENV = Envelope("bench", 1, 1, 0)
SETTLE = 0.005  # seconds after each change for the fdb echoes to be read


def run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")


def peers(count: int) -> list[Address]:
    base = ipaddress.ip_address("11.0.0.0")
    return [base + i for i in range(count)]


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
        extra = ipaddress.ip_address("12.0.0.1")
        wall: dict[str, list[float]] = {"mirror": [], "full dump": []}
        cpu: dict[str, float] = dict.fromkeys(wall, 0.0)
        for i in range(changes * 2):
            mode = "mirror" if i % 2 == 0 else "full dump"
            add = (extra,) if (i // 2) % 2 == 0 else ()
            c0 = time.process_time()
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
            if len(agent.mirror.get(ifindex)) != entries + len(add):
                raise RuntimeError("the change did not reach the mirror")
        out = {}
        for mode, times in wall.items():
            times.sort()
            out[mode] = {
                "p50": statistics.median(times) * 1000,
                "p90": times[int(len(times) * 0.9)] * 1000,
                "cpu": cpu[mode] / len(times) * 1000,
            }
        return out
    finally:
        agent.stop.set()
        await asyncio.wait_for(task, 10)
        await agent.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `python -m tests.benchmarks.bench_reconcile` and runners."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=10_000, help="flood entries on the device")
    parser.add_argument("--changes", type=int, default=50, help="changes measured per path")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_reconcile: needs root (network namespaces)", file=sys.stderr)
        return 2
    ns = f"vxbench-rc-{os.getpid()}"
    run("ip", "netns", "add", ns)
    try:
        run("ip", "-n", ns, "link", "add", "vx100", "type", "vxlan", "id", str(VNI),
            "local", LOCAL, "dstport", "4789", "nolearning")  # fmt: skip
        run("ip", "-n", ns, "link", "set", "vx100", "up")
        res = asyncio.run(bench(ns, args.entries, args.changes))
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    print(f"one-peer membership change on a device with {args.entries:,} flood entries")
    print(f"{'path':<10}  {'wall p50 ms':>11}  {'wall p90 ms':>11}  {'CPU ms/change':>13}")
    for mode, r in res.items():
        print(f"{mode:<10}  {r['p50']:>11.2f}  {r['p90']:>11.2f}  {r['cpu']:>13.2f}")
    m, f = res["mirror"], res["full dump"]
    print(
        f"\nfull dump / mirror: wall p50 {f['p50'] / m['p50']:.1f}x, CPU {f['cpu'] / m['cpu']:.1f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
