"""A change through one vxsnd, pushed by another: `python -m tests.benchmarks.bench_notify`.

Two vxsnd daemons (in this process, on loopback) share one fresh PostgreSQL
database (created and dropped here). One agent is served by B only; 20 times a
new agent joins VNI 100 through A, and the clock stops when B's agent holds its
address. Run twice in the same session: with change notification
(LISTEN/NOTIFY) and with the 1 s registry poll alone. Prints p50/p99 and the
ratio; nothing is asserted. Needs the PostgreSQL server of the tests
(VXFLOOD_TEST_PG).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterator

from tests.integration.agent_sim import Agent, wait_until
from tests.integration.apiharness import postgres_database
from tests.integration.vxsnd_harness import make_config, running, server_addr
from vxsnd import registry as st
from vxsnd.daemon import Daemon

JOINS = 20
VNI = 100


@contextlib.contextmanager
def notifications(enabled: bool) -> Iterator[None]:
    """Without notification the daemons' listeners never wake anyone (the poll alone,
    SQLite's way); they wait until cancelled, as a supervised task must."""
    original = st.Store.follow_changes

    async def nothing(_self: st.Store, _wake: Callable[[], None]) -> None:
        await asyncio.Event().wait()

    if not enabled:
        st.Store.follow_changes = nothing  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        st.Store.follow_changes = original  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def pair(url: str) -> AsyncIterator[tuple[Daemon, Daemon]]:
    a_cfg = make_config(url, server_id="vxsnd-a", registry_poll=1.0, api=None)
    b_cfg = make_config(url, server_id="vxsnd-b", registry_poll=1.0, api=None)
    async with running(a_cfg) as a, running(b_cfg) as b:
        yield a, b


async def arrival(watcher: Agent, address: ipaddress.IPv4Address, limit_s: float = 10) -> None:
    """Return as soon as the watcher holds `address`: woken by each membership it
    applies (its `changed` event), not by polling, so the clock stops within
    microseconds of the push."""
    async with asyncio.timeout(limit_s):
        while address not in watcher.peers(VNI):
            watcher.changed.clear()
            await watcher.changed.wait()


async def scenario(enabled: bool) -> list[float]:
    took: list[float] = []
    with notifications(enabled):
        async with postgres_database() as url, pair(url) as (a, b):
            watcher = await Agent.create("watcher", server_addr(b))
            watcher.register({VNI: ipaddress.ip_address("192.0.2.1")})
            await wait_until(lambda: VNI in watcher.members, 10, "the watcher's membership")
            joiners = []
            for i in range(JOINS):
                address = ipaddress.IPv4Address(f"198.51.100.{i + 1}")
                joiner = await Agent.create(f"joiner{i}", server_addr(a))
                joiners.append(joiner)
                await asyncio.sleep(0.05)  # named pause: joins apart, not one batch
                start = time.monotonic()
                joiner.register({VNI: address})
                await arrival(watcher, address)
                took.append(time.monotonic() - start)
            for agent in (watcher, *joiners):
                agent.close()
    return took


def summary(label: str, took: list[float]) -> float:
    ordered = sorted(took)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    print(f"{label:<28} p50 {p50 * 1000:8.1f} ms   p99 {p99 * 1000:8.1f} ms   ({len(took)} joins)")
    return p50


async def main() -> None:
    notify = summary("LISTEN/NOTIFY", await scenario(True))
    poll = summary("registry poll (1 s) alone", await scenario(False))
    print(f"poll / notify p50 ratio: {poll / notify:.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
