"""One way for both daemons to start, reload and stop.

    signals -> one stop Event -> a TaskGroup of supervised tasks, beside
    services entered in order as async context managers (exited in reverse)

Start: each service is entered in turn (the registry, the UDP endpoint, the
REST API, the status socket, metrics ...); a service that cannot start raises
`StartupError` naming what failed, and the ones already entered are exited
again. Once every service is in, systemd is told READY=1 (see vxflood.notify).

Run: tasks started with `spawn` are supervised. One that fails, or returns
while nobody asked it to stop, ends the daemon (the TaskGroup cancels the
rest); nothing runs unwatched.

Reload (SIGHUP): every hook in `reloaders` runs; one that raises is logged and
leaves what was in force, so a typo during a key rotation never stops service.

Stop (SIGTERM, SIGINT, `stop()`, or whoever sets the stop Event): STOPPING=1,
then the drain under `drain_timeout`: `drains` run in order (close sockets,
finish the last batch), tasks spawned with `finish=True` are awaited (they end
on their own once the Event is set), the rest are cancelled. Then services exit
in reverse order. The signal handlers stay until the last service has exited:
a second SIGTERM or SIGINT meanwhile is logged and ignored, so nothing cuts the
registry's close short; with `last=True` (the daemons' main) they are then
blocked until the process has exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any

from vxflood.notify import Notifier

Service = Callable[["Lifecycle"], AbstractAsyncContextManager[object]]

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2


def os_reason(exc: OSError) -> str:
    """`address already in use`, not aiohttp's `error while attempting to bind ...`."""
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


