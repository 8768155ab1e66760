"""The host agent: a thin asyncio driver around the planner (vxrd.planner).

Every task runs in one TaskGroup: the kernel event stream, the reconciler
(woken by membership changes at once, by fdb events after a few ms, by a
timer), the register timers (vxrd.registrar). The decisions are the pure
planner's and the per-server protocol core's (vxrd.answers); this module reads
the clock, feeds them, and carries out their answers through a `KernelPort`
(vxrd.model; writes and mirror upkeep in vxrd.writer) and the server clients.

A membership change is the hot path: it is normally planned, written and acked
inside the callback that received the datagram (`_reconcile_at_once`), one
wake-up of the process per push; the reconciler task takes over whenever that
cannot run without waiting (a reconcile in progress, the kernel to be read
first, a failed write). Both run the same plan (`Planner.plan`). Plans are made
against a mirror of the kernel's flood lists (vxrd.mirror) that fdb events and
vxrd's own writes keep current; the kernel is read in full at start, after lost
events and on the reconcile timer, which keeps the kernel the truth.

Fail-static rules: see vxrd.planner. Stopping keeps the entries unless
flushing was asked for (`leave`, --flush-on-exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from vxflood.schema.keys import Keyring
from vxflood.schema.validate import Address
from vxflood.schema.wire import Codec
from vxrd.answers import ServerState
from vxrd.client import ServerClient
from vxrd.config import Config
from vxrd.marks import Keeper
from vxrd.metrics import Metrics
from vxrd.mirror import FloodMirror
from vxrd.model import (
    ApplyResult,
    FdbChanged,
    KernelEvent,
    KernelPort,
    LinkChanged,
    LinkRemoved,
    Resync,
)
from vxrd.planner import DOWN, MANAGED, DeviceView, Plan, Planner, classify
from vxrd.registrar import Registrar, every
from vxrd.writer import FloodWriter

log = logging.getLogger("vxrd")

__all__ = ["DOWN", "MANAGED", "Agent", "DeviceView", "classify"]

FDB_DEBOUNCE = 0.005  # seconds: let a burst of fdb events settle before reconciling
# a reconcile that fdb events trigger (someone else changed our entries) waits at least
# this long after the previous one ended, so a tool fighting vxrd cannot make it spin
FDB_MIN_GAP = 0.1
STALE_LIMIT = 16  # more devices to re-read than this: one full dump instead
LEAVE_REPEATS = 3  # hold-0 registers sent on leave (UDP may lose one)


class Agent:
    client_class: type[ServerClient] = ServerClient  # one per configured server

    def __init__(
        self,
        config: Config,
        kernel: KernelPort,
        keyring: Keyring | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.kernel = kernel
        self.metrics = metrics or Metrics()
        self.codec = Codec(keyring)
        self.started = time.time()
        self.planner = Planner(config)
        self.serving: dict[int, Address] = {}  # vni -> local, as last registered
        if config.node_id is None:  # vxrd.cli.serve decides it first (vxrd.identity)
            raise ValueError("Agent needs a decided node id: see vxrd.identity.resolve")
        node_id = config.node_id
        self.clients = [
            self.client_class(s, node_id, self.codec, self.datagram) for s in config.servers
        ]
        self._index = {id(c): i for i, c in enumerate(self.clients)}
        # the replay guards' marks, kept across restarts in the state directory
        self.marks = Keeper(config.state_dir, [c.guard for c in self.clients])
        self.states: list[ServerState] = [c.state for c in self.clients]
        self.metrics.watch_contacts(lambda: [(c.name, c.last_contact) for c in self.clients])
        self.registrar = Registrar(
            self.clients,
            self.metrics,
            config.hold_time,
            config.refresh_interval,
            lambda: (self.serving, self._hold),
        )
        self.writer = FloodWriter(kernel, self.planner.mirror, self.metrics)
        self._pending_acks: dict[int, dict[int, int]] = {}  # client index -> vni -> gen
        self._wake = asyncio.Event()
        self._due: float | None = None
        self._lock = asyncio.Lock()  # reconcile vs. leave
        self._leaving = False
        self._reconcile_end = 0.0  # monotonic
        self._registered = False  # the first register goes out even with no device
        self._errors = 0  # unexpected errors in the hot path (a bug): logged rate-limited
        self.reconciles = 0  # reconciles run by the reconciler task (not the hot path)
        self.last_reconcile: float | None = None
        self.stop = asyncio.Event()
        self.left: dict[str, Any] | None = None

    @property
    def devices(self) -> dict[int, DeviceView]:
        return self.planner.devices

    @property
    def mirror(self) -> FloodMirror:
        return self.planner.mirror

    # ------------------------------------------------------------ lifecycle

    def set_codec(self, codec: Codec) -> None:
        """Sign and verify with `codec` from now on (the key file was reloaded)."""
        self.codec = codec
        for client in self.clients:
            client.codec = codec

    async def open(self) -> None:
        """Open the kernel, start the clients, discover devices and register."""
        await self.kernel.open()
        try:
            if self.marks.load():
                log.debug("replay marks taken up from %s", self.marks.path)
            for c in self.clients:
                await c.start()
            await self.rescan()
        except BaseException:
            await self.close()
            raise

    async def run(self) -> None:
        """Run until `self.stop` is set; then flush if configured to. Call open() first."""
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self._events(), name="vxrd-events"),
                tg.create_task(self._reconciler(), name="vxrd-reconcile"),
                tg.create_task(self.registrar.run(), name="vxrd-registrar"),
                tg.create_task(every(self.config.refresh_interval, self.registrar.all)),
                tg.create_task(every(self.config.reconcile_interval, self._tick)),
                tg.create_task(self.marks.run(), name="vxrd-marks"),
            ]
            tasks += [
                tg.create_task(self.registrar.retry(c), name=f"vxrd-retry-{c.name}")
                for c in self.clients
            ]
            await self.stop.wait()
            for t in tasks:
                t.cancel()
        if self.config.flush_on_exit and self.left is None:
            await self.leave()
        self.marks.save()

    async def close(self) -> None:
        for c in self.clients:
            await c.close()
        await self.kernel.close()

    async def _tick(self) -> None:
        """The periodic reconcile reads the whole kernel again: whatever the mirror
        missed (a change no event reports) is corrected here."""
        self.mirror.invalidate()
        self.kick(0.0)

    # ------------------------------------------------------------ control plane

    @property
    def _hold(self) -> int:
        return 0 if self._leaving else self.config.hold_time

    def datagram(self, client: ServerClient, data: bytes, source: str) -> None:
        """A datagram from a server's socket, in the transport's callback: fed to the
        client, and what it returns carried out here (re-acks, a register at once,
        the kernel write and the acks). Never raises."""
        out = client.receive(data, source, self.planner.wanted)
        if out.dropped:
            self.metrics.drops.labels(out.ignored).inc()
            return
        if out.reacks:
            client.send_ack(out.reacks)
        if not (out.changed or out.reset or out.authority):
            return
        idx = self._index[id(client)]
        acks = self._pending_acks.setdefault(idx, {})
        for vni, gen in out.acks:
            acks[vni] = max(gen, acks.get(vni, 0))
        if out.reset:
            self.registrar.soon(idx)
        try:
            done = self._reconcile_at_once()
        except Exception as exc:  # a bug there must not keep the change from the kernel
            self._errors += 1
            if self._errors & (self._errors - 1) == 0:  # 1, 2, 4, 8, ...: rate-limited
                log.error(
                    "reconciling at once failed (%d so far): %r; the reconciler takes over",
                    self._errors,
                    exc,
                    exc_info=self._errors == 1,
                )
            done = False
        if not done:
            self.kick(0.0)

    # ------------------------------------------------------------ devices and events

    async def rescan(self) -> None:
        self.planner.sync_devices(await self.kernel.list_vxlan())
        await self._after_device_change()

    async def _after_device_change(self) -> None:
        serve = self.planner.serve_map()
        self.metrics.managed_devices.set(self.planner.managed_count())
        if (serve != self.serving or not self._registered) and not self._leaving:
            self._registered = True
            self.serving = serve
            await self.registrar.all()
        self.kick(0.0)

    async def _events(self) -> None:
        """Follow kernel events; if the stream itself fails, rescan and follow again."""
        while True:
            try:
                async for ev in self.kernel.events(self._fdb_event):
                    await self._event(ev)
                return  # the kernel was closed
            except OSError as exc:
                log.warning("kernel event stream failed: %s; rescanning in 1 s", exc)
                await asyncio.sleep(1.0)
                with contextlib.suppress(OSError):
                    await self.rescan()

    async def _event(self, ev: KernelEvent) -> None:
        try:
            if isinstance(ev, FdbChanged):  # not sent here while _fdb_event listens
                self._fdb_event(ev)
            elif isinstance(ev, LinkChanged):
                dev = ev.device
                if dev is None:  # the notification lacked what we need: ask
                    dev = await self.kernel.get_vxlan(ev.ifindex)
                if dev is None:
                    self.planner.drop_device(ev.ifindex)
                else:
                    self.planner.set_device(dev)
                await self._after_device_change()
            elif isinstance(ev, LinkRemoved):
                self.planner.drop_device(ev.ifindex)
                await self._after_device_change()
            elif isinstance(ev, Resync):
                log.warning("kernel events lost (%s): full rescan", ev.reason)
                self.mirror.invalidate()
                await self.rescan()
        except OSError as exc:
            log.warning("handling %s failed: %s; full rescan", ev, exc)
            await self.rescan()

    def _fdb_event(self, ev: FdbChanged | Resync) -> None:
        """Flood-entry events: from the kernel's watcher, or read back right after a
        write of ours. Lost notifications make the mirror untrustworthy: the next
        reconcile, asked for at once, reads every flood list again. A change that
        moves a managed device away from its plan asks for a reconcile."""
        if isinstance(ev, Resync):
            log.warning("flood entry events lost (%s): reading the kernel again", ev.reason)
            self.mirror.invalidate()
            self.kick(0.0)
        elif self.planner.drift(ev.changes):
            gap = self._reconcile_end + FDB_MIN_GAP - time.monotonic()
            self.kick(max(FDB_DEBOUNCE, gap))

    # ------------------------------------------------------------ reconcile

    def kick(self, delay: float) -> None:
        """Ask for a reconciliation within `delay` seconds."""
        due = time.monotonic() + delay
        if self._due is None or due < self._due:
            self._due = due
        self._wake.set()

    async def _reconciler(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # debounce until the earliest requested time; a kick asking for an
            # earlier time (a membership change) cuts the wait short
            while self._due is not None and (wait := self._due - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                self._wake.clear()
            self._due = None
            self.reconciles += 1
            try:
                await self.reconcile_now()
            except OSError as exc:
                log.warning("reconcile failed: %s (retrying)", exc)
                self.kick(1.0)

    async def reconcile_now(self) -> None:
        """Make every managed device's flood list what the planner decides."""
        async with self._lock:
            if self._leaving:
                return
            acks, self._pending_acks = self._pending_acks, {}
            await self._read_kernel()
            now = time.monotonic()
            plan = self.planner.plan(self.states, now)
            self._commit(plan, now)
            if plan.diffs:
                await self.writer.apply(plan.diffs)
            self._reconcile_end = time.monotonic()
        self._send_acks(acks)

    def _reconcile_at_once(self) -> bool:
        """reconcile_now() without waiting, run inside the datagram callback that
        brought a membership change: no task switch, no lock wait, one wake-up
        of the process per push. Returns False (the caller kicks the reconciler)
        when it cannot run so: a reconcile or leave holds the lock, the mirror
        must be read first (never read, events lost, a device stale), or the
        kernel cannot write without waiting (apply_now). The plan is the same.

        When a write fails (or its outcome is unknown), the acks wait: the
        devices are marked stale and the reconciler reads them again, writes
        and acks. Right after a write, the echo of it that the kernel queued
        is read (read_fdb), so it does not wake the process again.
        """
        if self._leaving or self._lock.locked() or not self.mirror.complete:
            return False
        if self.planner.stale_managed():
            return False
        now = time.monotonic()
        plan = self.planner.plan(self.states, now)
        result: ApplyResult | None = None
        if plan.diffs:
            result = self.writer.apply_now(plan.diffs)
            if result is None:
                return False  # nothing written: the reconciler plans again
        self._commit(plan, now)
        if result is not None:
            for ev in self.kernel.read_fdb():
                self._fdb_event(ev)
            if result.errors:
                return False
        self._reconcile_end = time.monotonic()
        acks, self._pending_acks = self._pending_acks, {}
        self._send_acks(acks)
        return True

    def _commit(self, plan: Plan, now: float) -> None:
        """The plan is being carried out: remember it, count it, and plan again
        when a server's additive period ends by the clock."""
        self.planner.commit(plan)
        self.metrics.reconcile_runs.inc()
        self.last_reconcile = time.time()
        if plan.repairs:
            self.metrics.reconcile_repairs.inc(plan.repairs)
            log.info("repaired %d flood entries changed outside vxrd", plan.repairs)
        until = self.planner.next_authority(self.states, now)
        if until is not None:
            self.kick(until - now)

    def _send_acks(self, acks: dict[int, dict[int, int]]) -> None:
        for idx, applied in acks.items():
            self.clients[idx].send_ack(sorted(applied.items()))

    async def _read_kernel(self) -> None:
        """Bring the mirror up to date where it cannot be trusted: everything after
        start, lost events or the timer; else the managed devices marked stale."""
        stale = self.planner.stale_managed()
        full = not self.mirror.complete or len(stale) > STALE_LIMIT
        await self.writer.read(None if full else stale)

    # ------------------------------------------------------------ leave

    async def leave(self) -> dict[str, Any]:
        """Withdraw from every server (hold 0), flush managed devices' flood entries."""
        async with self._lock:
            if self.left is not None:
                return self.left
            self._leaving = self.registrar.paused = True
            for i in range(LEAVE_REPEATS):
                if i:
                    await asyncio.sleep(0.02)
                await self.registrar.all()
            diffs = await self.writer.flush(i for i, v in self.devices.items() if v.eligible)
            self.planner.programmed.clear()
            self.left = {
                "servers": [c.name for c in self.clients],
                "devices": sorted(self.devices[i].dev.name for i in diffs),
                "flushed": sum(len(d.remove) for d in diffs.values()),
            }
            log.info(
                "left: withdrew from %d server(s), flushed %d entries on %d device(s)",
                len(self.clients),
                self.left["flushed"],
                len(diffs),
            )
            return self.left
