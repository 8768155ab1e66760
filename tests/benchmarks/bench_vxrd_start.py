"""vxrd start-up cost (issue 11): import CPU and RSS of vxrd's entry module, and
the CPU and RSS of a running vxrd with one device, as ratios in one run.

Import rows (each a fresh interpreter, CPU = user + system of the child from
wait4, RSS = its peak; median of --repeat runs, rows interleaved so machine noise
hits all of them alike):

    bare       python -c pass
    floor      import asyncio, msgpack, vxrd.rtnl (what vxrd cannot do without:
               pyroute2's rtnetlink as vxrd imports it)
    pyroute2   import asyncio, msgpack, pyroute2 (the whole package, as vxrd
               imported it before vxrd.rtnl)
    before     import aiohttp.web first, then vxrd.cli: what vxrd.cli cost while the
               status socket and metrics imported aiohttp at start-up (or, with
               --before-tree DIR, `import vxrd.cli` from that checkout, e.g. a
               `git worktree add /tmp/main main`)
    after      import vxrd.cli

Running rows (root only; a namespace with one VXLAN device): `python -m vxrd`
until its status socket answers, CPU from /proc/PID/stat and VmRSS/VmHWM from
/proc/PID/status, without and with --metrics (which imports aiohttp).

    .venv/bin/python -m tests.benchmarks.bench_vxrd_start [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.benchmarks.bytecode import compile_tree
from tests.integration.netns import vxlan_namespace

REPO = Path(__file__).resolve().parents[2]
TICK = os.sysconf("SC_CLK_TCK")

IMPORTS = {
    "bare": "pass",
    "floor": "import asyncio, msgpack, vxrd.rtnl",
    "pyroute2": "import asyncio, msgpack, pyroute2",
    "before": "import aiohttp.web; import vxrd.cli",
    "after": "import vxrd.cli",
}


def run_child(code: str, tree: Path) -> tuple[float, float]:
    """(CPU seconds, peak RSS MiB) of `python -c code` run from `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tree, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{code!r} in {tree} exited {proc.returncode}")
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def imports(repeat: int, before_tree: Path | None) -> dict[str, tuple[float, float]]:
    rows = dict(IMPORTS)
    trees = {name: REPO for name in rows}
    if before_tree is not None:
        rows["before"], trees["before"] = "import vxrd.cli", before_tree
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
    for name, code in rows.items():  # warm the page cache and .pyc files first
        run_child(code, trees[name])
    for _ in range(repeat):
        for name, code in rows.items():
            samples[name].append(run_child(code, trees[name]))
    return {
        name: (
            statistics.median(cpu for cpu, _ in got),
            statistics.median(rss for _, rss in got),
        )
        for name, got in samples.items()
    }


# ---------------------------------------------------------------- a running vxrd


@contextmanager
def namespace() -> Iterator[str]:
    with vxlan_namespace("vxbs") as name:
        yield name


def answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
        sock.sendall(b"GET /v1/status HTTP/1.1\r\n\r\n")
        return sock.recv(16).startswith(b"HTTP/1.1 200")


def proc_numbers(pid: int) -> tuple[float, float, float]:
    """(CPU seconds so far, VmRSS MiB, VmHWM MiB) of a running process."""
    stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    cpu = (int(stat[11]) + int(stat[12])) / TICK  # utime, stime (fields 14, 15)
    mem = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            mem[key] = int(value.split()[0]) / 1024
    return cpu, mem["VmRSS"], mem["VmHWM"]


def running(ns: str, extra: Sequence[str]) -> tuple[float, float, float, float]:
    """Start vxrd in `ns`; (seconds until its status socket answers, CPU s, RSS, HWM)."""
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "vxrd.sock"
        argv = [
            *("ip", "netns", "exec", ns, sys.executable, "-m", "vxrd"),
            *("--server", "127.0.0.1:9", "--status-socket", str(sock)),
            *("--state-dir", tmp, "--log-level", "WARNING", *extra),
        ]
        began = time.monotonic()
        proc = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.DEVNULL)
        try:
            while not answers(sock):
                if proc.poll() is not None or time.monotonic() - began > 60:
                    raise RuntimeError(f"vxrd {' '.join(extra)} did not come up")
                time.sleep(0.01)
            up = time.monotonic() - began
            return (up, *proc_numbers(proc.pid))
        finally:
            proc.terminate()
            proc.wait(20)


def daemons(repeat: int) -> dict[str, tuple[float, float, float, float]]:
    rows = {"no metrics": (), "--metrics": ("--metrics", "127.0.0.1:9791")}
    out: dict[str, list[tuple[float, float, float, float]]] = {n: [] for n in rows}
    with namespace() as ns:
        for _ in range(repeat):
            for name, extra in rows.items():
                out[name].append(running(ns, extra))
    return {
        name: tuple(statistics.median(s[i] for s in got) for i in range(4))  # type: ignore[misc]
        for name, got in out.items()
    }


def print_imports(title: str, rows: dict[str, tuple[float, float]]) -> None:
    """The import table: CPU and peak RSS per row, each against the bare row."""
    bare_cpu, bare_rss = rows["bare"]
    print(f"{title} (CPU = user+sys)")
    print("(bytecode compiled first, as an install has it)")
    print(f"{'row':8} {'CPU ms':>8} {'x bare':>7} {'peak RSS MiB':>13} {'x bare':>7}")
    for name, (cpu, rss) in rows.items():
        print(f"{name:8} {cpu * 1e3:8.1f} {cpu / bare_cpu:7.2f} {rss:13.1f} {rss / bare_rss:7.2f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--before-tree", type=Path, help="checkout to import 'before' from")
    args = parser.parse_args(argv)

    compile_tree(REPO, args.before_tree)
    rows = imports(args.repeat, args.before_tree)
    bare_cpu, bare_rss = rows["bare"]
    print_imports(f"import of vxrd's entry module, median of {args.repeat}", rows)
    (b_cpu, b_rss), (a_cpu, a_rss) = rows["before"], rows["after"]
    print(
        f"after/before: CPU {a_cpu / b_cpu:.2f}, RSS {a_rss / b_rss:.2f}; "
        f"CPU above bare: {(b_cpu - bare_cpu) * 1e3:.0f} -> {(a_cpu - bare_cpu) * 1e3:.0f} ms"
    )
    if os.geteuid() != 0:
        print("running vxrd rows skipped: they need root (a network namespace)")
        return
    print(f"\nrunning vxrd, one device, until the status socket answers (median of {args.repeat})")
    print(f"{'row':11} {'up s':>6} {'CPU ms':>8} {'RSS MiB':>8} {'x bare':>7} {'HWM MiB':>8}")
    for name, (up, cpu, rss, hwm) in daemons(args.repeat).items():
        print(f"{name:11} {up:6.2f} {cpu * 1e3:8.0f} {rss:8.1f} {rss / bare_rss:7.2f} {hwm:8.1f}")


if __name__ == "__main__":
    main()
