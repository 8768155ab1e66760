"""Who owns a member: the static entries, the registrations, and handing members over.

Ownership rules for a (VNI, address) member:

* a registration adds the (VNI, local address) pairs it lists; if the pair is
  already registered by another node, the last registration takes it over
  (no membership change, so no generation bump);
* a static entry is never overwritten by a registration (the claim is still
  recorded in `node_vnis`);
* when a member loses its owner (node withdraws, expires, changes its list, a
  static entry is removed), it is handed over to another live node that still
  claims the same (VNI, address), and only deleted when nobody does.

Every function runs inside the writer's transaction and records the net
membership change in `Writer.net` for the change log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection

from vxflood.schema import tables as t
from vxsnd.registry import lookups
from vxsnd.registry import statements as q
from vxsnd.registry.model import Batch, Key, Registration, StaticVtep, expiry
from vxsnd.registry.runner import chunks
from vxsnd.registry.statements import many

__all__ = ["Writer", "register", "write_static"]


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


def _member_row(vni: int, address: str, now: float, **owner: Any) -> dict[str, Any]:
    return {"vni": vni, "address": address, "created_at": now, **owner}


class Writer:
    """The state of one `apply_batch` call on one connection inside one transaction."""

    def __init__(self, conn: Connection, now: float) -> None:
        self.conn = conn
        self.now = now
        self.net = _Net()
        self.known_vnis: set[int] = set()
        self.registered: set[str] = set()
        self.withdrawn: set[str] = set()
        self.expired: set[str] = set()
        self.unknown: set[str] = set()
        self.missing_static: set[Key] = set()

    def insert_vnis(self, vnis: Iterable[int], *, look: bool) -> None:
        """Give every VNI in `vnis` a row; `look` first asks which already have one."""
        wanted = set(vnis) - self.known_vnis
        if look and wanted:
            self.known_vnis |= lookups.known_vnis(self.conn, wanted)
        missing = sorted(wanted - self.known_vnis)
        many(
            self.conn,
            q.INSERT_VNI,
            [{"vni": v, "generation": 0, "updated_at": self.now} for v in missing],
        )
        self.known_vnis.update(missing)

    def release(self, keys: set[Key]) -> None:
        """Members at `keys` lose their owner: hand over to a live claimant or delete."""
        if not keys:
            return
        heir: dict[Key, str] = {}
        for chunk in chunks(sorted(keys)):
            rows = self.conn.execute(q.HEIRS, {"keys": chunk, "now": self.now})
            for r in rows:  # the most recently seen claimant wins
                heir[(r.vni, r.local_address)] = r.node_id
        many(
            self.conn,
            q.TAKE_OVER,
            [{"b_vni": v, "b_addr": a, "b_node": node} for (v, a), node in sorted(heir.items())],
        )
        gone = sorted(keys - heir.keys())
        many(self.conn, q.DELETE_MEMBER, [{"b_vni": v, "b_addr": a} for v, a in gone])
        for v, a in gone:
            self.net.remove(v, a)

    def remove_nodes(self, node_ids: set[str]) -> set[str]:
        """Withdraw nodes: claims, then members (handed over or deleted), then the row."""
        existing: set[str] = set()
        owned: set[Key] = set()
        for chunk in chunks(sorted(node_ids)):  # the nodes that exist and what they own
            for r in self.conn.execute(q.NODES_AND_MEMBERS, {"ids": chunk}):
                existing.add(r.node_id)
                if r.vni is not None:
                    owned.add((r.vni, r.address))
        ordered = sorted(existing)
        for chunk in chunks(ordered):
            self.conn.execute(q.DELETE_CLAIMS_OF, {"ids": chunk})
        self.release(owned)
        for chunk in chunks(ordered):
            self.conn.execute(q.DELETE_NODES, {"ids": chunk})
        return existing


# ------------------------------------------------------------------------- static


def _static_ops(w: Writer, batch: Batch) -> dict[Key, StaticVtep]:
    """Replace and remove; returns what is left to enrol."""
    enrol: dict[Key, StaticVtep] = {}
    if batch.static_replace is not None:
        enrol = {(s.vni, s.address): s for s in batch.static_replace}
        rows = w.conn.execute(q.STATIC_MEMBERS)
        w.release({(r.vni, r.address) for r in rows} - enrol.keys())
    removals: set[Key] = set()
    for key, op in batch.static_ops.items():
        if op is None:
            enrol.pop(key, None)
            removals.add(key)
        else:
            enrol[key] = op
    if removals:
        present = lookups.members_at(w.conn, removals)
        static = {k for k in removals if present.get(k, ("", None))[0] == t.ORIGIN_STATIC}
        w.missing_static |= removals - static
        w.release(static)
    return enrol


def write_static(w: Writer, batch: Batch) -> None:
    enrol = _static_ops(w, batch)
    if not enrol:
        return
    w.insert_vnis((v for v, _ in enrol), look=True)
    present = lookups.members_at(w.conn, enrol)
    new, old = [], []
    for (vni, addr), s in sorted(enrol.items()):
        exp = expiry(w.now, s.hold_time)
        if (vni, addr) in present:
            old.append({"b_vni": vni, "b_addr": addr, "b_exp": exp, "b_desc": s.description})
            continue
        w.net.add(vni, addr)
        new.append(
            _member_row(
                vni,
                addr,
                w.now,
                origin=t.ORIGIN_STATIC,
                node_id=None,
                expires_at=exp,
                description=s.description,
            )
        )
    many(w.conn, q.INSERT_MEMBER, new)
    many(w.conn, q.MAKE_STATIC, old)


# ------------------------------------------------------------------------- registrations


def _write_nodes(
    w: Writer, regs: Mapping[str, Registration], nodes: Mapping[str, tuple[int, float]]
) -> None:
    """Insert new nodes, update known ones (a new incarnation restarts `registered_at`)."""
    inserts, updates = [], []
    for nid in sorted(regs):
        r = regs[nid]
        exp = expiry(w.now, r.hold_time)
        if nid not in nodes:
            w.registered.add(nid)
            inserts.append(
                {
                    "node_id": nid,
                    "incarnation": r.incarnation,
                    "address": r.address,
                    "port": r.port,
                    "hold_time": r.hold_time,
                    "last_seen": w.now,
                    "expires_at": exp,
                    "registered_at": w.now,
                    "last_seq": r.seq,
                    "last_sent_ms": r.sent_ms,
                }
            )
            continue
        incarnation, registered_at = nodes[nid]
        if incarnation != r.incarnation:
            w.registered.add(nid)
            registered_at = w.now
        updates.append(
            {
                "b_node": nid,
                "b_inc": r.incarnation,
                "b_addr": r.address,
                "b_port": r.port,
                "b_hold": r.hold_time,
                "b_now": w.now,
                "b_exp": exp,
                "b_reg": registered_at,
                "b_seq": r.seq,
                "b_sent": r.sent_ms,
            }
        )
    many(w.conn, q.INSERT_NODE, inserts)
    many(w.conn, q.UPDATE_NODE, updates)


def _write_claims(w: Writer, regs: Mapping[str, Registration], claims: lookups.Claims) -> None:
    """node_vnis follows each node's full list; applied generations never go missing."""
    drop: list[dict[str, Any]] = []
    add: list[dict[str, Any]] = []
    change: list[dict[str, Any]] = []
    for nid in sorted(regs):
        r, old = regs[nid], claims.get(nid, {})
        drop.extend({"b_node": nid, "b_vni": vni} for vni in old.keys() - r.vnis.keys())
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
    many(w.conn, q.DELETE_CLAIM, drop)
    many(w.conn, q.INSERT_CLAIM, add)
    many(w.conn, q.UPDATE_CLAIM, change)


