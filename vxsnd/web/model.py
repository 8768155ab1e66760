"""What the status page shows, computed from one registry snapshot (pure: no I/O, no clock).

The monitor (vxsnd/web/monitor.py) reads a `Snapshot`; this module turns it
into table rows, answers a table query (search, sort, page) and says which
members lag or expire soon. Everything here takes `now` as an argument.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from vxsnd import registry as st

# A static member enrolled with a hold time "expires soon" within this many seconds.
STATIC_SOON = 60.0
PAGE_SIZE = 50
QUERY_MAX = 100

_R = TypeVar("_R")


@dataclass(frozen=True)
class Snapshot:
    """The registry as read at `taken_at` (one read of each table the page needs)."""

    taken_at: float
    vnis: Sequence[st.VniSummary]
    nodes: Sequence[st.Node]
    memberships: Sequence[st.NodeVni]
    static: Sequence[st.Member]
    healthy: bool = True
    service_nodes: Sequence[st.ServiceNode] = ()


SERVICE_NODE_SILENT = 3 * 10.0  # three missed heartbeats (vxsnd.watch.HEARTBEAT)


def service_node_up(node: st.ServiceNode, now: float) -> bool:
    """Heard within three heartbeats: it is serving the registry now."""
    return now - node.last_seen < SERVICE_NODE_SILENT


def node_expiring(node: st.Node, now: float) -> bool:
    """Less than half its hold time left: it missed a refresh (agents refresh every third)."""
    return node.expires_at - now < node.hold_time / 2


def static_expiring(member: st.Member, now: float) -> bool:
    return member.expires_at is not None and member.expires_at - now < STATIC_SOON


@dataclass(frozen=True)
class VniRow:
    vni: int
    generation: int
    members: int
    static: int
    lagging: int  # agents that have not acked the current generation
    expiring: int  # members expiring soon
    updated_at: float

    @property
    def health(self) -> str:
        if self.members == 0:
            return "empty"
        if self.lagging:
            return "lagging"
        if self.expiring:
            return "expiring"
        return "ok"


@dataclass(frozen=True)
class AgentRow:
    node_id: str
    address: str
    port: int
    vnis: tuple[int, ...]
    last_seen: float
    hold_time: float
    expires_at: float
    behind_vnis: int  # VNIs whose current generation it has not acked
    behind_by: int  # the most generations it is behind in one VNI
    expiring: bool

    @property
    def health(self) -> str:
        if self.behind_vnis:
            return "lagging"
        if self.expiring:
            return "expiring"
        return "ok"


@dataclass(frozen=True)
class Summary:
    vnis: int
    active_vnis: int
    agents: int
    members: int
    static: int
    lagging: int  # (agent, VNI) pairs behind the current generation
    expiring: int  # agents that missed a refresh
    healthy: bool


@dataclass(frozen=True)
class Overview:
    summary: Summary
    vnis: list[VniRow]
    agents: list[AgentRow]


def overview(snap: Snapshot) -> Overview:
    now = snap.taken_at
    expiring_nodes = {n.node_id for n in snap.nodes if node_expiring(n, now)}
    lag: dict[int, int] = defaultdict(int)
    soon: dict[int, int] = defaultdict(int)
    vnis_of: dict[str, list[int]] = defaultdict(list)
    behind: dict[str, list[int]] = defaultdict(list)
    for m in snap.memberships:
        vnis_of[m.node_id].append(m.vni)
        if m.applied_generation < m.generation:
            lag[m.vni] += 1
            behind[m.node_id].append(m.generation - m.applied_generation)
        if m.node_id in expiring_nodes:
            soon[m.vni] += 1
    for s in snap.static:
        if static_expiring(s, now):
            soon[s.vni] += 1
    vni_rows = [
        VniRow(v.vni, v.generation, v.members, v.static, lag[v.vni], soon[v.vni], v.updated_at)
        for v in snap.vnis
    ]
    agents = [
        AgentRow(
            n.node_id,
            n.address,
            n.port,
            tuple(sorted(vnis_of.get(n.node_id, ()))),
            n.last_seen,
            n.hold_time,
            n.expires_at,
            len(behind.get(n.node_id, ())),
            max(behind.get(n.node_id, ()), default=0),
            n.node_id in expiring_nodes,
        )
        for n in snap.nodes
    ]
    summary = Summary(
        vnis=len(vni_rows),
        active_vnis=sum(1 for v in vni_rows if v.members),
        agents=len(agents),
        members=sum(v.members for v in vni_rows),
        static=sum(v.static for v in vni_rows),
        lagging=sum(lag.values()),
        expiring=len(expiring_nodes),
        healthy=snap.healthy,
    )
    return Overview(summary, vni_rows, agents)


# ------------------------------------------------------------------ table queries


@dataclass(frozen=True)
class Column(Generic[_R]):
    key: str
    title: str
    sort: Callable[[_R], Any]
    numeric: bool = False


# Worst first when sorted descending. Ties keep the store's order (VNI, node id): the
# sort is stable, also in reverse.
_HEALTH_ORDER: dict[str, int] = {"ok": 0, "empty": 1, "expiring": 2, "lagging": 3}

VNI_COLUMNS: tuple[Column[VniRow], ...] = (
    Column("vni", "VNI", lambda r: r.vni, True),
    Column("health", "Health", lambda r: _HEALTH_ORDER[r.health]),
    Column("members", "Members", lambda r: r.members, True),
    Column("static", "Static", lambda r: r.static, True),
    Column("lagging", "Not acked", lambda r: r.lagging, True),
    Column("expiring", "Expiring soon", lambda r: r.expiring, True),
    Column("generation", "Generation", lambda r: r.generation, True),
    Column("updated", "Last change", lambda r: r.updated_at, True),
)

AGENT_COLUMNS: tuple[Column[AgentRow], ...] = (
    Column("id", "Node id", lambda r: r.node_id),
    Column("health", "Health", lambda r: _HEALTH_ORDER[r.health]),
    Column("address", "Address", lambda r: r.address),
    Column("vnis", "VNIs", lambda r: len(r.vnis), True),
    Column("seen", "Last refresh", lambda r: r.last_seen, True),
    Column("hold", "Hold time", lambda r: r.hold_time, True),
    Column("behind", "Behind", lambda r: (r.behind_vnis, r.behind_by), True),
)


@dataclass(frozen=True)
class TableQuery:
    """Search text, sort column (with direction) and 1-based page of one table."""

    q: str = ""
    sort: str = ""
    desc: bool = False
    page: int = 1

    @classmethod
    def parse(cls, q: str, sort: str, page: str, columns: Sequence[Column[Any]]) -> TableQuery:
        """Whatever the URL says, a valid query: unknown sorts fall back to the first column."""
        desc = sort.startswith("-")
        key = sort.lstrip("-")
        if key not in {c.key for c in columns}:
            key, desc = columns[0].key, False
        try:
            number = max(1, min(int(page), 1_000_000))
        except ValueError:
            number = 1
        return cls(q.strip()[:QUERY_MAX], key, desc, number)

    def sorted_by(self, key: str) -> str:
        """The sort parameter a header link sets: flips direction on the current column."""
        if key == self.sort:
            return key if self.desc else f"-{key}"
        return key


@dataclass(frozen=True)
class TablePage(Generic[_R]):
    rows: list[_R]
    total: int  # rows matching the search
    all: int  # rows before the search
    page: int
    pages: int
    query: TableQuery = field(default_factory=TableQuery)


def query_table(
    rows: Sequence[_R],
    query: TableQuery,
    columns: Sequence[Column[_R]],
    match: Callable[[_R, str], bool],
    page_size: int = PAGE_SIZE,
) -> TablePage[_R]:
    needle = query.q.lower()
    found = [r for r in rows if match(r, needle)] if needle else list(rows)
    column = next(c for c in columns if c.key == query.sort)
    found.sort(key=column.sort, reverse=query.desc)
    pages = max(1, -(-len(found) // page_size))
    page = min(query.page, pages)
    start = (page - 1) * page_size
    return TablePage(found[start : start + page_size], len(found), len(rows), page, pages, query)


def match_vni(row: VniRow, needle: str) -> bool:
    return needle in str(row.vni) or needle == row.health


def match_agent(row: AgentRow, needle: str) -> bool:
    if needle in row.node_id.lower() or needle in row.address or needle == row.health:
        return True
    return needle.isdigit() and int(needle) in row.vnis


# ------------------------------------------------------------------ one VNI


@dataclass(frozen=True)
class MemberRow:
    member: st.Member
    applied: int | None  # the agent's applied generation (None: static)
    lagging: bool
    expiring: bool


def member_rows(
    members: Sequence[st.Member],
    memberships: Sequence[st.NodeVni],
    nodes: dict[str, st.Node],
    generation: int,
    now: float,
) -> list[MemberRow]:
    applied = {m.node_id: m.applied_generation for m in memberships}
    out = []
    for m in members:
        node = nodes.get(m.node_id) if m.node_id is not None else None
        got = applied.get(m.node_id) if m.node_id is not None else None
        expiring = node_expiring(node, now) if node is not None else static_expiring(m, now)
        out.append(MemberRow(m, got, got is not None and got < generation, expiring))
    return out


@dataclass(frozen=True)
class ChangeRow:
    generation: int
    op: str
    address: str
    owner: str | None  # the agent that holds the address now, if any
    when: float | None  # known for the newest generation and for generations seen live


def change_rows(
    log: Sequence[st.Change],
    members: Sequence[st.Member],
    generation: int,
    updated_at: float | None,
    seen: dict[int, float],
) -> list[ChangeRow]:
    owner = {m.address: m.node_id for m in members}
    rows = []
    for c in log:
        when = updated_at if c.generation == generation else seen.get(c.generation)
        rows.append(ChangeRow(c.generation, c.op, c.address, owner.get(c.address), when))
    return rows


# ------------------------------------------------------------------ patching a snapshot


@dataclass(frozen=True)
class VniRead:
    """What one VNI looks like now: `members(vni)` and `memberships(vni)` of the store."""

    vni: int
    generation: int
    members: Sequence[st.Member]
    memberships: Sequence[st.NodeVni]


def patch(
    snap: Snapshot,
    reads: Sequence[VniRead],
    nodes: dict[str, st.Node | None],
    now: float,
) -> Snapshot:
    """`snap` with the VNIs in `reads` replaced, and the given nodes added (or, for
    None, removed): a change seen in a few VNIs costs a few small reads, not a full one.
    A VNI whose generation moved gets `updated_at` `now` (the next full read gives the
    exact time); one re-read only for acks keeps its own, so the content is unchanged."""
    changed = {r.vni for r in reads}
    before = {v.vni: v for v in snap.vnis}
    vnis = {v.vni: v for v in snap.vnis if v.vni not in changed}
    for r in reads:
        if r.generation or r.members:
            static = sum(1 for m in r.members if m.origin is st.Origin.STATIC)
            old = before.get(r.vni)
            updated = old.updated_at if old and old.generation == r.generation else now
            vnis[r.vni] = st.VniSummary(r.vni, r.generation, len(r.members), static, updated)
    memberships = [m for m in snap.memberships if m.vni not in changed]
    memberships.extend(m for r in reads for m in r.memberships)
    static_members = [m for m in snap.static if m.vni not in changed]
    static_members.extend(m for r in reads for m in r.members if m.origin is st.Origin.STATIC)
    by_id = {n.node_id: n for n in snap.nodes}
    for node_id, node in nodes.items():
        if node is None:
            by_id.pop(node_id, None)
        else:
            by_id[node_id] = node
    return Snapshot(
        taken_at=now,
        vnis=[vnis[v] for v in sorted(vnis)],
        nodes=[by_id[n] for n in sorted(by_id)],
        memberships=memberships,
        static=static_members,
        healthy=snap.healthy,
        service_nodes=snap.service_nodes,
    )


def lagging_vnis(snap: Snapshot) -> set[int]:
    return {m.vni for m in snap.memberships if m.applied_generation < m.generation}
