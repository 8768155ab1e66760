"""vxrd configuration: defaults < TOML file (--config) < command-line flags.

Every option has one name (snake_case in the file, --dashed-name on the command
line), one default and one validator, so the file and the flags accept and
refuse exactly the same values. Errors name the file (or flag) and the key;
the CLI turns them into exit status 2. The machinery is schema.options; this
module declares vxrd's options and its address parsers.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from vxflood.commands import add_version
from vxflood.hostport import HostPort, parse_host_port
from vxflood.logs import parse_log_format
from vxflood.schema import options as opt
from vxflood.schema.options import LOG_LEVELS, ConfigError
from vxflood.schema.validate import Address, InvalidValue, parse_vtep
from vxflood.schema.wire import MAX_HOLD_TIME

DEFAULT_SERVER_PORT = 10001
DEFAULT_STATUS_SOCKET = "/run/vxrd/vxrd.sock"
DEFAULT_STATE_DIR = "/var/lib/vxrd"
MIN_HOLD_TIME = 3  # the refresh is hold/3 and must be at least a second

__all__ = [
    "DEFAULT_SERVER_PORT",
    "DEFAULT_STATE_DIR",
    "DEFAULT_STATUS_SOCKET",
    "LOG_LEVELS",
    "MIN_HOLD_TIME",
    "OPTIONS",
    "Config",
    "ConfigError",
    "ServerAddr",
    "build_parser",
    "load",
    "load_file",
    "parse_metrics",
    "parse_server",
]


@dataclass(frozen=True, slots=True)
class ServerAddr(HostPort):
    """One service node: a host (IP literal or name) and a UDP port."""

    port: int = DEFAULT_SERVER_PORT


@dataclass(frozen=True, slots=True)
class Config:
    servers: tuple[ServerAddr, ...] = ()
    key_file: Path | None = None
    hold_time: int = 90
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    local: Address | None = None
    node_id: str | None = None  # None: decided by vxrd.identity at start-up
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    status_socket: Path = Path(DEFAULT_STATUS_SOCKET)
    metrics: tuple[str, int] | None = None
    reconcile_interval: float = 30.0
    flush_on_exit: bool = False
    log_level: str = "INFO"
    log_format: str = "text"

    @property
    def refresh_interval(self) -> float:
        return self.hold_time / 3.0


# ---------------------------------------------------------------- vxrd-specific parsers


def _host_port(text: str, default_port: int | None, what: str) -> tuple[str, int]:
    """ADDR, ADDR:PORT, [V6ADDR]:PORT or a bare IPv6 address; ADDR may be a name."""
    return parse_host_port(text, default_port, what, names=True, min_port=1)


def parse_server(text: str) -> ServerAddr:
    host, port = _host_port(text, DEFAULT_SERVER_PORT, "server")
    return ServerAddr(host, port)


def parse_metrics(text: str) -> tuple[str, int]:
    return _host_port(text, None, "metrics")


def _servers(value: object) -> tuple[ServerAddr, ...]:
    items = opt.parse_str_list(value)
    servers = tuple(parse_server(v) for v in items)
    if len(set(servers)) != len(servers):
        raise ValueError("a server is listed twice")
    return servers


def _local(value: object) -> Address | None:
    try:
        return parse_vtep(opt.parse_str(value))
    except InvalidValue as exc:
        raise ValueError(str(exc)) from None


def _metrics(value: object) -> tuple[str, int]:
    return parse_metrics(opt.parse_str(value))


# ---------------------------------------------------------------- options

TABLE = opt.OptionTable(
    (
        opt.Option(
            "servers",
            _servers,
            "ADDR[:PORT]",
            f"service node, repeatable; IPv6 as [ADDR]:PORT (default port "
            f"{DEFAULT_SERVER_PORT}; required unless set in the config file)",
            None,
            repeat=True,
            flag_name="--server",
        ),
        opt.Option("key_file", opt.parse_path, "FILE", "HMAC key file", "unsigned"),
        opt.Option(
            "hold_time",
            opt.int_range(MIN_HOLD_TIME, MAX_HOLD_TIME),
            "S",
            "seconds the registration lives without refresh; refresh every hold/3",
            "90",
        ),
        opt.Option(
            "include",
            opt.parse_str_list,
            "GLOB",
            "manage VXLAN devices whose name matches, repeatable",
            "*",
            repeat=True,
        ),
        opt.Option(
            "exclude",
            opt.parse_str_list,
            "GLOB",
            "never touch devices whose name matches, repeatable",
            "none",
            repeat=True,
        ),
        opt.Option(
            "local",
            _local,
            "ADDR",
            "VTEP address for devices without a local address",
            "none, such devices are skipped",
        ),
        opt.Option(
            "node_id",
            opt.parse_sender_id,
            "ID",
            "this host's id in the registry, unique across the fabric",
            "the id kept in STATE_DIR/node-id, made once as HOSTNAME-<8 random hex> "
            "(unique even where hosts share a host name: namespaces, cloned images); "
            "if STATE_DIR is unusable, HOSTNAME-<8 hex hashed from the host name and "
            "this host's addresses>, with a warning",
        ),
        opt.Option(
            "state_dir",
            opt.parse_path,
            "DIR",
            "directory where vxrd keeps state across restarts: its node id (node-id) "
            "and its replay marks (replay-marks, only if the directory exists)",
            DEFAULT_STATE_DIR,
        ),
        opt.Option(
            "status_socket",
            opt.parse_path,
            "PATH",
            "UNIX socket of the local status API",
            DEFAULT_STATUS_SOCKET,
        ),
        opt.Option("metrics", _metrics, "ADDR:PORT", "serve Prometheus /metrics here", "off"),
        opt.Option(
            "reconcile_interval",
            opt.number_range(0.1, 86400, "seconds"),
            "S",
            "seconds between full kernel reconciliations",
            "30",
        ),
        opt.Option(
            "flush_on_exit",
            opt.parse_bool,
            "",
            "on SIGTERM/SIGINT withdraw and flush the flood lists",
            "off, entries are kept so restarts are hitless; 'vxrdctl leave' decommissions",
            switch=True,
        ),
        opt.Option(
            "log_level", opt.parse_log_level, "LEVEL", f"one of {', '.join(LOG_LEVELS)}", "INFO"
        ),
        opt.Option(
            "log_format",
            parse_log_format,
            "FORMAT",
            "text (one line per record; with sd-daemon priority prefixes when stderr is "
            "the journal) or json (one object per line, for log shippers)",
            "text",
        ),
    )
)
OPTIONS = TABLE.options
assert TABLE.keys == {f.name for f in fields(Config)}


def load_file(path: Path) -> dict[str, Any]:
    """Parse and validate a TOML config file into Config field values."""
    return TABLE.load_file(path)


def build_parser() -> argparse.ArgumentParser:
    parser = TABLE.build_parser(
        "vxrd",
        description="vxflood host agent: registers this host's VXLAN devices with the "
        "service node(s) and programs the flood lists they send into the kernel.",
        epilog="Every option can also be set in the TOML file given by --config "
        '(snake_case keys, e.g. hold_time = 90, servers = ["10.0.0.1"]); '
        "flags override the file. SIGHUP re-reads key_file. Exit status: 0 after a "
        "clean stop, 1 when vxrd cannot start or fails, 2 for a configuration error.",
    )
    add_version(parser)
    return parser


def load(argv: Sequence[str] | None = None) -> Config:
    """Build the configuration; raises ConfigError (argparse exits 2 on its own errors)."""
    values = TABLE.merge(vars(build_parser().parse_args(argv)))
    if not values.get("servers"):
        raise ConfigError("no service node: give --server ADDR[:PORT] or 'servers' in --config")
    return Config(**values)
