"""vxsnd start-up cost (issue 11): import CPU and RSS, and a running vxsnd's CPU and
RSS once it is ready, as ratios against bare Python in one run.

Import rows (a fresh interpreter each; CPU = user + system from wait4, RSS = peak;
median of --repeat runs, rows interleaved so machine noise hits all alike):

    bare      python -c pass
    floor     import asyncio, msgpack, sqlalchemy, aiohttp.web (what vxsnd cannot
              do without: the registry and the REST API)
    before    import vxsnd.cli, vxsnd.daemon from --before-tree DIR (e.g. a
              `git worktree add /tmp/before COMMIT`), when given
    after     import vxsnd.cli, vxsnd.daemon

Running rows: `python -m vxsnd` on 127.0.0.1 with a SQLite registry in a temporary
directory, until its log says it is ready; CPU from /proc/PID/stat, VmRSS and
VmHWM from /proc/PID/status. "first start" creates the registry (Alembic runs);
"restart" opens it again at the head revision, as every later start does.

    .venv/bin/python -m tests.benchmarks.bench_vxsnd_start [--repeat 5] [--before-tree DIR]
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
from collections.abc import Sequence
from pathlib import Path

from tests.benchmarks.bench_vxrd_start import print_imports, proc_numbers, run_child
from tests.benchmarks.bytecode import compile_tree

REPO = Path(__file__).resolve().parents[2]

IMPORTS = {
    "bare": "pass",
    "floor": "import asyncio, msgpack, sqlalchemy, aiohttp.web",
    "after": "import vxsnd.cli, vxsnd.daemon",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def imports(repeat: int, before: Path | None) -> dict[str, tuple[float, float]]:
    rows = {name: (code, REPO) for name, code in IMPORTS.items()}
    if before is not None:
        rows["before"] = (IMPORTS["after"], before)
    for code, tree in rows.values():  # warm the page cache and .pyc files first
        run_child(code, tree)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
    for _ in range(repeat):
        for name, (code, tree) in rows.items():
            samples[name].append(run_child(code, tree))
    return {
        name: (statistics.median(c for c, _ in got), statistics.median(r for _, r in got))
        for name, got in samples.items()
    }


def start(tree: Path, workdir: Path) -> tuple[float, float, float, float]:
    """Start vxsnd from `tree` on workdir's registry: (seconds to ready, CPU s, RSS, HWM)."""
    log = workdir / "vxsnd.log"
    log.write_bytes(b"")
    argv = [
        *(sys.executable, "-m", "vxsnd", "--listen", f"127.0.0.1:{free_port()}"),
        *("--api", f"127.0.0.1:{free_port()}", "--server-id", "bench"),
        *("--db", f"sqlite:///{workdir / 'registry.db'}", "--log-level", "INFO"),
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    began = time.monotonic()
    with log.open("ab") as fh:
        proc = subprocess.Popen(argv, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=fh)
    try:
        while b"vxsnd ready" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() - began > 60:
                raise RuntimeError(f"vxsnd did not start:\n{log.read_text()}")
            time.sleep(0.01)
        up = time.monotonic() - began
        time.sleep(0.2)  # what it holds once idle, not mid-start
        return (up, *proc_numbers(proc.pid))
    finally:
        proc.terminate()
        proc.wait(20)


def running(repeat: int, trees: dict[str, Path]) -> dict[str, tuple[float, ...]]:
    out: dict[str, list[tuple[float, float, float, float]]] = {}
    for _ in range(repeat):
        for label, tree in trees.items():
            with tempfile.TemporaryDirectory(prefix="vxsnd-start-") as tmp:
                out.setdefault(f"{label} first start", []).append(start(tree, Path(tmp)))
                out.setdefault(f"{label} restart", []).append(start(tree, Path(tmp)))
    return {
        name: tuple(statistics.median(s[i] for s in got) for i in range(4))
        for name, got in out.items()
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per row (default 5)")
    parser.add_argument("--before-tree", type=Path, help="checkout to compare with (default: none)")
    args = parser.parse_args(argv)
    compile_tree(REPO, args.before_tree)
    rows = imports(args.repeat, args.before_tree)
    _, bare_rss = rows["bare"]
    print_imports(f"import of vxsnd's modules, median of {args.repeat}", rows)
    trees = {"after": REPO}
    if args.before_tree is not None:
        trees = {"before": args.before_tree, **trees}
    print(f"\nrunning vxsnd (SQLite), until ready, median of {args.repeat}")
    print(f"{'row':20} {'up s':>6} {'CPU ms':>8} {'RSS MiB':>8} {'x bare':>7} {'HWM MiB':>8}")
    for name, (up, cpu, rss, hwm) in running(args.repeat, trees).items():
        print(f"{name:20} {up:6.2f} {cpu * 1e3:8.0f} {rss:8.1f} {rss / bare_rss:7.2f} {hwm:8.1f}")


if __name__ == "__main__":
    main()
