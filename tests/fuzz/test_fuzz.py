"""Every decoder fuzzed for a bounded time in CI (atheris, coverage-guided).

Atheris runs all targets of tests/fuzz/targets.py for 20 s (RUNS):
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
from typing import Any

import pytest

from tests.fuzz.targets import TARGETS

# The encode round trip builds, splits and decodes whole messages (about a hundred
# times the cost of a decoder input): it runs in a process of its own, so the
# decoders are not starved of inputs.
RUNS = (
    (tuple(n for n in TARGETS if n != "wire-encode"), 16),
    (("wire-encode",), 4),
)
RSS_GROWTH_MAX_MB = 128


def fuzz(names: tuple[str, ...], seconds: int, work: Path) -> dict[str, Any]:
    stats_path = work / "stats.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.run",
            "--targets",
            ",".join(names),
            "--seconds",
            str(seconds),
            "--stats",
            str(stats_path),
            "--artifacts",
            str(work / "artifacts"),
        ],
        capture_output=True,
        text=True,
        timeout=seconds * 10 + 60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-6000:]
    stats: dict[str, Any] = json.loads(stats_path.read_text())
    return stats


@pytest.mark.parametrize(("names", "seconds"), RUNS, ids=["decoders", "encoder"])
def test_every_decoder_survives_fuzzing(
    names: tuple[str, ...], seconds: int, tmp_path: Path
) -> None:
    stats = fuzz(names, seconds, tmp_path)
    growth_mb = (stats["rss_now_kb"] - stats["rss_warm_kb"]) / 1024
    print(f"\n{stats['total_inputs']} inputs, RSS growth {growth_mb:.1f} MB")
    for name, t in stats["targets"].items():
        print(f"  {name:14} {t['inputs']:8} inputs, slowest {t['slowest_ns'] / 1e6:.2f} ms")
    assert set(stats["targets"]) == set(names)
    assert all(t["inputs"] > 0 for t in stats["targets"].values()), stats["targets"]
    assert growth_mb < RSS_GROWTH_MAX_MB


def test_the_ci_runs_cover_every_target() -> None:
    assert sorted(n for names, _ in RUNS for n in names) == sorted(TARGETS)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeds_are_accepted_inputs(name: str) -> None:
    """Each seed runs through its target (so mutations start from valid inputs)."""
    target = TARGETS[name]
    assert target.seeds
    for seed in target.seeds:
        target.run(seed)
