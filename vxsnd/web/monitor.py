"""The status page's view of the registry, kept fresh while someone looks at it.

Why a server-side monitor with short polling from the page (and not SSE or a
WebSocket): the cost of noticing a change is paid once per vxsnd, not once per
open browser tab, and each page poll is answered from memory ("nothing new
since version N" is a comparison of two integers). The monitor notices changes
written by another vxsnd sharing the registry too, because it reads the
registry rather than listening to this process's engine. Polls are plain,
short, cacheless GETs: they pass every proxy, end on their own, reconnect for
free, and are described in the OpenAPI document like any other endpoint.

While a page polled within `idle_after` seconds, every `tick` the monitor reads
every VNI's generation (one small SELECT) and re-reads only the VNIs that moved
or still have members that have not acked (two small reads per VNI), so a join
reaches the page in a tick. Everything is read in full every `full_every`
seconds (last-refresh times, expiry), or when too many VNIs moved at once; a
full read never runs more often than `duty` of the time its own duration
allows, so a busy registry cannot make the page cost the service node more
than a bounded share of its time.
Rejected-datagram counters are sampled from the metrics registry every
`sample_every` seconds whether or not anyone looks, so the page can say what
happened in the last minutes when it is opened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from vxsnd import registry as st
from vxsnd.web.model import Snapshot, VniRead, lagging_vnis, patch

log = logging.getLogger("vxsnd.web")

WINDOWS = (60.0, 300.0, 900.0)  # rejected datagrams over the last 1, 5 and 15 minutes
SEEN_PER_VNI = 64  # generation first-seen times kept per VNI


@dataclass
class Rejected:
    """Samples of the rejected-datagram counters (reason -> total) over `WINDOWS[-1]`."""

    samples: deque[tuple[float, dict[str, float]]] = field(default_factory=deque)

    def add(self, now: float, totals: dict[str, float]) -> None:
        self.samples.append((now, totals))
        while len(self.samples) > 2 and self.samples[1][0] <= now - WINDOWS[-1]:
            self.samples.popleft()

    def table(self) -> tuple[list[tuple[str, list[float], float]], float | None]:
        """Per reason: counts in each window and the total; and since when samples reach."""
        if not self.samples:
            return [], None
        now, latest = self.samples[-1]
        rows = []
        for reason in sorted(latest):
            counts = []
            for window in WINDOWS:
                # since the newest sample at least `window` old (or the oldest there is)
                base = self.samples[0][1]
                for t, sample in self.samples:
                    if t > now - window:
                        break
                    base = sample
                counts.append(latest[reason] - base.get(reason, 0.0))
            rows.append((reason, counts, latest[reason]))
        return rows, self.samples[0][0]


def read_rejected(registry: CollectorRegistry | None) -> dict[str, float]:
    """Totals by reason from vxsnd's metrics (queue overflow counted as `queue-full`)."""
    totals: dict[str, float] = {}
    if registry is None:
        return totals
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == "vxsnd_rejected_datagrams_total":
                reason = sample.labels.get("reason", "unknown")
                totals[reason] = totals.get(reason, 0.0) + sample.value
            elif sample.name == "vxsnd_queue_drops_total":
                totals["queue-full"] = sample.value
    return {reason: total for reason, total in totals.items() if total}


async def read_snapshot(store: st.Store, now: float) -> Snapshot:
    healthy = await store.health()
    return Snapshot(
        taken_at=now,
        vnis=await store.vnis(),
        nodes=await store.nodes(),
        memberships=await store.memberships(),
        static=await store.static_members(),
        healthy=healthy,
        service_nodes=await store.service_nodes(),
    )


def _content(snap: Snapshot) -> tuple[object, ...]:
    return (snap.vnis, snap.nodes, snap.memberships, snap.static, snap.healthy, snap.service_nodes)


