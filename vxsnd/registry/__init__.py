"""The service node's registry: the one package of vxflood that speaks SQL.

Modules, each named for what it holds:

    model      the write model: Batch and its operations, BatchResult, VniChange,
               and the expiry rule (no SQLAlchemy)
    records    what reads return: Member, Delta, Node, NodeVni, VniSummary, Lagging
    store      Store: open, apply(batch, now), reads, status, identity
    writer     apply_batch: one Batch in one transaction, generations and change log
    ownership  who owns a member: static entries, registrations, handing over
    lookups    what the writer reads before it writes
    statements the writer's prepared SQL and its executemany fast path
    reads      the read queries
    revisions  schema revisions: check, create, upgrade (one helper, serialised)
    runner     the transaction runner (SQLite thread, PostgreSQL asyncpg)
    health     usable or degraded, and why; identity changes
    errors     RegistryError and its kinds

Everything other modules use is importable from here.
"""

from __future__ import annotations

from vxsnd.registry.errors import (
    RegistryError,
    RegistryLost,
    RegistryMissing,
    RegistryUnreadable,
    SchemaError,
    SchemaOutdated,
    SchemaUnknown,
)
from vxsnd.registry.health import IdentityChange, IdentityListener, RegistryHealth
from vxsnd.registry.model import (
    Ack,
    Batch,
    BatchResult,
    Holder,
    Key,
    Refresh,
    Registration,
    StaticVtep,
    VniChange,
    Withdrawal,
    conflicts,
    expiry,
    is_expired,
)
from vxsnd.registry.presence import ServiceNode
from vxsnd.registry.records import (
    Change,
    Delta,
    Lagging,
    Member,
    Node,
    NodeVni,
    Origin,
    VniSummary,
)
from vxsnd.registry.revisions import current_revision, head_revision, upgrade_schema
from vxsnd.registry.runner import normalize_url, safe_url
from vxsnd.registry.store import DEFAULT_DB_PATH, DEFAULT_LOG_DEPTH, Store, default_db_url

__all__ = [
    "DEFAULT_DB_PATH",
    "DEFAULT_LOG_DEPTH",
    "Ack",
    "Batch",
    "BatchResult",
    "Change",
    "Delta",
    "Holder",
    "IdentityChange",
    "IdentityListener",
    "Key",
    "Lagging",
    "Member",
    "Node",
    "NodeVni",
    "Origin",
    "Refresh",
    "Registration",
    "RegistryError",
    "RegistryHealth",
    "RegistryLost",
    "RegistryMissing",
    "RegistryUnreadable",
    "SchemaError",
    "SchemaOutdated",
    "SchemaUnknown",
    "ServiceNode",
    "StaticVtep",
    "Store",
    "VniChange",
    "VniSummary",
    "Withdrawal",
    "conflicts",
    "current_revision",
    "default_db_url",
    "expiry",
    "head_revision",
    "is_expired",
    "normalize_url",
    "safe_url",
    "upgrade_schema",
]
