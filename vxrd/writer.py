"""Reading and writing flood entries for the agent, with the mirror kept in step.

Part of the agent's driver (vxrd.agent): every kernel read lands in the
mirror, every write's outcome too (a device whose write failed turns stale),
and the metrics and log lines of writes are here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from vxrd.metrics import Metrics
from vxrd.mirror import FloodMirror
from vxrd.model import ApplyResult, FloodDiff, KernelPort

log = logging.getLogger("vxrd")


class FloodWriter:
    def __init__(self, kernel: KernelPort, mirror: FloodMirror, metrics: Metrics) -> None:
        self.kernel = kernel
        self.mirror = mirror
        self.metrics = metrics

    async def read(self, devices: Iterable[int] | None) -> None:
        """Bring the mirror up to date: every device (None), or the ones given."""
        for ifindex in [None] if devices is None else devices:
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

    async def apply(self, diffs: dict[int, FloodDiff]) -> None:
        """Write, and record in the mirror what the kernel took.

        The mirror takes the writes before the kernel is asked: their echo, read by
        the event watcher while this waits, is then no news (no drift, nothing
        for the planner to follow: a snapshot's thousands would cost the next
        change a full compare). Afterwards, a device with a failed entry turns
        stale; notifications read meanwhile stay applied on top."""
        t0 = time.perf_counter()
        self.mirror.written(diffs)
        try:
            result = await self.kernel.apply(diffs)
        except BaseException:
            self._unknown(diffs)
            raise
        for e in result.errors:
            self.mirror.mark_stale(e.ifindex)
        self._account(diffs, result, t0)

    async def flush(self, devices: Iterable[int]) -> dict[int, FloodDiff]:
        """Remove every flood entry of `devices`; returns what was removed."""
        actual = await self.kernel.flood_entries()
        diffs = {i: FloodDiff(remove=frozenset(actual[i])) for i in devices if actual.get(i)}
        if diffs:
            await self.apply(diffs)
        return diffs

    def apply_now(self, diffs: dict[int, FloodDiff]) -> ApplyResult | None:
        """Write without waiting; None when that cannot be done (nothing written, or
        a socket error: then the devices are stale and a warning is logged)."""
        t0 = time.perf_counter()
        try:
            result = self.kernel.apply_now(diffs)
        except OSError as exc:
            log.warning("flood entry write failed: %s (retrying)", exc)
            self._unknown(diffs)
            return None
        if result is not None:
            self.record(diffs, result, t0)
        return result

    def _unknown(self, diffs: dict[int, FloodDiff]) -> None:
        for ifindex in diffs:  # unknown how far it got
            self.mirror.mark_stale(ifindex)

    def record(self, diffs: dict[int, FloodDiff], result: ApplyResult, t0: float) -> None:
        """A write's outcome: into the mirror (a device with a failed entry turns
        stale), the metrics and the log."""
        self.mirror.written(diffs, [(e.ifindex, e.address) for e in result.errors])
        self._account(diffs, result, t0)

    def _account(self, diffs: dict[int, FloodDiff], result: ApplyResult, t0: float) -> None:
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
