"""schema.options: the configuration machinery vxsnd and vxrd share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vxflood.schema import options as opt
from vxflood.schema.options import ConfigError, Option, OptionTable
from vxflood.schema.wire import MAX_SENDER

TABLE = OptionTable(
    (
        Option("hold_time", opt.int_range(1, 100), "S", "hold time", "10"),
        Option("interval", opt.number_range(0.5, 60, "seconds"), "S", "interval", "1"),
        Option("names", opt.parse_str_list, "NAME", "names, repeatable", "none", repeat=True),
        Option("key_file", opt.parse_path, "FILE", "key file", None),
        Option("verbose", opt.parse_bool, "", "talk more", "off", switch=True),
        Option("log_level", opt.parse_log_level, "LEVEL", "log level", lambda: "INFO"),
        Option("peer", opt.parse_str, "ADDR", "the peer", "none", flag_name="--to"),
    )
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return path


def merged(argv: list[str]) -> dict[str, Any]:
    parser = TABLE.build_parser("prog", "description", "epilog")
    return TABLE.merge(vars(parser.parse_args(argv)))


# ---------------------------------------------------------------- the file


def test_file_values_are_parsed(tmp_path: Path) -> None:
    path = write(tmp_path, 'hold_time = 5\ninterval = 2\nnames = ["a", "b"]\nverbose = true\n')
    assert TABLE.load_file(path) == {
        "hold_time": 5,
        "interval": 2.0,
        "names": ("a", "b"),
        "verbose": True,
    }


def test_unknown_key_names_the_closest_option(tmp_path: Path) -> None:
    path = write(tmp_path, "hold-time = 5\n")
    with pytest.raises(
        ConfigError, match=r"unknown key 'hold-time' \(did you mean 'hold_time'\?\)"
    ):
        TABLE.load_file(path)


def test_unknown_key_without_a_close_option(tmp_path: Path) -> None:
    path = write(tmp_path, "zzzzzz = 5\n")
    with pytest.raises(ConfigError) as exc:
        TABLE.load_file(path)
    assert str(exc.value) == f"{path}: unknown key 'zzzzzz'"


def test_bad_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "hold_time = = 5\n")
    with pytest.raises(ConfigError, match=r"c\.toml: not valid TOML: "):
        TABLE.load_file(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hold_time = " + "1" * 5000 + "\n", "Exceeds the limit"),
        ("names = " + "[" * 50_000 + "\n", "nested too deeply"),
    ],
)
def test_toml_the_parser_cannot_hold_is_a_config_error(
    tmp_path: Path, text: str, message: str
) -> None:
    """tomllib raises ValueError/RecursionError here, not TOMLDecodeError."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"c\.toml: not usable TOML: .*{message}"):
        TABLE.load_file(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read config file: No such file"):
        TABLE.load_file(tmp_path / "nope.toml")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r": cannot read config file: Is a directory"):
        TABLE.load_file(tmp_path)


def test_bad_value_in_file_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "hold_time = 500\n")
    with pytest.raises(ConfigError) as exc:
        TABLE.load_file(path)
    assert str(exc.value) == f"{path}: key 'hold_time': must be 1..100, got 500"


# ---------------------------------------------------------------- flags and merging


def test_flags_override_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'hold_time = 5\ninterval = 2\nnames = ["a"]\n')
    values = merged(["--config", str(path), "--hold-time", "7", "--names", "x", "--names", "y"])
    assert values == {"hold_time": 7, "interval": 2.0, "names": ("x", "y")}


def test_unset_flags_leave_defaults_to_the_caller() -> None:
    assert merged([]) == {}
    assert merged(["--verbose", "--to", "h", "--log-level", "debug"]) == {
        "verbose": True,
        "peer": "h",
        "log_level": "DEBUG",
    }


def test_bad_flag_value_names_the_flag() -> None:
    with pytest.raises(ConfigError) as exc:
        merged(["--to", "x", "--interval", "fast"])
    assert str(exc.value) == "--interval: must be a number of seconds, got 'fast'"


def test_merge_leaves_the_namespace_alone(tmp_path: Path) -> None:
    ns = {"config": str(write(tmp_path, "hold_time = 5\n")), "interval": "3"}
    assert TABLE.merge(ns) == {"hold_time": 5, "interval": 3.0}
    assert "config" in ns


def test_help_shows_every_default() -> None:
    text = " ".join(
        TABLE.build_parser("prog", "the description", "the epilog").format_help().split()
    )
    assert "--config FILE TOML config file (default: none)" in text
    assert "--hold-time S hold time (default: 10)" in text
    assert "--key-file FILE key file --verbose" in text  # default None: help as written
    assert "--verbose talk more (default: off)" in text
    assert "--log-level LEVEL log level (default: INFO)" in text
    assert "--to ADDR the peer (default: none)" in text
    assert "the description" in text and "the epilog" in text


