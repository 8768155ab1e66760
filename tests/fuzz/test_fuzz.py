"""Every decoder fuzzed for a bounded time in CI (atheris, coverage-guided).

One atheris process runs all targets of tests/fuzz/targets.py for FUZZ_SECONDS:
libFuzzer fails it on any exception a target does not document, on an input
slower than its -timeout or on RSS over its limit. The test also checks from
the per-target statistics that every target ran, and that RSS stayed bounded;
the slowest input of each is printed (longer runs: `make fuzz`,
tests/benchmarks/bench_fuzz.py, which also bounds time per input).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

FUZZ_SECONDS = 20  # all targets together: about two seconds each
RSS_GROWTH_MAX_MB = 128


def test_every_decoder_survives_fuzzing(tmp_path: Path) -> None:
    stats_path = tmp_path / "stats.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.run",
            "--targets",
            "all",
            "--seconds",
            str(FUZZ_SECONDS),
            "--stats",
            str(stats_path),
            "--artifacts",
            str(tmp_path / "artifacts"),
        ],
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS * 10 + 60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-6000:]
    stats = json.loads(stats_path.read_text())
    growth_mb = (stats["rss_now_kb"] - stats["rss_warm_kb"]) / 1024
    print(f"\n{stats['total_inputs']} inputs, RSS growth {growth_mb:.1f} MB")
    for name, t in stats["targets"].items():
        print(f"  {name:14} {t['inputs']:8} inputs, slowest {t['slowest_ns'] / 1e6:.2f} ms")
    assert set(stats["targets"]) == set(TARGETS)
    assert all(t["inputs"] > 0 for t in stats["targets"].values()), stats["targets"]
    assert growth_mb < RSS_GROWTH_MAX_MB


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeds_are_accepted_inputs(name: str) -> None:
    """Each seed runs through its target (so mutations start from valid inputs)."""
    target = TARGETS[name]
    assert target.seeds
    for seed in target.seeds:
        target.run(seed)
