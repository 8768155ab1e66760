"""The host agent: kernel discovery + control-plane clients + reconciler.

One asyncio loop runs: the kernel event stream, the reconciler (woken by
membership changes at once, by fdb events after a few ms, by a timer), the
register refresh timer, the server sockets, the status API and the optional
metrics endpoint.

A membership change is the hot path: it is normally reconciled, written and
acked inside the callback that received the datagram (`_reconcile_at_once`),
one wake-up of the process per push; the reconciler task takes over whenever
that cannot run without waiting (a reconcile in progress, the kernel to be
read first, a failed write). Both run the same plan (`_plan`).

The reconciler compares what the servers want with a mirror of the kernel's
flood lists (vxrd.mirror), not with a fresh dump: the mirror follows fdb
events and vxrd's own writes, so a membership change costs the entries that
changed, not a read of every entry. The kernel is read again in full at start,
after lost events and on the reconcile timer, which keeps the kernel the truth.

Fail-static rules: entries are only written or removed for a VNI once a server
has answered for it (until then whatever the kernel holds is adopted); losing a
server keeps its last answer; stopping keeps the entries unless flushing was
asked for (`leave`, --flush-on-exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from schema.keys import Keyring
from schema.validate import Address
from schema.wire import Codec
from vxrd.client import Outcome, ServerClient, ServerState, union_members
from vxrd.config import Config
from vxrd.kernel import (
    ApplyResult,
    FdbChanged,
    FloodDiff,
    Kernel,
    KernelEvent,
    LinkChanged,
    LinkRemoved,
    Resync,
    VxlanDevice,
)
from vxrd.metrics import Metrics
from vxrd.mirror import FloodMirror, drifted
from vxrd.reconcile import desired_for, reconcile

log = logging.getLogger("vxrd")

FDB_DEBOUNCE = 0.005  # seconds: let a burst of fdb events settle before reconciling
# a reconcile that fdb events trigger (someone else changed our entries) waits at least
# this long after the previous one ended, so a tool fighting vxrd cannot make it spin
FDB_MIN_GAP = 0.1
STALE_LIMIT = 16  # more devices to re-read than this: one full dump instead
LEAVE_REPEATS = 3  # hold-0 registers sent on leave (UDP may lose one)
RETRY_FIRST = 0.5  # seconds before repeating a register round a server has not answered

MANAGED = "managed"
DOWN = "down"


@dataclass(frozen=True, slots=True)
class DeviceView:
    """A VXLAN device and what vxrd does with it."""

    dev: VxlanDevice
    status: str  # MANAGED, DOWN, or why it is left alone
    local: Address | None  # effective VTEP address (device's own or --local)

    @property
    def eligible(self) -> bool:
        """Ours to program: managed now, or down but kept (it may come back up)."""
        return self.status in (MANAGED, DOWN)


def classify(dev: VxlanDevice, config: Config) -> DeviceView:
    if not any(fnmatch.fnmatchcase(dev.name, g) for g in config.include) or any(
        fnmatch.fnmatchcase(dev.name, g) for g in config.exclude
    ):
        return DeviceView(dev, "excluded by configuration", None)
    if dev.external or dev.vnifilter or dev.vni is None:
        mode = "vnifilter" if dev.vnifilter else "external (collect-metadata)"
        return DeviceView(dev, f"{mode} mode is not supported yet", None)
    if dev.group is not None:
        kind = "multicast group" if dev.group.is_multicast else "remote"
        return DeviceView(dev, f"has {kind} {dev.group}", None)
    local = dev.local or config.local
    if local is None:
        return DeviceView(dev, "no local address (set --local to manage it)", None)
    return DeviceView(dev, MANAGED if dev.up else DOWN, local)


@dataclass(slots=True)
class _Plan:
    """One reconcile's decision (Agent._plan): the writes per device, the flood
    lists decided on for the managed devices, and how many of the writes undo
    changes made outside vxrd."""

    diffs: dict[int, FloodDiff] = field(default_factory=dict)
    programmed: dict[int, frozenset[Address]] = field(default_factory=dict)
    repairs: int = 0


# What the servers said about one VNI, as far as union_members looks at it: per server
# (registry, generation, stale, members); members compared by identity (replaced,
# never mutated, on change), the rest by value.
_Sources = tuple[tuple[str, int, bool, frozenset[Address]] | None, ...]


def _counting(heard: tuple[list[ServerState], list[ServerState]], vni: int) -> list[ServerState]:
    """The servers whose answers count for `vni`: the live ones if any of them
    answered for it, else all (see Agent._heard_states)."""
    live, every = heard
    return live if any(st.answered(vni) for st in live) else every


def _sources(states: list[ServerState], vni: int) -> _Sources:
    return tuple(
        None if (v := st.vnis.get(vni)) is None else (st.registry, v.applied, v.stale, v.members)
        for st in states
    )


def _same_sources(a: _Sources, b: _Sources) -> bool:
    return len(a) == len(b) and all(
        x is y or (x is not None and y is not None and x[:3] == y[:3] and x[3] is y[3])
        for x, y in zip(a, b, strict=True)
    )


class Agent:
    def __init__(
        self,
        config: Config,
        kernel: Kernel,
        keyring: Keyring | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.kernel = kernel
        self.metrics = metrics or Metrics()
        self.codec = Codec(keyring)
        self.started = time.time()
        self.devices: dict[int, DeviceView] = {}
        self._eligible_vnis: frozenset[int] | None = None  # of self.devices; None: recompute
        self.serving: dict[int, Address] = {}  # vni -> local, as last registered
        self.programmed: dict[int, frozenset[Address]] = {}  # ifindex -> desired last written
        self.mirror = FloodMirror()  # the kernel's flood lists, between dumps
        self.clients = [
            ServerClient(
                s,
                config.node_id,
                self.codec,
                self._on_change,
                on_drop=self._count_drop,
                wants=self._wants,
            )
            for s in config.servers
        ]
        self.metrics.watch_contacts(lambda: [(c.name, c.last_contact) for c in self.clients])
        self._pending_acks: dict[int, dict[int, int]] = {}  # client index -> vni -> gen
        self._wake = asyncio.Event()
        self._due: float | None = None
        self._lock = asyncio.Lock()  # reconcile vs. leave
        self._logged: dict[int, str] = {}
        self._leaving = False
        self._reconcile_end = 0.0  # monotonic
        # ifindex -> (what the servers said, as _sources() keys it; local; desired)
        self._desired_cache: dict[
            int, tuple[_Sources, Address | None, frozenset[Address] | None]
        ] = {}
        self._registered = False  # the first register goes out even with no device
        self._background: set[asyncio.Task[None]] = set()
        self.last_reconcile: float | None = None
        self.stop = asyncio.Event()
        self.left: dict[str, Any] | None = None

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
                tg.create_task(self._timer(self.config.refresh_interval, self._refresh)),
                tg.create_task(self._timer(self.config.reconcile_interval, self._tick)),
            ]
            tasks += [
                tg.create_task(self._retry(c), name=f"vxrd-retry-{c.name}") for c in self.clients
            ]
            await self.stop.wait()
            for t in tasks:
                t.cancel()
        if self.config.flush_on_exit and self.left is None:
            await self.leave()

    async def close(self) -> None:
        for c in self.clients:
            await c.close()
        await self.kernel.close()

    def _wants(self, vni: int) -> bool:
        """Whether a device of this VNI is ours: asked for every membership received,
        so answered from a set kept between device changes, not a walk of them all."""
        vnis = self._eligible_vnis
        if vnis is None:
            vnis = self._eligible_vnis = frozenset(
                v.dev.vni for v in self.devices.values() if v.eligible and v.dev.vni is not None
            )
        return vni in vnis

    def _count_drop(self, reason: str) -> None:
        self.metrics.drops.labels(reason).inc()

    async def _timer(self, interval: float, action: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await action()
            except Exception:
                log.exception("periodic %s failed", getattr(action, "__name__", "task"))

    async def _refresh(self) -> None:
        await self.register_all()

    async def _retry(self, client: ServerClient) -> None:
        """Repeat the register round to a server that has not answered it (not
        listening yet, restarting, unreachable): after 0.5 s, then 1 s, 2 s, ...
        capped at the refresh interval. An answer resets the back-off; a round sent
        for any other reason (refresh, local change) restarts the wait."""
        delay = RETRY_FIRST
        cap = max(RETRY_FIRST, self.config.refresh_interval)
        while True:
            client.poke.clear()
            if client.answered or client.round_sent is None or self._leaving:
                delay = RETRY_FIRST
                await client.poke.wait()
                continue
            wait = client.round_sent + delay - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await client.poke.wait()
                continue  # look again: answered, or a newer round
            log.debug("server %s: no answer after %.1f s, registering again", client.name, delay)
            try:
                await client.send_register(self.serving, self._hold)
            except Exception:
                log.exception("server %s: register retry failed", client.name)
            delay = min(delay * 2, cap)

    async def _tick(self) -> None:
        """The periodic reconcile reads the whole kernel again: whatever the mirror
        missed (a change no event reports) is corrected here."""
        self.mirror.invalidate()
        self.kick(0.0)

    # ------------------------------------------------------------ devices

    def _note(self, view: DeviceView) -> None:
        """One log line per device and reason, not one per rescan."""
        if self._logged.get(view.dev.ifindex) == view.status:
            return
        self._logged[view.dev.ifindex] = view.status
        d = view.dev
        if view.status == MANAGED:
            log.info("%s: managing VNI %s, local %s, port %s", d.name, d.vni, view.local, d.port)
        elif view.status == DOWN:
            log.info("%s: down, VNI %s withdrawn (flood entries kept)", d.name, d.vni)
        else:
            log.info("%s: left alone: %s", d.name, view.status)

    def _set_device(self, dev: VxlanDevice) -> None:
        if dev.ifindex not in self.devices:
            # first sight: read its entries before trusting the mirror (a reused
            # ifindex must not inherit a deleted device's entries)
            self.mirror.mark_stale(dev.ifindex)
        view = classify(dev, self.config)
        self.devices[dev.ifindex] = view
        self._eligible_vnis = None
        self._note(view)

    def _drop_device(self, ifindex: int) -> None:
        view = self.devices.pop(ifindex, None)
        self._eligible_vnis = None
        self.programmed.pop(ifindex, None)
        self.mirror.forget(ifindex)
        self._desired_cache.pop(ifindex, None)
        self._logged.pop(ifindex, None)
        if view is not None and view.eligible:
            log.info("%s: deleted, VNI %s withdrawn", view.dev.name, view.dev.vni)

    async def rescan(self) -> None:
        devs = await self.kernel.list_vxlan()
        seen = {d.ifindex for d in devs}
        for ifindex in [i for i in self.devices if i not in seen]:
            self._drop_device(ifindex)
        for d in devs:
            self._set_device(d)
        await self._after_device_change()

    def serve_map(self) -> dict[int, Address]:
        out: dict[int, Address] = {}
        for ifindex in sorted(self.devices):
            view = self.devices[ifindex]
            if view.status != MANAGED or view.local is None or view.dev.vni is None:
                continue
            if view.dev.vni in out and out[view.dev.vni] != view.local:
                log.warning(
                    "%s: VNI %s already served with local %s; registering that one",
                    view.dev.name,
                    view.dev.vni,
                    out[view.dev.vni],
                )
                continue
            out.setdefault(view.dev.vni, view.local)
        return out

    async def _after_device_change(self) -> None:
        serve = self.serve_map()
        self.metrics.managed_devices.set(
            sum(1 for v in self.devices.values() if v.status == MANAGED)
        )
        if (serve != self.serving or not self._registered) and not self._leaving:
            self._registered = True
            self.serving = serve
            await self.register_all()
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
                self._fdb_changed(ev)
            elif isinstance(ev, LinkChanged):
                dev = ev.device
                if dev is None:  # the notification lacked what we need: ask
                    dev = await self.kernel.get_vxlan(ev.ifindex)
                if dev is None:
                    self._drop_device(ev.ifindex)
                else:
                    self._set_device(dev)
                await self._after_device_change()
            elif isinstance(ev, LinkRemoved):
                self._drop_device(ev.ifindex)
                await self._after_device_change()
            elif isinstance(ev, Resync):
                log.warning("kernel events lost (%s): full rescan", ev.reason)
                self.mirror.invalidate()
                await self.rescan()
        except OSError as exc:
            log.warning("handling %s failed: %s; full rescan", ev, exc)
            await self.rescan()

    def _fdb_event(self, ev: FdbChanged | Resync) -> None:
        """Flood-entry events, handed over by the kernel layer as soon as they are
        read. Lost neighbour notifications only make the mirror untrustworthy:
        the next reconcile, asked for at once, reads every flood list again
        (links are followed on their own socket, with their own Resync)."""
        if isinstance(ev, Resync):
            log.warning("flood entry events lost (%s): reading the kernel again", ev.reason)
            self.mirror.invalidate()
            self.kick(0.0)
        else:
            self._fdb_changed(ev)

    def _fdb_changed(self, ev: FdbChanged) -> None:
        """Follow flood-entry events in the mirror. A change vxrd did not know of
        that moves a managed device away from what vxrd wants (an entry of ours
        deleted by hand, an extra one added) asks for a reconcile; the echo of
        vxrd's own write, or a change that agrees with it, asks for nothing."""
        news = self.mirror.apply(ev.changes)
        if not news:
            return
        for ifindex in drifted(self.programmed, news):
            view = self.devices.get(ifindex)
            if view is not None and view.status == MANAGED:
                gap = self._reconcile_end + FDB_MIN_GAP - time.monotonic()
                self.kick(max(FDB_DEBOUNCE, gap))
                return

    # ------------------------------------------------------------ control plane

    async def register_all(self) -> None:
        hold = 0 if self._leaving else self.config.hold_time
        for c in self.clients:
            await c.send_register(self.serving, hold)
        self.metrics.registers.inc()

    def _on_change(self, client: ServerClient, out: Outcome) -> None:
        idx = self.clients.index(client)
        acks = self._pending_acks.setdefault(idx, {})
        for vni, gen in out.acks:
            acks[vni] = max(gen, acks.get(vni, 0))
        if out.reset:  # a new registry: report at once so it answers for every VNI
            task = asyncio.get_running_loop().create_task(
                client.send_register(self.serving, self._hold)
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        try:
            done = self._reconcile_at_once()
        except Exception:  # a bug there must not keep the change from the kernel
            log.exception("reconciling at once failed; the reconciler takes over")
            done = False
        if not done:
            self.kick(0.0)

    @property
    def _hold(self) -> int:
        return 0 if self._leaving else self.config.hold_time

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
            try:
                await self.reconcile_now()
            except OSError as exc:
                log.warning("reconcile failed: %s (retrying)", exc)
                self.kick(1.0)

    async def reconcile_now(self) -> None:
        """Make every managed device's flood list the union of what servers said."""
        async with self._lock:
            if self._leaving:
                return
            acks, self._pending_acks = self._pending_acks, {}
            await self._read_kernel()
            plan = self._plan()
            self._commit(plan)
            if plan.diffs:
                await self._apply(plan.diffs)
            self._reconcile_end = time.monotonic()
        self._send_acks(acks)

    def _reconcile_at_once(self) -> bool:
        """reconcile_now() without waiting, run inside the datagram callback that
        brought a membership change: no task switch, no lock wait, one wake-up
        of the process per push. Returns False (the caller kicks the reconciler)
        when it cannot run so: a reconcile or leave holds the lock, the mirror
        must be read first (never read, events lost, a device stale), or the
        kernel cannot write without waiting (kernel.apply_now). The plan is the
        same as reconcile_now's (_plan); only the scheduling differs.

        When a write fails (or its outcome is unknown), the acks wait: the
        devices are marked stale and the reconciler reads them again, writes
        and acks. Right after a write, the echo of it that the kernel queued
        is read (kernel.read_fdb), so it does not wake the process again.
        """
        if self._leaving or self._lock.locked() or not self.mirror.complete:
            return False
        if self._stale_managed():
            return False
        plan = self._plan()
        result: ApplyResult | None = None
        if plan.diffs:
            t0 = time.perf_counter()
            try:
                result = self.kernel.apply_now(plan.diffs)
            except OSError as exc:
                log.warning("flood entry write failed: %s (retrying)", exc)
                for ifindex in plan.diffs:  # unknown how far it got
                    self.mirror.mark_stale(ifindex)
                return False
            if result is None:
                return False  # nothing written: the reconciler plans again
        self._commit(plan)
        if result is not None:
            self._record(plan.diffs, result, t0)
            self.kernel.read_fdb()
            if result.errors:
                return False
        self._reconcile_end = time.monotonic()
        acks, self._pending_acks = self._pending_acks, {}
        self._send_acks(acks)
        return True

    def _plan(self) -> _Plan:
        """What to write so every managed device holds the union of what the
        servers said, from the mirror (no I/O, no change to the agent: _commit)."""
        states = self._heard_states()
        plan = _Plan()
        for ifindex, view in self.devices.items():
            if view.status != MANAGED or view.dev.vni is None:
                continue
            desired = self._desired(ifindex, view, states)
            if desired is None:
                continue  # no server answered yet: adopt what the kernel holds
            diff = reconcile(desired, self.mirror.get(ifindex))
            before = self.programmed.get(ifindex)
            if before is not None:
                plan.repairs += len(diff.add & before) + len(diff.remove - before)
            plan.programmed[ifindex] = desired
            if not diff.empty:
                plan.diffs[ifindex] = diff
        return plan

    def _commit(self, plan: _Plan) -> None:
        """The plan is being carried out: remember what was decided, count it."""
        self.programmed.update(plan.programmed)
        self.metrics.reconcile_runs.inc()
        self.last_reconcile = time.time()
        if plan.repairs:
            self.metrics.reconcile_repairs.inc(plan.repairs)
            log.info("repaired %d flood entries changed outside vxrd", plan.repairs)

    def _send_acks(self, acks: dict[int, dict[int, int]]) -> None:
        for idx, applied in acks.items():
            self.clients[idx].send_ack(sorted(applied.items()))

    def _stale_managed(self) -> list[int]:
        """Managed devices whose mirror must be read before it is trusted."""
        return [
            i
            for i in self.mirror.stale()
            if (view := self.devices.get(i)) is not None and view.status == MANAGED
        ]

    async def _read_kernel(self) -> None:
        """Bring the mirror up to date where it cannot be trusted: everything after
        start, lost events or the timer; else the managed devices marked stale."""
        stale = self._stale_managed()
        full = not self.mirror.complete or len(stale) > STALE_LIMIT
        for ifindex in [None] if full else stale:
            self.mirror.begin_read()  # events read during the dump go on top of it
            try:
                found = await self.kernel.flood_entries(ifindex)
            except BaseException:
                self.mirror.abort_read()
                raise
            if ifindex is None:
                self.mirror.load(found)
            else:
                self.mirror.load_device(ifindex, found.get(ifindex, ()))

    def _heard_states(self) -> tuple[list[ServerState], list[ServerState]]:
        """(servers heard within the hold time, all servers). A server silent for longer
        (three missed register answers) is presumed down: its last answer no longer
        counts while a live server answers for the VNI, so it cannot hold back a leave.
        With no live answer, every last answer counts (fail-static)."""
        cutoff = time.time() - self.config.hold_time
        every = [c.state for c in self.clients]
        live = [
            c.state for c in self.clients if c.last_contact is not None and c.last_contact >= cutoff
        ]
        return live, every

    def _desired(
        self,
        ifindex: int,
        view: DeviceView,
        states: tuple[list[ServerState], list[ServerState]],
    ) -> frozenset[Address] | None:
        """desired_for() of what the servers said (union_members of the live ones, else
        of all), cached while that input and the local address stay the same."""
        vni = view.dev.vni
        assert vni is not None
        members_from = _counting(states, vni)
        sources = _sources(members_from, vni)
        hit = self._desired_cache.get(ifindex)
        if hit is not None and hit[1] == view.local and _same_sources(hit[0], sources):
            return hit[2]
        members = union_members(members_from, vni)
        desired = None if members is None else desired_for(members, view.local)
        self._desired_cache[ifindex] = (sources, view.local, desired)
        return desired

    async def _apply(self, diffs: dict[int, FloodDiff]) -> None:
        """Write, and record in the mirror what the kernel took."""
        t0 = time.perf_counter()
        try:
            result = await self.kernel.apply(diffs)
        except BaseException:
            for ifindex in diffs:  # unknown how far it got
                self.mirror.mark_stale(ifindex)
            raise
        self._record(diffs, result, t0)

    def _record(self, diffs: dict[int, FloodDiff], result: ApplyResult, t0: float) -> None:
        """A write's outcome: into the mirror (a device with a failed entry turns
        stale), the metrics and the log."""
        self.mirror.written(diffs, [(e.ifindex, e.address) for e in result.errors])
        self.metrics.apply_seconds.observe(time.perf_counter() - t0)
        if result.added:  # a metric update takes a lock: none for nothing
            self.metrics.fdb_adds.inc(result.added)
        if result.removed:
            self.metrics.fdb_removes.inc(result.removed)
        if result.errors:
            self.metrics.fdb_errors.inc(len(result.errors))
            first = result.errors[0]
            log.warning(
                "%d flood entry writes failed (first: ifindex %d dst %s: %s)",
                len(result.errors),
                first.ifindex,
                first.address,
                first.message,
            )
        log.debug("applied %s: +%d -%d", diffs, result.added, result.removed)

    # ------------------------------------------------------------ leave

    async def leave(self) -> dict[str, Any]:
        """Withdraw from every server (hold 0), flush managed devices' flood entries."""
        async with self._lock:
            if self.left is not None:
                return self.left
            self._leaving = True
            for i in range(LEAVE_REPEATS):
                if i:
                    await asyncio.sleep(0.02)
                await self.register_all()
            actual_all = await self.kernel.flood_entries()
            diffs = {
                ifindex: FloodDiff(remove=frozenset(actual_all[ifindex]))
                for ifindex, view in self.devices.items()
                if view.eligible and actual_all.get(ifindex)
            }
            if diffs:
                await self._apply(diffs)
            self.programmed.clear()
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

    # ------------------------------------------------------------ status views

    def status(self) -> dict[str, Any]:
        now = time.time()
        return {
            "node_id": self.config.node_id,
            "hostname": socket.gethostname(),
            "uptime": round(now - self.started, 3),
            "leaving": self._leaving,
            "last_reconcile": self.last_reconcile,
            "servers": [
                {
                    "server": c.name,
                    "address": None if c.address is None else c.address[0],
                    "registry": c.state.registry or None,
                    "last_contact": c.last_contact,
                    "answered": c.answered,
                    "seconds_since_contact": None
                    if c.last_contact is None
                    else round(now - c.last_contact, 3),
                    "vnis": len(c.state.vnis),
                    "dropped": dict(c.drops),
                }
                for c in self.clients
            ],
            "devices": {
                "managed": sum(1 for v in self.devices.values() if v.status == MANAGED),
                "total": len(self.devices),
            },
        }

    async def device_list(self) -> list[dict[str, Any]]:
        actual = await self.kernel.flood_entries()
        out = []
        for ifindex in sorted(self.devices):
            v = self.devices[ifindex]
            d = v.dev
            out.append(
                {
                    "ifindex": ifindex,
                    "name": d.name,
                    "vni": d.vni,
                    "local": None if v.local is None else str(v.local),
                    "port": d.port,
                    "up": d.up,
                    "state": v.status if v.eligible else "ignored",
                    "reason": None if v.eligible else v.status,
                    "entries": len(actual.get(ifindex, ())),
                }
            )
        return out

    async def peers(self, vni: int | None = None) -> list[dict[str, Any]]:
        actual = await self.kernel.flood_entries()
        by_vni: dict[int, list[DeviceView]] = {}
        for v in self.devices.values():
            if v.eligible and v.dev.vni is not None:
                by_vni.setdefault(v.dev.vni, []).append(v)
        vnis = set(by_vni) | {n for c in self.clients for n in c.state.vnis}
        if vni is not None:
            vnis &= {vni}
        out = []
        for n in sorted(vnis):
            servers = {}
            for c in self.clients:
                st = c.state.vnis.get(n)
                if st is not None:
                    servers[c.name] = {
                        "generation": st.applied,
                        "stale": st.stale,
                        "members": sorted(str(a) for a in st.members),
                    }
            members = union_members(_counting(self._heard_states(), n), n)
            devs = by_vni.get(n, [])
            out.append(
                {
                    "vni": n,
                    "devices": [
                        {
                            "name": v.dev.name,
                            "local": None if v.local is None else str(v.local),
                            "state": v.status,
                            "flood": sorted(str(a) for a in actual.get(v.dev.ifindex, ())),
                        }
                        for v in devs
                    ],
                    "members": None if members is None else sorted(str(a) for a in members),
                    "servers": servers,
                }
            )
        return out
