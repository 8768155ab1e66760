"""Writing one `Batch` to the registry: the ownership rules and the change log.

Runs inside one transaction on a synchronous Connection (`vxsnd.database`
decides the thread or the greenlet). Every VNI whose membership changed in a
batch gets its generation bumped exactly once, and the net per-address
adds/removes are written to the change log under that new generation;
`Store.delta()` builds deltas from that log.

Ownership rules for a (VNI, address) member:

* a registration adds the (VNI, local address) pairs it lists; if the pair is
  already registered by another node, the last registration takes it over
  (no membership change, so no generation bump);
* a static entry is never overwritten by a registration (the claim is still
  recorded in `node_vnis`);
* when a member loses its owner (node withdraws, expires, changes its list, a
  static entry is removed), it is handed over to another live node that still
  claims the same (VNI, address), and only deleted when nobody does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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

from schema import tables as t
from vxsnd.batch import (
    Batch,
    BatchResult,
    Key,
    Refresh,
    Registration,
    StaticVtep,
    VniChange,
    Withdrawal,
)
from vxsnd.database import CHUNK, chunks

__all__ = ["PG_LOCK_KEY", "BatchWriter", "apply_batch"]

PG_LOCK_KEY: Final = 0x7678666C6F6F64  # "vxflood": serialises writers sharing one PostgreSQL


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

# Queries built once: SQLAlchemy memoises a constant statement's cache key, while a
# statement built per call costs more Python than the database work (an expanding
# IN parameter takes the list at execution). Parameters: ids, vnis, keys, now.
_IDS: BindParameter[str] = bindparam("ids", expanding=True)
_VNIS: BindParameter[int] = bindparam("vnis", expanding=True)
_KEYS: BindParameter[Any] = bindparam("keys", expanding=True)
_MEMBER_COLS = (_m.c.vni, _m.c.address, _m.c.origin, _m.c.node_id)
_VNIS_KNOWN = select(_v.c.vni).where(_v.c.vni.in_(_VNIS))
_MEMBERS_IN_VNIS = select(*_MEMBER_COLS).where(_m.c.vni.in_(_VNIS))
_MEMBERS_AT = select(*_MEMBER_COLS).where(tuple_(_m.c.vni, _m.c.address).in_(_KEYS))
_MEMBERS_OF = select(*_MEMBER_COLS).where(_m.c.node_id.in_(_IDS))
_MEMBERS_OF_OR_AT = union_all(_MEMBERS_OF, _MEMBERS_AT)
_NODES_KNOWN = select(_n.c.node_id, _n.c.incarnation, _n.c.registered_at).where(
    _n.c.node_id.in_(_IDS)
)
_CLAIMS_OF = (
    select(
        _n.c.node_id,
        _n.c.incarnation,
        _n.c.registered_at,
        _nv.c.vni,
        _nv.c.local_address,
        _nv.c.applied_generation,
    )
    .select_from(_n.outerjoin(_nv, _nv.c.node_id == _n.c.node_id))
    .where(_n.c.node_id.in_(_IDS))
)
_VNI_ROWS = select(  # same columns as _CLAIMS_OF: which VNIs have a row
    cast(null(), _n.c.node_id.type),
    cast(null(), _n.c.incarnation.type),
    cast(null(), _n.c.registered_at.type),
    _v.c.vni,
    cast(null(), _nv.c.local_address.type),
    cast(null(), _nv.c.applied_generation.type),
).where(_v.c.vni.in_(_VNIS))
_CLAIMS_OF_AND_VNI_ROWS = union_all(_CLAIMS_OF, _VNI_ROWS)
_HEIRS = (
    select(_nv.c.vni, _nv.c.local_address, _n.c.node_id)
    .join(_n, _n.c.node_id == _nv.c.node_id)
    .where(tuple_(_nv.c.vni, _nv.c.local_address).in_(_KEYS), _n.c.expires_at > bindparam("now"))
    .order_by(_n.c.last_seen, _n.c.node_id)
)
_STATIC_MEMBERS = select(_m.c.vni, _m.c.address).where(_m.c.origin == t.ORIGIN_STATIC)
_NODES_AND_MEMBERS = (
    select(_n.c.node_id, _m.c.vni, _m.c.address)
    .select_from(_n.outerjoin(_m, _m.c.node_id == _n.c.node_id))
    .where(_n.c.node_id.in_(_IDS))
)
_DELETE_CLAIMS_OF = delete(_nv).where(_nv.c.node_id.in_(_IDS))
_DELETE_NODES = delete(_n).where(_n.c.node_id.in_(_IDS))
_EXPIRED_NODES = select(_n.c.node_id).where(_n.c.expires_at <= bindparam("now"))
_EXPIRED_STATIC = select(_m.c.vni, _m.c.address).where(
    _m.c.expires_at.is_not(None), _m.c.expires_at <= bindparam("now")
)
_BUMP = (
    update(_v)
    .where(_v.c.vni.in_(_VNIS))
    .values(generation=_v.c.generation + 1, updated_at=bindparam("now"))
    .returning(_v.c.vni, _v.c.generation)
)


_Compiled = tuple[str, tuple[str, ...], dict[str, Any]]  # SQL, parameter order, literals
_COMPILED: dict[tuple[UpdateBase, str, tuple[str, ...]], _Compiled] = {}


class BatchWriter:
    """The work of one `apply_batch` call on one connection inside one transaction."""

    def __init__(self, conn: Connection, now: float, log_depth: int) -> None:
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

    def many(self, stmt: UpdateBase, rows: Sequence[Mapping[str, Any]]) -> int:
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
        result = self.conn.exec_driver_sql(sql, params)
        return int(result.rowcount)

    def ensure_vnis(self, vnis: Iterable[int]) -> None:
        wanted = set(vnis) - self.known_vnis
        if not wanted:
            return
        for chunk in chunks(sorted(wanted)):
            rows = self.conn.execute(_VNIS_KNOWN, {"vnis": chunk})
            self.known_vnis.update(r.vni for r in rows)
        missing = wanted - self.known_vnis
        self.many(
            _INSERT_VNI, [{"vni": v, "generation": 0, "updated_at": self.now} for v in missing]
        )
        self.known_vnis |= missing

    def members_at(self, keys: Iterable[Key]) -> dict[Key, tuple[str, str | None]]:
        """(origin, node_id) of the members present at `keys`."""
        found: dict[Key, tuple[str, str | None]] = {}
        keys = set(keys)
        if len(keys) > CHUNK:  # many keys: one scan of their VNIs beats huge IN lists
            vnis = sorted({v for v, _ in keys})
            for chunk_v in chunks(vnis):
                rows = self.conn.execute(_MEMBERS_IN_VNIS, {"vnis": chunk_v})
                for r in rows:
                    if (r.vni, r.address) in keys:
                        found[(r.vni, r.address)] = (r.origin, r.node_id)
            return found
        for chunk in chunks(sorted(keys)):
            for r in self.conn.execute(_MEMBERS_AT, {"keys": chunk}):
                found[(r.vni, r.address)] = (r.origin, r.node_id)
        return found

    def owned_by(self, node_ids: Iterable[str]) -> dict[str, set[Key]]:
        owned: dict[str, set[Key]] = {}
        for chunk in chunks(sorted(set(node_ids))):
            for r in self.conn.execute(_MEMBERS_OF, {"ids": chunk}):
                owned.setdefault(r.node_id, set()).add((r.vni, r.address))
        return owned

    def existing_nodes(self, node_ids: Iterable[str]) -> dict[str, tuple[int, float]]:
        """node_id -> (incarnation, registered_at) of the nodes that exist."""
        found: dict[str, tuple[int, float]] = {}
        for chunk in chunks(sorted(set(node_ids))):
            for r in self.conn.execute(_NODES_KNOWN, {"ids": chunk}):
                found[r.node_id] = (r.incarnation, r.registered_at)
        return found

    def node_state(
        self, node_ids: Iterable[str], vnis: Iterable[int]
    ) -> tuple[dict[str, tuple[int, float]], dict[str, dict[int, tuple[str, int]]]]:
        """What a registration needs to know before writing, in as few queries as fit.

        Returns node_id -> (incarnation, registered_at) of the nodes that exist,
        and node_id -> {VNI: (local_address, applied_generation)} of their
        claims; also records in `known_vnis` which of `vnis` have a row. One
        query (a UNION ALL) when the ids and the VNIs each fit one IN list.
        """
        id_chunks = list(chunks(sorted(set(node_ids))))
        vni_chunks = list(chunks(sorted(set(vnis) - self.known_vnis)))
        queries: list[tuple[Any, dict[str, Any]]]
        if len(id_chunks) == 1 and len(vni_chunks) == 1:
            queries = [(_CLAIMS_OF_AND_VNI_ROWS, {"ids": id_chunks[0], "vnis": vni_chunks[0]})]
        else:
            queries = [(_CLAIMS_OF, {"ids": c}) for c in id_chunks]
            queries += [(_VNI_ROWS, {"vnis": c}) for c in vni_chunks]
        nodes: dict[str, tuple[int, float]] = {}
        claims: dict[str, dict[int, tuple[str, int]]] = {}
        for query, params in queries:
            for (
                node_id,
                incarnation,
                registered_at,
                vni,
                address,
                applied,
            ) in self.conn.execute(query, params):
                if vni is not None:
                    self.known_vnis.add(vni)  # a claim's VNI has a row (foreign key)
                if node_id is None:
                    continue
                nodes[node_id] = (incarnation, registered_at)
                if vni is not None:
                    claims.setdefault(node_id, {})[vni] = (address, applied)
        return nodes, claims

    def add_vnis(self, vnis: Iterable[int]) -> None:
        """Insert the VNIs that are not in `known_vnis` (call after `node_state`)."""
        missing = set(vnis) - self.known_vnis
        self.many(
            _INSERT_VNI,
            [{"vni": v, "generation": 0, "updated_at": self.now} for v in sorted(missing)],
        )
        self.known_vnis |= missing

    def owned_and_present(
        self, node_ids: Iterable[str], keys: Iterable[Key]
    ) -> tuple[dict[str, set[Key]], dict[Key, tuple[str, str | None]]]:
        """Members owned by `node_ids`, and (origin, node_id) of the members at `keys`.

        One query (a UNION ALL) for small batches; otherwise `owned_by` and `members_at`.
        """
        node_ids, keys = sorted(set(node_ids)), set(keys)
        if len(node_ids) > CHUNK or len(keys) > CHUNK:
            return self.owned_by(node_ids), self.members_at(keys)
        owned: dict[str, set[Key]] = {}
        present: dict[Key, tuple[str, str | None]] = {}
        wanted_ids = set(node_ids)
        query: Any
        if node_ids and keys:
            query, params = _MEMBERS_OF_OR_AT, {"ids": node_ids, "keys": sorted(keys)}
        elif node_ids:
            query, params = _MEMBERS_OF, {"ids": node_ids}
        elif keys:
            query, params = _MEMBERS_AT, {"keys": sorted(keys)}
        else:
            return owned, present
        for vni, address, origin, node_id in self.conn.execute(query, params):
            if node_id is not None and node_id in wanted_ids:
                owned.setdefault(node_id, set()).add((vni, address))
            if (vni, address) in keys:
                present[(vni, address)] = (origin, node_id)
        return owned, present

    def release(self, keys: set[Key]) -> None:
        """Members at `keys` lose their owner: hand over to a live claimant or delete."""
        if not keys:
            return
        heir: dict[Key, str] = {}
        for chunk in chunks(sorted(keys)):
            rows = self.conn.execute(_HEIRS, {"keys": chunk, "now": self.now})
            for r in rows:  # the most recently seen claimant wins
                heir[(r.vni, r.local_address)] = r.node_id
        self.many(
            _TAKE_OVER,
            [{"b_vni": v, "b_addr": a, "b_node": node} for (v, a), node in sorted(heir.items())],
        )
        gone = sorted(keys - heir.keys())
        self.many(_DELETE_MEMBER, [{"b_vni": v, "b_addr": a} for v, a in gone])
        for v, a in gone:
            self.net.remove(v, a)

    # ---- static

    def static(self, batch: Batch) -> None:
        enrol: dict[Key, StaticVtep] = {}
        if batch.static_replace is not None:
            enrol = {(s.vni, s.address): s for s in batch.static_replace}
            rows = self.conn.execute(_STATIC_MEMBERS)
            self.release({(r.vni, r.address) for r in rows} - enrol.keys())
        removals: set[Key] = set()
        for key, op in batch.static_ops.items():
            if op is None:
                enrol.pop(key, None)
                removals.add(key)
            else:
                enrol[key] = op
        if removals:
            present = self.members_at(removals)
            static = {k for k in removals if present.get(k, ("", None))[0] == t.ORIGIN_STATIC}
            self.missing_static |= removals - static
            self.release(static)
        if not enrol:
            return
        self.ensure_vnis(v for v, _ in enrol)
        present = self.members_at(enrol)
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
        self.many(_INSERT_MEMBER, new)
        self.many(_MAKE_STATIC, old)

    # ---- nodes

    def remove_nodes(self, node_ids: set[str]) -> set[str]:
        """Withdraw nodes: claims, then members (handed over or deleted), then the row."""
        existing: set[str] = set()
        owned: set[Key] = set()
        for chunk in chunks(sorted(node_ids)):  # the nodes that exist and what they own
            for r in self.conn.execute(_NODES_AND_MEMBERS, {"ids": chunk}):
                existing.add(r.node_id)
                if r.vni is not None:
                    owned.add((r.vni, r.address))
        if not existing:
            return existing
        ordered = sorted(existing)
        for chunk in chunks(ordered):
            self.conn.execute(_DELETE_CLAIMS_OF, {"ids": chunk})
        self.release(owned)
        for chunk in chunks(ordered):
            self.conn.execute(_DELETE_NODES, {"ids": chunk})
        return existing

    def register(self, regs: Mapping[str, Registration]) -> None:
        if not regs:
            return
        now = self.now
        ids = sorted(regs)
        all_vnis = {v for r in regs.values() for v in r.vnis}
        nodes, claims = self.node_state(ids, all_vnis)
        self.add_vnis(all_vnis)
        desired_keys = {(v, a) for r in regs.values() for v, a in r.vnis.items()}
        owned, present = self.owned_and_present(ids, desired_keys)

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
        self.many(_INSERT_NODE, node_rows)
        self.many(_UPDATE_NODE, update_rows)

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
        self.many(_DELETE_CLAIM, drop)
        self.many(_INSERT_CLAIM, add)
        self.many(_UPDATE_CLAIM, change)

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
        self.release(lost)
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
        self.many(_INSERT_MEMBER, new)
        self.many(_TAKE_OVER, takeover)

    def refresh(self, refreshes: Sequence[Refresh]) -> None:
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
            for chunk in chunks(refreshes, _ARRAY_CHUNK):
                rows = self.conn.execute(
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
        count = self.many(
            _REFRESH_NODE,
            [{"b_node": r.node_id, "b_now": self.now, "b_exp": r.expires_at} for r in refreshes],
        )
        if count != len(set(ids)):
            self.unknown.update(set(ids) - (self.existing_nodes(ids)).keys())

    def acks(self, acks: Mapping[tuple[str, int], int]) -> None:
        if not acks:
            return
        known = self.existing_nodes(node for node, _ in acks)
        self.unknown |= {node for node, _ in acks} - known.keys()
        self.many(
            _ACK,
            [
                {"b_node": node, "b_vni": vni, "b_gen": gen}
                for (node, vni), gen in sorted(acks.items())
                if node in known
            ],
        )

    def sweep(self) -> None:
        rows = self.conn.execute(_EXPIRED_NODES, {"now": self.now})
        self.expired = self.remove_nodes({r.node_id for r in rows})
        # static entries enrolled with a hold time
        rows = self.conn.execute(_EXPIRED_STATIC, {"now": self.now})
        self.release({(r.vni, r.address) for r in rows})

    # ---- generations

    def bump(self) -> dict[int, VniChange]:
        changed = {vni: ops for vni, ops in self.net.ops.items() if ops}
        if not changed:
            return {}
        generation: dict[int, int] = {}
        for chunk in chunks(sorted(changed)):  # bump and read back in one statement
            rows = self.conn.execute(_BUMP, {"vnis": chunk, "now": self.now})
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
        self.many(_INSERT_CHANGE, log)
        self.many(
            _TRIM,
            [
                {"b_vni": v, "b_cut": c.generation - self.log_depth}
                for v, c in result.items()
                if c.generation > self.log_depth
            ],
        )
        return result


def apply_batch(conn: Connection, batch: Batch, now: float, log_depth: int) -> BatchResult:
    """Apply `batch` on `conn` (inside its transaction); see `Batch` for the order."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
    work = BatchWriter(conn, now, log_depth)
    work.static(batch)
    regs: dict[str, Registration] = {}
    leaving: set[str] = set()
    refreshes: list[Refresh] = []
    for node_id, op in batch.node_ops.items():
        if isinstance(op, Withdrawal) or (isinstance(op, Registration) and op.hold_time <= 0):
            leaving.add(node_id)
        elif isinstance(op, Registration):
            regs[node_id] = op
        else:
            refreshes.append(op)
    work.withdrawn = work.remove_nodes(leaving)
    work.register(regs)
    work.refresh(refreshes)
    work.acks(batch.acks)
    if batch.sweep:
        work.sweep()
    changed = work.bump()
    return BatchResult(
        changed=changed,
        registered=frozenset(work.registered),
        withdrawn=frozenset(work.withdrawn),
        expired=frozenset(work.expired),
        unknown=frozenset(work.unknown),
        missing_static=frozenset(work.missing_static),
    )