def _write_members(
    w: Writer,
    regs: Mapping[str, Registration],
    owned: Mapping[str, set[Key]],
    present: lookups.Present,
) -> None:
    """Release what is no longer claimed, then acquire what is new.

    `present` was read before: releasing never touches a wanted key."""
    lost: set[Key] = set()
    wanted: dict[Key, str] = {}
    for nid in sorted(regs):
        desired = set(regs[nid].vnis.items())
        mine = owned.get(nid, set())
        lost |= mine - desired
        for key in desired - mine:
            wanted[key] = nid  # last registration in the batch wins
    w.release(lost - wanted.keys())  # what another node of this batch takes stays
    new, takeover = [], []
    for (vni, addr), nid in sorted(wanted.items()):
        origin, _owner = present.get((vni, addr), (None, None))
        if origin is None:
            w.net.add(vni, addr)
            new.append(
                _member_row(
                    vni,
                    addr,
                    w.now,
                    origin=t.ORIGIN_REGISTERED,
                    node_id=nid,
                    expires_at=None,  # registered members expire with their node
                    description=None,
                )
            )
        elif origin == t.ORIGIN_REGISTERED:
            takeover.append({"b_vni": vni, "b_addr": addr, "b_node": nid})
        # a static entry is never overwritten by a registration
    many(w.conn, q.INSERT_MEMBER, new)
    many(w.conn, q.TAKE_OVER, takeover)


def register(w: Writer, regs: Mapping[str, Registration]) -> None:
    if not regs:
        return
    all_vnis = {v for r in regs.values() for v in r.vnis}
    nodes, claims = lookups.node_state(w.conn, regs, all_vnis, w.known_vnis)
    w.insert_vnis(all_vnis, look=False)
    desired = {(v, a) for r in regs.values() for v, a in r.vnis.items()}
    owned, present = lookups.owned_and_present(w.conn, regs, desired)
    _write_nodes(w, regs, nodes)
    _write_claims(w, regs, claims)
    _write_members(w, regs, owned, present)
