"""vxrd's replay marks across a restart (vxrd.marks): a real file in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vxflood.schema.replay import Mark, ReplayGuard
from vxrd.marks import MARKS_FILE, Keeper, decode

NOW = 1_764_000_000.0
MS = int(NOW * 1000)


def test_a_datagram_accepted_before_a_restart_is_a_replay_after_it(tmp_path: Path) -> None:
    before = ReplayGuard()
    assert before.check("sn-1", 7, 41, MS, NOW) is None
    assert before.check("sn-1", 7, 42, MS + 5, NOW) is None
    assert before.check("sn-2", 9, 3, MS, NOW) is None
    keeper = Keeper(tmp_path, [before])
    assert keeper.save(NOW) is True
    assert keeper.save(NOW) is False  # nothing accepted since: no write
    assert sorted(decode((tmp_path / MARKS_FILE).read_text())) == [
        Mark("sn-1", 7, 42, MS + 5),
        Mark("sn-2", 9, 3, MS),
    ]

    after = ReplayGuard()  # the new process
    assert Keeper(tmp_path, [after]).load(NOW + 2) == 2
    assert after.check("sn-1", 7, 42, MS + 5, NOW + 2) == "replay"
    assert after.check("sn-1", 7, 41, MS, NOW + 2) == "replay"
    assert after.check("sn-2", 9, 3, MS, NOW + 2) == "replay"
    assert after.check("sn-1", 7, 43, MS + 2000, NOW + 2) is None  # what comes next passes
    assert after.check("sn-1", 8, 1, MS + 2000, NOW + 2) is None  # a restarted server too


def test_a_fresh_guard_without_the_file_accepts_the_replay(tmp_path: Path) -> None:
    """The control: what the file prevents."""
    after = ReplayGuard()
    assert Keeper(tmp_path, [after]).load(NOW) == 0
    assert after.check("sn-1", 7, 42, MS, NOW) is None


def test_marks_older_than_the_window_are_not_written(tmp_path: Path) -> None:
    guard = ReplayGuard(window_seconds=60.0)
    guard.check("old", 1, 1, MS, NOW)
    guard.check("new", 1, 1, MS + 100_000, NOW + 100)
    Keeper(tmp_path, [guard]).save(NOW + 100)
    assert [m.sender for m in decode((tmp_path / MARKS_FILE).read_text())] == ["new"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        json.dumps({"format": 2, "marks": []}),
        json.dumps({"format": 1, "marks": [["sn 1", 1, 1, 1]]}),
        json.dumps({"format": 1, "marks": [["sn-1", -1, 1, 1]]}),
        json.dumps({"format": 1, "marks": [["sn-1", 1, True, 1]]}),
        json.dumps({"format": 1, "marks": [["sn-1", 1, 1]]}),
        json.dumps({"format": 1, "marks": [["sn-1", 1, 1, 1]] * 5000}),
    ],
)
def test_a_broken_file_is_ignored_with_a_warning(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / MARKS_FILE).write_text(text)
    guard = ReplayGuard()
    assert Keeper(tmp_path, [guard]).load(NOW) == 0
    assert "ignoring" in caplog.text and len(guard) == 0


def test_nothing_is_written_without_the_state_directory(tmp_path: Path) -> None:
    guard = ReplayGuard()
    guard.check("sn-1", 1, 1, MS, NOW)
    missing = tmp_path / "absent"
    keeper = Keeper(missing, [guard])
    assert keeper.save(NOW) is False
    assert not missing.exists()
    missing.mkdir()  # the directory appears (systemd's StateDirectory)
    assert keeper.save(NOW) is False  # nothing accepted since the last look
    guard.check("sn-1", 1, 2, MS, NOW)
    assert keeper.save(NOW) is True  # the next accept is kept
    assert decode((missing / MARKS_FILE).read_text()) == [Mark("sn-1", 1, 2, MS)]
