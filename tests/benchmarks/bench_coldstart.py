"""Cold start of the namespace lab: `python -m tests.benchmarks.bench_coldstart [--hosts 10 30]`.

Run as root. For each N: a lab of N hosts with VNI 100 (contrib/lab), vxsnd
already listening in the underlay namespace (as FRR's anchor keeps its route
reflector up: ../shared/anchors/frr-evpn), then every vxrd started at the same
moment; the clock stops when every host's vx100 holds the all-zero entry of
every other host, as seen by one netlink listener per namespace
(bench_convergence's observer: no polling of `bridge fdb`).

Bytecode is compiled first, as an installed vxrd has it (tests/benchmarks/bytecode.py).

Floor, same lab, same run: N minimal Python processes started at the same
moment, each only opening a UDP socket on its host's underlay address and
saying so; the clock stops when the last has. What a Python agent per host
costs on this machine before it does any work; vxrd's cold start is compared
with it. Also printed: the vxrd processes' CPU (schedstat) during the start.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from contrib.lab import Lab, new_prefix
from tests.benchmarks.bench_convergence import Event, Observer, schedstat_ns
from tests.benchmarks.bytecode import compile_tree

PORT = 10001
VNI = 100
FLOOR_AGENT = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind((sys.argv[1], 0))\n"
    "print('ready', flush=True)\n"
    "sys.stdin.read()\n"
)


def complete(lab: Lab, events: list[Event]) -> bool:
    """Every host lists every other host's underlay address (adds minus deletes)."""
    entries: dict[str, set[str]] = {h.name: set() for h in lab.hosts}
    for ev in events:
        if ev.ns in entries and ev.kind == "newneigh":
            entries[ev.ns].add(ev.detail)
        elif ev.ns in entries and ev.kind == "delneigh":
            entries[ev.ns].discard(ev.detail)
    return all(entries[h.name] == {o.underlay for o in lab.hosts if o is not h} for h in lab.hosts)


def floor(lab: Lab) -> float:
    """Seconds until N minimal Python processes, started at once, have their socket."""
    start = time.monotonic()
    procs = [
        h.popen(
            [sys.executable, "-c", FLOOR_AGENT, h.underlay],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for h in lab.hosts
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a floor process did not start")
        return time.monotonic() - start
    finally:
        for p in procs:
            p.kill()
            p.wait(5)
            for stream in (p.stdin, p.stdout):
                if stream is not None:
                    stream.close()


def cpu_s(pids: Sequence[int]) -> float:
    return sum(schedstat_ns(pid) for pid in pids) / 1e9


def cold(lab: Lab, workdir: Path) -> tuple[float, float]:
    """(seconds to every flood list complete, vxrd CPU seconds), vxsnd already up."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        log = open(workdir / "vxsnd.log", "ab")  # noqa: SIM115 (closed below)
        logs.append(log)
        procs.append(
            lab.service.popen(
                [
                    *(sys.executable, "-m", "vxsnd"),
                    *("--listen", f"{lab.service_addr}:{PORT}"),
                    *("--db", f"sqlite:///{workdir / 'registry.db'}"),
                    *("--log-level", "WARNING"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
        deadline = time.monotonic() + 30
        while not lab.service.exec(["ss", "-Hlun", "sport", f"= :{PORT}"]).stdout.strip():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise RuntimeError(f"vxsnd did not start: {workdir / 'vxsnd.log'}")
            time.sleep(0.05)
        obs = Observer([h.name for h in lab.hosts])
        try:
            start = time.monotonic()
            for h in lab.hosts:
                log = open(workdir / f"vxrd-{h.index}.log", "ab")  # noqa: SIM115
                logs.append(log)
                procs.append(
                    h.popen(
                        [
                            *(sys.executable, "-m", "vxrd"),
                            *("--server", f"{lab.service_addr}:{PORT}"),
                            *("--node-id", f"h{h.index}"),
                            *("--status-socket", str(workdir / f"h{h.index}.sock")),
                            *("--log-level", "WARNING"),
                        ],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
                )
            if obs.wait_for(lambda events: complete(lab, events), timeout=120) is None:
                raise RuntimeError(f"flood lists incomplete after 120 s: {workdir}")
            took = time.monotonic() - start
            return took, cpu_s([p.pid for p in procs[1:]])
        finally:
            obs.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for log in logs:
            log.close()


def run(n: int, reps: int) -> dict[str, float]:
    lab = Lab(new_prefix("vxcs"), hosts=n, vnis=[VNI])
    try:
        lab.build()
        floors, colds, cpus = [], [], []
        for rep in range(reps):
            floors.append(floor(lab))
            with tempfile.TemporaryDirectory(prefix=f"vxflood-cold{n}-{rep}-") as tmp:
                took, cpu = cold(lab, Path(tmp))
            colds.append(took)
            cpus.append(cpu)
            for h in lab.hosts:  # the next rep starts from empty flood lists
                h.exec(["bridge", "fdb", "flush", "dev", f"vx{VNI}"], check=False)
        return {
            "floor": statistics.median(floors),
            "cold": statistics.median(colds),
            "cpu": statistics.median(cpus),
        }
    finally:
        lab.destroy()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, nargs="+", default=[10, 30], help="lab sizes N")
    p.add_argument("--reps", type=int, default=3, help="cold starts per N (median printed)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_coldstart: must run as root (network namespaces)", file=sys.stderr)
        return 2
    compile_tree(Path(__file__).resolve().parents[2])
    rows = [(n, run(n, args.reps)) for n in args.hosts]
    print(f"{'N':>4}  {'floor s':>8}  {'cold s':>7}  {'x floor':>7}  {'vxrd CPU s':>10}")
    for n, r in rows:
        ratio = r["cold"] / r["floor"]
        print(f"{n:>4}  {r['floor']:8.2f}  {r['cold']:7.2f}  {ratio:7.1f}  {r['cpu']:10.2f}")
    print(
        f"(median of {args.reps}; vxsnd already listening, every vxrd started at t0; "
        "bytecode compiled first, as an install has it)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
