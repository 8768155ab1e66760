"""vxrd configuration: defaults, TOML file, flags over file, clear errors (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vxflood.schema.wire import address
from vxrd.cli import main
from vxrd.config import Config, ConfigError, ServerAddr, build_parser, load, parse_server

REPO = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    c = load(["--server", "10.0.0.1"])
    assert c.servers == (ServerAddr("10.0.0.1", 10001),)
    assert c.hold_time == 90 and c.refresh_interval == 30
    assert c.include == ("*",) and c.exclude == ()
    assert c.local is None and c.key_file is None and c.metrics is None
    assert str(c.status_socket) == "/run/vxrd/vxrd.sock"
    assert c.reconcile_interval == 30 and not c.flush_on_exit and c.log_level == "INFO"
    assert c.node_id == Config().node_id  # the hostname


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("10.0.0.1", "10.0.0.1", 10001),
        ("10.0.0.1:7", "10.0.0.1", 7),
        ("[fd00::1]:7", "fd00::1", 7),
        ("[fd00::1]", "fd00::1", 10001),
        ("fd00::1", "fd00::1", 10001),
        ("snd.example", "snd.example", 10001),
    ],
)
def test_server_forms(text: str, host: str, port: int) -> None:
    assert parse_server(text) == ServerAddr(host, port)


@pytest.mark.parametrize("text", ["10.0.0.1:0", "10.0.0.1:x", "[fd00::1", "[zz::1]:5", ":5"])
def test_bad_server(text: str) -> None:
    with pytest.raises(ValueError):
        parse_server(text)


def test_file_then_flags_override(tmp_path: Path) -> None:
    f = tmp_path / "vxrd.toml"
    f.write_text(
        'servers = ["10.0.0.1", "[fd00::2]:9"]\nhold_time = 30\nexclude = ["mgmt*"]\n'
        'local = "10.1.1.1"\nmetrics = "127.0.0.1:9105"\nflush_on_exit = true\n'
    )
    c = load(["--config", str(f)])
    assert c.servers == (ServerAddr("10.0.0.1"), ServerAddr("fd00::2", 9))
    assert c.hold_time == 30 and c.exclude == ("mgmt*",) and c.flush_on_exit
    assert c.local == address("10.1.1.1") and c.metrics == ("127.0.0.1", 9105)
    c = load(["--config", str(f), "--server", "10.9.9.9", "--hold-time", "12"])
    assert c.servers == (ServerAddr("10.9.9.9"),) and c.hold_time == 12
    assert c.exclude == ("mgmt*",)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('server = ["10.0.0.1"]', "unknown key 'server' (did you mean 'servers'?)"),
        ("hold_time = 'soon'", "key 'hold_time': must be an integer"),
        ("hold_time = 1", "key 'hold_time': must be 3..65535"),
        ('servers = ["10.0.0.1"]\nlocal = "127.0.0.1"', "key 'local': 127.0.0.1 is a loopback"),
        ("servers = [", "not valid TOML"),
        ('log_level = "LOUD"', "key 'log_level': must be one of"),
    ],
)
def test_file_errors_name_file_and_key(tmp_path: Path, body: str, needle: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(body + "\n")
    with pytest.raises(ConfigError) as err:
        load(["--config", str(f)])
    assert str(err.value).startswith(str(f))
    assert needle in str(err.value)


def test_cli_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "no service node" in capsys.readouterr().err
    assert main(["--server", "10.0.0.1", "--hold-time", "x"]) == 2
    assert "--hold-time: must be an integer" in capsys.readouterr().err
    assert main(["--server", "10.0.0.1", "--key-file", str(tmp_path / "none")]) == 2
    assert "cannot read key file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--bogus"])
    assert exc.value.code == 2


def test_help_shows_every_default() -> None:
    text = build_parser().format_help()
    for action in build_parser()._actions:
        if action.dest in ("help", "config", "version"):
            continue
        assert action.help and "default" in action.help, action.dest
    assert "/run/vxrd/vxrd.sock" in text
    out = subprocess.run(
        [sys.executable, "-m", "vxrd", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 0 and "--reconcile-interval" in out.stdout


def test_vxrdctl_flags_after_the_command_and_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13: one set of exit codes with vxsndctl (3: daemon not reachable, 2: usage)."""
    from vxrd import ctl

    sock = str(tmp_path / "none.sock")
    ns = ctl.build_parser().parse_args(["peers", "100", "--json", "--socket", sock])
    assert (ns.command, ns.vni, ns.json, ns.socket) == ("peers", "100", True, sock)
    assert ctl.main(["status", "--socket", sock]) == 3
    assert "cannot reach vxrd at" in capsys.readouterr().err
    assert ctl.main(["--socket", sock, "peers", "no-vni"]) == 2
    assert ctl.build_parser().parse_args(["status"]).socket == ctl.DEFAULT_STATUS_SOCKET
