"""A real REST API server on a real registry, for the API, schemathesis and vxsndctl tests.

`Harness` stands in for the daemon: it has the `store`, a prometheus registry
under `metrics.registry`, and the daemon's batch path `apply_batch`, recording
every result that changed a flood list (what the daemon would push). The
server is `vxsnd.api.start_api` on 127.0.0.1 with an ephemeral port.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from tests.conftest import POSTGRES_URL, require_postgres
from vxsnd import registry as st
from vxsnd.api import bound_port, start_api
from vxsnd.conflicts import Conflict

ADMIN_TOKEN = "admin-" + secrets.token_hex(16)
READ_TOKEN = "read-" + secrets.token_hex(16)


@dataclass
class FakeMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        Counter("vxsnd_test_marker", "present so /metrics has content", registry=self.registry)


@dataclass
class Harness:
    store: st.Store
    metrics: FakeMetrics = field(default_factory=FakeMetrics)
    changes: list[st.BatchResult] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)  # what the core would list

    async def apply_batch(self, batch: st.Batch, now: float) -> st.BatchResult:
        result = await self.store.apply(batch, now)
        if result.changed:
            self.changes.append(result)
        return result

    def node_id_conflicts(self, now: float) -> list[Conflict]:
        return list(self.conflicts)


def write_tokens(directory: Path) -> Path:
    path = directory / "tokens"
    path.write_text(
        f"# test tokens\n{ADMIN_TOKEN} admin tester\n{READ_TOKEN} read grafana\n",
        encoding="utf-8",
    )
    return path


@asynccontextmanager
async def serve(harness: object, token_file: Path | None = None) -> AsyncIterator[str]:
    runner = await start_api(harness, "127.0.0.1", 0, str(token_file) if token_file else None)
    try:
        yield f"http://127.0.0.1:{bound_port(runner)}"
    finally:
        await runner.cleanup()


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'registry.db'}"


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A fresh, uniquely named PostgreSQL database, dropped afterwards."""
    require_postgres()
    import asyncpg

    base = POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://")
    name = f"vxflood_api_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(base)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    prefix = POSTGRES_URL.rsplit("/", 1)[0]
    try:
        yield f"{prefix}/{name}"
    finally:
        admin = await asyncpg.connect(base)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def register(
    store: st.Store, node_id: str, vnis: dict[int, str], now: float, hold_time: float = 60
) -> st.BatchResult:
    batch = st.Batch()
    batch.register(
        st.Registration(
            node_id=node_id,
            incarnation=7,
            address=next(iter(vnis.values())),
            port=10002,
            hold_time=hold_time,
            vnis=vnis,
        )
    )
    return await store.apply(batch, now)


async def snapshot(store: st.Store) -> object:
    """Everything the API can change or show, to compare before and after."""
    vnis = await store.vnis()
    members = {v.vni: await store.members(v.vni) for v in vnis}
    nodes = await store.nodes()
    return (vnis, members, nodes)
