"""vxsnd configuration: defaults < TOML file (--config) < command-line flags.

Each option is declared once in `OPTIONS`: its snake_case key (the TOML key and
the Config field), its --dashed flag, its default, a parser and its help text.
The file and the flags therefore accept and refuse exactly the same values, and
--help prints every default. Errors name the file (or flag) and the key; the
CLI turns them into exit status 2.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import socket
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schema.wire import DEFAULT_BUDGET, MAX_DATAGRAM, MAX_HOLD_TIME, MAX_SENDER

DEFAULT_PORT = 10001
DEFAULT_API_PORT = 10080
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MIN_BUDGET = 256


class ConfigError(ValueError):
    """A configuration value that vxsnd refuses; the message names where it came from."""


@dataclass(frozen=True, slots=True)
class ListenAddr:
    host: str  # an IP literal ("::" listens on every IPv4 and IPv6 address)
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def default_db_url() -> str:
    try:
        from vxsnd.store import default_db_url as store_default
    except ImportError:  # pragma: no cover - the store module always ships with vxsnd
        return "sqlite+aiosqlite:////var/lib/vxsnd/registry.db"
    return store_default()


@dataclass(frozen=True, slots=True)
class Config:
    listen: tuple[ListenAddr, ...] = (ListenAddr("::", DEFAULT_PORT),)
    db: str = field(default_factory=default_db_url)
    key_file: Path | None = None
    hold_time: int = 3600
    batch_window: float = 5.0  # milliseconds
    retransmit_initial: float = 0.25
    retransmit_max: float = 30.0
    replay_window: float = 60.0
    budget: int = DEFAULT_BUDGET
    queue_size: int = 65536
    sweep_interval: float = 1.0
    drain_timeout: float = 5.0
    server_id: str = field(default_factory=socket.gethostname)
    log_level: str = "INFO"
    api: ListenAddr | None = ListenAddr("127.0.0.1", DEFAULT_API_PORT)
    token_file: Path | None = None


# ---------------------------------------------------------------- value parsers


def parse_listen(text: str, default_port: int = DEFAULT_PORT) -> ListenAddr:
    """ADDR, ADDR:PORT, [V6ADDR], [V6ADDR]:PORT or a bare IPv6 literal."""
    text = text.strip()
    port = default_port
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"{text!r}: missing ']' after the IPv6 address")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected ':PORT' after ']'")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(p, text)
    else:
        host = text
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IPv4 or IPv6 address") from None
    return ListenAddr(str(addr), port)


def _port(text: str, whole: str) -> int:
    try:
        port = int(text, 10)
    except ValueError:
        raise ValueError(f"{whole!r}: port {text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{whole!r}: port {port} out of range 0..65535")
    return port


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type(value).__name__}")
    return value


def _int(low: int, high: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
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

    return parse


def _number(low: float, high: float, unit: str) -> Callable[[object], float]:
    def parse(value: object) -> float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"must be a number of {unit}, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number of {unit}, got {type(value).__name__}")
        if not low <= value <= high:
            raise ValueError(f"must be {low:g}..{high:g} {unit}, got {value}")
        return float(value)

    return parse


def _listen(value: object) -> tuple[ListenAddr, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise ValueError("must be a non-empty list of ADDR[:PORT] strings")
    out = tuple(parse_listen(v) for v in items)
    if len(set(out)) != len(out):
        raise ValueError("an address is listed twice")
    return out


def _api(value: object) -> ListenAddr | None:
    text = _str(value).strip()
    if text.lower() == "off":
        return None
    return parse_listen(text, DEFAULT_API_PORT)


def _db(value: object) -> str:
    text = _str(value).strip()
    if "://" not in text:
        raise ValueError(f"must be an SQLAlchemy URL like sqlite+aiosqlite:///PATH, got {text!r}")
    return text


def _path(value: object) -> Path:
    text = _str(value)
    if not text:
        raise ValueError("must not be empty")
    return Path(text)


def _server_id(value: object) -> str:
    text = _str(value)
    if not 0 < len(text) <= MAX_SENDER or not text.isprintable() or text.strip() != text:
        raise ValueError(f"must be 1..{MAX_SENDER} printable characters without outer spaces")
    return text


def _log_level(value: object) -> str:
    text = _str(value).upper()
    if text not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return text


@dataclass(frozen=True, slots=True)
class Option:
    key: str
    parse: Callable[[Any], Any]
    metavar: str
    help: str
    default_text: str
    repeat: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option(
        "listen",
        _listen,
        "ADDR[:PORT]",
        "UDP address to listen on, repeatable; IPv6 as [ADDR]:PORT; '[::]' is every "
        f"IPv4 and IPv6 address (default port {DEFAULT_PORT})",
        f"[::]:{DEFAULT_PORT}",
        repeat=True,
    ),
    Option("db", _db, "URL", "registry database (SQLite file or postgresql+asyncpg://)", ""),
    Option(
        "key_file",
        _path,
        "FILE",
        "HMAC key file ('KEY_ID HEX_SECRET' lines); with it unsigned datagrams are dropped",
        "none, unsigned",
    ),
    Option(
        "hold_time",
        _int(1, MAX_HOLD_TIME),
        "S",
        "largest hold time an agent may register with; registers asking more are "
        "dropped (reason hold-time). Agents choose their own hold time",
        "3600",
    ),
    Option(
        "batch_window",
        _number(0, 1000, "milliseconds"),
        "MS",
        "coalesce registry writes and pushes within this window",
        "5",
    ),
    Option(
        "retransmit_initial",
        _number(0.01, 60, "seconds"),
        "S",
        "first retransmit of an unacked push after this long; doubles per attempt",
        "0.25",
    ),
    Option(
        "retransmit_max",
        _number(0.01, 3600, "seconds"),
        "S",
        "longest interval between retransmits",
        "30",
    ),
    Option(
        "replay_window",
        _number(1, 3600, "seconds"),
        "S",
        "datagrams whose timestamp is further off than this are dropped (stale)",
        "60",
    ),
    Option(
        "budget",
        _int(MIN_BUDGET, MAX_DATAGRAM),
        "BYTES",
        "largest datagram sent; longer memberships are split into parts",
        str(DEFAULT_BUDGET),
    ),
    Option(
        "queue_size",
        _int(16, 10_000_000),
        "N",
        "datagrams queued between the socket and the workers; more are dropped and counted",
        "65536",
    ),
    Option(
        "sweep_interval",
        _number(0.05, 3600, "seconds"),
        "S",
        "how often expired registrations are swept",
        "1",
    ),
    Option(
        "drain_timeout",
        _number(0, 600, "seconds"),
        "S",
        "on SIGTERM/SIGINT, time allowed to finish the in-flight batch",
        "5",
    ),
    Option("server_id", _server_id, "ID", "sender id in pushed datagrams", "the hostname"),
    Option("log_level", _log_level, "LEVEL", f"one of {', '.join(LOG_LEVELS)}", "INFO"),
    Option(
        "api",
        _api,
        "ADDR[:PORT]|off",
        f"REST API (HTTP) address, default port {DEFAULT_API_PORT}; 'off' disables it. "
        "Without a token file only a loopback address is accepted",
        f"127.0.0.1:{DEFAULT_API_PORT}",
    ),
    Option(
        "token_file",
        _path,
        "FILE",
        "REST API bearer tokens ('TOKEN ROLE [NAME]' lines, roles read|admin); every "
        "change needs an admin token",
        "none: the API is unauthenticated and bound to loopback only",
    ),
)
_BY_KEY = {o.key: o for o in OPTIONS}


def _apply(values: dict[str, Any], where: Callable[[str], str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in values.items():
        try:
            out[key] = _BY_KEY[key].parse(raw)
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
        if key not in _BY_KEY:
            hint = difflib.get_close_matches(key.replace("-", "_"), list(_BY_KEY), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{path}: unknown key {key!r}{extra}")
    return _apply(data, lambda key: f"{path}: key {key!r}")


def build_parser(prog: str = "vxsnd") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="vxflood service node: keeps the VNI -> VTEP registry and pushes "
        "flood lists to the agents (vxrd). 'vxsnd db upgrade|current' manages the "
        "registry schema.",
        epilog="Every option can also be set in the TOML file given by --config "
        '(snake_case keys, e.g. hold_time = 600, listen = ["[::]:10001"]); flags '
        "override the file.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", metavar="FILE", help="TOML config file (default: none)")
    for o in OPTIONS:
        default = o.default_text or default_db_url()
        p.add_argument(
            o.flag,
            dest=o.key,
            metavar=o.metavar,
            action="append" if o.repeat else "store",
            help=f"{o.help} (default: {default})",
        )
    return p


def load(argv: Sequence[str] | None = None) -> Config:
    """Build the configuration; raises ConfigError (argparse exits 2 on its own errors)."""
    ns = vars(build_parser().parse_args(argv))
    return from_values(ns)


def from_values(ns: dict[str, Any]) -> Config:
    values: dict[str, Any] = {}
    config_file = ns.pop("config", None)
    if config_file is not None:
        values.update(load_file(Path(config_file)))
    values.update(_apply(ns, lambda key: _BY_KEY[key].flag))
    cfg = Config(**values)
    if cfg.retransmit_max < cfg.retransmit_initial:
        raise ConfigError("retransmit_max must not be below retransmit_initial")
    return cfg
