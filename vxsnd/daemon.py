"""The service node process: one event loop, one registry, UDP, timers.

Start: open the registry (refuse an outdated schema with the command to run),
load generations, bind the UDP sockets, start the sweeper, the registry watch
(vxsnd.watch) and any extra services. Stop (SIGTERM/SIGINT, or the injectable
`shutdown_trigger`): close the UDP sockets first, then finish the batch in
flight under `drain_timeout`, then stop the extra services, then close the
registry.

Extension hook: `Daemon.services` takes factories `(daemon) -> async context
manager`; each is entered once the registry and engine exist (after the UDP
sockets are bound) and exited after the UDP side has drained. The REST API
plugs in there and reaches `daemon.store`, `daemon.engine` and
`daemon.metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack

from schema.keys import Keyring, load_key_file
from schema.wire import Codec
from vxsnd import registry as store_mod
from vxsnd.ageing import run_sweeper
from vxsnd.config import Config
from vxsnd.engine import Engine, Settings
from vxsnd.metrics import Metrics
from vxsnd.push import Backoff
from vxsnd.server import Server
from vxsnd.watch import run_watch

log = logging.getLogger("vxsnd")

Service = Callable[["Daemon"], AbstractAsyncContextManager[object]]


class StartupError(RuntimeError):
    """vxsnd cannot start; the message says why (and what to run)."""


class Daemon:
    def __init__(
        self,
        cfg: Config,
        *,
        keyring: Keyring | None = None,
        shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.keyring = keyring
        self.metrics = Metrics()
        self.services: list[Service] = []
        # what SIGHUP re-reads (the key file; the API adds its token file); each raises
        # on a bad file, which leaves what it had in force
        self.reloaders: list[Callable[[], None]] = []
        self._trigger = shutdown_trigger
        self._stop: asyncio.Event | None = None
        self._store: store_mod.Store | None = None
        self._engine: Engine | None = None
        self._server: Server | None = None
        self.started = asyncio.Event()

    @property
    def store(self) -> store_mod.Store:
        assert self._store is not None, "daemon not started"
        return self._store

    @property
    def engine(self) -> Engine:
        assert self._engine is not None, "daemon not started"
        return self._engine

    @property
    def server(self) -> Server:
        assert self._server is not None, "daemon not started"
        return self._server

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound UDP (host, port)s; useful with port 0."""
        return self.server.addresses

    async def apply_batch(self, batch: store_mod.Batch, now: float) -> store_mod.BatchResult:
        """Apply a batch from outside the UDP path (REST: static VTEPs) and push it."""
        result = await self.store.apply(batch, now)
        self.engine.absorb_external(result)
        return result

    async def on_static_change(self, result: store_mod.BatchResult) -> None:
        self.engine.absorb_external(result)

    def stop(self) -> None:
        """Ask the daemon to shut down (what SIGTERM does)."""
        if self._stop is not None:
            self._stop.set()

    def reload(self) -> bool:
        """Re-read the key and token files (what SIGHUP does); True when all took.

        A file that cannot be used is logged and changes nothing: the daemon goes on
        with what it had, so a typo during a key rotation never stops the service."""
        ok = True
        for reloader in self.reloaders:
            try:
                reloader()
            except Exception as exc:
                ok = False
                log.error("reload failed, keeping the previous configuration: %s", exc)
        return ok

    def _reload_keys(self) -> None:
        assert self.cfg.key_file is not None
        keyring = load_key_file(self.cfg.key_file, log)
        self.engine.set_codec(Codec(keyring))
        log.info(
            "keys reloaded from %s: %d key(s), signing with %s",
            self.cfg.key_file,
            len(keyring),
            keyring.signing.key_id,
        )

    async def _open_store(self) -> store_mod.Store:
        try:
            return await store_mod.Store.open(self.cfg.db)
        except store_mod.SchemaOutdated as exc:
            raise StartupError(
                f"{exc} -- run 'vxsnd db upgrade --db {self.cfg.db}' first"
            ) from None
        except store_mod.SchemaError as exc:
            raise StartupError(str(exc)) from None
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot open the registry {self.cfg.db}: {exc}") from None

    async def run(self) -> None:
        cfg = self.cfg
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._store = await self._open_store()
        store = self._store
        self.metrics.registry_ok.set_function(lambda: 1.0 if store.status.ok else 0.0)
        try:
            self._engine = Engine(
                self._store,
                Codec(self.keyring),
                Settings(
                    server_id=cfg.server_id,
                    hold_time_max=cfg.max_hold_time,
                    budget=cfg.budget,
                    replay_window=cfg.replay_window,
                    retransmit=Backoff(cfg.retransmit_initial, cfg.retransmit_max),
                ),
                self.metrics,
                time.time,
            )
            await self._engine.start()
            if cfg.key_file is not None and self.keyring is not None:
                self.reloaders.append(self._reload_keys)
            self._server = Server(
                self._engine, self.metrics, cfg.queue_size, cfg.batch_window / 1000.0
            )
            try:
                await self._server.start(cfg.listen)
            except OSError as exc:
                self._server.close_endpoints()
                raise StartupError(f"cannot listen: {exc}") from None
            await self._serve(loop)
        finally:
            await self._store.close()
            log.info("stopped")

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._stop is not None
        server = self.server
        sweeper = asyncio.create_task(run_sweeper(self.engine, self.cfg.sweep_interval))
        timers = [sweeper]
        if self.cfg.registry_poll > 0:
            timers.append(asyncio.create_task(run_watch(self.engine, self.cfg.registry_poll)))
        timers.append(asyncio.create_task(self.store.follow_changes(self.engine.request_watch)))
        installed = []
        for sig, handler in (
            (signal.SIGTERM, self._stop.set),
            (signal.SIGINT, self._stop.set),
            (signal.SIGHUP, self.reload),
        ):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, handler)
                installed.append(sig)
        trigger = asyncio.ensure_future(
            self._trigger() if self._trigger is not None else self._stop.wait()
        )
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            async with AsyncExitStack() as stack:
                for service in self.services:
                    await stack.enter_async_context(service(self))
                log.info(
                    "vxsnd ready: registry %s, listening on %s",
                    self.store.registry_id,
                    ", ".join(str(a) for a in self.cfg.listen),
                )
                self.started.set()
                await asyncio.wait({trigger, stopped}, return_when=asyncio.FIRST_COMPLETED)
                log.info("stopping")
                server.close_endpoints()
                for timer in timers:
                    timer.cancel()
                try:
                    await asyncio.wait_for(server.drain(), self.cfg.drain_timeout)
                except TimeoutError:
                    log.warning("in-flight batch not finished within %ss", self.cfg.drain_timeout)
                except Exception as exc:  # the registry failed on the last batch
                    log.warning("last batch failed: %s", exc)
        finally:
            server.close_endpoints()
            for task in (*timers, trigger, stopped):
                task.cancel()
            for task in (*timers, trigger, stopped):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for sig in installed:
                loop.remove_signal_handler(sig)


def run(
    cfg: Config,
    keyring: Keyring | None = None,
    configure: Callable[[Daemon], None] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; 0 after a clean stop. `configure` adds services."""
    daemon = Daemon(cfg, keyring=keyring)
    if configure is not None:
        configure(daemon)
    asyncio.run(daemon.run())
    return 0