def test_duplicate_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        OptionTable(
            (Option("a", opt.parse_str, "A", "a", None), Option("a", opt.parse_str, "A", "a", None))
        )


# ---------------------------------------------------------------- value parsers


@pytest.mark.parametrize(
    ("parse", "value", "message"),
    [
        (opt.parse_str, 5, "must be a string, got int"),
        (opt.int_range(1, 10), "x", "must be an integer, got 'x'"),
        (opt.int_range(1, 10), 1.5, "must be an integer, got float"),
        (opt.int_range(1, 10), True, "must be an integer, got bool"),
        (opt.int_range(1, 10), 11, "must be 1..10, got 11"),
        (opt.number_range(0.1, 60, "seconds"), "soon", "must be a number of seconds, got 'soon'"),
        (opt.number_range(0.1, 60, "seconds"), False, "must be a number of seconds, got bool"),
        (opt.number_range(0.1, 60, "seconds"), [1], "must be a number of seconds, got list"),
        (opt.number_range(0.1, 60, "seconds"), 0.05, "must be 0.1..60 seconds, got 0.05"),
        (opt.parse_bool, "yes", "must be true or false, got 'yes'"),
        (opt.parse_path, "", "must not be empty"),
        (opt.parse_path, 3, "must be a string, got int"),
        (opt.parse_str_list, ["a", ""], "must be a list of non-empty strings"),
        (opt.parse_str_list, 3, "must be a list of non-empty strings"),
        (opt.parse_sender_id, " x", "node id ' x' must be 1..64 characters of A-Z a-z 0-9"),
        (opt.parse_sender_id, "", "node id '' must be 1..64 characters of"),
        (opt.parse_sender_id, "x" * (MAX_SENDER + 1), "node id 'xxxxxxx"),
        (opt.parse_sender_id, "hv\x00one", r"node id 'hv\x00one' must be 1..64 characters"),
        (opt.parse_sender_id, "hv one", "node id 'hv one' must be"),
        (opt.parse_sender_id, "h\u00e9", r"node id 'h\xe9' must be"),
        (opt.parse_sender_id, 7, "must be a string, got int"),
        (opt.parse_log_level, "loud", "must be one of DEBUG, INFO, WARNING, ERROR, got 'loud'"),
    ],
)
def test_parser_errors(parse: Callable[[object], object], value: object, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse(value)
    assert str(exc.value).startswith(message)


@pytest.mark.parametrize(
    ("parse", "value", "result"),
    [
        (opt.int_range(1, 10), "10", 10),
        (opt.number_range(0, 5, "ms"), 3, 3.0),
        (opt.number_range(0, 5, "ms"), "2.5", 2.5),
        (opt.parse_path, "/x", Path("/x")),
        (opt.parse_str_list, "a", ("a",)),
        (opt.parse_sender_id, "node-1", "node-1"),
        (opt.parse_log_level, "warning", "WARNING"),
    ],
)
def test_parser_values(parse: Callable[[object], object], value: object, result: object) -> None:
    assert parse(value) == result


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("10.0.0.1", "10.0.0.1", None),
        ("10.0.0.1:7", "10.0.0.1", 7),
        ("name:0", "name", 0),
        ("[fd00::1]", "fd00::1", None),
        ("[fd00::1]:7", "fd00::1", 7),
        ("fd00::1", "fd00::1", None),
    ],
)
def test_split_host_port(text: str, host: str, port: int | None) -> None:
    assert opt.split_host_port(text, None) == (host, port)


@pytest.mark.parametrize(
    ("text", "min_port", "message"),
    [
        ("[fd00::1", 0, "'[fd00::1': missing ']' after the IPv6 address"),
        ("[fd00::1]7", 0, "'[fd00::1]7': expected ':PORT' after ']'"),
        ("h:x", 0, "'h:x': port 'x' is not a number"),
        ("h:65536", 0, "'h:65536': port 65536 out of range 0..65535"),
        ("h:0", 1, "'h:0': port 0 out of range 1..65535"),
    ],
)
def test_split_host_port_errors(text: str, min_port: int, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        opt.split_host_port(text, 1, min_port)
    assert str(exc.value) == message


def test_refused_values_are_cut_in_messages() -> None:
    """A value the fuzzer (or a typo) makes huge is not echoed whole into the error."""
    for parse, value in (
        (opt.int_range(1, 10), "1" * 5000),
        (opt.int_range(1, 10), 10**4000),
        (opt.parse_log_level, "x" * 5000),
        (opt.number_range(0.1, 60, "seconds"), "y" * 5000),
    ):
        with pytest.raises(ValueError) as exc:
            parse(value)
        assert len(str(exc.value)) < 200 and "characters)" in str(exc.value)
