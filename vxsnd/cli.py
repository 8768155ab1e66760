"""Command line: `vxsnd [options]` runs the service node; `vxsnd db ...` manages
the registry schema (delegated to vxsnd.dbcli).

Exit status: 0 after a clean stop, 2 for a configuration error (the message
names the file or flag and the key; a restart cannot help), 1 when the daemon
cannot start or fails at run time. Every failure is one line on stderr (the
journal), naming the address, registry URL (password masked) or file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from vxflood.commands import add_version
from vxflood.keys import load_keys
from vxflood.lifecycle import EXIT_CONFIG, EXIT_RUNTIME, StartupError, os_reason
from vxflood.logs import mask_url, redact, setup_logging
from vxsnd.config import Config, ConfigError, check_db_url, default_db_url, load, load_file

log = logging.getLogger("vxsnd")


def db_main(argv: Sequence[str]) -> int:
    """`vxsnd db upgrade|current [--db URL]`."""
    p = argparse.ArgumentParser(prog="vxsnd db", description="registry schema management")
    add_version(p)
    p.add_argument("action", choices=("upgrade", "current"), help="what to do")
    p.add_argument("--db", metavar="URL", help=f"registry URL (default: {default_db_url()})")
    p.add_argument("--config", metavar="FILE", help="take 'db' from this TOML config file")
    ns = p.parse_args(argv)
    url = ns.db
    try:
        if url is None and ns.config is not None:
            url = load_file(Path(ns.config)).get("db")
        if url is not None:
            url = check_db_url(url)
    except (ConfigError, ValueError) as exc:
        print(f"vxsnd db {ns.action}: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from vxsnd import dbcli

    shown = url or default_db_url()
    try:
        if ns.action == "upgrade":
            dbcli.db_upgrade(url)
            print(f"registry at {dbcli.db_current(url)}")
        else:
            print(dbcli.db_current(url))
    except dbcli.NewerRegistry as exc:
        print(f"vxsnd db {ns.action}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except Exception as exc:  # one line whatever the driver raised (refused, auth, ...)
        reason = redact(str(exc) or type(exc).__name__, shown)
        print(f"vxsnd db {ns.action}: registry {mask_url(shown)}: {reason}", file=sys.stderr)
        return EXIT_RUNTIME
    return 0


def api_service(cfg: Config) -> Callable[[Any], AbstractAsyncContextManager[object]] | None:
    """The REST API as a daemon service, its start-up failures as one-line StartupErrors;
    None when the API is off. Raises ConfigError for a bad token file or address."""
    if cfg.api is None:
        return None
    from vxsnd.api import ApiConfigError, check_api_config
    from vxsnd.api import api_service as make

    where, token_file = cfg.api, (str(cfg.token_file) if cfg.token_file else None)
    try:
        check_api_config(where.host, token_file)
    except ApiConfigError as exc:
        raise ConfigError(str(exc)) from None
    inner = make(where.host, where.port, token_file)

    @asynccontextmanager
    async def service(daemon: Any) -> AsyncIterator[object]:
        async with AsyncExitStack() as stack:
            try:
                runner = await stack.enter_async_context(inner(daemon))
            except OSError as exc:
                reason = os_reason(exc)
                raise StartupError(f"cannot listen on {where} (REST API): {reason}") from None
            except ApiConfigError as exc:
                raise StartupError(f"configuration error: {exc}", EXIT_CONFIG) from None
            yield runner

    return service


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "db":
        return db_main(args[1:])
    try:
        cfg: Config = load(args)
        api = api_service(cfg)
    except ConfigError as exc:
        print(f"vxsnd: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(cfg.log_level, cfg.log_format)
    from vxsnd.daemon import Daemon, run

    def add_services(daemon: Daemon) -> None:
        if api is not None:
            daemon.services.append(api)

    try:
        keyring = load_keys(cfg.key_file, log)
        return run(cfg, keyring, configure=add_services)
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return exc.code
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # a supervised task failed (logged with its traceback)
        log.error("stopped on an error: %s", exc)
        return EXIT_RUNTIME
