"""vxsnd.registry against real databases: an SQLite file and PostgreSQL.

Every PostgreSQL test gets a fresh database (`vxflood_test_<pid>_<n>`) created
from an admin connection to the `test` database and dropped afterwards, so
runs never see each other's rows.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest
from alembic import command
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from tests.conftest import POSTGRES_URL, require_postgres
from vxflood.migrations import alembic_config
from vxsnd import registry as st
from vxsnd.registry import (
    Batch,
    Origin,
    Registration,
    RegistryMissing,
    SchemaOutdated,
    SchemaUnknown,
    StaticVtep,
    Store,
    current_revision,
    head_revision,
    normalize_url,
    upgrade_schema,
)
from vxsnd.registry.runner import open_database

_db_numbers = itertools.count()


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: object) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/registry.db"
        return
    require_postgres()
    name = f"vxflood_test_{os.getpid()}_{next(_db_numbers)}"
    admin = await asyncpg.connect(_asyncpg_dsn(POSTGRES_URL))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        admin = await asyncpg.connect(_asyncpg_dsn(POSTGRES_URL))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = await Store.open(db_url)
    try:
        yield s
    finally:
        await s.close()


def reg(
    node: str,
    vnis: dict[int, str],
    *,
    hold: float = 30.0,
    incarnation: int = 1,
    applied: dict[int, int] | None = None,
) -> Registration:
    return Registration(node, incarnation, "192.0.2.1", 4789, hold, vnis, applied or {})


async def apply_regs(store: Store, now: float, *regs: Registration) -> dict[int, int]:
    batch = Batch()
    for r in regs:
        batch.register(r)
    return (await store.apply(batch, now)).generations


async def addresses(store: Store, vni: int) -> set[str]:
    return set((await store.member_addresses(vni))[1])


async def run_sync_alembic(url: str, fn: str, target: str) -> None:
    db = open_database(url, create=True)

    def run(sync_conn: Connection) -> None:
        cfg = alembic_config(url)
        cfg.attributes["connection"] = sync_conn
        getattr(command, fn)(cfg, target)

    try:
        await db.write(run)
    finally:
        await db.dispose()


async def execute(url: str, sql: str) -> None:
    """Run one statement on the database at `url` in its own transaction."""
    db = open_database(url, create=True)
    try:
        await db.write(lambda conn: conn.execute(text(sql)))
    finally:
        await db.dispose()


# --------------------------------------------------------------------------- schema


async def test_new_registry_is_created_at_head(db_url: str) -> None:
    async with await Store.open(db_url) as s:
        assert len(s.registry_id) == 32
        int(s.registry_id, 16)
        assert await s.health()
    assert await current_revision(db_url) == (head_revision(),)


async def test_registry_id_and_state_survive_reopen(db_url: str) -> None:
    async with await Store.open(db_url) as s:
        rid = s.registry_id
        await apply_regs(s, 100.0, reg("a", {100: "10.0.0.1"}), reg("b", {100: "10.0.0.2"}))
        assert await apply_regs(s, 101.0, reg("a", {100: "10.0.0.1", 200: "10.0.0.1"})) == {200: 1}
    async with await Store.open(db_url) as s:
        assert s.registry_id == rid
        assert await s.generations() == {100: 1, 200: 1}
        assert await addresses(s, 100) == {"10.0.0.1", "10.0.0.2"}
        assert [n.node_id for n in await s.nodes()] == ["a", "b"]
        # generations continue where they were
        assert await apply_regs(s, 102.0, reg("b", {100: "10.0.0.3"})) == {100: 2}


STARTING_TOGETHER = 6


async def test_many_instances_start_together_on_an_empty_registry(db_url: str) -> None:
    """Issue 14: on main one of two vxsnd died creating the schema on PostgreSQL
    (`duplicate key value violates unique constraint "pg_type_typname_nsp_index"`).
    Each store here has its own engine and connections, as separate vxsnd would."""
    results = await asyncio.gather(
        *(Store.open(db_url) for _ in range(STARTING_TOGETHER)), return_exceptions=True
    )
    stores = [r for r in results if isinstance(r, Store)]
    try:
        failures = [r for r in results if not isinstance(r, Store)]
        assert failures == []
        assert len({s.registry_id for s in stores}) == 1
        assert sum(s.created for s in stores) == 1  # exactly one start created it
    finally:
        for s in stores:
            await s.close()
    assert await current_revision(db_url) == (head_revision(),)


async def test_new_sqlite_files_opened_by_many_at_once_never_say_locked(tmp_path: Path) -> None:
    """The switch of a new file to WAL needs an exclusive lock, and SQLite refuses it at
    once ("database is locked", whatever the busy timeout) while another opener writes:
    about one start in 15 lost that race (this test without the fix: 2 of 3 runs fail)."""
    for round_ in range(60):
        url = f"sqlite:///{tmp_path / f'r{round_}.db'}"
        results = await asyncio.gather(
            *(Store.open(url) for _ in range(STARTING_TOGETHER)), return_exceptions=True
        )
        stores = [r for r in results if isinstance(r, Store)]
        for store in stores:
            await store.close()
        assert [r for r in results if not isinstance(r, Store)] == [], round_
        assert len({s.registry_id for s in stores}) == 1


_OPEN_ONE = """
import asyncio, sys
from vxsnd.registry import Store

