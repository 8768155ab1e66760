"""The service node's engine: the protocol core (vxsnd.protocol) driven against a registry.

`receive(data, addr, via, now)` takes one datagram (synchronous, never raises)
and hands it to the core; `step(now)` (async) does what the core asks of the
registry - one batch write, the watch read, the member and delta reads that
pushes wait for - and returns the datagrams to send. The rules and the state
are in the core; this module only awaits. The UDP server and the timers around
it are in vxsnd.server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from vxflood.schema.wire import Codec
from vxsnd import registry as store
from vxsnd.metrics import Metrics
from vxsnd.protocol import (
    Core,
    Need,
    NeedDelta,
    NeedSnapshot,
    Node,
    Outgoing,
    PeerAddr,
    Settings,
    host_text,
)
from vxsnd.ratelog import RateLimitedLog

log = logging.getLogger("vxsnd.engine")

MAX_READ_ROUNDS = 4  # a delta read, then a snapshot read: two rounds at most in practice

__all__ = ["Engine", "Node", "Outgoing", "PeerAddr", "Registry", "Settings", "host_text"]


class Registry(Protocol):
    """What the engine needs of vxsnd.registry.Store (tests/unit/fake_registry.py
    is an in-memory one)."""

    @property
    def registry_id(self) -> str: ...

    async def apply(self, batch: store.Batch, now: float) -> store.BatchResult: ...

    async def member_addresses(self, vni: int) -> tuple[int, frozenset[str]]: ...

    async def delta(self, vni: int, base: int) -> store.Delta | None: ...

    async def vnis(self) -> list[store.VniSummary]: ...

    async def nodes(self) -> list[store.Node]: ...

    async def generations(self, vnis: Iterable[int] | None = None) -> dict[int, int]: ...


class Engine:
    def __init__(
        self,
        registry: Registry,
        codec: Codec,
        settings: Settings,
        metrics: Metrics,
        wall_clock: Callable[[], float],
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self._clock = wall_clock
        self.core = Core(registry.registry_id, codec, settings, metrics)
        self.on_work: Callable[[], None] = lambda: None
        self._rlog = RateLimitedLog(log)

    # what callers and tests read of the core
    @property
    def codec(self) -> Codec:
        return self.core.codec

    @property
    def nodes(self) -> dict[str, Node]:
        return self.core.nodes

    @property
    def generations(self) -> dict[int, int]:
        return self.core.generations

    @property
    def learning(self) -> bool:
        return self.core.learning

    def set_codec(self, codec: Codec) -> None:
        """Sign and verify with `codec` from now on (keys reloaded)."""
        self.core.set_codec(codec)

    async def start(self, now: float | None = None) -> None:
        """Give overdue registrations their restart grace, then load generations and
        member counts (see Core.grace and Core.load)."""
        now = self._clock() if now is None else now
        grace = self.core.grace(await self.registry.nodes(), now)
        if grace:
            await self.registry.apply(grace, now)
            log.info("restart grace: %d registrations kept for one hold time", len(grace))
        self.core.load(await self.registry.vnis(), now)

    # ------------------------------------------------------------ input

    def receive(self, data: bytes, addr: PeerAddr, via: int, now: float) -> None:
        """Handle one datagram; every failure is counted and logged, never raised."""
        core = self.core
        core.receive(data, addr, via, now)
        if core.has_work(now):
            self.on_work()

    def has_work(self, now: float | None = None) -> bool:
        return self.core.has_work(now)

    def next_timer(self) -> float | None:
        return self.core.next_timer()

    def request_sweep(self) -> None:
        if self.core.request_sweep():
            self.on_work()

    def request_watch(self) -> None:
        """Compare the registry's generations with ours in the next step (vxsnd.watch)."""
        self.core.request_watch()
        self.on_work()

    def absorb_external(self, result: store.BatchResult) -> None:
        """A batch applied outside the engine (the REST API's static VTEPs): push it."""
        self.core.absorb_external(result)
        if result.changed:
            self.on_work()

    # ------------------------------------------------------------ one step

    async def step(self, now: float) -> list[Outgoing]:
        """Apply the queued batch (one transaction), then plan pushes and retransmits,
        reading from the registry what they wait for."""
        core = self.core
        core.set_registry_id(self.registry.registry_id)
        batch = core.take_batch(now)
        if batch:
            try:
                with self.metrics.batch_seconds.time():
                    result = await self.registry.apply(batch, now)
            except Exception:
                core.batch_failed(batch)
                self._rlog.log(logging.ERROR, "batch", "registry write failed, will retry")
                log.debug("batch failed", exc_info=True)
                raise
            core.batch_applied(batch, result)
        if core.watch_wanted:  # after our own batch: what moved now was written elsewhere
            await self._watch()
        out: list[Outgoing] = []
        needs = core.plan(now, out)
        try:
            for _ in range(MAX_READ_ROUNDS):
                if not needs:
                    break
                await self._read(needs)
                needs = core.plan(now, out)
        except Exception:
            self._rlog.log(logging.WARNING, "read", "registry read failed, will retry")
            log.debug("registry read failed", exc_info=True)
        core.finish(now, self._clock(), out)  # planning a storm takes a while
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "step: %d node ops, %d acks, sweep %s; %d datagrams out; %.1f ms",
                len(batch.node_ops),
                len(batch.acks),
                batch.sweep,
                len(out),
                (self._clock() - now) * 1000,
            )
        return out

    async def _watch(self) -> None:
        """One read of every VNI's generation (vxsnd.watch)."""
        try:
            current = await self.registry.generations()
        except Exception:
            self.core.watch_wanted = False
            self._rlog.log(logging.WARNING, "watch", "registry watch: read failed, will retry")
            log.debug("registry watch failed", exc_info=True)
            return
        self.core.watched(current)

    async def _read(self, needs: list[Need]) -> None:
        pushes = self.core.pushes
        for need in needs:
            if isinstance(need, NeedDelta):
                pushes.delta_read(need, await self.registry.delta(need.vni, need.base))
            elif isinstance(need, NeedSnapshot):
                gen, members = await self.registry.member_addresses(need.vni)
                pushes.snapshot_read(need.vni, gen, members)