class Monitor:
    def __init__(
        self,
        store: st.Store,
        metrics: CollectorRegistry | None,
        *,
        clock: Callable[[], float] = time.time,
        tick: float = 0.2,
        full_every: float = 10.0,
        idle_after: float = 30.0,
        sample_every: float = 10.0,
        duty: float = 0.1,
        patch_max: int = 64,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.tick = tick
        self.full_every = full_every
        self.idle_after = idle_after
        self.sample_every = sample_every
        self.duty = duty
        self.patch_max = patch_max
        self.version = 0
        self.snapshot: Snapshot | None = None
        self.rejected = Rejected()
        self.seen: dict[int, dict[int, float]] = {}  # VNI -> generation -> first seen
        self._watched = -float("inf")
        self._generations: dict[int, int] = {}
        self._next_full = 0.0
        self._earliest_full = 0.0
        self._turn = 0
        self._lock = asyncio.Lock()

    # ---- what the handlers call

    def watched(self) -> None:
        self._watched = time.monotonic()

    async def current(self) -> Snapshot:
        """The latest snapshot; read now when there is none or the loop is idle."""
        idle = time.monotonic() - self._watched > self.idle_after
        self.watched()
        if self.snapshot is None or idle:
            await self.refresh()
        assert self.snapshot is not None
        return self.snapshot

    async def refresh(self) -> None:
        """A full read of everything the page shows."""
        async with self._lock:
            started = time.monotonic()
            generations = await self.store.generations()
            snap = await read_snapshot(self.store, self.clock())
            spent = time.monotonic() - started
            self._earliest_full = time.monotonic() + spent / self.duty
            self._next_full = time.monotonic() + max(self.full_every, spent / self.duty)
            self._generations = generations
            self._install(snap)

    async def update(self) -> None:
        """One tick: re-read only the VNIs whose generation moved or that still lag."""
        async with self._lock:
            if self.snapshot is None:
                return
            generations = await self.store.generations()
            moved = {v for v, g in generations.items() if self._generations.get(v) != g}
            if len(moved) > self.patch_max:
                # too much at once: a full read, as soon as the duty bound allows
                self._next_full = min(self._next_full, self._earliest_full)
                return
            todo = moved | self._lagging_turn(self.patch_max - len(moved))
            if not todo:
                return
            reads = []
            for vni in sorted(todo):
                generation, members = await self.store.members(vni)
                reads.append(VniRead(vni, generation, members, await self.store.memberships(vni)))
            known = {n.node_id for n in self.snapshot.nodes}
            before = {m.node_id for m in self.snapshot.memberships if m.vni in todo}
            after = {m.node_id for r in reads for m in r.memberships}
            nodes = {
                n: await self.store.node(n) for n in sorted((after - known) | (before - after))
            }
            self._generations = generations
            self._install(patch(self.snapshot, reads, nodes, self.clock()))

    def _lagging_turn(self, room: int) -> set[int]:
        """Up to `room` of the VNIs that still lag, in turns (acks do not move generations,
        so these are re-read until acked; an agent that never acks cannot crowd out the rest)."""
        assert self.snapshot is not None
        lagging = sorted(lagging_vnis(self.snapshot))
        if len(lagging) <= room:
            return set(lagging)
        start = self._turn % len(lagging)
        self._turn = start + room
        return set((lagging + lagging)[start : start + room])

    def _install(self, snap: Snapshot) -> None:
        if self.snapshot is None or _content(snap) != _content(self.snapshot):
            self.version += 1
            self._note_generations(snap)
        self.snapshot = snap

    def _note_generations(self, snap: Snapshot) -> None:
        for v in snap.vnis:
            seen = self.seen.setdefault(v.vni, {})
            if v.generation not in seen:
                seen[v.generation] = v.updated_at
                while len(seen) > SEEN_PER_VNI:
                    del seen[min(seen)]

    # ---- the loop

    async def run(self) -> None:
        """Run until cancelled; a failing registry read is logged and retried."""
        last_sample = -float("inf")
        while True:
            now = time.monotonic()
            if now - last_sample >= self.sample_every:
                self.rejected.add(self.clock(), read_rejected(self.metrics))
                last_sample = now
            if now - self._watched <= self.idle_after:
                try:
                    if self.snapshot is None or now >= self._next_full:
                        await self.refresh()
                    else:
                        await self.update()
                except Exception as exc:
                    log.warning("status page: registry read failed: %s", exc)
                    # a busy moment is retried; a registry that does not answer is shown
                    down = not await self.store.health()
                    if down and self.snapshot is not None and self.snapshot.healthy:
                        self._install(dataclasses.replace(self.snapshot, healthy=False))
                    self._next_full = 0.0
                    await asyncio.sleep(1.0 if down else self.tick)
            await asyncio.sleep(self.tick)
