"""Which vxsnd instances serve this registry: each writes its own row at start and
on every heartbeat; the status page lists them with when each was last heard.

A row not written for `FORGET_AFTER` seconds is deleted by the next heartbeat of
any instance, so a renamed or retired service node leaves the list by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sqlalchemy import Connection, delete, select, update

from vxflood.schema import tables as t

FORGET_AFTER: Final = 24 * 3600.0
_s = t.service_nodes


@dataclass(frozen=True, slots=True)
class ServiceNode:
    server_id: str
    endpoints: str
    version: str
    started_at: float
    last_seen: float


def heartbeat(conn: Connection, me: ServiceNode) -> None:
    """Upsert this instance's row (portable: update, insert when there was none)."""
    values = {
        "endpoints": me.endpoints[:255],
        "version": me.version[:32],
        "started_at": me.started_at,
        "last_seen": me.last_seen,
    }
    done = conn.execute(update(_s).where(_s.c.server_id == me.server_id).values(**values))
    if done.rowcount == 0:
        conn.execute(_s.insert().values(server_id=me.server_id, **values))
    conn.execute(delete(_s).where(_s.c.last_seen < me.last_seen - FORGET_AFTER))


def service_nodes(conn: Connection) -> list[ServiceNode]:
    rows = conn.execute(select(_s).order_by(_s.c.server_id))
    return [
        ServiceNode(r.server_id, r.endpoints, r.version, r.started_at, r.last_seen) for r in rows
    ]
