"""`vxrd` entry point: configuration, logging, and vxrd's services on the shared
lifecycle (vxflood.lifecycle).

Before any service, the node id is decided when none is configured (vxrd.identity).

Services, entered in this order and exited in reverse:

1. the agent: kernel sockets open, clients started, devices discovered and the
   first kernel dump done (readiness waits for it); closed last;
2. the status socket for vxrdctl;
3. the metrics endpoint, when configured;

then the agent's own loop runs supervised until the stop Event (SIGTERM,
SIGINT, `vxrdctl leave`). The flood entries stay (fail-static) unless
--flush-on-exit is set. SIGHUP re-reads the key file.

Exit status: 0 after a clean stop, 2 for a configuration error, 1 when vxrd
cannot start or fails; every start-up failure is one line naming what failed.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from vxflood.hostport import format_host_port
from vxflood.keys import key_reloader, load_keys
from vxflood.lifecycle import (
    EXIT_CONFIG,
    EXIT_RUNTIME,
    Lifecycle,
    Service,
    StartupError,
    os_reason,
)
from vxflood.logs import setup_logging
from vxflood.schema.keys import Keyring
from vxrd.agent import Agent
from vxrd.config import Config, ConfigError, load
from vxrd.identity import resolve
from vxrd.kernel import Kernel
from vxrd.metrics import Metrics, start_http
from vxrd.status import start_status, stop_status

log = logging.getLogger("vxrd")


def _no_key_file() -> None:
    log.info("SIGHUP: no key file configured, nothing to reload")


class Services:
    """vxrd's services on the lifecycle, in the order they are entered."""

    def __init__(
        self, config: Config, agent: Agent, metrics: Metrics, stop: asyncio.Event | None
    ) -> None:
        self.config = config
        self.agent = agent
        self.metrics = metrics
        self.stop = stop

    def all(self) -> list[Service]:
        return [self.kernel, self.status_socket, self.metrics_endpoint, self.agent_loop]

    @asynccontextmanager
    async def kernel(self, life: Lifecycle) -> AsyncIterator[None]:
        """The agent opened: kernel sockets, clients, discovery, the first dump."""
        try:
            await self.agent.open()
        except Exception as exc:  # OSError, pyroute2's NetlinkError (not an OSError)
            log.debug("opening the kernel interface failed", exc_info=True)
            raise StartupError(f"cannot open the kernel interface (netlink): {exc}") from None
        try:
            yield
        finally:
            await self.agent.close()

    @asynccontextmanager
    async def status_socket(self, life: Lifecycle) -> AsyncIterator[None]:
        path = self.config.status_socket
        try:
            runner = await start_status(self.agent, path)
        except OSError as exc:
            reason = exc.strerror or os_reason(exc)  # "... (is another vxrd running?)"
            raise StartupError(f"cannot listen on {path} (status socket): {reason}") from None
        try:
            yield
        finally:
            await stop_status(runner, path)

    @asynccontextmanager
    async def metrics_endpoint(self, life: Lifecycle) -> AsyncIterator[None]:
        if self.config.metrics is None:
            yield
            return
        host, port = self.config.metrics
        try:
            runner = await start_http(self.metrics, host, port)
        except OSError as exc:
            where = format_host_port(host, port)
            raise StartupError(f"cannot listen on {where} (metrics): {os_reason(exc)}") from None
        try:
            yield
        finally:
            await runner.cleanup()

    @asynccontextmanager
    async def agent_loop(self, life: Lifecycle) -> AsyncIterator[None]:
        # ends by itself once the stop Event is set (after flushing, if configured)
        life.spawn(self.agent.run(), "vxrd-agent", finish=True)
        if self.stop is not None:
            life.spawn(_forward(self.stop, self.agent.stop), "vxrd-stop")
        yield

    def status(self) -> str:
        return (
            f"node {self.config.node_id}: {len(self.agent.clients)} server(s), "
            f"{len(self.agent.serving)} device(s) managed, status on {self.config.status_socket}"
        )


async def serve(
    config: Config,
    kernel: Kernel | None = None,
    keyring: Keyring | None = None,
    stop: asyncio.Event | None = None,
    signals: bool = True,
    last: bool = False,
) -> Agent:
    """Run the daemon until SIGTERM/SIGINT (or `stop`); return the finished agent.

    Without a configured node id, the default one is decided first (vxrd.identity):
    kept in the state directory, so it survives restarts."""
    config = await resolve(config)
    metrics = Metrics()
    agent = Agent(config, kernel or Kernel(), keyring, metrics)
    life = Lifecycle("vxrd", drain_timeout=60.0, stop=agent.stop, signals=signals, last=last)
    if config.key_file is not None:
        life.reloaders.append(key_reloader(config.key_file, agent.set_codec, log))
    else:
        life.reloaders.append(_no_key_file)
    services = Services(config, agent, metrics, stop)
    await life.run(services.all(), services.status)
    log.info("vxrd stopped (%s)", "left" if agent.left else "flood entries kept")
    return agent


async def _forward(src: asyncio.Event, dst: asyncio.Event) -> None:
    await src.wait()
    dst.set()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load(argv)
    except ConfigError as exc:
        print(f"vxrd: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.log_level, config.log_format)
    try:
        keyring = load_keys(config.key_file, log)
        asyncio.run(serve(config, keyring=keyring, last=True))
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return exc.code
    except KeyboardInterrupt:  # before the signal handlers were in place
        return 0
    except Exception as exc:  # a supervised task failed (logged with its traceback)
        log.error("stopped on an error: %s", exc)
        return EXIT_RUNTIME
    return 0
