"""Writing one `Batch` to the registry in one transaction, and the change log.

Runs inside one transaction on a synchronous Connection (the runner decides
the thread or the greenlet). Every VNI whose membership changed in a batch
gets its generation bumped exactly once, and the net per-address adds/removes
are written to the change log under that new generation; the reads build
deltas from that log. Who owns which member is `vxsnd.registry.ownership`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection

from vxflood.schema import tables as t
from vxsnd.registry import lookups
from vxsnd.registry import statements as q
from vxsnd.registry.model import (
    Batch,
    BatchResult,
    Holder,
    Refresh,
    Registration,
    VniChange,
    Withdrawal,
    conflicts,
    expiry,
)
from vxsnd.registry.ownership import Writer, register, write_static
from vxsnd.registry.revisions import lock_registry
from vxsnd.registry.runner import chunks
from vxsnd.registry.statements import many

__all__ = ["apply_batch"]


# ------------------------------------------------------------------------- refreshes, acks


def _refresh(w: Writer, refreshes: Sequence[Refresh]) -> None:
    """Extend the expiry of known nodes; ids that are not registered go to `unknown`.

    No lookup first: PostgreSQL's UPDATE ... RETURNING names the nodes it
    found; on SQLite the row count of the executemany tells whether every
    node was found, and only when not are the missing ones looked up.
    """
    if not refreshes:
        return
    ids = {r.node_id for r in refreshes}
    if w.conn.dialect.name == "postgresql":
        found: set[str] = set()
        for chunk in chunks(refreshes, q.ARRAY_CHUNK):
            params = {
                "now": w.now,
                "ids": [r.node_id for r in chunk],
                "exps": [expiry(w.now, r.hold_time) for r in chunk],
                "seqs": [r.seq for r in chunk],
                "sents": [r.sent_ms for r in chunk],
            }
            found.update(r.node_id for r in w.conn.execute(q.PG_REFRESH, params))
        w.unknown |= ids - found
        return
    rows = [
        {
            "b_node": r.node_id,
            "b_now": w.now,
            "b_exp": expiry(w.now, r.hold_time),
            "b_seq": r.seq,
            "b_sent": r.sent_ms,
        }
        for r in refreshes
    ]
    if many(w.conn, q.REFRESH_NODE, rows) != len(ids):
        w.unknown |= ids - lookups.existing_nodes(w.conn, ids).keys()


def _acks(w: Writer, acks: Mapping[tuple[str, int], int]) -> None:
    if not acks:
        return
    known = lookups.existing_nodes(w.conn, (node for node, _ in acks))
    w.unknown |= {node for node, _ in acks} - known.keys()
    rows = [
        {"b_node": node, "b_vni": vni, "b_gen": gen}
        for (node, vni), gen in sorted(acks.items())
        if node in known
    ]
    many(w.conn, q.ACK, rows)


def _sweep(w: Writer) -> None:
    """Nodes and static entries whose expiry passed (`model.is_expired`, in SQL)."""
    rows = w.conn.execute(q.EXPIRED_NODES, {"now": w.now})
    w.expired = w.remove_nodes({r.node_id for r in rows})
    rows = w.conn.execute(q.EXPIRED_STATIC, {"now": w.now})
    w.release({(r.vni, r.address) for r in rows})


# ------------------------------------------------------------------------- generations


def _bump(w: Writer, log_depth: int) -> dict[int, VniChange]:
    """One generation per changed VNI, its net change in the log, the log trimmed."""
    changed = {vni: ops for vni, ops in w.net.ops.items() if ops}
    generation: dict[int, int] = {}
    for chunk in chunks(sorted(changed)):  # bump and read back in one statement
        rows = w.conn.execute(q.BUMP, {"vnis": chunk, "now": w.now})
        generation.update((r.vni, r.generation) for r in rows)
    result: dict[int, VniChange] = {}
    log: list[dict[str, Any]] = []
    for vni, ops in sorted(changed.items()):
        gen = generation[vni]
        log.extend(
            {"vni": vni, "generation": gen, "address": a, "op": op} for a, op in sorted(ops.items())
        )
        result[vni] = VniChange(
            vni,
            gen,
            frozenset(a for a, op in ops.items() if op == t.OP_ADD),
            frozenset(a for a, op in ops.items() if op == t.OP_DEL),
        )
    many(w.conn, q.INSERT_CHANGE, log)
    trim = [
        {"b_vni": v, "b_cut": c.generation - log_depth}
        for v, c in result.items()
        if c.generation > log_depth
    ]
    many(w.conn, q.TRIM, trim)
    return result


def _not_owner(conn: Connection, leaving: Mapping[str, int | None]) -> set[str]:
    """Withdrawals whose incarnation is not the registered one (another process of the
    node, or anyone replaying or forging its id): they change nothing."""
    bound = [n for n, inc in leaving.items() if inc is not None]
    known = lookups.existing_nodes(conn, bound)
    return {n for n, (incarnation, _) in known.items() if incarnation != leaving[n]}


def _conflicts(w: Writer, regs: dict[str, Registration]) -> dict[str, Holder]:
    """Registrations of a node id another live agent holds (`model.conflicts`): taken
    out of `regs`, they write nothing; the holder keeps the id."""
    if not regs:
        return {}
    refused = {
        node_id: holder
        for node_id, holder in lookups.holders(w.conn, regs).items()
        if conflicts(holder, regs[node_id].incarnation, regs[node_id].address, w.now)
    }
    for node_id in refused:
        del regs[node_id]
    return refused


def apply_batch(
    conn: Connection,
    batch: Batch,
    now: float,
    log_depth: int,
    check: Callable[[Connection], None] | None = None,
) -> BatchResult:
    """Apply `batch` on `conn` (inside its transaction), in the order `Batch` documents.

    `check` runs first under the registry lock: it raises to write nothing."""
    lock_registry(conn)
    if check is not None:
        check(conn)
    w = Writer(conn, now)
    write_static(w, batch)
    regs: dict[str, Registration] = {}
    leaving: dict[str, int | None] = {}  # node id -> the incarnation that must own it
    refreshes: list[Refresh] = []
    for node_id, op in batch.node_ops.items():
        if isinstance(op, Withdrawal) or (isinstance(op, Registration) and op.hold_time <= 0):
            leaving[node_id] = op.incarnation
        elif isinstance(op, Registration):
            regs[node_id] = op
        else:
            refreshes.append(op)
    not_owner = _not_owner(conn, leaving)
    w.withdrawn = w.remove_nodes(set(leaving) - not_owner)
    refused = _conflicts(w, regs)
    register(w, regs)
    _refresh(w, refreshes)
    _acks(w, batch.acks)
    if batch.sweep:
        _sweep(w)
    changed = _bump(w, log_depth)
    return BatchResult(
        changed=changed,
        registered=frozenset(w.registered),
        withdrawn=frozenset(w.withdrawn),
        expired=frozenset(w.expired),
        unknown=frozenset(w.unknown),
        not_owner=frozenset(not_owner),
        conflicts=refused,
        missing_static=frozenset(w.missing_static),
    )
