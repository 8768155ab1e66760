"""vxrd configuration: defaults < TOML file (--config) < command-line flags.

Every option has one name (snake_case in the file, --dashed-name on the command
line), one default and one validator, so the file and the flags accept and
refuse exactly the same values. Errors name the file (or flag) and the key;
the CLI turns them into exit status 2.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import socket
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from schema.validate import Address, InvalidValue, parse_vtep
from schema.wire import MAX_HOLD_TIME, MAX_SENDER

DEFAULT_SERVER_PORT = 10001
DEFAULT_STATUS_SOCKET = "/run/vxrd/vxrd.sock"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MIN_HOLD_TIME = 3  # the refresh is hold/3 and must be at least a second


class ConfigError(ValueError):
    """A configuration value that vxrd refuses; the message names where it came from."""


@dataclass(frozen=True, slots=True)
class ServerAddr:
    """One service node: a host (IP literal or name) and a UDP port."""

    host: str
    port: int = DEFAULT_SERVER_PORT

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Config:
    servers: tuple[ServerAddr, ...] = ()
    key_file: Path | None = None
    hold_time: int = 90
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    local: Address | None = None
    node_id: str = field(default_factory=socket.gethostname)
    status_socket: Path = Path(DEFAULT_STATUS_SOCKET)
    metrics: tuple[str, int] | None = None
    reconcile_interval: float = 30.0
    flush_on_exit: bool = False
    log_level: str = "INFO"

    @property
    def refresh_interval(self) -> float:
        return self.hold_time / 3.0


# ---------------------------------------------------------------- value parsers


def _host_port(text: str, default_port: int | None, what: str) -> tuple[str, int]:
    """ADDR, ADDR:PORT, [V6ADDR]:PORT or a bare IPv6 address."""
    text = text.strip()
    if not text:
        raise ValueError(f"{what} must not be empty")
    port: int | None = default_port
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"{text!r}: missing ']' after IPv6 address")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected ':PORT' after ']'")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(p, text)
    else:
        host = text  # a name, an IPv4 address or a bare IPv6 address
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
    elif not host:
        raise ValueError(f"{text!r}: missing address")
    if port is None:
        raise ValueError(f"{text!r}: {what} needs ADDR:PORT")
    return host, port


def _port(text: str, whole: str) -> int:
    try:
        port = int(text, 10)
    except ValueError:
        raise ValueError(f"{whole!r}: port {text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{whole!r}: port {port} out of range 1..65535")
    return port


def parse_server(text: str) -> ServerAddr:
    host, port = _host_port(text, DEFAULT_SERVER_PORT, "server")
    return ServerAddr(host, port)


def parse_metrics(text: str) -> tuple[str, int]:
    return _host_port(text, None, "metrics")


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type(value).__name__}")
    return value


def _int(value: object, low: int, high: int) -> int:
    if isinstance(value, str):
        try:
            value = int(value, 10)
        except ValueError:
            raise ValueError(f"must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"must be {low}..{high}, got {value}")
    return value


def _seconds(value: object) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"must be a number of seconds, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number of seconds, got {type(value).__name__}")
    if not 0.1 <= value <= 86400:
        raise ValueError(f"must be 0.1..86400 seconds, got {value}")
    return float(value)


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _str_list(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be a list of non-empty strings")
    return tuple(value)


def _servers(value: object) -> tuple[ServerAddr, ...]:
    items = _str_list(value)
    servers = tuple(parse_server(v) for v in items)
    if len(set(servers)) != len(servers):
        raise ValueError("a server is listed twice")
    return servers


def _local(value: object) -> Address | None:
    try:
        return parse_vtep(_str(value))
    except InvalidValue as exc:
        raise ValueError(str(exc)) from None


def _node_id(value: object) -> str:
    text = _str(value)
    if not 0 < len(text) <= MAX_SENDER or not text.isprintable() or text.strip() != text:
        raise ValueError(f"must be 1..{MAX_SENDER} printable characters without outer spaces")
    return text


def _log_level(value: object) -> str:
    text = _str(value).upper()
    if text not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return text


def _path(value: object) -> Path:
    text = _str(value)
    if not text:
        raise ValueError("must not be empty")
    return Path(text)


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "servers": _servers,
    "key_file": _path,
    "hold_time": lambda v: _int(v, MIN_HOLD_TIME, MAX_HOLD_TIME),
    "include": _str_list,
    "exclude": _str_list,
    "local": _local,
    "node_id": _node_id,
    "status_socket": _path,
    "metrics": lambda v: parse_metrics(_str(v)),
    "reconcile_interval": _seconds,
    "flush_on_exit": _bool,
    "log_level": _log_level,
}
assert set(_PARSERS) == {f.name for f in fields(Config)}


def _apply(values: Mapping[str, object], where: Callable[[str], str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in values.items():
        try:
            out[key] = _PARSERS[key](raw)
        except ValueError as exc:
            raise ConfigError(f"{where(key)}: {exc}") from None
    return out


def load_file(path: Path) -> dict[str, Any]:
    """Parse and validate a TOML config file into Config field values."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for key in data:
        if key not in _PARSERS:
            hint = difflib.get_close_matches(key.replace("-", "_"), list(_PARSERS), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{path}: unknown key {key!r}{extra}")
    return _apply(data, lambda key: f"{path}: key {key!r}")


# ---------------------------------------------------------------- command line

_FLAG_FOR = {
    "servers": "--server",
    "key_file": "--key-file",
    "hold_time": "--hold-time",
    "include": "--include",
    "exclude": "--exclude",
    "local": "--local",
    "node_id": "--node-id",
    "status_socket": "--status-socket",
    "metrics": "--metrics",
    "reconcile_interval": "--reconcile-interval",
    "flush_on_exit": "--flush-on-exit",
    "log_level": "--log-level",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vxrd",
        description="vxflood host agent: registers this host's VXLAN devices with the "
        "service node(s) and programs the flood lists they send into the kernel.",
        epilog="Every option can also be set in the TOML file given by --config "
        '(snake_case keys, e.g. hold_time = 90, servers = ["10.0.0.1"]); '
        "flags override the file.",
        argument_default=argparse.SUPPRESS,
    )
    a = p.add_argument
    a("--config", metavar="FILE", help="TOML config file (default: none)")
    a(
        "--server",
        dest="servers",
        metavar="ADDR[:PORT]",
        action="append",
        help=f"service node, repeatable; IPv6 as [ADDR]:PORT (default port "
        f"{DEFAULT_SERVER_PORT}; required unless set in the config file)",
    )
    a("--key-file", dest="key_file", metavar="FILE", help="HMAC key file (default: unsigned)")
    a(
        "--hold-time",
        dest="hold_time",
        metavar="S",
        help="seconds the registration lives without refresh; refresh every hold/3 (default: 90)",
    )
    a(
        "--include",
        metavar="GLOB",
        action="append",
        help="manage VXLAN devices whose name matches, repeatable (default: *)",
    )
    a(
        "--exclude",
        metavar="GLOB",
        action="append",
        help="never touch devices whose name matches, repeatable (default: none)",
    )
    a(
        "--local",
        metavar="ADDR",
        help="VTEP address for devices without a local address (default: none, such "
        "devices are skipped)",
    )
    a("--node-id", dest="node_id", metavar="ID", help="node id (default: the hostname)")
    a(
        "--status-socket",
        dest="status_socket",
        metavar="PATH",
        help=f"UNIX socket of the local status API (default: {DEFAULT_STATUS_SOCKET})",
    )
    a("--metrics", metavar="ADDR:PORT", help="serve Prometheus /metrics here (default: off)")
    a(
        "--reconcile-interval",
        dest="reconcile_interval",
        metavar="S",
        help="seconds between full kernel reconciliations (default: 30)",
    )
    a(
        "--flush-on-exit",
        dest="flush_on_exit",
        action="store_const",
        const=True,
        help="on SIGTERM/SIGINT withdraw and flush the flood lists (default: off, "
        "entries are kept so restarts are hitless; 'vxrdctl leave' decommissions)",
    )
    a(
        "--log-level",
        dest="log_level",
        metavar="LEVEL",
        help=f"one of {', '.join(LOG_LEVELS)} (default: INFO)",
    )
    return p


def load(argv: Sequence[str] | None = None) -> Config:
    """Build the configuration; raises ConfigError (argparse exits 2 on its own errors)."""
    ns = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    config_file = ns.pop("config", None)
    if config_file is not None:
        values.update(load_file(Path(config_file)))
    values.update(_apply(ns, lambda key: f"{_FLAG_FOR[key]}"))
    if not values.get("servers"):
        raise ConfigError("no service node: give --server ADDR[:PORT] or 'servers' in --config")
    return Config(**values)
