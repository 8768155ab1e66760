"""The service node's registry: the only module of vxflood that speaks SQL.

SQLAlchemy 2 Core over asyncio: an SQLite file by default (aiosqlite; WAL,
synchronous=NORMAL, foreign keys on), PostgreSQL (asyncpg) when several vxsnd
instances share one registry. The schema lives in `schema.tables` and only
changes through Alembic (`migrations/`).

Writes arrive as a `Batch` and `Store.apply()` runs each batch as ONE
transaction. Every VNI whose membership changed in a batch gets its generation
bumped exactly once, and the net per-address adds/removes are written to the
change log under that new generation; `delta()` builds deltas from that log.

Ownership rules for a (VNI, address) member:

* a registration adds the (VNI, local address) pairs it lists; if the pair is
  already registered by another node, the last registration takes it over
  (no membership change, so no generation bump);
* a static entry is never overwritten by a registration (the claim is still
  recorded in `node_vnis`);
* when a member loses its owner (node withdraws, expires, changes its list, a
  static entry is removed), it is handed over to another live node that still
  claims the same (VNI, address), and only deleted when nobody does.

The store never reads the clock: every write takes `now` (float epoch seconds).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypeVar

from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    case,
    cast,
    delete,
    event,
    func,
    insert,
    inspect,
    null,
    select,
    text,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.expression import UpdateBase

from migrations import alembic_config
from schema import tables as t
from schema.validate import check_vni, check_vtep

__all__ = [
    "DEFAULT_DB_PATH",
    "DEFAULT_LOG_DEPTH",
    "Ack",
    "Batch",
    "BatchResult",
    "Delta",
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
_CHUNK: Final = 500  # keys per IN (...) list: far below SQLite's and asyncpg's bind limits
_PG_LOCK_KEY: Final = 0x7678666C6F6F64  # "vxflood": serialises writers sharing one PostgreSQL
_MAX_INCARNATION: Final = 2**63 - 1

Key = tuple[int, str]  # (VNI, canonical VTEP address)
_T = TypeVar("_T")


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
    """`sqlite+aiosqlite:////var/lib/vxsnd/registry.db`, or in `$STATE_DIRECTORY`.

    systemd sets STATE_DIRECTORY (colon-separated when a unit has several; the
    first is used) for units with `StateDirectory=`.
    """
    env = os.environ if environ is None else environ
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    path = Path(state) / DEFAULT_DB_PATH.name if state else DEFAULT_DB_PATH
    return f"sqlite+aiosqlite:///{path}"


def normalize_url(url: str) -> str:
    """Pick the async driver for plain `sqlite://` / `postgresql://` URLs."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.drivername != "sqlite+aiosqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif backend in ("postgresql", "postgres") and parsed.drivername != "postgresql+asyncpg":
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def _safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _make_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 30})

    def on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions
        # begin (see on_begin), so that reads in a transaction are a snapshot.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    def on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    event.listen(engine.sync_engine, "connect", on_connect)
    event.listen(engine.sync_engine, "begin", on_begin)
    return engine


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


async def upgrade_schema(url: str) -> None:
    """Bring the registry at `url` to the head revision (creates it if empty)."""
    url = normalize_url(url)
    engine = _make_engine(url)
    try:
        async with engine.begin() as conn:

            def run(connection: Connection) -> None:
                cfg = alembic_config(url)
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, "head")

            await conn.run_sync(run)
    finally:
        await engine.dispose()


def _sqlite_file_missing(url: str) -> bool:
    parsed = make_url(url)
    db = parsed.database
    return (
        parsed.get_backend_name() == "sqlite"
        and bool(db)
        and db != ":memory:"
        and not (Path(str(db)).exists())
    )


async def current_revision(url: str) -> tuple[str, ...]:
    """Revisions applied to the registry at `url` (empty: none, e.g. a new database)."""
    url = normalize_url(url)
    if _sqlite_file_missing(url):
        return ()  # do not create a file just to look at it
    engine = _make_engine(url)
    try:
        async with engine.connect() as conn:

            def heads(connection: Connection) -> tuple[str, ...]:
                return tuple(MigrationContext.configure(connection).get_current_heads())

            return await conn.run_sync(heads)
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------- write model


