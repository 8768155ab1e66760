"""The writer's SQL, built once: prepared statements and the executemany fast path.

SQLAlchemy memoises a constant statement's cache key, while a statement built
per call costs more Python than the database work (an expanding IN parameter
takes the list at execution). Bind names differ from column names, as
executemany needs. Expanding parameters: ids, vnis, keys; and now.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    cast,
    delete,
    insert,
    null,
    select,
    text,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.sql.expression import BindParameter, UpdateBase

from vxflood.schema import tables as t

_m, _n, _nv, _v, _c = t.members, t.nodes, t.node_vnis, t.vnis, t.changes

REFRESH_NODE = (
    update(_n)
    .where(_n.c.node_id == bindparam("b_node"))
    .values(
        last_seen=bindparam("b_now"),
        expires_at=bindparam("b_exp"),
        last_seq=bindparam("b_seq"),
        last_sent_ms=bindparam("b_sent"),
    )
)
TAKE_OVER = (
    update(_m)
    .where(and_(_m.c.vni == bindparam("b_vni"), _m.c.address == bindparam("b_addr")))
    .values(
        origin=t.ORIGIN_REGISTERED,
        node_id=bindparam("b_node"),
        expires_at=None,
        description=None,
    )
)
MAKE_STATIC = (
    update(_m)
    .where(and_(_m.c.vni == bindparam("b_vni"), _m.c.address == bindparam("b_addr")))
    .values(
        origin=t.ORIGIN_STATIC,
        node_id=None,
        expires_at=bindparam("b_exp"),
        description=bindparam("b_desc"),
    )
)
DELETE_MEMBER = delete(_m).where(
    and_(_m.c.vni == bindparam("b_vni"), _m.c.address == bindparam("b_addr"))
)
DELETE_CLAIM = delete(_nv).where(
    and_(_nv.c.node_id == bindparam("b_node"), _nv.c.vni == bindparam("b_vni"))
)
UPDATE_CLAIM = (
    update(_nv)
    .where(and_(_nv.c.node_id == bindparam("b_node"), _nv.c.vni == bindparam("b_vni")))
    .values(local_address=bindparam("b_addr"), applied_generation=bindparam("b_gen"))
)
ACK = (
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
UPDATE_NODE = (
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
        last_seq=bindparam("b_seq"),
        last_sent_ms=bindparam("b_sent"),
    )
)
# One statement for any number of refreshes (arrays are single parameters).
PG_REFRESH = text(
    "UPDATE nodes SET last_seen = :now, expires_at = v.exp, last_seq = v.seq,"
    " last_sent_ms = v.sent"
    " FROM unnest(CAST(:ids AS VARCHAR[]), CAST(:exps AS DOUBLE PRECISION[]),"
    " CAST(:seqs AS BIGINT[]), CAST(:sents AS BIGINT[])) AS v(id, exp, seq, sent)"
    " WHERE nodes.node_id = v.id RETURNING nodes.node_id"
)
ARRAY_CHUNK: Final = 10_000  # rows per array parameter
INSERT_MEMBER = insert(_m)
INSERT_NODE = insert(_n)
INSERT_CLAIM = insert(_nv)
INSERT_CHANGE = insert(_c)
INSERT_VNI = insert(_v)
TRIM = delete(_c).where(and_(_c.c.vni == bindparam("b_vni"), _c.c.generation <= bindparam("b_cut")))

# Queries built once: SQLAlchemy memoises a constant statement's cache key, while a
# statement built per call costs more Python than the database work (an expanding
# IN parameter takes the list at execution). Parameters: ids, vnis, keys, now.
IDS: BindParameter[str] = bindparam("ids", expanding=True)
VNIS: BindParameter[int] = bindparam("vnis", expanding=True)
KEYS: BindParameter[Any] = bindparam("keys", expanding=True)
MEMBER_COLS = (_m.c.vni, _m.c.address, _m.c.origin, _m.c.node_id)
VNIS_KNOWN = select(_v.c.vni).where(_v.c.vni.in_(VNIS))
MEMBERS_IN_VNIS = select(*MEMBER_COLS).where(_m.c.vni.in_(VNIS))
MEMBERS_AT = select(*MEMBER_COLS).where(tuple_(_m.c.vni, _m.c.address).in_(KEYS))
MEMBERS_OF = select(*MEMBER_COLS).where(_m.c.node_id.in_(IDS))
MEMBERS_OF_OR_AT = union_all(MEMBERS_OF, MEMBERS_AT)
HOLDERS = select(_n.c.node_id, _n.c.incarnation, _n.c.address, _n.c.expires_at).where(
    _n.c.node_id.in_(IDS)
)
NODES_KNOWN = select(_n.c.node_id, _n.c.incarnation, _n.c.registered_at).where(
    _n.c.node_id.in_(IDS)
)
CLAIMS_OF = (
    select(
        _n.c.node_id,
        _n.c.incarnation,
        _n.c.registered_at,
        _nv.c.vni,
        _nv.c.local_address,
        _nv.c.applied_generation,
    )
    .select_from(_n.outerjoin(_nv, _nv.c.node_id == _n.c.node_id))
    .where(_n.c.node_id.in_(IDS))
)
VNI_ROWS = select(  # same columns as CLAIMS_OF: which VNIs have a row
    cast(null(), _n.c.node_id.type),
    cast(null(), _n.c.incarnation.type),
    cast(null(), _n.c.registered_at.type),
    _v.c.vni,
    cast(null(), _nv.c.local_address.type),
    cast(null(), _nv.c.applied_generation.type),
).where(_v.c.vni.in_(VNIS))
CLAIMS_OF_AND_VNI_ROWS = union_all(CLAIMS_OF, VNI_ROWS)
HEIRS = (
    select(_nv.c.vni, _nv.c.local_address, _n.c.node_id)
    .join(_n, _n.c.node_id == _nv.c.node_id)
    .where(tuple_(_nv.c.vni, _nv.c.local_address).in_(KEYS), _n.c.expires_at > bindparam("now"))
    .order_by(_n.c.last_seen, _n.c.node_id)
)
STATIC_MEMBERS = select(_m.c.vni, _m.c.address).where(_m.c.origin == t.ORIGIN_STATIC)
NODES_AND_MEMBERS = (
    select(_n.c.node_id, _m.c.vni, _m.c.address)
    .select_from(_n.outerjoin(_m, _m.c.node_id == _n.c.node_id))
    .where(_n.c.node_id.in_(IDS))
)
DELETE_CLAIMS_OF = delete(_nv).where(_nv.c.node_id.in_(IDS))
DELETE_NODES = delete(_n).where(_n.c.node_id.in_(IDS))
EXPIRED_NODES = select(_n.c.node_id).where(_n.c.expires_at <= bindparam("now"))
EXPIRED_STATIC = select(_m.c.vni, _m.c.address).where(
    _m.c.expires_at.is_not(None), _m.c.expires_at <= bindparam("now")
)
BUMP = (
    update(_v)
    .where(_v.c.vni.in_(VNIS))
    .values(generation=_v.c.generation + 1, updated_at=bindparam("now"))
    .returning(_v.c.vni, _v.c.generation)
)


_Compiled = tuple[str, tuple[str, ...], dict[str, Any]]  # SQL, parameter order, literals
_COMPILED: dict[tuple[UpdateBase, str, tuple[str, ...]], _Compiled] = {}


def many(conn: Connection, stmt: UpdateBase, rows: Sequence[Mapping[str, Any]]) -> int:
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
    cache_key = (stmt, conn.dialect.name, keys)
    compiled = _COMPILED.get(cache_key)
    if compiled is None:
        c = stmt.compile(dialect=conn.dialect, column_keys=list(keys))
        literals = dict(c.construct_params(params=dict(rows[0])))
        order = tuple(c.positiontup or ())
        compiled = (c.string, order, literals)
        _COMPILED[cache_key] = compiled
    sql, order, literals = compiled
    if keys == order:
        params: list[tuple[Any, ...]] = [tuple(row.values()) for row in rows]
    else:
        params = [tuple(row[k] if k in row else literals[k] for k in order) for row in rows]
    result = conn.exec_driver_sql(sql, params)
    return int(result.rowcount)
