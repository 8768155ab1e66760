"""Fuzz the decoders for as long as asked and report the cost bound per input.

    python -m tests.benchmarks.bench_fuzz --runs 1000000        # split over the targets
    python -m tests.benchmarks.bench_fuzz --seconds 600 --targets wire-to-vxsnd
    make fuzz FUZZ_ARGS="--seconds 3600"

Each target runs in its own atheris process (tests/fuzz/run.py), so its RSS
growth is its own. Printed per target: inputs, rate, the slowest input (and
the median of 101 uninstrumented re-runs of it, and that as a ratio to the
mean cost of the target's valid seed inputs, measured in the same run), the
largest peak-RSS step of one input and the RSS growth. Exit 1 when an input
raised an undocumented exception (libFuzzer keeps it under --artifacts), the
costliest input re-timed is over --max-input-ms, or RSS grew over --max-rss-mb.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.fuzz.targets import TARGETS

# Round-trip encoding builds and splits whole messages: it gets a smaller share.
WEIGHT = {"wire-encode": 0.15, "vxsnd-config": 0.5, "vxrd-config": 0.5}


def seed_cost_ns(name: str, repeat: int = 2000) -> float:
    """Mean cost of the target's valid inputs: the baseline the slowest input is set against."""
    target = TARGETS[name]
    start = time.perf_counter_ns()
    for _ in range(repeat):
        for seed in target.seeds:
            target.run(seed)
    return (time.perf_counter_ns() - start) / (repeat * len(target.seeds))


def retime_ns(name: str, data: bytes, repeat: int = 101) -> float:
    """The median cost of one input, uninstrumented: tells an input that is slow from a
    scheduling or garbage-collection pause that happened to fall on it."""
    run = TARGETS[name].run
    samples = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        run(data)
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples)


def run_target(name: str, args: argparse.Namespace, runs: int | None, work: Path) -> dict:
    stats = work / f"{name}.json"
    cmd = [sys.executable, "-m", "tests.fuzz.run", "--targets", name, "--stats", str(stats)]
    cmd += ["--artifacts", str(args.artifacts), "--timeout", str(args.timeout)]
    cmd += ["--runs", str(runs)] if runs is not None else ["--seconds", str(args.seconds)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    result = json.loads(stats.read_text()) if stats.exists() else {"targets": {}}
    result["returncode"] = done.returncode
    result["log_tail"] = done.stderr[-3000:]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, help="inputs in all, split over the targets")
    parser.add_argument("--seconds", type=float, default=60.0, help="per target, without --runs")
    parser.add_argument("--targets", default="all", help=f"comma-separated: {', '.join(TARGETS)}")
    parser.add_argument("--max-input-ms", type=float, default=100.0, help="cost bound per input")
    parser.add_argument("--max-rss-mb", type=float, default=128.0, help="RSS growth bound")
    parser.add_argument("--timeout", type=int, default=5, help="libFuzzer's per-input timeout")
    parser.add_argument(
        "--artifacts", type=Path, default=Path(tempfile.gettempdir()) / "vxflood-fuzz-artifacts"
    )
    args = parser.parse_args(argv)
    names = list(TARGETS) if args.targets == "all" else args.targets.split(",")
    weights = {n: WEIGHT.get(n, 1.0) for n in names}
    total_weight = sum(weights.values())
    work = Path(tempfile.mkdtemp(prefix="vxflood-bench-fuzz-"))
    print(
        f"{'target':14} {'inputs':>9} {'/s':>7} {'slowest ms':>10} {'re-timed ms':>11} "
        f"{'x seed':>7} {'RSS step KB':>11} {'RSS growth MB':>13}"
    )
    crashed = over = False
    grand_inputs, grand_seconds = 0, 0.0
    worst = (0.0, "", "")
    for name in names:
        share = None if args.runs is None else args.runs * weights[name] / total_weight
        base = seed_cost_ns(name)
        result = run_target(name, args, None if share is None else max(1, round(share)), work)
        t = result["targets"].get(name)
        if result["returncode"] != 0 or t is None:
            print(f"{name:14} FAILED (exit {result['returncode']}); input kept in {args.artifacts}")
            print(result["log_tail"])
            crashed = True
            continue
        again_ms = retime_ns(name, bytes.fromhex(t["slowest_input"])) / 1e6
        growth = (result["rss_now_kb"] - result["rss_warm_kb"]) / 1024
        rate = t["inputs"] / result["wall_seconds"] if result["wall_seconds"] else 0.0
        print(
            f"{name:14} {t['inputs']:9} {rate:7.0f} {t['slowest_ns'] / 1e6:10.2f} "
            f"{again_ms:11.3f} {again_ms * 1e6 / base:7.1f} {t['max_rss_step_kb']:11} "
            f"{growth:13.1f}"
        )
        grand_inputs += t["inputs"]
        grand_seconds += result["wall_seconds"]
        if again_ms > worst[0]:
            worst = (again_ms, name, f"{t['slowest_len']} bytes: {t['slowest_input'][:80]}")
        if again_ms > args.max_input_ms or growth > args.max_rss_mb:
            print(f"  ^ over the bound ({args.max_input_ms} ms per input, {args.max_rss_mb} MB)")
            over = True
    print(
        f"total {grand_inputs} inputs in {grand_seconds:.0f} s; costliest input re-timed "
        f"{worst[0]:.3f} ms ({worst[1]}, {worst[2]}...)"
    )
    print("unexpected exceptions:", "FOUND (see above)" if crashed else 0)
    failed = crashed or over
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
