"""vxsnd configuration: defaults < TOML file (--config) < command-line flags.

Each option is declared once in `OPTIONS`: its snake_case key (the TOML key and
the Config field), its --dashed flag, its default, a parser and its help text.
The file and the flags therefore accept and refuse exactly the same values, and
--help prints every default. Errors name the file (or flag) and the key; the
CLI turns them into exit status 2. The machinery is schema.options; this
module declares vxsnd's options and its address parsers.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from vxflood.commands import add_version
from vxflood.hostport import HostPort, parse_host_port
from vxflood.logs import mask_url, parse_log_format
from vxflood.schema.options import (
    LOG_LEVELS,
    ConfigError,
    Option,
    OptionTable,
    int_range,
    number_range,
    parse_log_level,
    parse_path,
    parse_sender_id,
    parse_str,
)
from vxflood.schema.wire import DEFAULT_BUDGET, MAX_DATAGRAM, MAX_HOLD_TIME

DEFAULT_PORT = 10001
DEFAULT_API_PORT = 10080
DB_BACKENDS = ("sqlite", "postgresql", "postgres")
MIN_BUDGET = 256

__all__ = [
    "DEFAULT_API_PORT",
    "DEFAULT_PORT",
    "LOG_LEVELS",
    "OPTIONS",
    "Config",
    "ConfigError",
    "ListenAddr",
    "Option",
    "build_parser",
    "check_db_url",
    "default_db_url",
    "from_values",
    "load",
    "load_file",
    "parse_listen",
]


@dataclass(frozen=True, slots=True)
class ListenAddr(HostPort):
    """An IP literal and a port ("::" listens on every IPv4 and IPv6 address)."""


def default_db_url() -> str:
    from vxsnd.registry import default_db_url as store_default

    return store_default()


@dataclass(frozen=True, slots=True)
class Config:
    listen: tuple[ListenAddr, ...] = (ListenAddr("::", DEFAULT_PORT),)
    db: str = field(default_factory=default_db_url)
    key_file: Path | None = None
    max_hold_time: int = 3600
    batch_window: float = 5.0  # milliseconds
    retransmit_initial: float = 0.25
    retransmit_max: float = 30.0
    replay_window: float = 60.0
    budget: int = DEFAULT_BUDGET
    queue_size: int = 65536
    sweep_interval: float = 1.0
    registry_poll: float = 1.0
    drain_timeout: float = 5.0
    server_id: str = field(default_factory=socket.gethostname)
    log_level: str = "INFO"
    log_format: str = "text"
    api: ListenAddr | None = ListenAddr("127.0.0.1", DEFAULT_API_PORT)
    token_file: Path | None = None


# ---------------------------------------------------------------- vxsnd-specific parsers


def parse_listen(text: str, default_port: int = DEFAULT_PORT) -> ListenAddr:
    """ADDR, ADDR:PORT, [V6ADDR], [V6ADDR]:PORT or a bare IPv6 literal."""
    return ListenAddr(*parse_host_port(text, default_port, "address"))


def _listen(value: object) -> tuple[ListenAddr, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise ValueError("must be a non-empty list of ADDR[:PORT] strings")
    out = tuple(parse_listen(v) for v in items)
    if len(set(out)) != len(out):
        raise ValueError("an address is listed twice")
    return out


def _api(value: object) -> ListenAddr | None:
    text = parse_str(value).strip()
    if text.lower() == "off":
        return None
    return parse_listen(text, DEFAULT_API_PORT)


def check_db_url(text: str) -> str:
    """A registry URL this vxsnd can open (SQLite or PostgreSQL); errors mask the password."""
    text = text.strip()
    shown = mask_url(text)
    if "://" not in text:
        raise ValueError(f"must be an SQLAlchemy URL like sqlite:///PATH, got {shown!r}")
    try:
        backend = make_url(text).get_backend_name()
    except ArgumentError:
        raise ValueError(f"{shown!r} is not a database URL") from None
    if backend not in DB_BACKENDS:
        raise ValueError(
            f"{shown!r}: unsupported database {backend!r} "
            "(use sqlite:///PATH or postgresql+asyncpg://USER@HOST/DATABASE)"
        )
    return text


def _db(value: object) -> str:
    return check_db_url(parse_str(value))


TABLE = OptionTable(
    (
        Option(
            "listen",
            _listen,
            "ADDR[:PORT]",
            "UDP address to listen on, repeatable; IPv6 as [ADDR]:PORT; '[::]' is every "
            "IPv4 and IPv6 address (0.0.0.0 on a host booted without IPv6) "
            f"(default port {DEFAULT_PORT})",
            f"[::]:{DEFAULT_PORT}",
            repeat=True,
        ),
        Option(
            "db",
            _db,
            "URL",
            "registry database (SQLite file or postgresql+asyncpg://)",
            default_db_url,
        ),
        Option(
            "key_file",
            parse_path,
            "FILE",
            "HMAC key file ('KEY_ID HEX_SECRET' lines); with it unsigned datagrams are dropped",
            "none, unsigned",
        ),
        Option(
            "max_hold_time",
            int_range(1, MAX_HOLD_TIME),
            "S",
            "largest hold time an agent may register with; registers asking more are "
            "dropped (reason hold-time). Agents choose their own hold time",
            "3600",
        ),
        Option(
            "batch_window",
            number_range(0, 1000, "milliseconds"),
            "MS",
            "least time between two registry transactions: a change after a quiet "
            "spell is written and pushed at once; under load, changes arriving within "
            "the window are coalesced into one transaction",
            "5",
        ),
        Option(
            "retransmit_initial",
            number_range(0.01, 60, "seconds"),
            "S",
            "first retransmit of an unacked push after this long; doubles per attempt",
            "0.25",
        ),
        Option(
            "retransmit_max",
            number_range(0.01, 3600, "seconds"),
            "S",
            "longest interval between retransmits",
            "30",
        ),
        Option(
            "replay_window",
            number_range(1, 3600, "seconds"),
            "S",
            "datagrams whose timestamp is further off than this are dropped (stale)",
            "60",
        ),
        Option(
            "budget",
            int_range(MIN_BUDGET, MAX_DATAGRAM),
            "BYTES",
            "largest datagram sent; longer memberships are split into parts",
            str(DEFAULT_BUDGET),
        ),
        Option(
            "queue_size",
            int_range(16, 10_000_000),
            "N",
            "datagrams queued between the socket and the workers; more are dropped and counted",
            "65536",
        ),
        Option(
            "sweep_interval",
            number_range(0.05, 3600, "seconds"),
            "S",
            "how often expired registrations are swept",
            "1",
        ),
        Option(
            "registry_poll",
            number_range(0, 3600, "seconds"),
            "S",
            "how often the registry is checked for changes made by other vxsnd instances "
            "sharing it (pushed to the nodes registered here); 0 disables",
            "1",
        ),
        Option(
            "drain_timeout",
            number_range(0, 600, "seconds"),
            "S",
            "on SIGTERM/SIGINT, time allowed to finish the in-flight batch",
            "5",
        ),
        Option("server_id", parse_sender_id, "ID", "sender id in pushed datagrams", "the hostname"),
        Option("log_level", parse_log_level, "LEVEL", f"one of {', '.join(LOG_LEVELS)}", "INFO"),
        Option(
            "log_format",
            parse_log_format,
            "FORMAT",
            "text (one line per record; with sd-daemon priority prefixes when stderr is "
            "the journal) or json (one object per line, for log shippers)",
            "text",
        ),
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
            parse_path,
            "FILE",
            "REST API bearer tokens ('TOKEN ROLE [NAME]' lines, roles read|admin); every "
            "change needs an admin token",
            "none: the API is unauthenticated and bound to loopback only",
        ),
    )
)
OPTIONS = TABLE.options
assert TABLE.keys == {f.name for f in fields(Config)}


def load_file(path: Path) -> dict[str, Any]:
    """Parse and validate a TOML config file into Config field values."""
    return TABLE.load_file(path)


def build_parser(prog: str = "vxsnd") -> argparse.ArgumentParser:
    parser = TABLE.build_parser(
        prog,
        description="vxflood service node: keeps the VNI -> VTEP registry and pushes "
        "flood lists to the agents (vxrd). 'vxsnd db upgrade|current' manages the "
        "registry schema.",
        epilog="Every option can also be set in the TOML file given by --config "
        '(snake_case keys, e.g. max_hold_time = 600, listen = ["[::]:10001"]); flags '
        "override the file. SIGHUP re-reads key_file and token_file. Exit status: 0 "
        "after a clean stop, 1 when vxsnd cannot start or fails, 2 for a configuration "
        "error.",
    )
    add_version(parser)
    return parser


def load(argv: Sequence[str] | None = None) -> Config:
    """Build the configuration; raises ConfigError (argparse exits 2 on its own errors)."""
    ns = vars(build_parser().parse_args(argv))
    return from_values(ns)


def from_values(ns: dict[str, Any]) -> Config:
    cfg = Config(**TABLE.merge(ns))
    if cfg.retransmit_max < cfg.retransmit_initial:
        raise ConfigError("retransmit_max must not be below retransmit_initial")
    return cfg
