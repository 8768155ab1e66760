"""Change notification through PostgreSQL (issue 14, item 1), on a real server.

Two stores on one fresh database stand for two vxsnd: a change written through
one wakes the other at once, its own writes do not wake itself, and a lost
listening connection is reconnected and triggers one catch-up wake.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.integration.agent_sim import Agent, wait_until
from tests.integration.apiharness import postgres_database
from tests.integration.vxsnd_harness import make_config, running, server_addr
from vxsnd import registry as st


class Wakes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def join(node: str, vni: int, address: str) -> st.Batch:
    batch = st.Batch()
    batch.register(st.Registration(node, 1, address, 4789, 30, {vni: address}))
    return batch


@contextlib.asynccontextmanager
async def following(store: st.Store, wakes: Wakes) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(store.follow_changes(wakes))
    try:
        await wait_until(lambda: wakes.count >= 1, 10, "the first catch-up wake")
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def listeners(url: str) -> list[int]:
    conn = await asyncpg.connect(dsn(url))
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity"
            " WHERE application_name = 'vxsnd-listen' AND datname = current_database()"
        )
        return [r["pid"] for r in rows]
    finally:
        await conn.close()


async def test_a_change_through_one_wakes_the_other_and_survives_a_lost_channel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "vxsnd.registry")
    async with postgres_database() as url:
        async with await st.Store.open(url) as a, await st.Store.open(url) as b:
            wakes_a, wakes_b = Wakes(), Wakes()
            async with following(a, wakes_a), following(b, wakes_b):
                base_a, base_b = wakes_a.count, wakes_b.count
                await a.apply(join("hv-1", 100, "192.0.2.1"), 1.0)
                await wait_until(lambda: wakes_b.count > base_b, 5, "b woken by a's change")
                unchanged = st.Batch()
                unchanged.refresh("hv-1", hold_time=30)
                await a.apply(unchanged, 2.0)  # nothing changed: nothing to tell
                await b.apply(join("hv-2", 100, "192.0.2.2"), 3.0)
                await wait_until(lambda: wakes_a.count > base_a, 5, "a woken by b's change")
                assert wakes_a.count == base_a + 1  # not by its own writes, nor the refresh

                # the server drops both listening connections (as a restart or a
                # failover would): each store reconnects and catches up once
                pids = await listeners(url)
                assert len(pids) == 2
                before_a, before_b = wakes_a.count, wakes_b.count
                admin = await asyncpg.connect(dsn(url))
                try:
                    for pid in pids:
                        await admin.execute("SELECT pg_terminate_backend($1)", pid)
                finally:
                    await admin.close()
                await wait_until(lambda: wakes_b.count > before_b, 10, "b's catch-up wake")
                await wait_until(lambda: wakes_a.count > before_a, 10, "a's catch-up wake")
                assert set(await listeners(url)).isdisjoint(pids)
                after = wakes_b.count
                await a.apply(join("hv-3", 200, "192.0.2.3"), 4.0)
                await wait_until(lambda: wakes_b.count > after, 5, "b woken again")
        lost = [r for r in caplog.records if "notifications lost" in r.getMessage()]
        back = [r for r in caplog.records if "notifications back" in r.getMessage()]
        assert len(lost) == 2 and len(back) == 2  # one line each way per store


async def test_two_daemons_without_a_poll_push_each_others_changes() -> None:
    """registry_poll = 0: only the notification can carry B's change to A's agents."""
    async with postgres_database() as url:
        a_cfg = make_config(url, server_id="vxsnd-a", registry_poll=0.0, api=None)
        b_cfg = make_config(url, server_id="vxsnd-b", registry_poll=0.0, api=None)
        async with running(a_cfg) as a_daemon, running(b_cfg) as b_daemon:
            agent = await Agent.create("node1", server_addr(a_daemon))
            try:
                agent.register({100: ipaddress.ip_address("192.0.2.1")})
                await wait_until(lambda: 100 in agent.members, 10, "the first membership")
                static = ipaddress.ip_address("198.51.100.9")
                batch = st.Batch()
                batch.enrol_static(st.StaticVtep(100, str(static)))
                await b_daemon.apply_batch(batch, time.time())
                await wait_until(lambda: static in agent.peers(100), 5, "B's change pushed by A")
            finally:
                agent.close()


def multi_host(url: str, dead_port: int) -> str:
    """The same database as a failover URL whose first host is down (as after a
    primary is lost): `?host=A&host=B&target_session_attrs=read-write`."""
    u = make_url(url)
    first = f"{u.host}:{dead_port}"
    second = f"{u.host}:{u.port or 5432}"
    query = {"host": [first, second], "target_session_attrs": "read-write"}
    return u.set(host=None, port=None, query=query).render_as_string(hide_password=False)


async def test_a_multi_host_url_skips_a_dead_host_for_writes_and_notifications() -> None:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # bound, never listening: connection refused
        async with postgres_database() as url:
            failover = multi_host(url, dead)
            async with await st.Store.open(failover) as a, await st.Store.open(url) as b:
                wakes_a, wakes_b = Wakes(), Wakes()
                async with following(a, wakes_a), following(b, wakes_b):
                    base_a, base_b = wakes_a.count, wakes_b.count
                    await a.apply(join("hv-1", 100, "192.0.2.1"), 1.0)
                    await wait_until(lambda: wakes_b.count > base_b, 5, "b woken by a")
                    await b.apply(join("hv-2", 100, "192.0.2.2"), 2.0)
                    await wait_until(lambda: wakes_a.count > base_a, 5, "a woken by b")
                _, members = await a.member_addresses(100)
                assert members == {"192.0.2.1", "192.0.2.2"}