async def main() -> None:
    store = await Store.open(sys.argv[1])
    print(store.registry_id, int(store.created))
    await store.close()

asyncio.run(main())
"""


async def test_many_processes_start_together_on_an_empty_registry(db_url: str) -> None:
    """The same with real processes started at the same moment."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _OPEN_ONE,
            db_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(4)
    ]
    outputs = [await p.communicate() for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
    answers = [out.decode().split() for out, _ in outputs]
    assert len({rid for rid, _ in answers}) == 1
    assert sorted(created for _, created in answers) == ["0", "0", "0", "1"]


async def test_outdated_registry_is_refused_until_upgraded(db_url: str) -> None:
    """With one revision, "older" is base: downgrade leaves an empty alembic_version."""
    async with await Store.open(db_url):
        pass
    await run_sync_alembic(db_url, "downgrade", "base")
    with pytest.raises(SchemaOutdated, match="vxsnd db upgrade --db"):
        await Store.open(db_url)
    await upgrade_schema(db_url)
    async with await Store.open(db_url) as s:
        assert await s.generations() == {}


async def test_a_0001_registry_with_agents_upgrades_to_0002(db_url: str) -> None:
    """The upgrade an operator runs (`vxsnd db upgrade`): nodes, members and claims
    survive; the new replay marks start at 0 (nothing remembered yet); the
    service_nodes table is there."""
    async with await Store.open(db_url) as s:
        await apply_regs(s, 1.0, reg("a", {100: "10.0.0.1"}, incarnation=3))
    await run_sync_alembic(db_url, "downgrade", "0001")
    with pytest.raises(SchemaOutdated):
        await Store.open(db_url)
    await upgrade_schema(db_url)
    async with await Store.open(db_url) as s:
        (node,) = await s.nodes()
        assert (node.node_id, node.incarnation, node.last_seq) == ("a", 3, 0)
        assert await addresses(s, 100) == {"10.0.0.1"}
        assert await s.service_nodes() == []


async def test_empty_database_without_create(db_url: str) -> None:
    with pytest.raises(RegistryMissing, match="vxsnd db upgrade"):
        await Store.open(db_url, create=False)


async def test_foreign_tables_and_unknown_revisions_are_refused(db_url: str) -> None:
    await execute(db_url, "CREATE TABLE something_else (x INTEGER)")
    with pytest.raises(SchemaUnknown, match="no Alembic revision"):
        await Store.open(db_url)
    await execute(db_url, "DROP TABLE something_else")
    async with await Store.open(db_url):
        pass
    await execute(db_url, "UPDATE alembic_version SET version_num = 'ffff'")
    with pytest.raises(SchemaUnknown, match="newer vxsnd"):
        await Store.open(db_url)


# --------------------------------------------------------------------------- generations


async def test_join_and_leave_bump_each_vni_once_per_batch(store: Store) -> None:
    batch = Batch()
    batch.register(reg("a", {100: "10.0.0.1", 200: "10.0.0.1"}))
    batch.register(reg("b", {100: "10.0.0.2"}))
    batch.register(reg("c", {100: "2001:db8:0:0::3"}))
    result = await store.apply(batch, 10.0)
    assert result.generations == {100: 1, 200: 1}
    assert result.changed[100].added == {"10.0.0.1", "10.0.0.2", "2001:db8::3"}
    assert result.registered == {"a", "b", "c"}
    gen, members = await store.members(100)
    assert gen == 1
    assert [m.address for m in members] == ["10.0.0.1", "10.0.0.2", "2001:db8::3"]
    assert {m.origin for m in members} == {Origin.REGISTERED}
    assert members[0].expires_at == 40.0

    batch = Batch()
    batch.register(reg("a", {200: "10.0.0.1"}))  # leaves 100
    batch.withdraw("b")
    batch.register(reg("d", {100: "10.0.0.4"}))
    result = await store.apply(batch, 11.0)
    assert result.generations == {100: 2}
    assert result.changed[100].added == {"10.0.0.4"}
    assert result.changed[100].removed == {"10.0.0.1", "10.0.0.2"}
    assert result.withdrawn == {"b"}
    assert await addresses(store, 100) == {"10.0.0.4", "2001:db8::3"}
    assert await store.node("b") is None

    # join and leave of the same address within one batch cancel out
    batch = Batch()
    batch.register(reg("e", {100: "10.0.0.5"}))
    batch.withdraw("e")
    assert (await store.apply(batch, 12.0)).changed == {}
    assert await store.generations([100, 200, 999]) == {100: 2, 200: 1}


async def test_refresh_and_identical_registration_change_only_expiry(store: Store) -> None:
    await apply_regs(store, 0.0, reg("a", {100: "10.0.0.1"}), reg("b", {100: "10.0.0.2"}))
    batch = Batch()
    batch.refresh("a", hold_time=495.0)  # expires at 5 + 495
    batch.refresh("ghost", hold_time=495.0)
    result = await store.apply(batch, 5.0)
    assert result.changed == {}
    assert result.unknown == {"ghost"}
    node = await store.node("a")
    assert node is not None and node.expires_at == 500.0 and node.last_seen == 5.0
    _, members = await store.members(100)
    assert {m.address: m.expires_at for m in members} == {"10.0.0.1": 500.0, "10.0.0.2": 30.0}

    batch = Batch()
    batch.register(reg("a", {100: "10.0.0.1"}))
    result = await store.apply(batch, 6.0)
    assert result.changed == {} and result.registered == frozenset()
    batch = Batch()
    batch.register(reg("a", {100: "10.0.0.1"}, incarnation=2))  # agent restart
    result = await store.apply(batch, 7.0)
    assert result.changed == {} and result.registered == {"a"}
    assert await store.generations() == {100: 1}


async def test_expiry_sweep_and_hold_time_zero(store: Store) -> None:
    await apply_regs(
        store,
        0.0,
        reg("a", {100: "10.0.0.1"}, hold=10),
        reg("b", {100: "10.0.0.2", 200: "10.0.0.2"}, hold=10),
        reg("c", {300: "10.0.0.3"}, hold=10),
    )
    batch = Batch()
    batch.refresh("a", hold_time=14.0)  # expires at 25
    batch.expire()
    result = await store.apply(batch, 11.0)
    assert result.expired == {"b", "c"}
    assert result.generations == {100: 2, 200: 2, 300: 2}
    assert await addresses(store, 100) == {"10.0.0.1"}
    assert [n.node_id for n in await store.nodes()] == ["a"]
    assert await store.node_vnis("b") == []

    result = await store.apply(Batch(), 12.0)
    assert result.changed == {}
    batch = Batch()
    batch.register(reg("a", {100: "10.0.0.1"}, hold=0))
    result = await store.apply(batch, 13.0)
    assert result.withdrawn == {"a"} and result.generations == {100: 3}
    assert await store.nodes() == []
    summary = {v.vni: (v.generation, v.members) for v in await store.vnis()}
    assert summary == {100: (3, 0), 200: (2, 0), 300: (2, 0)}


async def test_a_withdrawal_is_the_registered_incarnations_alone(store: Store) -> None:
    await apply_regs(store, 0.0, reg("a", {100: "10.0.0.1"}, incarnation=5))
    batch = Batch()
    batch.withdraw("a", incarnation=6)  # another process claiming a's id
    batch.withdraw("ghost", incarnation=1)  # not registered: nothing to refuse or remove
    result = await store.apply(batch, 1.0)
    assert result.not_owner == {"a"} and result.withdrawn == frozenset()
    assert result.changed == {} and await addresses(store, 100) == {"10.0.0.1"}
    batch = Batch()
    batch.withdraw("a", incarnation=5)
    result = await store.apply(batch, 2.0)
    assert result.withdrawn == {"a"} and result.not_owner == frozenset()
    assert await addresses(store, 100) == set()


async def test_each_node_keeps_its_last_register_envelope(store: Store) -> None:
    """The replay marks a restarted vxsnd seeds its guard with (issue 10), through the
    register path, the refresh path (PostgreSQL's array UPDATE too) and clamped to
    BIGINT whatever a datagram said."""
    batch = Batch()
    batch.register(replace(reg("a", {100: "10.0.0.1"}), seq=41, sent_ms=1_700_000_000_123))
    batch.register(replace(reg("b", {100: "10.0.0.2"}), seq=2**64 - 1, sent_ms=5))
    await store.apply(batch, 1.0)
    marks = {n.node_id: (n.last_seq, n.last_sent_ms) for n in await store.nodes()}
    assert marks == {"a": (41, 1_700_000_000_123), "b": (2**63 - 1, 5)}
    batch = Batch()
    batch.refresh("a", hold_time=30.0, seq=44, sent_ms=1_700_000_030_000)
    await store.apply(batch, 2.0)
    node = await store.node("a")
    assert node is not None and (node.last_seq, node.last_sent_ms) == (44, 1_700_000_030_000)


async def test_last_registration_wins_and_hands_over(store: Store) -> None:
    await apply_regs(store, 0.0, reg("a", {100: "10.0.0.9"}))
    assert await apply_regs(store, 1.0, reg("b", {100: "10.0.0.9"})) == {}
    _, members = await store.members(100)
    assert [(m.address, m.node_id) for m in members] == [("10.0.0.9", "b")]
    # b goes away: a still claims the address, so it keeps existing (no bump)
    batch = Batch()
    batch.withdraw("b")
    assert (await store.apply(batch, 2.0)).changed == {}
    _, members = await store.members(100)
    assert [(m.address, m.node_id) for m in members] == [("10.0.0.9", "a")]
    batch = Batch()
    batch.withdraw("a")
    assert (await store.apply(batch, 3.0)).generations == {100: 2}


# --------------------------------------------------------------------------- static


async def test_static_enrol_remove_and_registration_does_not_overwrite(store: Store) -> None:
    batch = Batch()
    batch.enrol_static(StaticVtep(100, "10.9.0.1", description="storage array"))
    batch.enrol_static(StaticVtep(100, "10.9.0.2", hold_time=10))
    result = await store.apply(batch, 0.0)
    assert result.generations == {100: 1}
    assert result.changed[100].added == {"10.9.0.1", "10.9.0.2"}

    # a registration of a static address leaves it static and bumps nothing
    assert await apply_regs(store, 1.0, reg("a", {100: "10.9.0.1"}, hold=100)) == {}
    _, members = await store.members(100)
    m = {x.address: x for x in members}
    assert m["10.9.0.1"].origin is Origin.STATIC and m["10.9.0.1"].node_id is None
    assert m["10.9.0.1"].description == "storage array" and m["10.9.0.1"].expires_at is None
    assert m["10.9.0.2"].expires_at == 10.0

    # removing the static entry hands it to the agent that claims it (no bump)
    batch = Batch()
    batch.remove_static(100, "10.9.0.1")
    batch.remove_static(100, "10.9.9.9")
    result = await store.apply(batch, 2.0)
    assert result.changed == {}
    assert result.missing_static == {(100, "10.9.9.9")}
    _, members = await store.members(100)
    assert {(x.address, x.origin, x.node_id) for x in members} == {
        ("10.9.0.1", Origin.REGISTERED, "a"),
        ("10.9.0.2", Origin.STATIC, None),
    }

    # static with a hold time expires in the sweep
    batch = Batch()
    batch.expire()
    result = await store.apply(batch, 10.0)
    assert result.changed[100].removed == {"10.9.0.2"} and result.generations == {100: 2}


async def test_replace_all_static(store: Store) -> None:
    batch = Batch()
    for addr in ("10.9.0.1", "10.9.0.2"):
        batch.enrol_static(StaticVtep(100, addr))
    batch.enrol_static(StaticVtep(200, "10.9.0.3"))
    await store.apply(batch, 0.0)
    await apply_regs(store, 0.0, reg("a", {300: "10.0.0.1"}))

    batch = Batch()
    batch.replace_static(
        [StaticVtep(100, "10.9.0.2", description="kept"), StaticVtep(300, "10.9.0.4")]
    )
    result = await store.apply(batch, 1.0)
    assert result.generations == {100: 2, 200: 2, 300: 2}
    assert result.changed[100].removed == {"10.9.0.1"}
    assert await addresses(store, 100) == {"10.9.0.2"}
    assert await addresses(store, 200) == set()
    assert await addresses(store, 300) == {"10.0.0.1", "10.9.0.4"}
    _, members = await store.members(100)
    assert members[0].description == "kept"
    summary = {v.vni: (v.members, v.static) for v in await store.vnis()}
    assert summary == {100: (1, 1), 200: (0, 0), 300: (2, 1)}


async def test_refresh_many_nodes_reports_exactly_the_unknown_ones(store: Store) -> None:
    # more nodes than one IN list (500) and a full-VNI membership read
    regs = [reg(f"n{i}", {100: f"10.1.{i // 250}.{i % 250 + 1}"}) for i in range(600)]
    await apply_regs(store, 0.0, *regs)
    batch = Batch()
    for i in range(600):
        batch.refresh(f"n{i}", hold_time=99.0 + i)  # expires at 100 + i
    result = await store.apply(batch, 1.0)
    assert result.unknown == set() and result.changed == {}
    batch = Batch()
    for i in range(0, 600, 2):
        batch.refresh(f"n{i}", hold_time=998.0)  # expires at 1000
    batch.refresh("ghost-1", hold_time=998.0)
    batch.refresh("ghost-2", hold_time=998.0)
    result = await store.apply(batch, 2.0)
    assert result.unknown == {"ghost-1", "ghost-2"}
    expiry = {n.node_id: n.expires_at for n in await store.nodes()}
    assert expiry["n0"] == 1000.0 and expiry["n1"] == 101.0 and expiry["n598"] == 1000.0
    # an unchanged re-registration of all of them changes nothing
    assert await apply_regs(store, 3.0, *regs) == {}
    assert len(await addresses(store, 100)) == 600


# --------------------------------------------------------------------------- acks


async def test_acks_and_lagging(store: Store) -> None:
    await apply_regs(
        store, 0.0, reg("a", {100: "10.0.0.1", 200: "10.0.0.1"}), reg("b", {100: "10.0.0.2"})
    )
    batch = Batch()
    batch.ack("a", 100, 1)
    batch.ack("ghost", 100, 1)
    result = await store.apply(batch, 1.0)
    assert result.unknown == {"ghost"} and result.changed == {}
    lag = {(x.node_id, x.vni): (x.applied_generation, x.generation) for x in await store.lagging()}
    assert lag == {("a", 200): (0, 1), ("b", 100): (0, 1)}
    batch = Batch()
    batch.ack("a", 100, 0)  # a late, older ack never lowers what was applied
    await store.apply(batch, 2.0)
    assert [(x.vni, x.applied_generation) for x in await store.node_vnis("a")] == [
        (100, 1),
        (200, 0),
    ]
    await apply_regs(store, 3.0, reg("b", {100: "10.0.0.2"}, applied={100: 1}))
    assert [(x.node_id, x.vni) for x in await store.lagging([200])] == [("a", 200)]
    assert [(x.node_id, x.vni) for x in await store.lagging([100])] == []


# --------------------------------------------------------------------------- deltas


async def test_delta_edges_and_log_trimming(db_url: str) -> None:
    async with await Store.open(db_url, log_depth=3) as s:
        assert await s.delta(100, 0) is not None  # unknown VNI at 0: empty
        assert await s.delta(100, 1) is None
        for i in range(1, 6):
            await apply_regs(s, float(i), reg(f"n{i}", {100: f"10.0.0.{i}"}))
        assert await s.generations([100]) == {100: 5}
        assert await s.delta(100, 1) is None  # log keeps generations 3..5
        d = await s.delta(100, 2)
        assert d is not None and d.added == {"10.0.0.3", "10.0.0.4", "10.0.0.5"}
        d = await s.delta(100, 5)
        assert d is not None and d.added == d.removed == frozenset() and d.generation == 5
        assert await s.delta(100, 6) is None
        assert await s.delta(100, -1) is None


async def test_delta_from_any_base_rebuilds_the_snapshot(db_url: str) -> None:
    """Random batches: snapshot(base) + delta(base) == snapshot(now), for every base.

    Also: a VNI's generation moves by exactly one in a batch that changes its
    membership and not at all otherwise.
    """
    depth = 6
    rng = random.Random(20261126)
    vnis = [1, 2, 3]
    pool = [f"10.0.0.{i}" for i in range(1, 9)]
    nodes = [f"n{i}" for i in range(6)]
    snapshots: dict[int, dict[int, frozenset[str]]] = {v: {0: frozenset()} for v in vnis}
    async with await Store.open(db_url, log_depth=depth) as s:
        now = 0.0
        for _ in range(40):
            now += 1.0
            before = {v: await s.member_addresses(v) for v in vnis}
            batch = Batch()
            for _ in range(rng.randint(1, 5)):
                op = rng.random()
                node = rng.choice(nodes)
                if op < 0.45:
                    chosen = rng.sample(vnis, rng.randint(0, 3))
                    batch.register(
                        reg(node, {v: rng.choice(pool) for v in chosen}, hold=rng.choice([3, 30]))
                    )
                elif op < 0.55:
                    batch.withdraw(node)
                elif op < 0.65:
                    batch.refresh(node, hold_time=5)
                elif op < 0.8:
                    batch.enrol_static(
                        StaticVtep(rng.choice(vnis), rng.choice(pool), rng.choice([None, 2.0]))
                    )
                elif op < 0.9:
                    batch.remove_static(rng.choice(vnis), rng.choice(pool))
                else:
                    batch.expire()
            result = await s.apply(batch, now)
            for v in vnis:
                gen, members = await s.member_addresses(v)
                old_gen, old_members = before[v]
                if members != old_members:
                    assert gen == old_gen + 1
                    assert result.changed[v].added == members - old_members
                    assert result.changed[v].removed == old_members - members
                else:
                    assert gen == old_gen and v not in result.changed
                snapshots[v][gen] = members
        for v in vnis:
            current, members = await s.member_addresses(v)
            for base, snap in snapshots[v].items():
                delta = await s.delta(v, base)
                if current - base > depth:
                    assert delta is None
                    continue
                assert delta is not None, (v, base, current)
                assert (snap - delta.removed) | delta.added == members
                assert not delta.added & snap and delta.removed <= snap


@pytest.mark.parametrize("driver", ["sqlite", "sqlite+aiosqlite", "sqlite+pysqlite"])
async def test_every_sqlite_spelling_opens_the_same_registry(tmp_path: Path, driver: str) -> None:
    """Configurations written for the aiosqlite driver keep working: one file, one driver."""
    path = tmp_path / "registry.db"
    assert normalize_url(f"{driver}:///{path}") == f"sqlite:///{path}"
    async with await Store.open(f"sqlite:///{path}") as s:
        rid = s.registry_id
    async with await Store.open(f"{driver}:///{path}") as s:
        assert s.registry_id == rid


def test_postgres_spellings_pick_asyncpg() -> None:
    for url in ("postgresql://u@h/db", "postgres://u@h/db", "postgresql+psycopg2://u@h/db"):
        assert normalize_url(url) == "postgresql+asyncpg://u@h/db"


async def test_two_processes_writing_one_sqlite_file_wait_for_each_other(
    tmp_path: Path,
) -> None:
    """Two vxsnd on one SQLite file (two Store objects, each with its own connections):
    concurrent batches wait for the write lock instead of failing "database is locked"
    (a transaction that read before the other's commit could not write after it)."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    one, two = await Store.open(url), await Store.open(url)
    try:

        async def writes(s: Store, name: str) -> None:
            for i in range(40):
                await apply_regs(
                    s, 100.0 + i, reg(f"{name}{i}", {100: f"10.{len(name)}.0.{i + 1}"})
                )

        await asyncio.gather(writes(one, "a"), writes(two, "bb"))
        assert len(await one.nodes()) == 80
        assert (await two.generations())[100] == 80
    finally:
        await one.close()
        await two.close()


# --------------------------------------------------------------------------- identity


async def drop_registry(url: str) -> None:
    """What `DROP` of every table does to a registry under a running vxsnd."""
    await run_sync_alembic(url, "downgrade", "base")
    await execute(url, "DROP TABLE alembic_version")


async def test_a_recreated_registry_is_adopted_and_reported(db_url: str) -> None:
    changes: list[st.IdentityChange] = []
    async with await Store.open(db_url) as store:
        store.on_identity_change(changes.append)
        first = store.registry_id
        await apply_regs(store, 1.0, reg("a", {100: "10.0.0.1"}))
        await drop_registry(db_url)
        with pytest.raises(st.RegistryLost, match="tables are gone"):
            await apply_regs(store, 2.0, reg("a", {100: "10.0.0.1"}))
        assert not store.status.ok and not (await store.check()).ok
        async with await Store.open(db_url) as other:  # another vxsnd recreates it
            assert other.created
            second = other.registry_id
        assert await apply_regs(store, 3.0, reg("b", {200: "10.0.0.2"})) == {200: 1}
        assert store.registry_id == second != first and store.identity_epoch == 1
        assert [(c.old_id, c.new_id) for c in changes] == [(first, second)]
        assert store.status.ok  # `created` stays what this start found
