"""The service node's registry: the module of vxflood that reads SQL, and its front door.

SQLAlchemy 2 Core: an SQLite file by default, PostgreSQL (asyncpg) when several
vxsnd instances share one registry. `vxsnd.database` runs the SQL (a thread for
SQLite, the event loop for PostgreSQL); `vxsnd.apply` writes a `vxsnd.batch.Batch`
as ONE transaction; this module opens and checks the registry, serialises the
writers and answers the reads. The schema lives in `schema.tables` and only
changes through Alembic (`migrations/`).

The store never reads the clock: every write takes `now` (float epoch seconds).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import (
    Connection,
    Engine,
    and_,
    case,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import make_url

from migrations import alembic_config
from schema import tables as t
from vxsnd.apply import PG_LOCK_KEY, apply_batch
from vxsnd.batch import (
    Ack,
    Batch,
    BatchResult,
    Key,
    Refresh,
    Registration,
    StaticVtep,
    VniChange,
    Withdrawal,
)
from vxsnd.database import Database, chunks, normalize_url, open_database

__all__ = [
    "DEFAULT_DB_PATH",
    "DEFAULT_LOG_DEPTH",
    "Ack",
    "Batch",
    "BatchResult",
    "Delta",
    "Key",
    "Lagging",
    "Member",
    "Node",
    "NodeVni",
    "Origin",
    "Refresh",
    "Registration",
    "RegistryMissing",
    "SchemaError",
    "SchemaOutdated",
    "SchemaUnknown",
    "StaticVtep",
    "Store",
    "VniChange",
    "VniSummary",
    "Withdrawal",
    "current_revision",
    "default_db_url",
    "head_revision",
    "normalize_url",
    "upgrade_schema",
]

DEFAULT_DB_PATH: Final = Path("/var/lib/vxsnd/registry.db")
DEFAULT_LOG_DEPTH: Final = 64


class Origin(StrEnum):
    REGISTERED = t.ORIGIN_REGISTERED
    STATIC = t.ORIGIN_STATIC


# --------------------------------------------------------------------------- errors


class SchemaError(RuntimeError):
    """The database is not a registry at the schema revision this vxsnd needs."""


class SchemaOutdated(SchemaError):
    """The registry is at an older revision: `vxsnd db upgrade` fixes it."""


class SchemaUnknown(SchemaError):
    """Not a vxsnd registry, or written by a newer vxsnd (unknown revision)."""


class RegistryMissing(SchemaError):
    """`Store.open(create=False)` on an empty database."""


# --------------------------------------------------------------------------- URLs


def default_db_url(environ: Mapping[str, str] | None = None) -> str:
    """`sqlite:////var/lib/vxsnd/registry.db`, or in `$STATE_DIRECTORY`.

    systemd sets STATE_DIRECTORY (colon-separated when a unit has several; the
    first is used) for units with `StateDirectory=`.
    """
    env = os.environ if environ is None else environ
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    path = Path(state) / DEFAULT_DB_PATH.name if state else DEFAULT_DB_PATH
    return f"sqlite:///{path}"


def _safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


# --------------------------------------------------------------------------- schema revisions


def head_revision() -> str:
    """The newest revision this vxsnd knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _check_schema(connection: Connection, url: str, create: bool) -> None:
    """Run inside `run_sync`: accept head, create an empty database, refuse the rest."""
    script = ScriptDirectory.from_config(alembic_config())
    heads = set(script.get_heads())
    current = set(MigrationContext.configure(connection).get_current_heads())
    if current == heads:
        return
    tables = set(inspect(connection).get_table_names())
    hint = f"run `vxsnd db upgrade --db {_safe_url(url)}`"
    if not tables:
        if not create:
            raise RegistryMissing(f"registry {_safe_url(url)} is empty; {hint} to create it")
        cfg = alembic_config(url)
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")
        return
    if "alembic_version" not in tables:
        raise SchemaUnknown(
            f"database {_safe_url(url)} has tables but no Alembic revision: "
            "not a vxsnd registry (use an empty database)"
        )
    for rev in current:
        try:
            known = script.get_revision(rev)
        except CommandError:
            known = None
        if known is None:
            raise SchemaUnknown(
                f"registry {_safe_url(url)} is at revision {rev}, unknown to this vxsnd "
                f"(head {', '.join(sorted(heads))}): it was written by a newer vxsnd"
            )
    at = ", ".join(sorted(current)) or "base (no revision applied)"
    raise SchemaOutdated(
        f"registry {_safe_url(url)} is at schema revision {at}, this vxsnd needs "
        f"{', '.join(sorted(heads))}: {hint}"
    )


