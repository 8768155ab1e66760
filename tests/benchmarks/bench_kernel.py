"""Kernel layer benchmark: Kernel.apply / flood_entries beside `bridge -batch`.

Run as root: `python -m tests.benchmarks.bench_kernel [--rounds N]`.
In a fresh network namespace, for one device with 10,000 peers and for 100
devices with 100 peers each: add and remove the entries with Kernel.apply and
with `bridge -batch` (same entries, same run, alternating), and read them back
with Kernel.flood_entries (cold: new Kernel, no interned addresses; warm) and
`bridge -j fdb show`. Each figure is the median of the rounds. The ratio is
bridge time / our time: above 1 means Kernel is faster.

Goals: apply at least as fast as `bridge -batch`; a dump of 10k entries under
50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from vxrd.kernel import Address, Kernel
from vxrd.model import FloodDiff

ZERO = "00:00:00:00:00:00"


@dataclass
class Row:
    operation: str
    entries: int
    seconds: float
    bridge_seconds: float | None

    def cells(self) -> list[str]:
        ratio = "" if self.bridge_seconds is None else f"{self.bridge_seconds / self.seconds:.2f}"
        return [
            self.operation,
            str(self.entries),
            f"{self.seconds:.4f}",
            f"{self.entries / self.seconds:,.0f}",
            ratio,
        ]


def run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")


def timed_run(*cmd: str) -> float:
    start = time.perf_counter()
    run(*cmd)
    return time.perf_counter() - start


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


class Scenario:
    """One set of devices and peers, with its bridge batch files."""

    def __init__(self, ns: str, label: str, devices: dict[str, list[Address]]) -> None:
        self.ns = ns
        self.label = label
        self.devices = devices
        self.total = sum(len(p) for p in devices.values())
        self.dir = tempfile.TemporaryDirectory(prefix="vxbench-")
        self.add_file = os.path.join(self.dir.name, "add")
        self.del_file = os.path.join(self.dir.name, "del")
        for path, verb in ((self.add_file, "append"), (self.del_file, "del")):
            with open(path, "w") as f:
                for name, peers in devices.items():
                    for p in peers:
                        f.write(f"fdb {verb} {ZERO} dev {name} dst {p} self permanent\n")

    def create(self, first_vni: int) -> None:
        for n, name in enumerate(self.devices):
            vni = str(first_vni + n)
            run("ip", "-n", self.ns, "link", "add", name, "type", "vxlan", "id", vni,
                "local", "10.0.0.1", "dstport", "4789", "nolearning")  # fmt: skip

    def changes(self, ifindex: dict[str, int], remove: bool) -> dict[int, FloodDiff]:
        out = {}
        for name, peers in self.devices.items():
            s = frozenset(peers)
            out[ifindex[name]] = FloodDiff(remove=s) if remove else FloodDiff(add=s)
        return out

    async def measure(self, rounds: int) -> list[Row]:
        k = Kernel(self.ns)
        await k.open()
        try:
            ifindex = {d.name: d.ifindex for d in await k.list_vxlan()}
            add, remove = self.changes(ifindex, False), self.changes(ifindex, True)
            t: dict[str, list[float]] = {}

            def note(key: str, seconds: float) -> None:
                t.setdefault(key, []).append(seconds)

            async def check_apply(changes: dict[int, FloodDiff], key: str) -> None:
                start = time.perf_counter()
                result = await k.apply(changes)
                note(key, time.perf_counter() - start)
                if result.errors:
                    raise RuntimeError(f"{key}: {result.errors[:3]}")

            for _ in range(rounds):
                note("bridge add", timed_run("bridge", "-n", self.ns, "-batch", self.add_file))
                note("bridge show", timed_run("bridge", "-n", self.ns, "-j", "fdb", "show"))
                note("bridge del", timed_run("bridge", "-n", self.ns, "-batch", self.del_file))
                await check_apply(add, "apply add")
                async with Kernel(self.ns) as cold:
                    start = time.perf_counter()
                    entries = await cold.flood_entries()
                    note("dump cold", time.perf_counter() - start)
                note("dump warm", await timed(k.flood_entries))
                if sum(len(s) for s in entries.values()) != self.total:
                    raise RuntimeError("dump does not match what was written")
                await check_apply(remove, "apply remove")
                if await k.flood_entries():
                    raise RuntimeError("entries left after remove")
        finally:
            await k.close()
        m = {key: statistics.median(v) for key, v in t.items()}
        n, lb = self.total, self.label
        return [
            Row(f"apply add ({lb})", n, m["apply add"], m["bridge add"]),
            Row(f"apply remove ({lb})", n, m["apply remove"], m["bridge del"]),
            Row(f"flood_entries cold ({lb})", n, m["dump cold"], m["bridge show"]),
            Row(f"flood_entries warm ({lb})", n, m["dump warm"], m["bridge show"]),
            Row(f"bridge -batch add ({lb})", n, m["bridge add"], None),
            Row(f"bridge -batch del ({lb})", n, m["bridge del"], None),
            Row(f"bridge -j fdb show ({lb})", n, m["bridge show"], None),
        ]


def peers(first: str, count: int) -> list[Address]:
    base = ipaddress.ip_address(first)
    return [base + i for i in range(count)]


def table(rows: Sequence[Row]) -> str:
    head = ["operation", "entries", "seconds", "entries/s", "bridge/ours"]
    body = [r.cells() for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for cells in body:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )
    return "\n".join(lines)


async def bench(ns: str, rounds: int) -> list[Row]:
    one = Scenario(ns, "1x10000", {"vxone": peers("11.0.0.0", 10_000)})
    many = Scenario(ns, "100x100", {f"vxm{d}": peers(f"12.{d}.0.0", 100) for d in range(100)})
    rows: list[Row] = []
    for first_vni, scenario in ((1000, one), (2000, many)):
        scenario.create(first_vni)
        rows += await scenario.measure(rounds)
        scenario.dir.cleanup()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `python -m tests.benchmarks.bench_kernel` and runners."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="median of this many runs")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_kernel: needs root (network namespaces)", file=sys.stderr)
        return 2
    ns = f"vxbench-{os.getpid()}"
    run("ip", "netns", "add", ns)
    try:
        rows = asyncio.run(bench(ns, args.rounds))
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    print(table(rows))
    dump = max(r.seconds for r in rows if r.operation.startswith("flood_entries"))
    slow = [r.operation for r in rows if r.bridge_seconds and r.seconds > r.bridge_seconds]
    print(f"\nslowest flood_entries: {dump * 1000:.1f} ms (goal < 50 ms)")
    print("apply slower than bridge -batch: " + (", ".join(slow) if slow else "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
