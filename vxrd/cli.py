"""`vxrd` entry point: configuration, logging, one event loop, clean shutdown.

SIGTERM and SIGINT set one stop event; the agent stops its tasks, the status
socket and metrics endpoint close, the kernel sockets close, and the flood
entries stay (fail-static) unless --flush-on-exit is set. Exit status 0.
SIGHUP re-reads the key file (a key rotation needs no restart).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from schema.keys import KeyFileError, Keyring, load_key_file
from schema.options import setup_logging
from schema.wire import Codec
from vxrd.agent import Agent
from vxrd.config import Config, ConfigError, load
from vxrd.kernel import Kernel
from vxrd.metrics import Metrics, start_http
from vxrd.status import start_status, stop_status

log = logging.getLogger("vxrd")


def load_keyring(config: Config) -> Keyring | None:
    return None if config.key_file is None else load_key_file(config.key_file, log)


def reload_keys(agent: Agent, config: Config) -> bool:
    """Re-read the key file (SIGHUP); a file that cannot be used is logged and the keys
    in force stay, so a typo during a rotation never cuts the agent off."""
    if config.key_file is None:
        log.info("SIGHUP: no key file configured, nothing to reload")
        return True
    try:
        keyring = load_keyring(config)
    except (KeyFileError, OSError) as exc:
        log.error("reload failed, keeping the keys in force: %s", exc)
        return False
    assert keyring is not None
    agent.set_codec(Codec(keyring))
    log.info(
        "keys reloaded from %s: %d key(s), signing with %s",
        config.key_file,
        len(keyring),
        keyring.signing.key_id,
    )
    return True


async def serve(
    config: Config,
    kernel: Kernel | None = None,
    keyring: Keyring | None = None,
    stop: asyncio.Event | None = None,
    signals: bool = True,
) -> Agent:
    """Run the daemon until SIGTERM/SIGINT (or `stop`); return the finished agent."""
    metrics = Metrics()
    agent = Agent(config, kernel or Kernel(), keyring, metrics)
    loop = asyncio.get_running_loop()
    if signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload_keys, agent, config)
    watcher = None
    if stop is not None:
        watcher = loop.create_task(_forward(stop, agent.stop))
    await agent.open()
    runners: list[web.AppRunner] = []
    try:
        status = await start_status(agent, config.status_socket)
        if config.metrics is not None:
            runners.append(await start_http(metrics, *config.metrics))
        log.info(
            "vxrd %s started: %d server(s), %d device(s) managed, status on %s",
            config.node_id,
            len(agent.clients),
            len(agent.serving),
            config.status_socket,
        )
        try:
            await agent.run()
        finally:
            await stop_status(status, config.status_socket)
    finally:
        for r in runners:
            await r.cleanup()
        await agent.close()
        if watcher is not None:
            watcher.cancel()
        if signals:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
    log.info("vxrd stopped (%s)", "left" if agent.left else "flood entries kept")
    return agent


async def _forward(src: asyncio.Event, dst: asyncio.Event) -> None:
    await src.wait()
    dst.set()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load(argv)
    except ConfigError as exc:
        print(f"vxrd: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    try:
        keyring = load_keyring(config)
    except KeyFileError as exc:
        print(f"vxrd: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config, keyring=keyring))
    except OSError as exc:
        log.error("%s", exc)
        return 1
    return 0
