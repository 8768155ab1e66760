"""The service node process: vxsnd's services on the shared lifecycle (vxflood.lifecycle).

Services, entered in this order and exited in reverse:

1. the registry: opened (an outdated schema is refused with the command to
   run, a newer one as "written by a newer vxsnd"), closed last of all;
2. the protocol engine and the UDP endpoint: every socket bound (`cannot
   listen on ADDR: reason` otherwise); its receiver and committer tasks are
   supervised; at stop the sockets close first and the batch in flight is
   finished within `drain_timeout`;
3. the timers: expiry sweep and registry watch, supervised;
4. extra services (`Daemon.services`, factories `(daemon) -> async context
   manager`): the REST API plugs in here and reaches `daemon.store`,
   `daemon.engine`, `daemon.metrics` and `daemon.reloaders`.

Then systemd hears READY=1. SIGHUP re-reads the key file (and whatever the
extra services added to `reloaders`, e.g. the API's token file).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from vxflood.commands import version
from vxflood.keys import key_reloader
from vxflood.lifecycle import Lifecycle, StartupError, TaskEnded, os_reason
from vxflood.logs import mask_url, redact
from vxflood.schema.keys import Keyring
from vxflood.schema.wire import Codec
from vxsnd import registry as store_mod
from vxsnd.ageing import run_sweeper
from vxsnd.config import Config
from vxsnd.conflicts import Conflict
from vxsnd.engine import Engine, Settings
from vxsnd.metrics import Metrics
from vxsnd.push import Backoff
from vxsnd.server import Server
from vxsnd.watch import run_heartbeat, run_watch

log = logging.getLogger("vxsnd")

Service = Callable[["Daemon"], AbstractAsyncContextManager[object]]

__all__ = ["Daemon", "Service", "StartupError", "run"]


class Daemon:
    def __init__(
        self,
        cfg: Config,
        *,
        keyring: Keyring | None = None,
        signals: bool = True,
        last: bool = False,
    ) -> None:
        self.cfg = cfg
        self.keyring = keyring
        self.metrics = Metrics()
        self.services: list[Service] = []
        self.life = Lifecycle("vxsnd", drain_timeout=cfg.drain_timeout, signals=signals, last=last)
        # what SIGHUP re-reads (the key file; the API adds its token file); each raises
        # on a bad file, which leaves what it had in force
        self.reloaders = self.life.reloaders
        self.started = self.life.ready
        self.started_at = time.time()  # what the service_nodes row says
        self._store: store_mod.Store | None = None
        self._engine: Engine | None = None
        self._server: Server | None = None

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

    def node_id_conflicts(self, now: float) -> list[Conflict]:
        """What the REST API lists (vxsnd.conflicts): none before the engine runs."""
        return [] if self._engine is None else self._engine.core.conflicts.current(now)

    def stop(self) -> None:
        """Ask the daemon to shut down (what SIGTERM does)."""
        self.life.stop()

    def reload(self) -> bool:
        """Re-read the key and token files (what SIGHUP does); True when all took."""
        return self.life.reload()

    async def run(self) -> None:
        """Serve until stopped; raises StartupError when a service cannot start."""
        extra = [_bind(service, self) for service in self.services]
        services = [self._registry, self._udp, self._timers, *extra]
        try:
            await self.life.run(services, self._status)
        finally:
            if self.life.ready.is_set():
                log.info("stopped")

    def _status(self) -> str:
        listening = ", ".join(str(a) for a in self.cfg.listen)
        return f"registry {self.store.registry_id}, listening on {listening}"

    # ---------------------------------------------------------------- services

    @asynccontextmanager
    async def _registry(self, life: Lifecycle) -> AsyncIterator[None]:
        self._store = store = await open_registry(self.cfg.db)
        self.metrics.registry_ok.set_function(lambda: 1.0 if store.status.ok else 0.0)
        try:
            yield
        finally:
            await self._store.close()

    @asynccontextmanager
    async def _udp(self, life: Lifecycle) -> AsyncIterator[None]:
        cfg = self.cfg
        self._engine = Engine(
            self.store,
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
            life.reloaders.append(key_reloader(cfg.key_file, self._engine.set_codec, log))
        server = self._server = Server(
            self._engine, self.metrics, cfg.queue_size, cfg.batch_window / 1000.0
        )
        await bind(server, cfg)
        # the server starts its own receiver and committer: watch them like our own
        for task in server._tasks:
            life.spawn(_watch(task, life.stop_event), task.get_name())
        life.drains.append(self._drain)
        try:
            yield
        finally:
            server.close_endpoints()
            for task in server._tasks:  # done after a drain; still running if one failed
                task.cancel()

    async def _drain(self) -> None:
        self.server.close_endpoints()
        await self.server.drain()

    @asynccontextmanager
    async def _timers(self, life: Lifecycle) -> AsyncIterator[None]:
        life.spawn(run_sweeper(self.engine, self.cfg.sweep_interval), "vxsnd-sweeper")
        if self.cfg.registry_poll > 0:
            life.spawn(run_watch(self.engine, self.cfg.registry_poll), "vxsnd-watch")
        if self.store.notifies:
            life.spawn(self.store.follow_changes(self.engine.request_watch), "vxsnd-notify")
        life.spawn(run_heartbeat(self.store, self._presence), "vxsnd-heartbeat")
        yield

    def _presence(self, now: float) -> store_mod.ServiceNode:
        endpoints = ", ".join(str(a) for a in self.cfg.listen)
        return store_mod.ServiceNode(self.cfg.server_id, endpoints, version(), self.started_at, now)


def _bind(
    service: Service, daemon: Daemon
) -> Callable[[Lifecycle], AbstractAsyncContextManager[object]]:
    return lambda _life: service(daemon)


async def _watch(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Supervise a task someone else created: its failure, or its cancellation by
    anyone but its owner's drain, is ours; cancelling the watcher leaves the task to
    its owner (the server cancels its tasks in its drain)."""
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if task.cancelled() and not stop.is_set():  # the task itself went, unasked
            raise TaskEnded(f"task {task.get_name()} was cancelled") from None
        raise


async def open_registry(url: str) -> store_mod.Store:
    """Open the registry or raise StartupError naming it (password masked)."""
    where = mask_url(url)
    try:
        return await store_mod.Store.open(url)
    except store_mod.SchemaOutdated as exc:
        raise StartupError(f"{exc} -- run 'vxsnd db upgrade --db {where}' first") from None
    except store_mod.SchemaError as exc:
        raise StartupError(redact(str(exc), url)) from None
    except Exception as exc:  # OSError, driver errors (refused, auth, no database)
        log.debug("opening the registry failed", exc_info=True)
        reason = redact(str(exc) or type(exc).__name__, url)
        raise StartupError(f"cannot open the registry {where}: {reason}") from None


async def bind(server: Server, cfg: Config) -> None:
    """Bind every UDP socket, or raise StartupError naming the address that failed."""
    try:
        await server.start(cfg.listen)
    except OSError as exc:
        server.close_endpoints()
        failed = (
            cfg.listen[len(server.endpoints)] if len(server.endpoints) < len(cfg.listen) else None
        )
        where = f" on {failed}" if failed is not None else ""
        raise StartupError(f"cannot listen{where} (UDP): {os_reason(exc)}") from None


def run(
    cfg: Config,
    keyring: Keyring | None = None,
    configure: Callable[[Daemon], None] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; 0 after a clean stop. `configure` adds services."""
    daemon = Daemon(cfg, keyring=keyring, last=True)
    if configure is not None:
        configure(daemon)
    asyncio.run(daemon.run())
    return 0