def _vtep(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Canonical text of a VTEP address (raises schema.validate.InvalidValue)."""
    if isinstance(address, str):
        try:
            address = ipaddress.ip_address(address.strip())
        except ValueError:
            raise ValueError(f"{address!r} is not an IPv4 or IPv6 address") from None
    return str(check_vtep(address))


def _node_id(node_id: str) -> str:
    if not node_id or len(node_id) > t.NODE_ID_MAX:
        raise ValueError(f"node id must be 1..{t.NODE_ID_MAX} characters, got {node_id!r}")
    return node_id


@dataclass(frozen=True, slots=True)
class Registration:
    """A node's full state, from a register message.

    `vnis` maps every VNI the node serves to its local VTEP address; VNIs it
    no longer lists are withdrawn. `applied` maps VNIs to the generation the
    node reports as applied (VNIs not in it keep their recorded value, new
    ones start at 0). `hold_time` <= 0 withdraws the node.
    """

    node_id: str
    incarnation: int
    address: str  # where the node registered from: where pushes go
    port: int
    hold_time: float
    vnis: Mapping[int, str]
    applied: Mapping[int, int] = field(default_factory=dict)

    def canonical(self) -> Registration:
        """Validated copy with canonical addresses (raises ValueError)."""
        if not 0 <= self.incarnation <= _MAX_INCARNATION:
            raise ValueError(f"incarnation {self.incarnation} does not fit 63 bits")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} out of range")
        return Registration(
            node_id=_node_id(self.node_id),
            incarnation=self.incarnation,
            address=str(ipaddress.ip_address(self.address)),
            port=self.port,
            hold_time=float(self.hold_time),
            vnis={check_vni(v): _vtep(a) for v, a in self.vnis.items()},
            applied={check_vni(v): int(g) for v, g in self.applied.items()},
        )


@dataclass(frozen=True, slots=True)
class Refresh:
    """A register that changes nothing: only extends the node's expiry (cheap path)."""

    node_id: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """The node leaves: its node row, claims and members go."""

    node_id: str


@dataclass(frozen=True, slots=True)
class Ack:
    node_id: str
    vni: int
    generation: int


@dataclass(frozen=True, slots=True)
class StaticVtep:
    """A VTEP enrolled by an operator; `hold_time` None means it never expires."""

    vni: int
    address: str
    hold_time: float | None = None
    description: str | None = None

    def canonical(self) -> StaticVtep:
        if self.description is not None and len(self.description) > t.DESCRIPTION_MAX:
            raise ValueError(f"description longer than {t.DESCRIPTION_MAX} characters")
        return StaticVtep(
            check_vni(self.vni), _vtep(self.address), self.hold_time, self.description
        )


NodeOp = Registration | Refresh | Withdrawal


class Batch:
    """Writes collected for one transaction (see `Store.apply`).

    Per node the last operation wins (a register or a withdrawal is the whole
    state of the node), except that a refresh never downgrades a pending
    register or withdrawal. Acks keep the highest generation per (node, VNI).
    Static operations are keyed by (VNI, address), last wins; `replace_static`
    discards the static operations queued before it.

    Applied in this order: static replace, static enrol/remove, withdrawals,
    registrations, refreshes, acks, expiry sweep.
    """

    __slots__ = ("acks", "node_ops", "static_ops", "static_replace", "sweep")

    def __init__(self) -> None:
        self.node_ops: dict[str, NodeOp] = {}
        self.acks: dict[tuple[str, int], int] = {}
        self.static_replace: list[StaticVtep] | None = None
        self.static_ops: dict[Key, StaticVtep | None] = {}  # None: remove
        self.sweep = False

    def __bool__(self) -> bool:
        return bool(self.node_ops or self.acks or self.static_ops or self.sweep) or (
            self.static_replace is not None
        )

    def __len__(self) -> int:
        replace = 0 if self.static_replace is None else 1
        return len(self.node_ops) + len(self.acks) + len(self.static_ops) + replace

    def register(self, registration: Registration) -> None:
        reg = registration.canonical()
        self.node_ops[reg.node_id] = reg

    def refresh(self, node_id: str, expires_at: float) -> None:
        if not isinstance(self.node_ops.get(node_id), Registration | Withdrawal):
            self.node_ops[_node_id(node_id)] = Refresh(node_id, float(expires_at))

    def withdraw(self, node_id: str) -> None:
        self.node_ops[_node_id(node_id)] = Withdrawal(node_id)

    def ack(self, node_id: str, vni: int, generation: int) -> None:
        key = (_node_id(node_id), check_vni(vni))
        self.acks[key] = max(generation, self.acks.get(key, generation))

    def enrol_static(self, vtep: StaticVtep) -> None:
        vtep = vtep.canonical()
        self.static_ops[(vtep.vni, vtep.address)] = vtep

    def remove_static(self, vni: int, address: str) -> None:
        self.static_ops[(check_vni(vni), _vtep(address))] = None

    def replace_static(self, vteps: Iterable[StaticVtep]) -> None:
        """After this batch the static VTEPs are exactly `vteps` (plus later ops)."""
        self.static_replace = [v.canonical() for v in vteps]
        self.static_ops.clear()

    def expire(self) -> None:
        """Also sweep: members with expires_at <= now, nodes whose hold time passed."""
        self.sweep = True


@dataclass(frozen=True, slots=True)
class VniChange:
    """A VNI whose membership changed in a batch: its new generation and net change."""

    vni: int
    generation: int
    added: frozenset[str]
    removed: frozenset[str]


@dataclass(frozen=True, slots=True)
class BatchResult:
    changed: Mapping[int, VniChange]  # VNI -> change; each bumped exactly once
    registered: frozenset[str]  # new nodes and new incarnations (agent restarts)
    withdrawn: frozenset[str]  # withdrawals and hold_time 0 registrations of known nodes
    expired: frozenset[str]  # nodes removed by the sweep
    unknown: frozenset[str]  # refreshed or acked node ids that are not registered
    missing_static: frozenset[Key]  # remove_static for entries that are not static members

    @property
    def generations(self) -> dict[int, int]:
        return {vni: c.generation for vni, c in self.changed.items()}


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


# --------------------------------------------------------------------------- helpers


def _chunks(items: Iterable[_T], size: int = _CHUNK) -> Iterator[list[_T]]:
    chunk: list[_T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _address_order(address: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(address)
    return ip.version, ip.packed


class _Net:
    """Net membership change per VNI within one batch (add then del cancels)."""

    def __init__(self) -> None:
        self.ops: dict[int, dict[str, str]] = {}

    def add(self, vni: int, address: str) -> None:
        ops = self.ops.setdefault(vni, {})
        if ops.get(address) == t.OP_DEL:
            del ops[address]
        else:
            ops[address] = t.OP_ADD

    def remove(self, vni: int, address: str) -> None:
        ops = self.ops.setdefault(vni, {})
        if ops.get(address) == t.OP_ADD:
            del ops[address]
        else:
            ops[address] = t.OP_DEL


# Prepared statements (bind names differ from column names, as executemany needs).
_m, _n, _nv, _v, _c = t.members, t.nodes, t.node_vnis, t.vnis, t.changes

_REFRESH_NODE = (
    update(_n)
    .where(_n.c.node_id == bindparam("b_node"))
    .values(last_seen=bindparam("b_now"), expires_at=bindparam("b_exp"))
)
_TAKE_OVER = (
    update(_m)
    .where(and_(_m.c.vni == bindparam("b_vni"), _m.c.address == bindparam("b_addr")))
    .values(
        origin=t.ORIGIN_REGISTERED,
        node_id=bindparam("b_node"),
        expires_at=None,
        description=None,
    )
)
_MAKE_STATIC = (
    update(_m)
    .where(and_(_m.c.vni == bindparam("b_vni"), _m.c.address == bindparam("b_addr")))
    .values(
        origin=t.ORIGIN_STATIC,
        node_id=None,
        expires_at=bindparam("b_exp"),
        description=bindparam("b_desc"),
    )
)
_DELETE_MEMBER = delete(_m).where(
    and_(_m.c.vni == bindparam("b_vni"), _m.c.address == bindparam("b_addr"))
)
_DELETE_CLAIM = delete(_nv).where(
    and_(_nv.c.node_id == bindparam("b_node"), _nv.c.vni == bindparam("b_vni"))
)
_UPDATE_CLAIM = (
    update(_nv)
    .where(and_(_nv.c.node_id == bindparam("b_node"), _nv.c.vni == bindparam("b_vni")))
    .values(local_address=bindparam("b_addr"), applied_generation=bindparam("b_gen"))
)
_ACK = (
    update(_nv)
    .where(
        and_(
            _nv.c.node_id == bindparam("b_node"),
            _nv.c.vni == bindparam("b_vni"),
            _nv.c.applied_generation < bindparam("b_gen"),
        )
    )
    .values(applied_generation=bindparam("b_gen"))
)
_UPDATE_NODE = (
    update(_n)
    .where(_n.c.node_id == bindparam("b_node"))
    .values(
        incarnation=bindparam("b_inc"),
        address=bindparam("b_addr"),
        port=bindparam("b_port"),
        hold_time=bindparam("b_hold"),
        last_seen=bindparam("b_now"),
        expires_at=bindparam("b_exp"),
        registered_at=bindparam("b_reg"),
    )
)
# One statement for any number of refreshes (arrays are single parameters).
_PG_REFRESH = text(
    "UPDATE nodes SET last_seen = :now, expires_at = v.exp"
    " FROM unnest(CAST(:ids AS VARCHAR[]), CAST(:exps AS DOUBLE PRECISION[])) AS v(id, exp)"
    " WHERE nodes.node_id = v.id RETURNING nodes.node_id"
)
_ARRAY_CHUNK: Final = 10_000  # rows per array parameter
_INSERT_MEMBER = insert(_m)
_INSERT_NODE = insert(_n)
_INSERT_CLAIM = insert(_nv)
_INSERT_CHANGE = insert(_c)
_INSERT_VNI = insert(_v)
_TRIM = delete(_c).where(
    and_(_c.c.vni == bindparam("b_vni"), _c.c.generation <= bindparam("b_cut"))
)


# --------------------------------------------------------------------------- one batch


_Compiled = tuple[str, tuple[str, ...], dict[str, Any]]  # SQL, parameter order, literals
_COMPILED: dict[tuple[UpdateBase, str, tuple[str, ...]], _Compiled] = {}


class _Apply:
    """The work of one `Store.apply` call on one connection inside one transaction."""

    def __init__(self, conn: AsyncConnection, now: float, log_depth: int) -> None:
        self.conn = conn
        self.now = now
        self.log_depth = log_depth
        self.net = _Net()
        self.known_vnis: set[int] = set()
        self.registered: set[str] = set()
        self.withdrawn: set[str] = set()
        self.expired: set[str] = set()
        self.unknown: set[str] = set()
        self.missing_static: set[Key] = set()

    async def many(self, stmt: UpdateBase, rows: Sequence[Mapping[str, Any]]) -> int:
        """executemany of a Core statement, handed straight to the DB-API driver.

        Returns the driver's row count (-1 when it does not know, e.g. asyncpg).

        SQLAlchemy's per-row parameter processing costs more than the database
        work for the bulk writes of a batch (tens of thousands of rows), so the
        statement is compiled once per dialect and key set, and the rows go to
        the driver as tuples. Safe here because none of the registry's column
        types (Integer, BigInteger, Float, String) has a bind processor.
        """
        if not rows:
            return 0
        keys = tuple(rows[0])
        cache_key = (stmt, self.conn.dialect.name, keys)
        compiled = _COMPILED.get(cache_key)
        if compiled is None:
            c = stmt.compile(dialect=self.conn.dialect, column_keys=list(keys))
            literals = dict(c.construct_params(params=dict(rows[0])))
            order = tuple(c.positiontup or ())
            compiled = (c.string, order, literals)
            _COMPILED[cache_key] = compiled
        sql, order, literals = compiled
        if keys == order:
            params: list[tuple[Any, ...]] = [tuple(row.values()) for row in rows]
        else:
            params = [tuple(row[k] if k in row else literals[k] for k in order) for row in rows]
        result = await self.conn.exec_driver_sql(sql, params)
        return int(result.rowcount)

    async def ensure_vnis(self, vnis: Iterable[int]) -> None:
        wanted = set(vnis) - self.known_vnis
        if not wanted:
            return
        for chunk in _chunks(sorted(wanted)):
            rows = await self.conn.execute(select(_v.c.vni).where(_v.c.vni.in_(chunk)))
            self.known_vnis.update(r.vni for r in rows)
        missing = wanted - self.known_vnis
        await self.many(
            _INSERT_VNI, [{"vni": v, "generation": 0, "updated_at": self.now} for v in missing]
        )
        self.known_vnis |= missing

    async def members_at(self, keys: Iterable[Key]) -> dict[Key, tuple[str, str | None]]:
        """(origin, node_id) of the members present at `keys`."""
        found: dict[Key, tuple[str, str | None]] = {}
        keys = set(keys)
        if len(keys) > _CHUNK:  # many keys: one scan of their VNIs beats huge IN lists
            vnis = sorted({v for v, _ in keys})
            for chunk_v in _chunks(vnis):
                rows = await self.conn.execute(
                    select(_m.c.vni, _m.c.address, _m.c.origin, _m.c.node_id).where(
                        _m.c.vni.in_(chunk_v)
                    )
                )
                for r in rows:
                    if (r.vni, r.address) in keys:
                        found[(r.vni, r.address)] = (r.origin, r.node_id)
            return found
        for chunk in _chunks(sorted(keys)):
            rows = await self.conn.execute(
                select(_m.c.vni, _m.c.address, _m.c.origin, _m.c.node_id).where(
                    tuple_(_m.c.vni, _m.c.address).in_(chunk)
                )
            )
            for r in rows:
                found[(r.vni, r.address)] = (r.origin, r.node_id)
        return found

    async def owned_by(self, node_ids: Iterable[str]) -> dict[str, set[Key]]:
        owned: dict[str, set[Key]] = {}
        for chunk in _chunks(sorted(set(node_ids))):
            rows = await self.conn.execute(
                select(_m.c.node_id, _m.c.vni, _m.c.address).where(_m.c.node_id.in_(chunk))
            )
            for r in rows:
                owned.setdefault(r.node_id, set()).add((r.vni, r.address))
        return owned

    async def existing_nodes(self, node_ids: Iterable[str]) -> dict[str, tuple[int, float]]:
        """node_id -> (incarnation, registered_at) of the nodes that exist."""
        found: dict[str, tuple[int, float]] = {}
        for chunk in _chunks(sorted(set(node_ids))):
            rows = await self.conn.execute(
                select(_n.c.node_id, _n.c.incarnation, _n.c.registered_at).where(
                    _n.c.node_id.in_(chunk)
                )
            )
            for r in rows:
                found[r.node_id] = (r.incarnation, r.registered_at)
        return found

    async def node_state(
        self, node_ids: Iterable[str], vnis: Iterable[int]
    ) -> tuple[dict[str, tuple[int, float]], dict[str, dict[int, tuple[str, int]]]]:
        """What a registration needs to know before writing, in as few queries as fit.

        Returns node_id -> (incarnation, registered_at) of the nodes that exist,
        and node_id -> {VNI: (local_address, applied_generation)} of their
        claims; also records in `known_vnis` which of `vnis` have a row. One
        query (a UNION ALL) when the ids and the VNIs each fit one IN list.
        """
        by_node = select(
            _n.c.node_id,
            _n.c.incarnation,
            _n.c.registered_at,
            _nv.c.vni,
            _nv.c.local_address,
            _nv.c.applied_generation,
        ).select_from(_n.outerjoin(_nv, _nv.c.node_id == _n.c.node_id))
        by_vni = select(
            cast(null(), _n.c.node_id.type),
            cast(null(), _n.c.incarnation.type),
            cast(null(), _n.c.registered_at.type),
            _v.c.vni,
            cast(null(), _nv.c.local_address.type),
            cast(null(), _nv.c.applied_generation.type),
        )
        queries: list[Any] = [
            by_node.where(_n.c.node_id.in_(c)) for c in _chunks(sorted(set(node_ids)))
        ]
        queries += [
            by_vni.where(_v.c.vni.in_(c)) for c in _chunks(sorted(set(vnis) - self.known_vnis))
        ]
        if len(queries) == 2:
            queries = [union_all(*queries)]
        nodes: dict[str, tuple[int, float]] = {}
        claims: dict[str, dict[int, tuple[str, int]]] = {}
        for query in queries:
            for (
                node_id,
                incarnation,
                registered_at,
                vni,
                address,
                applied,
            ) in await self.conn.execute(query):
                if vni is not None:
                    self.known_vnis.add(vni)  # a claim's VNI has a row (foreign key)
                if node_id is None:
                    continue
                nodes[node_id] = (incarnation, registered_at)
                if vni is not None:
                    claims.setdefault(node_id, {})[vni] = (address, applied)
        return nodes, claims

    async def add_vnis(self, vnis: Iterable[int]) -> None:
        """Insert the VNIs that are not in `known_vnis` (call after `node_state`)."""
        missing = set(vnis) - self.known_vnis
        await self.many(
            _INSERT_VNI,
            [{"vni": v, "generation": 0, "updated_at": self.now} for v in sorted(missing)],
        )
        self.known_vnis |= missing

    async def owned_and_present(
        self, node_ids: Iterable[str], keys: Iterable[Key]
    ) -> tuple[dict[str, set[Key]], dict[Key, tuple[str, str | None]]]:
        """Members owned by `node_ids`, and (origin, node_id) of the members at `keys`.

        One query (a UNION ALL) for small batches; otherwise `owned_by` and `members_at`.
        """
        node_ids, keys = sorted(set(node_ids)), set(keys)
        if len(node_ids) > _CHUNK or len(keys) > _CHUNK:
            return await self.owned_by(node_ids), await self.members_at(keys)
        cols = (_m.c.vni, _m.c.address, _m.c.origin, _m.c.node_id)
        queries: list[Any] = []
        if node_ids:
            queries.append(select(*cols).where(_m.c.node_id.in_(node_ids)))
        if keys:
            queries.append(select(*cols).where(tuple_(_m.c.vni, _m.c.address).in_(sorted(keys))))
        owned: dict[str, set[Key]] = {}
        present: dict[Key, tuple[str, str | None]] = {}
        wanted_ids = set(node_ids)
        if not queries:
            return owned, present
        query: Any = queries[0] if len(queries) == 1 else union_all(*queries)
        for vni, address, origin, node_id in await self.conn.execute(query):
            if node_id is not None and node_id in wanted_ids:
                owned.setdefault(node_id, set()).add((vni, address))
            if (vni, address) in keys:
                present[(vni, address)] = (origin, node_id)
        return owned, present

    async def release(self, keys: set[Key]) -> None:
        """Members at `keys` lose their owner: hand over to a live claimant or delete."""
        if not keys:
            return
        heir: dict[Key, str] = {}
        for chunk in _chunks(sorted(keys)):
            rows = await self.conn.execute(
                select(_nv.c.vni, _nv.c.local_address, _n.c.node_id)
                .join(_n, _n.c.node_id == _nv.c.node_id)
                .where(
                    tuple_(_nv.c.vni, _nv.c.local_address).in_(chunk),
                    _n.c.expires_at > self.now,
                )
                .order_by(_n.c.last_seen, _n.c.node_id)
            )
            for r in rows:  # the most recently seen claimant wins
                heir[(r.vni, r.local_address)] = r.node_id
        await self.many(
            _TAKE_OVER,
            [{"b_vni": v, "b_addr": a, "b_node": node} for (v, a), node in sorted(heir.items())],
        )
        gone = sorted(keys - heir.keys())
        await self.many(_DELETE_MEMBER, [{"b_vni": v, "b_addr": a} for v, a in gone])
        for v, a in gone:
            self.net.remove(v, a)

    # ---- static

    async def static(self, batch: Batch) -> None:
        enrol: dict[Key, StaticVtep] = {}
        if batch.static_replace is not None:
            enrol = {(s.vni, s.address): s for s in batch.static_replace}
            rows = await self.conn.execute(
                select(_m.c.vni, _m.c.address).where(_m.c.origin == t.ORIGIN_STATIC)
            )
            await self.release({(r.vni, r.address) for r in rows} - enrol.keys())
        removals: set[Key] = set()
        for key, op in batch.static_ops.items():
            if op is None:
                enrol.pop(key, None)
                removals.add(key)
            else:
                enrol[key] = op
        if removals:
            present = await self.members_at(removals)
            static = {k for k in removals if present.get(k, ("", None))[0] == t.ORIGIN_STATIC}
            self.missing_static |= removals - static
            await self.release(static)
        if not enrol:
            return
        await self.ensure_vnis(v for v, _ in enrol)
        present = await self.members_at(enrol)
        new, old = [], []
        for (vni, addr), s in sorted(enrol.items()):
            exp = None if s.hold_time is None else self.now + s.hold_time
            if (vni, addr) in present:
                old.append({"b_vni": vni, "b_addr": addr, "b_exp": exp, "b_desc": s.description})
            else:
                self.net.add(vni, addr)
                new.append(
                    {
                        "vni": vni,
                        "address": addr,
                        "origin": t.ORIGIN_STATIC,
                        "node_id": None,
                        "expires_at": exp,
                        "description": s.description,
                        "created_at": self.now,
                    }
                )
        await self.many(_INSERT_MEMBER, new)
        await self.many(_MAKE_STATIC, old)

    # ---- nodes

    async def remove_nodes(self, node_ids: set[str]) -> set[str]:
        """Withdraw nodes: claims, then members (handed over or deleted), then the row."""
        existing: set[str] = set()
        owned: set[Key] = set()
        for chunk in _chunks(sorted(node_ids)):  # the nodes that exist and what they own
            rows = await self.conn.execute(
                select(_n.c.node_id, _m.c.vni, _m.c.address)
                .select_from(_n.outerjoin(_m, _m.c.node_id == _n.c.node_id))
                .where(_n.c.node_id.in_(chunk))
            )
            for r in rows:
                existing.add(r.node_id)
                if r.vni is not None:
                    owned.add((r.vni, r.address))
        if not existing:
            return existing
        ordered = sorted(existing)
        for chunk in _chunks(ordered):
            await self.conn.execute(delete(_nv).where(_nv.c.node_id.in_(chunk)))
        await self.release(owned)
        for chunk in _chunks(ordered):
            await self.conn.execute(delete(_n).where(_n.c.node_id.in_(chunk)))
        return existing

    async def register(self, regs: Mapping[str, Registration]) -> None:
        if not regs:
            return
        now = self.now
        ids = sorted(regs)
        all_vnis = {v for r in regs.values() for v in r.vnis}
        nodes, claims = await self.node_state(ids, all_vnis)
        await self.add_vnis(all_vnis)
        desired_keys = {(v, a) for r in regs.values() for v, a in r.vnis.items()}
        owned, present = await self.owned_and_present(ids, desired_keys)

        # nodes
        node_rows, update_rows = [], []
        for nid in ids:
            r = regs[nid]
            exp = now + r.hold_time
            if nid not in nodes:
                self.registered.add(nid)
                node_rows.append(
                    {
                        "node_id": nid,
                        "incarnation": r.incarnation,
                        "address": r.address,
                        "port": r.port,
                        "hold_time": r.hold_time,
                        "last_seen": now,
                        "expires_at": exp,
                        "registered_at": now,
                    }
                )
                continue
            incarnation, registered_at = nodes[nid]
            if incarnation != r.incarnation:
                self.registered.add(nid)
                registered_at = now
            update_rows.append(
                {
                    "b_node": nid,
                    "b_inc": r.incarnation,
                    "b_addr": r.address,
                    "b_port": r.port,
                    "b_hold": r.hold_time,
                    "b_now": now,
                    "b_exp": exp,
                    "b_reg": registered_at,
                }
            )
        await self.many(_INSERT_NODE, node_rows)
        await self.many(_UPDATE_NODE, update_rows)

        # claims
        drop, add, change = [], [], []
        for nid in ids:
            r, old = regs[nid], claims.get(nid, {})
            for vni in old.keys() - r.vnis.keys():
                drop.append({"b_node": nid, "b_vni": vni})
            for vni, addr in r.vnis.items():
                applied = r.applied.get(vni)
                if vni not in old:
                    add.append(
                        {
                            "node_id": nid,
                            "vni": vni,
                            "local_address": addr,
                            "applied_generation": applied or 0,
                        }
                    )
                    continue
                old_addr, old_applied = old[vni]
                applied = old_applied if applied is None else applied
                if (old_addr, old_applied) != (addr, applied):
                    change.append({"b_node": nid, "b_vni": vni, "b_addr": addr, "b_gen": applied})
        await self.many(_DELETE_CLAIM, drop)
        await self.many(_INSERT_CLAIM, add)
        await self.many(_UPDATE_CLAIM, change)

        # members: release what is no longer claimed, then acquire what is new
        # (`present` was read before: releasing never touches a wanted key)
        lost: set[Key] = set()
        wanted: dict[Key, str] = {}
        for nid in ids:
            desired = set(regs[nid].vnis.items())
            mine = owned.get(nid, set())
            lost |= mine - desired
            for key in desired - mine:
                wanted[key] = nid  # last registration in the batch wins
        lost -= wanted.keys()  # taken over by another node of this batch
        await self.release(lost)
        if not wanted:
            return
        new, takeover = [], []
        for (vni, addr), nid in sorted(wanted.items()):
            origin, _owner = present.get((vni, addr), (None, None))
            if origin is None:
                self.net.add(vni, addr)
                new.append(
                    {
                        "vni": vni,
                        "address": addr,
                        "origin": t.ORIGIN_REGISTERED,
                        "node_id": nid,
                        "expires_at": None,  # registered members expire with their node
                        "description": None,
                        "created_at": now,
                    }
                )
            elif origin == t.ORIGIN_REGISTERED:
                takeover.append({"b_vni": vni, "b_addr": addr, "b_node": nid})
            # a static entry is never overwritten by a registration
        await self.many(_INSERT_MEMBER, new)
        await self.many(_TAKE_OVER, takeover)

    async def refresh(self, refreshes: Sequence[Refresh]) -> None:
        """Extend the expiry of known nodes; ids that are not registered go to `unknown`.

        No lookup first: PostgreSQL's UPDATE ... RETURNING names the nodes it
        found; on SQLite the row count of the executemany tells whether every
        node was found, and only when not are the missing ones looked up.
        """
        if not refreshes:
            return
        ids = [r.node_id for r in refreshes]
        if self.conn.dialect.name == "postgresql":
            found: set[str] = set()
            for chunk in _chunks(refreshes, _ARRAY_CHUNK):
                rows = await self.conn.execute(
                    _PG_REFRESH,
                    {
                        "now": self.now,
                        "ids": [r.node_id for r in chunk],
                        "exps": [r.expires_at for r in chunk],
                    },
                )
                found.update(r.node_id for r in rows)
            self.unknown.update(set(ids) - found)
            return
        count = await self.many(
            _REFRESH_NODE,
            [{"b_node": r.node_id, "b_now": self.now, "b_exp": r.expires_at} for r in refreshes],
        )
        if count != len(set(ids)):
            self.unknown.update(set(ids) - (await self.existing_nodes(ids)).keys())

    async def acks(self, acks: Mapping[tuple[str, int], int]) -> None:
        if not acks:
            return
        known = await self.existing_nodes(node for node, _ in acks)
        self.unknown |= {node for node, _ in acks} - known.keys()
        await self.many(
            _ACK,
            [
                {"b_node": node, "b_vni": vni, "b_gen": gen}
                for (node, vni), gen in sorted(acks.items())
                if node in known
            ],
        )

    async def sweep(self) -> None:
        rows = await self.conn.execute(select(_n.c.node_id).where(_n.c.expires_at <= self.now))
        self.expired = await self.remove_nodes({r.node_id for r in rows})
        rows = await self.conn.execute(  # static entries enrolled with a hold time
            select(_m.c.vni, _m.c.address).where(
                _m.c.expires_at.is_not(None), _m.c.expires_at <= self.now
            )
        )
        await self.release({(r.vni, r.address) for r in rows})

    # ---- generations

    async def bump(self) -> dict[int, VniChange]:
        changed = {vni: ops for vni, ops in self.net.ops.items() if ops}
        if not changed:
            return {}
        generation: dict[int, int] = {}
        for chunk in _chunks(sorted(changed)):  # bump and read back in one statement
            rows = await self.conn.execute(
                update(_v)
                .where(_v.c.vni.in_(chunk))
                .values(generation=_v.c.generation + 1, updated_at=self.now)
                .returning(_v.c.vni, _v.c.generation)
            )
            generation.update((r.vni, r.generation) for r in rows)
        result: dict[int, VniChange] = {}
        log: list[dict[str, Any]] = []
        for vni, ops in sorted(changed.items()):
            gen = generation[vni]
            log.extend(
                {"vni": vni, "generation": gen, "address": a, "op": op}
                for a, op in sorted(ops.items())
            )
            result[vni] = VniChange(
                vni,
                gen,
                frozenset(a for a, op in ops.items() if op == t.OP_ADD),
                frozenset(a for a, op in ops.items() if op == t.OP_DEL),
            )
        await self.many(_INSERT_CHANGE, log)
        await self.many(
            _TRIM,
            [
                {"b_vni": v, "b_cut": c.generation - self.log_depth}
                for v, c in result.items()
                if c.generation > self.log_depth
            ],
        )
        return result


# --------------------------------------------------------------------------- the store


class Store:
    """The registry. Create with `await Store.open(url)`; `await store.close()` at the end."""

    def __init__(self, engine: AsyncEngine, registry_id: str, log_depth: int) -> None:
        self._engine = engine
        self._log_depth = log_depth
        self._lock = asyncio.Lock()  # one writer per process; PostgreSQL adds a lock across
        self._postgres = engine.dialect.name == "postgresql"
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
        engine = _make_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_check_schema, url, create)
            async with engine.begin() as conn:
                registry_id = await cls._registry_id(conn)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine, registry_id, log_depth)

    @staticmethod
    async def _registry_id(conn: AsyncConnection) -> str:
        query = select(t.meta.c.value).where(t.meta.c.key == "registry_id")
        found = (await conn.execute(query)).scalar_one_or_none()
        if found is not None:
            return str(found)
        if conn.dialect.name == "postgresql":  # another instance may create it concurrently
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            found = (await conn.execute(query)).scalar_one_or_none()
            if found is not None:
                return str(found)
        registry_id = secrets.token_hex(16)
        await conn.execute(insert(t.meta).values(key="registry_id", value=registry_id))
        return registry_id

    async def close(self) -> None:
        await self._engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    @property
    def log_depth(self) -> int:
        return self._log_depth

    # ---- writes

    async def apply(self, batch: Batch, now: float) -> BatchResult:
        """Apply `batch` in one transaction; see `Batch` for the order of operations."""
        async with self._lock, self._engine.begin() as conn:
            if self._postgres:
                await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            work = _Apply(conn, now, self._log_depth)
            await work.static(batch)
            regs: dict[str, Registration] = {}
            leaving: set[str] = set()
            refreshes: list[Refresh] = []
            for node_id, op in batch.node_ops.items():
                if isinstance(op, Withdrawal) or (
                    isinstance(op, Registration) and op.hold_time <= 0
                ):
                    leaving.add(node_id)
                elif isinstance(op, Registration):
                    regs[node_id] = op
                else:
                    refreshes.append(op)
            work.withdrawn = await work.remove_nodes(leaving)
            await work.register(regs)
            await work.refresh(refreshes)
            await work.acks(batch.acks)
            if batch.sweep:
                await work.sweep()
            changed = await work.bump()
        return BatchResult(
            changed=changed,
            registered=frozenset(work.registered),
            withdrawn=frozenset(work.withdrawn),
            expired=frozenset(work.expired),
            unknown=frozenset(work.unknown),
            missing_static=frozenset(work.missing_static),
        )

    # ---- reads

    async def generations(self, vnis: Iterable[int] | None = None) -> dict[int, int]:
        """Current generation of the given (default: all) VNIs; unknown VNIs are left out."""
        query = select(_v.c.vni, _v.c.generation)
        async with self._engine.connect() as conn:
            if vnis is None:
                return {r.vni: r.generation for r in await conn.execute(query)}
            found: dict[int, int] = {}
            for chunk in _chunks(sorted(set(vnis))):
                rows = await conn.execute(query.where(_v.c.vni.in_(chunk)))
                found.update((r.vni, r.generation) for r in rows)
            return found

    async def members(self, vni: int) -> tuple[int, list[Member]]:
        """(generation, members in address order); (0, []) for an unknown VNI.

        A registered member's `expires_at` is its node's.
        """
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
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
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

    async def member_addresses(self, vni: int) -> tuple[int, frozenset[str]]:
        """(generation, canonical addresses): what a snapshot push carries."""
        query = (
            select(_v.c.generation, _m.c.address)
            .select_from(_v.outerjoin(_m, _m.c.vni == _v.c.vni))
            .where(_v.c.vni == vni)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        if not rows:
            return 0, frozenset()
        return rows[0].generation, frozenset(r.address for r in rows if r.address is not None)

    async def delta(self, vni: int, base: int) -> Delta | None:
        """Adds/removes from generation `base` to now, or None when the log cannot tell.

        None when `base` is ahead of the current generation, negative, or older
        than the change log reaches; `base` == current gives an empty delta.
        """
        query = (
            select(_v.c.generation.label("current"), _c.c.generation, _c.c.address, _c.c.op)
            .select_from(_v.outerjoin(_c, and_(_c.c.vni == _v.c.vni, _c.c.generation > base)))
            .where(_v.c.vni == vni)
            .order_by(_c.c.generation)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
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

    async def vnis(self) -> list[VniSummary]:
        """Every VNI the registry knows (including ones whose last member left)."""
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
        async with self._engine.connect() as conn:
            rows = await conn.execute(query)
            return [
                VniSummary(r.vni, r.generation, r.members or 0, int(r.static or 0), r.updated_at)
                for r in rows
            ]

    @staticmethod
    def _node(r: Any) -> Node:
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

    async def nodes(self) -> list[Node]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(_n).order_by(_n.c.node_id))
            return [self._node(r) for r in rows]

    async def node(self, node_id: str) -> Node | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(_n).where(_n.c.node_id == node_id))).first()
        return None if row is None else self._node(row)

    async def node_vnis(self, node_id: str) -> list[NodeVni]:
        """The VNIs a node claims, with what it applied and the VNI's current generation."""
        query = (
            select(_nv, _v.c.generation)
            .join(_v, _v.c.vni == _nv.c.vni)
            .where(_nv.c.node_id == node_id)
            .order_by(_nv.c.vni)
        )
        async with self._engine.connect() as conn:
            rows = await conn.execute(query)
            return [
                NodeVni(r.node_id, r.vni, r.local_address, r.applied_generation, r.generation)
                for r in rows
            ]

    async def lagging(self, vnis: Iterable[int] | None = None) -> list[Lagging]:
        """Nodes whose applied generation is behind, in the given (default: all) VNIs."""
        query = (
            select(
                _n.c.node_id,
                _n.c.address,
                _n.c.port,
                _nv.c.vni,
                _nv.c.applied_generation,
                _v.c.generation,
            )
            .select_from(
                _nv.join(_n, _n.c.node_id == _nv.c.node_id).join(_v, _v.c.vni == _nv.c.vni)
            )
            .where(_nv.c.applied_generation < _v.c.generation)
            .order_by(_nv.c.vni, _n.c.node_id)
        )
        found: list[Lagging] = []
        async with self._engine.connect() as conn:
            chunks: Iterable[list[int] | None] = (
                [None] if vnis is None else _chunks(sorted(set(vnis)))
            )
            for chunk in chunks:
                q = query if chunk is None else query.where(_nv.c.vni.in_(chunk))
                found.extend(
                    Lagging(r.node_id, r.address, r.port, r.vni, r.applied_generation, r.generation)
                    for r in await conn.execute(q)
                )
        return found

    async def health(self) -> bool:
        """True when the database answers `SELECT 1`."""
        try:
            async with self._engine.connect() as conn:
                return bool((await conn.execute(select(1))).scalar_one() == 1)
        except Exception:
            return False
