"""What the writer reads inside its transaction before it writes, in as few queries as fit."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection

from vxsnd.registry import statements as q
from vxsnd.registry.model import Holder, Key
from vxsnd.registry.runner import CHUNK, chunks

__all__ = [
    "NodeState",
    "existing_nodes",
    "known_vnis",
    "members_at",
    "node_state",
    "owned_and_present",
]

Present = dict[Key, tuple[str, str | None]]  # (VNI, address) -> (origin, node_id)
Claims = dict[str, dict[int, tuple[str, int]]]  # node -> VNI -> (local address, applied)
NodeState = tuple[dict[str, tuple[int, float]], Claims]


def known_vnis(conn: Connection, vnis: Iterable[int]) -> set[int]:
    """Which of `vnis` have a row."""
    found: set[int] = set()
    for chunk in chunks(sorted(set(vnis))):
        found.update(r.vni for r in conn.execute(q.VNIS_KNOWN, {"vnis": chunk}))
    return found


def members_at(conn: Connection, keys: Iterable[Key]) -> Present:
    """(origin, node_id) of the members present at `keys`."""
    found: Present = {}
    keys = set(keys)
    if len(keys) > CHUNK:  # many keys: one scan of their VNIs beats huge IN lists
        for chunk_v in chunks(sorted({v for v, _ in keys})):
            for r in conn.execute(q.MEMBERS_IN_VNIS, {"vnis": chunk_v}):
                if (r.vni, r.address) in keys:
                    found[(r.vni, r.address)] = (r.origin, r.node_id)
        return found
    for chunk in chunks(sorted(keys)):
        for r in conn.execute(q.MEMBERS_AT, {"keys": chunk}):
            found[(r.vni, r.address)] = (r.origin, r.node_id)
    return found


def owned_by(conn: Connection, node_ids: Iterable[str]) -> dict[str, set[Key]]:
    owned: dict[str, set[Key]] = {}
    for chunk in chunks(sorted(set(node_ids))):
        for r in conn.execute(q.MEMBERS_OF, {"ids": chunk}):
            owned.setdefault(r.node_id, set()).add((r.vni, r.address))
    return owned


def existing_nodes(conn: Connection, node_ids: Iterable[str]) -> dict[str, tuple[int, float]]:
    """node_id -> (incarnation, registered_at) of the nodes that exist."""
    found: dict[str, tuple[int, float]] = {}
    for chunk in chunks(sorted(set(node_ids))):
        for r in conn.execute(q.NODES_KNOWN, {"ids": chunk}):
            found[r.node_id] = (r.incarnation, r.registered_at)
    return found


def holders(conn: Connection, node_ids: Iterable[str]) -> dict[str, Holder]:
    """node_id -> its registration's holder, for the nodes that exist."""
    found: dict[str, Holder] = {}
    for chunk in chunks(sorted(set(node_ids))):
        for r in conn.execute(q.HOLDERS, {"ids": chunk}):
            found[r.node_id] = Holder(r.incarnation, r.address, r.expires_at)
    return found


def node_state(
    conn: Connection, node_ids: Iterable[str], vnis: Iterable[int], known: set[int]
) -> NodeState:
    """What a registration needs to know before writing.

    Returns node_id -> (incarnation, registered_at) of the nodes that exist,
    and node_id -> {VNI: (local_address, applied_generation)} of their
    claims; also adds to `known` which of `vnis` have a row. One query (a
    UNION ALL) when the ids and the VNIs each fit one IN list.
    """
    id_chunks = list(chunks(sorted(set(node_ids))))
    vni_chunks = list(chunks(sorted(set(vnis) - known)))
    queries: list[tuple[Any, dict[str, Any]]]
    if len(id_chunks) == 1 and len(vni_chunks) == 1:
        queries = [(q.CLAIMS_OF_AND_VNI_ROWS, {"ids": id_chunks[0], "vnis": vni_chunks[0]})]
    else:
        queries = [(q.CLAIMS_OF, {"ids": c}) for c in id_chunks]
        queries += [(q.VNI_ROWS, {"vnis": c}) for c in vni_chunks]
    nodes: dict[str, tuple[int, float]] = {}
    claims: Claims = {}
    for query, params in queries:
        for node_id, incarnation, registered_at, vni, address, applied in conn.execute(
            query, params
        ):
            if vni is not None:
                known.add(vni)  # a claim's VNI has a row (foreign key)
            if node_id is None:
                continue
            nodes[node_id] = (incarnation, registered_at)
            if vni is not None:
                claims.setdefault(node_id, {})[vni] = (address, applied)
    return nodes, claims


def owned_and_present(
    conn: Connection, node_ids: Iterable[str], keys: Iterable[Key]
) -> tuple[dict[str, set[Key]], Present]:
    """Members owned by `node_ids`, and (origin, node_id) of the members at `keys`.

    One query (a UNION ALL) for small batches; otherwise `owned_by` and `members_at`.
    """
    ids, wanted = sorted(set(node_ids)), set(keys)
    if len(ids) > CHUNK or len(wanted) > CHUNK:
        return owned_by(conn, ids), members_at(conn, wanted)
    owned: dict[str, set[Key]] = {}
    present: Present = {}
    query: Any
    if ids and wanted:
        query, params = q.MEMBERS_OF_OR_AT, {"ids": ids, "keys": sorted(wanted)}
    elif ids:
        query, params = q.MEMBERS_OF, {"ids": ids}
    elif wanted:
        query, params = q.MEMBERS_AT, {"keys": sorted(wanted)}
    else:
        return owned, present
    id_set = set(ids)
    for vni, address, origin, node_id in conn.execute(query, params):
        if node_id is not None and node_id in id_set:
            owned.setdefault(node_id, set()).add((vni, address))
        if (vni, address) in wanted:
            present[(vni, address)] = (origin, node_id)
    return owned, present
