"""PostgreSQL taken away under a running vxsnd (issue 14, item 3), on a real server.

The server is a private cluster of the test's own (tests/integration/pgcluster.py),
stopped for longer than the agents' hold time and started again. While it is
away vxsnd stays up and says `degraded`, and no agent is told of a removal: a
lost database is not a reason to empty a flood list. A join made during the
outage converges once the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import AsyncIterator

import pytest

from tests.integration.agent_sim import Agent, wait_until
from tests.integration.pgcluster import Cluster, private_cluster, replicated_pair
from tests.integration.vxsnd_harness import make_config, running, server_addr
from vxsnd.daemon import Daemon

VNI = 100
HOLD = 2  # agents' hold time (s); the outage lasts longer than that
OUTAGE = 3 * HOLD


def vtep(i: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(f"10.0.0.{i}")


class Shrinks:
    """Watches agents' flood lists; remembers any moment one lost a member."""

    def __init__(self, agents: list[Agent]) -> None:
        self.agents = agents
        self.seen: list[str] = []

    async def watch(self) -> None:
        full = {a.node_id: set(a.members.get(VNI, set())) for a in self.agents}
        while True:
            for a in self.agents:
                now = a.members.get(VNI, set())
                if not full[a.node_id] <= now:
                    self.seen.append(f"{a.node_id} lost {full[a.node_id] - now}")
                full[a.node_id] |= now
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def watching(shrinks: Shrinks) -> AsyncIterator[None]:
    task = asyncio.create_task(shrinks.watch())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def joined_pair(addr: tuple[str, int]) -> list[Agent]:
    """hv-1 and hv-2 in VNI 100, refreshing every third of their hold time, joined."""
    group = [await Agent.create(f"hv-{i}", addr, hold_time=HOLD) for i in (1, 2)]
    for i, a in enumerate(group, start=1):
        a.register({VNI: vtep(i)})
        a.start_refresh(HOLD / 3)
    want = {vtep(1), vtep(2)}
    await wait_until(lambda: all(a.members.get(VNI) == want for a in group), 10, "join")
    return group


async def joiner(addr: tuple[str, int]) -> Agent:
    """hv-3 joining VNI 100 (and refreshing) while the pair is up."""
    late = await Agent.create("hv-3", addr, hold_time=HOLD)
    late.register({VNI: vtep(3)})
    late.start_refresh(HOLD / 3)
    return late


async def all_three(agents: list[Agent], what: str) -> None:
    want = {vtep(1), vtep(2), vtep(3)}
    await wait_until(lambda: all(a.members.get(VNI) == want for a in agents), 15, what)


async def degraded(daemon: Daemon) -> bool:
    return not await daemon.store.health()


async def test_postgresql_stopped_longer_than_the_hold_time_empties_no_flood_list(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "vxsnd.registry")
    with private_cluster() as pg:
        cfg = make_config(pg.url, registry_poll=0.2)
        async with running(cfg) as daemon:
            addr = server_addr(daemon)
            group = await joined_pair(addr)
            shrinks = Shrinks(group)
            async with watching(shrinks):
                await asyncio.to_thread(pg.stop)
                stopped = time.monotonic()
                late = await joiner(addr)  # a join while the database is away
                # the observation window: the whole outage, longer than the hold time
                await asyncio.sleep(max(0.0, OUTAGE - (time.monotonic() - stopped)))
                assert await degraded(daemon), "vxsnd says degraded while PostgreSQL is away"
                assert daemon.metrics.value("vxsnd_registry_ok") == 0
                await asyncio.to_thread(pg.start)
                back = time.monotonic()
                await all_three([*group, late], "the join made during the outage converges")
                took = time.monotonic() - back
                await wait_until(
                    lambda: daemon.metrics.value("vxsnd_registry_ok") == 1, 10, "healthy again"
                )
            assert shrinks.seen == [], shrinks.seen
            assert daemon.metrics.value("vxsnd_expiries_total") == 0
            lines = [r for r in caplog.records if r.name == "vxsnd.registry"]
            down = [r for r in lines if "degraded" in r.getMessage()]
            up = [r for r in lines if "usable again" in r.getMessage()]
            assert [r.levelno for r in down] == [logging.WARNING], down  # once each way
            assert [r.levelno for r in up] == [logging.INFO], up
            print(f"join made during a {OUTAGE} s outage converged {took:.2f} s after its end")
            for a in [*group, late]:
                a.close()


def test_the_private_cluster_restarts_on_its_port() -> None:
    """The fixture itself: stop and start keep the port (the URL stays valid)."""
    with private_cluster() as pg:
        assert isinstance(pg, Cluster)
        port = pg.port
        pg.stop()
        pg.start()
        assert pg.port == port and f":{port}/" in pg.url


def failover_url(primary: Cluster, standby: Cluster) -> str:
    """Both servers in one URL; connections go to whichever takes writes."""
    hosts = "&".join(f"host=127.0.0.1:{c.port}" for c in (primary, standby))
    return f"postgresql+asyncpg://postgres@/postgres?{hosts}&target_session_attrs=read-write"


async def test_after_a_failover_vxsnd_writes_to_the_promoted_standby_without_a_restart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 14 item 4: a primary and its streaming standby in one multi-host URL;
    the primary crashes, the standby is promoted (as Patroni would), and the same
    vxsnd, not restarted, takes the next join into the new primary and pushes it.
    No flood list loses a member on the way."""
    caplog.set_level(logging.INFO, "vxsnd.registry")
    with replicated_pair() as (primary, standby):
        cfg = make_config(failover_url(primary, standby), registry_poll=0.2)
        async with running(cfg) as daemon:
            addr = server_addr(daemon)
            group = await joined_pair(addr)
            registry = daemon.store.registry_id
            shrinks = Shrinks(group)
            async with watching(shrinks):
                await asyncio.to_thread(primary.stop, "immediate")  # the crash
                await asyncio.to_thread(standby.promote)
                promoted = time.monotonic()
                late = await joiner(addr)
                await all_three([*group, late], "the join after the failover converges")
                took = time.monotonic() - promoted
            assert shrinks.seen == [], shrinks.seen
            assert daemon.store.registry_id == registry  # the same registry, replicated
            assert daemon.metrics.value("vxsnd_expiries_total") == 0
            node = await daemon.store.node("hv-3")
            assert node is not None  # written to, and read back from, the new primary
            print(f"a join after the failover converged {took:.2f} s after the promotion")
            for a in [*group, late]:
                a.close()