def _upgrade(connection: Connection, url: str) -> None:
    cfg = alembic_config(url)
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def upgrade_schema(url: str) -> None:
    """Bring the registry at `url` to the head revision (creates it if empty)."""
    url = normalize_url(url)
    db = open_database(url)
    try:
        await db.write(_upgrade, url)
    finally:
        await db.dispose()


def _sqlite_file_missing(url: str) -> bool:
    parsed = make_url(url)
    db = parsed.database
    return (
        parsed.get_backend_name() == "sqlite"
        and bool(db)
        and db != ":memory:"
        and not (Path(str(db)).exists())
    )


def _heads(connection: Connection) -> tuple[str, ...]:
    return tuple(MigrationContext.configure(connection).get_current_heads())


async def current_revision(url: str) -> tuple[str, ...]:
    """Revisions applied to the registry at `url` (empty: none, e.g. a new database)."""
    url = normalize_url(url)
    if _sqlite_file_missing(url):
        return ()  # do not create a file just to look at it
    db = open_database(url)
    try:
        return await db.read(_heads)
    finally:
        await db.dispose()


# --------------------------------------------------------------------------- read model


@dataclass(frozen=True, slots=True)
class Member:
    vni: int
    address: str
    origin: Origin
    node_id: str | None  # None for static entries
    expires_at: float | None  # None: never
    description: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class Delta:
    """Membership change of `vni` from generation `base` to `generation`."""

    vni: int
    base: int
    generation: int
    added: frozenset[str]
    removed: frozenset[str]


@dataclass(frozen=True, slots=True)
class VniSummary:
    vni: int
    generation: int
    members: int
    static: int
    updated_at: float


@dataclass(frozen=True, slots=True)
class Node:
    node_id: str
    incarnation: int
    address: str
    port: int
    hold_time: float
    last_seen: float
    expires_at: float
    registered_at: float  # when this incarnation first registered


@dataclass(frozen=True, slots=True)
class NodeVni:
    node_id: str
    vni: int
    local_address: str
    applied_generation: int
    generation: int  # the VNI's current generation


@dataclass(frozen=True, slots=True)
class Lagging:
    """A node that has not acked the current generation of a VNI it serves."""

    node_id: str
    address: str
    port: int
    vni: int
    applied_generation: int
    generation: int


