"""Coverage-guided fuzzing of the decoders with atheris (libFuzzer), bounded by time or runs.

    python -m tests.fuzz.run --targets all --seconds 20 --stats stats.json
    python -m tests.fuzz.run --targets wire-to-vxsnd --runs 200000

Several targets share one process: an input's first byte picks the target, the
rest is the target's input. Besides libFuzzer's own limits (a crash on any
exception a target does not document, `-timeout` per input, `-rss_limit_mb`),
every input is timed and its peak-RSS growth taken, and per target the count,
the slowest input and the RSS growth (from the WARM_INPUTS-th input on) are
written to --stats (JSON) about twice a second and after the last of --runs.
Exit status is libFuzzer's: 0 when nothing was found.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports(include=["vxflood", "vxsnd", "vxrd", "tests.fuzz.targets"]):
    from tests.fuzz.targets import TARGETS, FuzzTarget

PAGE_KB = resource.getpagesize() // 1024
# libFuzzer sizes its own tables during the first inputs: RSS growth is counted
# from this many inputs on (the start value is reported too).
WARM_INPUTS = 1000


def rss_kb() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE_KB


class Stats:
    """Per-target counts and cost: the slowest input and the largest peak-RSS step."""

    def __init__(self, names: list[str], path: Path | None, runs: int | None) -> None:
        self.path = path
        self.runs = runs
        self.total = 0
        self.started = time.monotonic()
        self.rss_start_kb = rss_kb()
        self.rss_warm_kb = self.rss_start_kb
        self.next_write = 0.0
        self.by_target: dict[str, dict[str, Any]] = {
            n: {
                "inputs": 0,
                "slowest_ns": 0,
                "slowest_input": "",
                "slowest_len": 0,
                "max_rss_step_kb": 0,
                "seconds": 0.0,
            }
            for n in names
        }

    def record(self, name: str, data: bytes, ns: int, rss_step_kb: int) -> None:
        t = self.by_target[name]
        t["inputs"] += 1
        t["seconds"] += ns / 1e9
        if ns > t["slowest_ns"]:
            t["slowest_ns"] = ns
            t["slowest_input"] = data[:16384].hex()
            t["slowest_len"] = len(data)
        if rss_step_kb > t["max_rss_step_kb"]:
            t["max_rss_step_kb"] = rss_step_kb
        self.tick()

    def tick(self) -> None:
        """One more input run (an empty one too: libFuzzer's -runs counts it)."""
        self.total += 1
        if self.total == WARM_INPUTS:
            self.rss_warm_kb = rss_kb()
        now = time.monotonic()
        if self.path is not None and (now >= self.next_write or self.total == self.runs):
            self.next_write = now + 0.5
            self.write()

    def write(self) -> None:
        assert self.path is not None
        doc = {
            "total_inputs": self.total,
            "wall_seconds": time.monotonic() - self.started,
            "rss_start_kb": self.rss_start_kb,
            "rss_warm_kb": self.rss_warm_kb,
            "rss_now_kb": rss_kb(),
            "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "targets": self.by_target,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(self.path)


def make_entry(targets: list[FuzzTarget], stats: Stats) -> Any:
    getrusage, RUSAGE_SELF, clock = resource.getrusage, resource.RUSAGE_SELF, time.perf_counter_ns

    def entry(data: bytes) -> None:
        if not data:
            stats.tick()
            return
        target = targets[data[0] % len(targets)]
        body = data[1:]
        peak = getrusage(RUSAGE_SELF).ru_maxrss
        start = clock()
        target.run(body)
        ns = clock() - start
        stats.record(target.name, body, ns, getrusage(RUSAGE_SELF).ru_maxrss - peak)

    return entry


def seed_corpus(targets: list[FuzzTarget]) -> Path:
    corpus = Path(tempfile.mkdtemp(prefix="vxflood-corpus-"))
    for i, target in enumerate(targets):
        for j, seed in enumerate(target.seeds):
            (corpus / f"{target.name}-{j}").write_bytes(bytes([i]) + seed)
    return corpus


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="all", help="comma-separated names, or all")
    parser.add_argument("--seconds", type=float, help="stop after this long (default: --runs)")
    parser.add_argument("--runs", type=int, help="stop after this many inputs")
    parser.add_argument("--stats", type=Path, help="write per-target statistics here (JSON)")
    parser.add_argument("--timeout", type=int, default=5, help="seconds one input may take")
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=Path(tempfile.gettempdir()) / "vxflood-fuzz-artifacts",
        help="where libFuzzer writes a crashing input (default: %(default)s)",
    )
    parser.add_argument("--rss-limit-mb", type=int, default=1024, help="libFuzzer's RSS limit")
    args, extra = parser.parse_known_args(argv)
    names = list(TARGETS) if args.targets == "all" else args.targets.split(",")
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    if args.seconds is None and args.runs is None:
        parser.error("give --seconds or --runs")
    targets = [TARGETS[n] for n in names]
    for target in targets:  # lazy imports and caches are paid here, not by the first input
        for seed in (*target.seeds, b""):
            target.run(seed)
    stats = Stats(names, args.stats, args.runs)
    flags = [
        f"-timeout={args.timeout}",
        f"-rss_limit_mb={args.rss_limit_mb}",
        "-print_final_stats=1",
    ]
    if args.seconds is not None:
        flags.append(f"-max_total_time={max(1, round(args.seconds))}")
    if args.runs is not None:
        flags.append(f"-runs={args.runs}")
    corpus = seed_corpus(targets)
    flags.append(f"-artifact_prefix={args.artifacts}/")
    args.artifacts.mkdir(parents=True, exist_ok=True)
    atheris.Setup([sys.argv[0], *flags, *extra, str(corpus)], make_entry(targets, stats))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
