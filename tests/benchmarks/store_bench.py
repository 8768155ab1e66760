"""Registry write/read timings: `python -m tests.benchmarks.store_bench [URL]`.

Default URL: a throwaway SQLite file. For PostgreSQL pass an EMPTY database
(the schema is created in it and left there).

Each line gives the wall time of one `Store.apply` (or read) and the number of
SQL statements it sent (counted with SQLAlchemy's `before_cursor_execute`
event; an executemany counts once). Printed only: nothing is asserted.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event

from vxsnd.registry import Batch, Registration, Store

NODES, VNIS = 2000, 10
VNI_LIST = range(100, 100 + VNIS)
SMALL = 30  # members of the VNI in the join/leave scenarios
SMALL_VNI = 5000
REPEAT = 20


class Counter:
    def __init__(self, store: Store) -> None:
        self.count = 0
        event.listen(store.sync_engine, "before_cursor_execute", self.on_execute)

    def on_execute(self, *_args: Any) -> None:
        self.count += 1


def registrations() -> Batch:
    batch = Batch()
    for i in range(NODES):
        local = f"10.{i // 250}.{i % 250}.1"
        batch.register(
            Registration(
                f"node-{i}", 1, "192.0.2.1", 4789, 30, {100 + v: local for v in range(VNIS)}
            )
        )
    return batch


def small_reg(i: int, vnis: dict[int, str] | None = None) -> Registration:
    local = f"10.200.{i}.1"
    return Registration(
        f"small-{i}", 7, "192.0.2.2", 4789, 30, {SMALL_VNI: local} if vnis is None else vnis
    )


async def timed(label: str, store: Store, counter: Counter, batch: Batch, now: float) -> None:
    counter.count = 0
    t0 = time.perf_counter()
    result = await store.apply(batch, now)
    ms = 1000 * (time.perf_counter() - t0)
    bumped = len(result.changed)
    print(f"{label:<44} {ms:8.1f} ms {counter.count:5d} stmts  (VNIs bumped: {bumped})")


async def small(store: Store, counter: Counter, now: float) -> None:
    """Join, leave, unchanged re-registration in a 30-member VNI; median of REPEAT."""
    batch = Batch()
    for i in range(SMALL - 1):
        batch.register(small_reg(i))
    await store.apply(batch, now)
    results: dict[str, tuple[list[float], list[int]]] = {}

    async def one(label: str, batch: Batch, now: float) -> None:
        counter.count = 0
        t0 = time.perf_counter()
        await store.apply(batch, now)
        times, counts = results.setdefault(label, ([], []))
        times.append(1000 * (time.perf_counter() - t0))
        counts.append(counter.count)

    for k in range(REPEAT):
        now += 1
        batch = Batch()
        batch.register(small_reg(SMALL))
        await one(f"1 registration joining a {SMALL}-member VNI", batch, now)
        batch = Batch()
        batch.register(small_reg(SMALL))
        await one("1 unchanged re-registration", batch, now + 0.1)
        batch = Batch()
        batch.refresh(small_reg(SMALL).node_id, hold_time=30)
        await one("1 refresh", batch, now + 0.2)
        batch = Batch()
        batch.register(small_reg(SMALL, {}))
        await one(f"1 registration leaving a {SMALL}-member VNI", batch, now + 0.3)
        batch = Batch()
        batch.register(small_reg(SMALL))
        await one("1 rejoin", batch, now + 0.4)
        batch = Batch()
        batch.withdraw(small_reg(SMALL).node_id)
        await one("1 withdrawal (leave)", batch, now + 0.5)
        batch = Batch()
        batch.ack(small_reg(0).node_id, SMALL_VNI, k + 1)
        await one("1 ack", batch, now + 0.6)
    for label, (times, counts) in results.items():
        print(
            f"{label:<44} {statistics.median(times):8.2f} ms {max(counts):5d} stmts"
            f"  (median of {REPEAT})"
        )


async def main(url: str) -> None:
    async with await Store.open(url) as store:
        counter = Counter(store)
        await small(store, counter, 500.0)
        await timed(f"{NODES}x{VNIS} registrations (new)", store, counter, registrations(), 1000.0)
        await timed(
            f"{NODES}x{VNIS} registrations (unchanged)", store, counter, registrations(), 1001.0
        )
        for k in range(3):
            batch = Batch()
            for i in range(1000):
                batch.refresh(f"node-{i}", hold_time=2000.0 + k)
            await timed("1000 refreshes", store, counter, batch, 1002.0 + k)
        batch = Batch()
        batch.register(
            Registration(
                "node-5", 1, "192.0.2.1", 4789, 30, {100 + v: "10.0.5.1" for v in range(9)}
            )
        )
        await timed(f"1 registration leaving 1 VNI of {NODES}", store, counter, batch, 1010.0)
        t0 = time.perf_counter()
        await store.delta(100, 0)
        print(
            f"{'delta of ' + str(NODES) + ' adds':<44} {1000 * (time.perf_counter() - t0):8.1f} ms"
        )
        batch = Batch()
        batch.expire()
        await timed(f"sweep expiring {NODES} nodes", store, counter, batch, 99999.0)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        asyncio.run(main(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(main(f"sqlite:///{Path(tmp) / 'bench.db'}"))
