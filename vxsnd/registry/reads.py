"""The registry's reads: plain functions over a Connection, each one query or a few.

Run through the transaction runner's `read` (a snapshot that rolls back).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, and_, case, func, select

from vxflood.schema import tables as t
from vxsnd.registry.records import (
    Change,
    Delta,
    Lagging,
    Member,
    Node,
    NodeVni,
    Origin,
    VniSummary,
    address_order,
)
from vxsnd.registry.runner import chunks

__all__ = [
    "change_log",
    "delta",
    "generations",
    "health",
    "lagging",
    "member_addresses",
    "members",
    "memberships",
    "node",
    "node_vnis",
    "nodes",
    "static_members",
    "vnis",
]

_m, _n, _nv, _v, _c = t.members, t.nodes, t.node_vnis, t.vnis, t.changes


def generations(conn: Connection, vnis: list[int] | None) -> dict[int, int]:
    query = select(_v.c.vni, _v.c.generation)
    if vnis is None:
        return {r.vni: r.generation for r in conn.execute(query)}
    found: dict[int, int] = {}
    for chunk in chunks(vnis):
        found.update((r.vni, r.generation) for r in conn.execute(query.where(_v.c.vni.in_(chunk))))
    return found


def members(conn: Connection, vni: int) -> tuple[int, list[Member]]:
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
    members.sort(key=lambda m: address_order(m.address))
    return rows[0].generation, members


def member_addresses(conn: Connection, vni: int) -> tuple[int, frozenset[str]]:
    query = (
        select(_v.c.generation, _m.c.address)
        .select_from(_v.outerjoin(_m, _m.c.vni == _v.c.vni))
        .where(_v.c.vni == vni)
    )
    rows = conn.execute(query).all()
    if not rows:
        return 0, frozenset()
    return rows[0].generation, frozenset(r.address for r in rows if r.address is not None)


def delta(conn: Connection, vni: int, base: int) -> Delta | None:
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


def vnis(conn: Connection) -> list[VniSummary]:
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
        last_seq=r.last_seq,
        last_sent_ms=r.last_sent_ms,
    )


def nodes(conn: Connection) -> list[Node]:
    return [_node_row(r) for r in conn.execute(select(_n).order_by(_n.c.node_id))]


def node(conn: Connection, node_id: str) -> Node | None:
    row = conn.execute(select(_n).where(_n.c.node_id == node_id)).first()
    return None if row is None else _node_row(row)


def node_vnis(conn: Connection, node_id: str) -> list[NodeVni]:
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


def lagging(conn: Connection, vnis: list[int] | None) -> list[Lagging]:
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


def health(conn: Connection) -> bool:
    return bool(conn.execute(select(1)).scalar_one() == 1)


def memberships(conn: Connection, vni: int | None) -> list[NodeVni]:
    query = select(_nv, _v.c.generation).join(_v, _v.c.vni == _nv.c.vni)
    if vni is not None:
        query = query.where(_nv.c.vni == vni)
    return [
        NodeVni(r.node_id, r.vni, r.local_address, r.applied_generation, r.generation)
        for r in conn.execute(query)
    ]


def static_members(conn: Connection) -> list[Member]:
    query = select(_m).where(_m.c.origin == t.ORIGIN_STATIC)
    return [
        Member(r.vni, r.address, Origin.STATIC, None, r.expires_at, r.description, r.created_at)
        for r in conn.execute(query)
    ]


def change_log(conn: Connection, vni: int, limit: int) -> list[Change]:
    query = (
        select(_c)
        .where(_c.c.vni == vni)
        .order_by(_c.c.generation.desc(), _c.c.address)
        .limit(limit)
    )
    return [Change(r.vni, r.generation, r.address, r.op) for r in conn.execute(query)]