def _address_order(address: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(address)
    return ip.version, ip.packed


_m, _n, _nv, _v, _c = t.members, t.nodes, t.node_vnis, t.vnis, t.changes


# --------------------------------------------------------------------------- the store


def _registry_id(conn: Connection) -> str:
    query = select(t.meta.c.value).where(t.meta.c.key == "registry_id")
    found = conn.execute(query).scalar_one_or_none()
    if found is not None:
        return str(found)
    if conn.dialect.name == "postgresql":  # another instance may create it concurrently
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
        found = conn.execute(query).scalar_one_or_none()
        if found is not None:
            return str(found)
    registry_id = secrets.token_hex(16)
    conn.execute(insert(t.meta).values(key="registry_id", value=registry_id))
    return registry_id


class Store:
    """The registry. Create with `await Store.open(url)`; `await store.close()` at the end."""

    def __init__(self, db: Database, registry_id: str, log_depth: int) -> None:
        self._db = db
        self._log_depth = log_depth
        self._lock = asyncio.Lock()  # one writer per process; PostgreSQL adds a lock across
        self.registry_id: Final = registry_id

    @classmethod
    async def open(
        cls,
        url: str | None = None,
        *,
        create: bool = True,
        log_depth: int = DEFAULT_LOG_DEPTH,
    ) -> Store:
        """Open the registry at `url` (default: `default_db_url()`).

        An empty database (a new SQLite file) is created at the head revision
        when `create`; one at another revision raises `SchemaOutdated` (run
        `vxsnd db upgrade`) or `SchemaUnknown`.
        """
        if log_depth < 1:
            raise ValueError("log_depth must be at least 1")
        url = normalize_url(url or default_db_url())
        db = open_database(url)
        try:
            await db.write(_check_schema, url, create)
            registry_id = await db.write(_registry_id)
        except BaseException:
            await db.dispose()
            raise
        return cls(db, registry_id, log_depth)

    async def close(self) -> None:
        await self._db.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    @property
    def log_depth(self) -> int:
        return self._log_depth

    @property
    def sync_engine(self) -> Engine:
        """The SQLAlchemy engine underneath, for event listeners (benchmarks count statements)."""
        return self._db.sync_engine

    # ---- writes

    async def apply(self, batch: Batch, now: float) -> BatchResult:
        """Apply `batch` in one transaction (`vxsnd.apply.apply_batch`)."""
        async with self._lock:
            return await self._db.write(apply_batch, batch, now, self._log_depth)

    # ---- reads

    async def generations(self, vnis: Iterable[int] | None = None) -> dict[int, int]:
        """Current generation of the given (default: all) VNIs; unknown VNIs are left out."""
        return await self._db.read(_generations, None if vnis is None else sorted(set(vnis)))

    async def members(self, vni: int) -> tuple[int, list[Member]]:
        """(generation, members in address order); (0, []) for an unknown VNI.

        A registered member's `expires_at` is its node's.
        """
        return await self._db.read(_members, vni)

    async def member_addresses(self, vni: int) -> tuple[int, frozenset[str]]:
        """(generation, canonical addresses): what a snapshot push carries."""
        return await self._db.read(_member_addresses, vni)

    async def delta(self, vni: int, base: int) -> Delta | None:
        """Adds/removes from generation `base` to now, or None when the log cannot tell.

        None when `base` is ahead of the current generation, negative, or older
        than the change log reaches; `base` == current gives an empty delta.
        """
        return await self._db.read(_delta, vni, base)

    async def vnis(self) -> list[VniSummary]:
        """Every VNI the registry knows (including ones whose last member left)."""
        return await self._db.read(_vnis)

    async def nodes(self) -> list[Node]:
        return await self._db.read(_nodes)

    async def node(self, node_id: str) -> Node | None:
        return await self._db.read(_node, node_id)

    async def node_vnis(self, node_id: str) -> list[NodeVni]:
        """The VNIs a node claims, with what it applied and the VNI's current generation."""
        return await self._db.read(_node_vnis, node_id)

    async def lagging(self, vnis: Iterable[int] | None = None) -> list[Lagging]:
        """Nodes whose applied generation is behind, in the given (default: all) VNIs."""
        return await self._db.read(_lagging, None if vnis is None else sorted(set(vnis)))

    async def health(self) -> bool:
        """True when the database answers `SELECT 1`."""
        try:
            return await self._db.read(_health)
        except Exception:
            return False


# --------------------------------------------------------------------------- read queries


def _generations(conn: Connection, vnis: list[int] | None) -> dict[int, int]:
    query = select(_v.c.vni, _v.c.generation)
    if vnis is None:
        return {r.vni: r.generation for r in conn.execute(query)}
    found: dict[int, int] = {}
    for chunk in chunks(vnis):
        found.update((r.vni, r.generation) for r in conn.execute(query.where(_v.c.vni.in_(chunk))))
    return found


def _members(conn: Connection, vni: int) -> tuple[int, list[Member]]:
    query = (
        select(
            _v.c.generation,
            _m.c.address,
            _m.c.origin,
            _m.c.node_id,
            func.coalesce(_m.c.expires_at, _n.c.expires_at).label("expires_at"),
            _m.c.description,
            _m.c.created_at,
        )
        .select_from(
            _v.outerjoin(_m, _m.c.vni == _v.c.vni).outerjoin(_n, _n.c.node_id == _m.c.node_id)
        )
        .where(_v.c.vni == vni)
    )
    rows = conn.execute(query).all()
    if not rows:
        return 0, []
    members = [
        Member(
            vni=vni,
            address=r.address,
            origin=Origin(r.origin),
            node_id=r.node_id,
            expires_at=r.expires_at,
            description=r.description,
            created_at=r.created_at,
        )
        for r in rows
        if r.address is not None
    ]
    members.sort(key=lambda m: _address_order(m.address))
    return rows[0].generation, members


def _member_addresses(conn: Connection, vni: int) -> tuple[int, frozenset[str]]:
    query = (
        select(_v.c.generation, _m.c.address)
        .select_from(_v.outerjoin(_m, _m.c.vni == _v.c.vni))
        .where(_v.c.vni == vni)
    )
    rows = conn.execute(query).all()
    if not rows:
        return 0, frozenset()
    return rows[0].generation, frozenset(r.address for r in rows if r.address is not None)


def _delta(conn: Connection, vni: int, base: int) -> Delta | None:
    query = (
        select(_v.c.generation.label("current"), _c.c.generation, _c.c.address, _c.c.op)
        .select_from(_v.outerjoin(_c, and_(_c.c.vni == _v.c.vni, _c.c.generation > base)))
        .where(_v.c.vni == vni)
        .order_by(_c.c.generation)
    )
    rows = conn.execute(query).all()
    current = rows[0].current if rows else 0
    if base < 0 or base > current:
        return None
    if base == current:
        return Delta(vni, base, current, frozenset(), frozenset())
    if rows[0].generation != base + 1:
        return None  # trimmed: the log no longer reaches back to base
    added: set[str] = set()
    removed: set[str] = set()
    for r in rows:
        if r.op == t.OP_ADD:
            if r.address in removed:
                removed.discard(r.address)
            else:
                added.add(r.address)
        elif r.address in added:
            added.discard(r.address)
        else:
            removed.add(r.address)
    return Delta(vni, base, current, frozenset(added), frozenset(removed))


def _vnis(conn: Connection) -> list[VniSummary]:
    counts = (
        select(
            _m.c.vni,
            func.count().label("members"),
            func.sum(case((_m.c.origin == t.ORIGIN_STATIC, 1), else_=0)).label("static"),
        )
        .group_by(_m.c.vni)
        .subquery()
    )
    query = (
        select(_v.c.vni, _v.c.generation, _v.c.updated_at, counts.c.members, counts.c.static)
        .select_from(_v.outerjoin(counts, counts.c.vni == _v.c.vni))
        .order_by(_v.c.vni)
    )
    return [
        VniSummary(r.vni, r.generation, r.members or 0, int(r.static or 0), r.updated_at)
        for r in conn.execute(query)
    ]


def _node_row(r: Any) -> Node:
    return Node(
        node_id=r.node_id,
        incarnation=r.incarnation,
        address=r.address,
        port=r.port,
        hold_time=r.hold_time,
        last_seen=r.last_seen,
        expires_at=r.expires_at,
        registered_at=r.registered_at,
    )


def _nodes(conn: Connection) -> list[Node]:
    return [_node_row(r) for r in conn.execute(select(_n).order_by(_n.c.node_id))]


def _node(conn: Connection, node_id: str) -> Node | None:
    row = conn.execute(select(_n).where(_n.c.node_id == node_id)).first()
    return None if row is None else _node_row(row)


def _node_vnis(conn: Connection, node_id: str) -> list[NodeVni]:
    query = (
        select(_nv, _v.c.generation)
        .join(_v, _v.c.vni == _nv.c.vni)
        .where(_nv.c.node_id == node_id)
        .order_by(_nv.c.vni)
    )
    return [
        NodeVni(r.node_id, r.vni, r.local_address, r.applied_generation, r.generation)
        for r in conn.execute(query)
    ]


def _lagging(conn: Connection, vnis: list[int] | None) -> list[Lagging]:
    query = (
        select(
            _n.c.node_id,
            _n.c.address,
            _n.c.port,
            _nv.c.vni,
            _nv.c.applied_generation,
            _v.c.generation,
        )
        .select_from(_nv.join(_n, _n.c.node_id == _nv.c.node_id).join(_v, _v.c.vni == _nv.c.vni))
        .where(_nv.c.applied_generation < _v.c.generation)
        .order_by(_nv.c.vni, _n.c.node_id)
    )
    found: list[Lagging] = []
    parts: Iterable[list[int] | None] = [None] if vnis is None else chunks(vnis)
    for chunk in parts:
        q = query if chunk is None else query.where(_nv.c.vni.in_(chunk))
        found.extend(
            Lagging(r.node_id, r.address, r.port, r.vni, r.applied_generation, r.generation)
            for r in conn.execute(q)
        )
    return found


def _health(conn: Connection) -> bool:
    return bool(conn.execute(select(1)).scalar_one() == 1)