class StartupError(RuntimeError):
    """A daemon cannot start: one line naming what failed; `code` is its exit status
    (2 when the configuration is wrong and a restart cannot help, else 1)."""

    def __init__(self, message: str, code: int = EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.code = code


class TaskEnded(RuntimeError):
    """A supervised task returned although the daemon was not stopping."""


class Lifecycle:
    def __init__(
        self,
        name: str,
        *,
        drain_timeout: float = 5.0,
        stop: asyncio.Event | None = None,
        signals: bool = True,
        notifier: Notifier | None = None,
        last: bool = False,
    ) -> None:
        self.name = name
        self.log = logging.getLogger(name)  # lines read "vxsnd: ...", not "vxflood: ..."
        self.drain_timeout = drain_timeout
        self.stop_event = asyncio.Event() if stop is None else stop
        self.signals = signals
        # the process ends with this run: signals arriving after it are ignored, so a
        # late SIGTERM cannot turn a clean stop into exit 143
        self.last = last
        self.notifier = Notifier() if notifier is None else notifier
        self.reloaders: list[Callable[[], object]] = []
        self.drains: list[Callable[[], Awaitable[object]]] = []
        self.ready = asyncio.Event()
        self.stopping = False
        self._tg: asyncio.TaskGroup | None = None
        self._ignored = 0  # signals ignored during this shutdown
        self._cancel_at_stop: list[asyncio.Task[None]] = []
        self._finish_at_stop: list[asyncio.Task[None]] = []

    # ---------------------------------------------------------------- controls

    def stop(self) -> None:
        """What SIGTERM and SIGINT do: begin the shutdown, once."""
        if self.stopping:
            self._ignored += 1
            if self._ignored == 1:  # once: a signal storm must not become a log storm
                self.log.warning(
                    "%s is already stopping: signals ignored until it is done", self.name
                )
            return
        self.stop_event.set()

    def reload(self) -> bool:
        """What SIGHUP does: run every reload hook; True when all took."""
        self.notifier.send(RELOADING=1)
        ok = True
        for reloader in self.reloaders:
            try:
                reloader()
            except Exception as exc:
                ok = False
                self.log.error("reload failed, keeping the previous configuration: %s", exc)
        self.notifier.send(READY=1)
        return ok

    def spawn(self, coro: Coroutine[Any, Any, object], name: str, *, finish: bool = False) -> None:
        """Run `coro` supervised. `finish`: it ends by itself once the stop Event is
        set and is awaited in the drain; otherwise it is cancelled at stop."""
        if self._tg is None:  # a service entered before the TaskGroup exists
            coro.close()
            raise RuntimeError("spawn() is for services entered by Lifecycle.run")
        task = self._tg.create_task(self._supervised(coro, name), name=name)
        (self._finish_at_stop if finish else self._cancel_at_stop).append(task)

    async def _supervised(self, coro: Coroutine[Any, Any, object], name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("%s: task %s failed; stopping", self.name, name)
            raise
        if not self.stop_event.is_set():
            raise TaskEnded(f"task {name} ended while {self.name} was running")

    # ---------------------------------------------------------------- the run

    async def run(
        self, services: Sequence[Service], status: Callable[[], str] = lambda: "running"
    ) -> None:
        """Enter `services`, serve until stopped, drain, exit them; raises StartupError
        (or what a supervised task raised) unwrapped from the TaskGroup."""
        loop = asyncio.get_running_loop()
        installed = self._install_signals(loop)
        try:
            async with AsyncExitStack() as stack:
                try:
                    async with asyncio.TaskGroup() as tg:
                        self._tg = tg
                        for service in services:
                            await stack.enter_async_context(service(self))
                        await self._serve(status)
                except BaseExceptionGroup as group:
                    raise _first(group) from None
                finally:
                    self._tg = None
        finally:
            if self.last and installed:
                # block first: between asyncio's handler and SIG_IGN there is no moment
                # with the default action (terminate); SIG_IGN discards what is pending
                signal.pthread_sigmask(signal.SIG_BLOCK, installed)
            for sig in installed:
                loop.remove_signal_handler(sig)
                if self.last:
                    signal.signal(sig, signal.SIG_IGN)
            if self.last and installed:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, installed)
            self.notifier.close()

    async def _serve(self, status: Callable[[], str]) -> None:
        if self.last:
            # what start-up built (modules, config, the registry's or kernel's first
            # state) lives as long as the process: out of the collector's way, so a
            # full collection no longer walks it while a push or a change waits
            gc.freeze()
        self.ready.set()
        text = status()
        self.log.info("%s ready: %s", self.name, text)
        if not self.stop_event.is_set():  # asked to stop during start-up: never ready
            self.notifier.ready(text)
        watchdog = self.notifier.watchdog_interval
        if watchdog is not None:
            self.spawn(_watchdog(self.notifier, watchdog), f"{self.name}-watchdog")
        await self.stop_event.wait()
        self.stopping = True
        self.log.info("%s stopping", self.name)
        self.notifier.stopping()
        try:
            await asyncio.wait_for(self._drain(), self.drain_timeout)
        except TimeoutError:
            self.log.warning("%s: drain not finished within %gs", self.name, self.drain_timeout)
        for task in (*self._cancel_at_stop, *self._finish_at_stop):
            task.cancel()

    async def _drain(self) -> None:
        for task in self._cancel_at_stop:
            task.cancel()
        for drain in self.drains:
            try:
                await drain()
            except Exception as exc:  # e.g. the registry failed on the last batch
                self.log.warning("%s: while draining: %s", self.name, exc)
        if self._finish_at_stop:
            await asyncio.wait(self._finish_at_stop)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        if not self.signals:
            return []
        installed: list[int] = []
        for sig, handler in (
            (signal.SIGTERM, self.stop),
            (signal.SIGINT, self.stop),
            (signal.SIGHUP, self.reload),
        ):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, handler)
                installed.append(sig)
        return installed


async def _watchdog(notifier: Notifier, interval: float) -> None:
    """WATCHDOG=1 from the event loop itself: a wedged loop stops the pings."""
    while True:
        notifier.send(WATCHDOG=1)
        await asyncio.sleep(interval)


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception that ended the run (the first one that is not a cancellation)."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return leaves[0]
