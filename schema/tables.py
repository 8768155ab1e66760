"""SQL tables of the service node's registry (what migrations/ targets).

Only `vxsnd.registry` issues SQL against these tables; other modules see the
records that the registry returns. Every schema change goes through an Alembic
revision in migrations/versions/ and `alembic check` must stay clean.

All times are float epoch seconds. Addresses are canonical text
(`str(ipaddress.ip_address(x))`, i.e. the compressed form).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    text,
)

from vxflood.schema.limits import (
    ADDRESS_MAX,
    DESCRIPTION_MAX,
    NODE_ID_MAX,
    OP_ADD,
    OP_DEL,
    ORIGIN_REGISTERED,
    ORIGIN_STATIC,
)

__all__ = [
    "ADDRESS_MAX",
    "DESCRIPTION_MAX",
    "NODE_ID_MAX",
    "OP_ADD",
    "OP_DEL",
    "ORIGIN_REGISTERED",
    "ORIGIN_STATIC",
    "VNI_MAX",
    "VNI_MIN",
    "changes",
    "members",
    "meta",
    "metadata",
    "node_vnis",
    "nodes",
    "vnis",
]

# Constraint names are deterministic so that migrations can address them on
# every backend (and SQLite batch mode can recreate tables faithfully).
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

VNI_MIN = 1
VNI_MAX = 16_777_215

# Registry-wide key/value facts, e.g. `registry_id`.
meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
)

# One row per VNI ever seen. Rows are kept when the last member leaves so that
# the generation never goes backwards.
vnis = Table(
    "vnis",
    metadata,
    Column("vni", Integer, primary_key=True, autoincrement=False),
    Column("generation", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),
    CheckConstraint(f"vni >= {VNI_MIN} AND vni <= {VNI_MAX}", name="vni_range"),
    CheckConstraint("generation >= 0", name="generation_nonneg"),
)

# Agents (vxrd) that registered, and where to push to.
nodes = Table(
    "nodes",
    metadata,
    Column("node_id", String(NODE_ID_MAX), primary_key=True),
    # Random per agent process start; stored as signed 64-bit (two's complement).
    Column("incarnation", BigInteger, nullable=False),
    Column("address", String(ADDRESS_MAX), nullable=False),
    Column("port", Integer, nullable=False),
    Column("hold_time", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("registered_at", Float, nullable=False),
    # The envelope of the last register round accepted from this incarnation
    # (sequence number, sender's timestamp in ms): a restarted vxsnd refuses a
    # replay of anything earlier (schema.replay.ReplayGuard.remember).
    Column("last_seq", BigInteger, nullable=False, server_default=text("0")),
    Column("last_sent_ms", BigInteger, nullable=False, server_default=text("0")),
    Index(None, "expires_at"),
)

# The effective flood list: one row per (VNI, VTEP address).
members = Table(
    "members",
    metadata,
    Column("vni", Integer, ForeignKey("vnis.vni"), primary_key=True),
    Column("address", String(ADDRESS_MAX), primary_key=True),
    Column("origin", String(16), nullable=False),
    Column("node_id", String(NODE_ID_MAX), ForeignKey("nodes.node_id"), nullable=True),
    Column("expires_at", Float, nullable=True),  # NULL: never, or with its node
    Column("description", String(DESCRIPTION_MAX), nullable=True),
    Column("created_at", Float, nullable=False),
    CheckConstraint(
        f"origin IN ('{ORIGIN_REGISTERED}', '{ORIGIN_STATIC}')",
        name="origin",
    ),
    # Static entries belong to no agent; registered ones always to one.
    CheckConstraint(
        f"(origin = '{ORIGIN_STATIC}' AND node_id IS NULL)"
        f" OR (origin = '{ORIGIN_REGISTERED}' AND node_id IS NOT NULL)",
        name="owner",
    ),
    Index(None, "node_id"),
    # Only static entries enrolled with a hold time expire on their own
    # (registered members expire with their node), so the index stays small.
    Index(
        None,
        "expires_at",
        sqlite_where=text("expires_at IS NOT NULL"),
        postgresql_where=text("expires_at IS NOT NULL"),
    ),
)

# Short per-VNI change log from which deltas are built. A generation's rows are
# the net adds/removes of the batch that produced it.
changes = Table(
    "changes",
    metadata,
    Column("vni", Integer, ForeignKey("vnis.vni"), primary_key=True),
    Column("generation", BigInteger, primary_key=True, autoincrement=False),
    Column("address", String(ADDRESS_MAX), primary_key=True),
    Column("op", String(3), nullable=False),
    CheckConstraint(f"op IN ('{OP_ADD}', '{OP_DEL}')", name="op"),
)

# What each agent claims (its full VNI list) and what it has applied.
node_vnis = Table(
    "node_vnis",
    metadata,
    Column(
        "node_id",
        String(NODE_ID_MAX),
        ForeignKey("nodes.node_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("vni", Integer, ForeignKey("vnis.vni"), primary_key=True),
    Column("local_address", String(ADDRESS_MAX), nullable=False),
    Column("applied_generation", BigInteger, nullable=False),
    Index(None, "vni", "local_address"),
)

# The vxsnd instances serving this registry: each writes its row at start and
# every heartbeat, so the status page can list the others (and when each was heard).
service_nodes = Table(
    "service_nodes",
    metadata,
    Column("server_id", String(NODE_ID_MAX), primary_key=True),
    Column("endpoints", String(255), nullable=False),  # its UDP listen addresses
    Column("version", String(32), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
)
