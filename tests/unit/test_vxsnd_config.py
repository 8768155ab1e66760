"""vxsnd configuration: defaults, TOML file, flags override, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from vxsnd.config import Config, ConfigError, ListenAddr, build_parser, load, parse_listen


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("0.0.0.0", ListenAddr("0.0.0.0", 10001)),
        ("192.0.2.1:5000", ListenAddr("192.0.2.1", 5000)),
        ("[::]", ListenAddr("::", 10001)),
        ("[::1]:10002", ListenAddr("::1", 10002)),
        ("2001:db8::1", ListenAddr("2001:db8::1", 10001)),
        ("127.0.0.1:0", ListenAddr("127.0.0.1", 0)),
    ],
)
def test_parse_listen(text: str, want: ListenAddr) -> None:
    assert parse_listen(text) == want


@pytest.mark.parametrize("text", ["", "host.example:1", "[::1", "[::1]x", "1.2.3.4:99999"])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


def test_defaults() -> None:
    cfg = load(["--db", "sqlite:///x.db"])
    assert cfg.listen == (ListenAddr("::", 10001),)
    assert (cfg.max_hold_time, cfg.batch_window, cfg.budget, cfg.queue_size) == (
        3600,
        5.0,
        1400,
        65536,
    )
    assert (cfg.retransmit_initial, cfg.retransmit_max, cfg.replay_window) == (0.25, 30.0, 60.0)
    assert cfg.key_file is None and cfg.log_level == "INFO"


def test_file_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "vxsnd.toml"
    f.write_text(
        'listen = ["127.0.0.1:7000", "[::1]:7000"]\nmax_hold_time = 600\nbatch_window = 2\n'
    )
    cfg = load(["--config", str(f), "--max-hold-time", "120"])
    assert cfg.listen == (ListenAddr("127.0.0.1", 7000), ListenAddr("::1", 7000))
    assert cfg.max_hold_time == 120 and cfg.batch_window == 2.0


def test_unknown_key_suggests(tmp_path: Path) -> None:
    f = tmp_path / "vxsnd.toml"
    f.write_text("max_hold_tme = 5\n")
    with pytest.raises(
        ConfigError, match=r"unknown key 'max_hold_tme' \(did you mean 'max_hold_time'\?\)"
    ):
        load(["--config", str(f)])


def test_retransmit_order() -> None:
    with pytest.raises(ConfigError, match="retransmit_max"):
        load(["--retransmit-initial", "5", "--retransmit-max", "1"])


def test_help_shows_every_default() -> None:
    text = build_parser().format_help()
    assert text.count("(default:") == len(Config.__dataclass_fields__) + 1  # + --config
