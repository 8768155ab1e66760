"""Configuration machinery shared by vxsnd and vxrd: defaults < TOML file < flags.

A daemon declares its options once, as an `OptionTable` of `Option`s: the
snake_case key (the TOML key and the Config field), the --dashed flag, a parser
and the help text with its default. The table loads the TOML file (refusing
unknown keys with a "did you mean" hint), builds the argparse parser (every
default shown in --help) and merges the two, flags overriding the file. The
file and the flags therefore accept and refuse exactly the same values. Errors
are `ConfigError`s naming the file (or flag) and the key; the CLIs turn them
into exit status 2.

The typed value parsers below take a TOML value or a flag's string and raise
ValueError with a message that the table prefixes with where the value came
from.
"""

from __future__ import annotations

import argparse
import difflib
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vxflood.schema.validate import InvalidValue, check_node_id

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(ValueError):
    """A configuration value that a daemon refuses; the message names where it came from."""


# ---------------------------------------------------------------- value parsers


def _shown(value: object, repr_: bool = True, limit: int = 60) -> str:
    """A refused value in an error message, cut: a config file or flag may hold anything."""
    text = repr(value) if repr_ else str(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(text)} characters)"


def parse_str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type(value).__name__}")
    return value


def int_range(low: int, high: int) -> Callable[[object], int]:
    """A parser for an integer in low..high (a TOML integer or a decimal string)."""

    def parse(value: object) -> int:
        if isinstance(value, str):
            try:
                value = int(value, 10)
            except ValueError:
                raise ValueError(f"must be an integer, got {_shown(value)}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {type(value).__name__}")
        if not low <= value <= high:
            raise ValueError(f"must be {low}..{high}, got {_shown(value, repr_=False)}")
        return value

    return parse


def number_range(low: float, high: float, unit: str) -> Callable[[object], float]:
    """A parser for a number of `unit` in low..high (TOML integer or float, or a string)."""

    def parse(value: object) -> float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"must be a number of {unit}, got {_shown(value)}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number of {unit}, got {type(value).__name__}")
        if not low <= value <= high:
            raise ValueError(f"must be {low:g}..{high:g} {unit}, got {value}")
        return float(value)

    return parse


def parse_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {_shown(value)}")
    return value


def parse_path(value: object) -> Path:
    text = parse_str(value)
    if not text:
        raise ValueError("must not be empty")
    return Path(text)


def parse_str_list(value: object) -> tuple[str, ...]:
    """A list of non-empty strings; a single string counts as a list of one."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be a list of non-empty strings")
    return tuple(value)


def parse_sender_id(value: object) -> str:
    """A sender id as carried in datagrams (vxsnd's server_id, vxrd's node_id)."""
    try:
        return check_node_id(parse_str(value))
    except InvalidValue as exc:
        raise ValueError(str(exc)) from None


def parse_log_level(value: object) -> str:
    text = parse_str(value).upper()
    if text not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, got {_shown(value)}")
    return text


def parse_port(text: str, whole: str, low: int = 0) -> int:
    """The PORT of an address `whole`, in low..65535."""
    try:
        port = int(text, 10)
    except ValueError:
        raise ValueError(f"{whole!r}: port {text!r} is not a number") from None
    if not low <= port <= 65535:
        raise ValueError(f"{whole!r}: port {port} out of range {low}..65535")
    return port


def split_host_port(
    text: str, default_port: int | None, min_port: int = 0
) -> tuple[str, int | None]:
    """Split ADDR, ADDR:PORT, [V6ADDR], [V6ADDR]:PORT or a bare IPv6 address
    (more than one ':') into the address text and the port (default_port if
    none is given). The address is not checked; that is the caller's part."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"{text!r}: missing ']' after the IPv6 address")
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected ':PORT' after ']'")
        return host, parse_port(rest[1:], text, min_port)
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, parse_port(port, text, min_port)
    return text, default_port


# ---------------------------------------------------------------- option table


@dataclass(frozen=True, slots=True)
class Option:
    """One option. `default` is the text after "default: " in --help (a callable
    is asked when the parser is built; None leaves the help as written).
    `repeat` makes the flag appendable; `switch` makes it a flag without a value
    that sets True."""

    key: str
    parse: Callable[[Any], Any]
    metavar: str
    help: str
    default: str | Callable[[], str] | None
    repeat: bool = False
    switch: bool = False
    flag_name: str | None = None

    @property
    def flag(self) -> str:
        return self.flag_name or "--" + self.key.replace("_", "-")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        default = self.default() if callable(self.default) else self.default
        text = self.help if default is None else f"{self.help} (default: {default})"
        if self.switch:
            parser.add_argument(
                self.flag, dest=self.key, action="store_const", const=True, help=text
            )
            return
        parser.add_argument(
            self.flag,
            dest=self.key,
            metavar=self.metavar,
            action="append" if self.repeat else "store",
            help=text,
        )


class OptionTable:
    """A daemon's options, in --help order."""

    def __init__(self, options: Iterable[Option]) -> None:
        self.options = tuple(options)
        self.by_key = {o.key: o for o in self.options}
        if len(self.by_key) != len(self.options):
            raise ValueError("an option key is declared twice")

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self.by_key)

    def apply(self, values: Mapping[str, object], where: Callable[[str], str]) -> dict[str, Any]:
        """Parse each value with its option's parser; errors are prefixed with where(key)."""
        out: dict[str, Any] = {}
        for key, raw in values.items():
            try:
                out[key] = self.by_key[key].parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{where(key)}: {exc}") from None
        return out

    def load_file(self, path: Path) -> dict[str, Any]:
        """Parse and validate a TOML config file into Config field values."""
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except ValueError as exc:  # e.g. an integer over Python's digit limit
            raise ConfigError(f"{path}: not usable TOML: {exc}") from None
        except RecursionError:
            raise ConfigError(f"{path}: not usable TOML: nested too deeply") from None
        for key in data:
            if key not in self.by_key:
                hint = difflib.get_close_matches(key.replace("-", "_"), list(self.by_key), n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ConfigError(f"{path}: unknown key {key!r}{extra}")
        return self.apply(data, lambda key: f"{path}: key {key!r}")

    def build_parser(self, prog: str, description: str, epilog: str) -> argparse.ArgumentParser:
        """--config FILE followed by one flag per option; unset flags stay out of the namespace."""
        parser = argparse.ArgumentParser(
            prog=prog,
            description=description,
            epilog=epilog,
            argument_default=argparse.SUPPRESS,
        )
        parser.add_argument("--config", metavar="FILE", help="TOML config file (default: none)")
        for option in self.options:
            option.add_to(parser)
        return parser

    def merge(self, ns: Mapping[str, Any]) -> dict[str, Any]:
        """Field values from parsed flags: the --config file's, overridden by the flags'."""
        flags = dict(ns)
        values: dict[str, Any] = {}
        config_file = flags.pop("config", None)
        if config_file is not None:
            values.update(self.load_file(Path(config_file)))
        values.update(self.apply(flags, lambda key: self.by_key[key].flag))
        return values
