"""Run every benchmark, one process each so they do not disturb each other's numbers.

`make bench` (root: the kernel and convergence benchmarks build network namespaces).
Each benchmark prints its own table with a baseline row for ratios.
"""

from __future__ import annotations

import os
import subprocess
import sys

BENCHMARKS = (
    ("registry batches (SQLite)", ["tests.benchmarks.store_bench"], False),
    ("vxsnd: simulated agents", ["tests.benchmarks.bench_vxsnd"], False),
    ("kernel layer vs bridge -batch", ["tests.benchmarks.bench_kernel"], True),
    ("vxrd snapshot vs bridge -batch", ["tests.benchmarks.bench_snapshot"], True),
    ("vxrd per change at 10 to 10k entries", ["tests.benchmarks.bench_reconcile"], True),
    ("join/leave convergence", ["tests.benchmarks.bench_convergence"], True),
    ("vxrd start-up", ["tests.benchmarks.bench_vxrd_start"], False),
    ("vxsnd start-up", ["tests.benchmarks.bench_vxsnd_start"], False),
    ("cold start of the lab", ["tests.benchmarks.bench_coldstart"], True),
)


def main() -> int:
    failed = []
    for title, module, needs_root in BENCHMARKS:
        print(f"\n=== {title}", flush=True)
        if needs_root and os.geteuid() != 0:
            print("skipped: needs root (network namespaces)")
            continue
        rc = subprocess.call([sys.executable, "-m", *module])
        if rc != 0:
            failed.append(title)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
