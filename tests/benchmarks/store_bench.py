"""Registry write/read timings: `python -m tests.benchmarks.store_bench [URL]`.

Default URL: a throwaway SQLite file. For PostgreSQL pass an EMPTY database
(the schema is created in it and left there).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from vxsnd.store import Batch, Registration, Store

NODES, VNIS = 2000, 10
VNI_LIST = range(100, 100 + VNIS)


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


async def timed(label: str, store: Store, batch: Batch, now: float) -> None:
    t0 = time.perf_counter()
    result = await store.apply(batch, now)
    ms = 1000 * (time.perf_counter() - t0)
    print(f"{label:<44} {ms:8.1f} ms  (VNIs bumped: {len(result.changed)})")


async def main(url: str) -> None:
    async with await Store.open(url) as store:
        await timed(f"{NODES}x{VNIS} registrations (new)", store, registrations(), 1000.0)
        await timed(f"{NODES}x{VNIS} registrations (unchanged)", store, registrations(), 1001.0)
        for k in range(3):
            batch = Batch()
            for i in range(1000):
                batch.refresh(f"node-{i}", 2000.0 + k)
            await timed("1000 refreshes", store, batch, 1002.0 + k)
        batch = Batch()
        batch.register(
            Registration(
                "node-5", 1, "192.0.2.1", 4789, 30, {100 + v: "10.0.5.1" for v in range(9)}
            )
        )
        await timed("1 registration leaving 1 VNI", store, batch, 1010.0)
        t0 = time.perf_counter()
        await store.delta(100, 0)
        print(
            f"{'delta of ' + str(NODES) + ' adds':<44} {1000 * (time.perf_counter() - t0):8.1f} ms"
        )
        batch = Batch()
        batch.expire()
        await timed(f"sweep expiring {NODES} nodes", store, batch, 99999.0)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        asyncio.run(main(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(main(f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"))
