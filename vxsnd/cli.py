"""Command line: `vxsnd [options]` runs the service node; `vxsnd db ...` manages
the registry schema (delegated to vxsnd.dbcli).

Exit status: 0 after a clean stop, 2 for a configuration error (the message
names the file or flag and the key), 1 when the daemon cannot start.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from schema.keys import KeyFileError, load_key_file
from schema.options import setup_logging
from vxsnd.config import Config, ConfigError, default_db_url, load, load_file

log = logging.getLogger("vxsnd")


def db_main(argv: Sequence[str]) -> int:
    """`vxsnd db upgrade|current [--db URL]`."""
    p = argparse.ArgumentParser(prog="vxsnd db", description="registry schema management")
    p.add_argument("action", choices=("upgrade", "current"), help="what to do")
    p.add_argument("--db", metavar="URL", help=f"registry URL (default: {default_db_url()})")
    p.add_argument("--config", metavar="FILE", help="take 'db' from this TOML config file")
    ns = p.parse_args(argv)
    url = ns.db
    if url is None and ns.config is not None:
        try:
            url = load_file(Path(ns.config)).get("db")
        except ConfigError as exc:
            print(f"vxsnd: configuration error: {exc}", file=sys.stderr)
            return 2
    from vxsnd import dbcli
    from vxsnd import registry as store

    try:
        if ns.action == "upgrade":
            dbcli.db_upgrade(url)
            print(f"registry at {dbcli.db_current(url)}")
        else:
            print(dbcli.db_current(url))
    except (store.SchemaError, OSError, ValueError) as exc:
        print(f"vxsnd db {ns.action}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "db":
        return db_main(args[1:])
    try:
        cfg: Config = load(args)
    except ConfigError as exc:
        print(f"vxsnd: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level)
    keyring = None
    if cfg.key_file is not None:
        try:
            keyring = load_key_file(cfg.key_file, log)
        except KeyFileError as exc:
            print(f"vxsnd: configuration error: {exc}", file=sys.stderr)
            return 2
    else:
        log.warning("no key file: datagrams are neither signed nor verified")
    from vxsnd.api import ApiConfigError, api_service, check_api_config
    from vxsnd.daemon import Daemon, StartupError, run

    services = []
    if cfg.api is not None:
        token_file = str(cfg.token_file) if cfg.token_file else None
        try:
            check_api_config(cfg.api.host, token_file)
        except ApiConfigError as exc:
            print(f"vxsnd: configuration error: {exc}", file=sys.stderr)
            return 2
        services.append(api_service(cfg.api.host, cfg.api.port, token_file))

    def add_services(daemon: Daemon) -> None:
        daemon.services.extend(services)

    try:
        return run(cfg, keyring, configure=add_services)
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 1
    except KeyboardInterrupt:
        return 0
