"""The status page's pure parts: health of VNIs and agents, table queries, rejected windows."""

from __future__ import annotations

from vxsnd import registry as st
from vxsnd.conflicts import Conflict
from vxsnd.web import handlers as h
from vxsnd.web import model
from vxsnd.web.monitor import Rejected

NOW = 1_000_000.0


def node(node_id: str, seen_ago: float, hold: float = 90.0) -> st.Node:
    seen = NOW - seen_ago
    return st.Node(node_id, 1, "192.0.2.1", 10002, hold, seen, seen + hold, NOW - 3600)


def snapshot() -> model.Snapshot:
    vnis = [
        st.VniSummary(100, 7, 3, 1, NOW - 5),
        st.VniSummary(200, 2, 1, 0, NOW - 50),
        st.VniSummary(300, 4, 0, 0, NOW - 500),
    ]
    nodes = [node("hv-a", 10), node("hv-b", 60), node("hv-c", 5)]
    memberships = [
        st.NodeVni("hv-a", 100, "192.0.2.1", 7, 7),
        st.NodeVni("hv-b", 100, "192.0.2.2", 5, 7),  # two generations behind
        st.NodeVni("hv-c", 200, "192.0.2.3", 2, 2),
    ]
    static = [st.Member(100, "203.0.113.1", st.Origin.STATIC, None, NOW + 30, "rtr", NOW)]
    return model.Snapshot(NOW, vnis, nodes, memberships, static)


def test_overview_health() -> None:
    ov = model.overview(snapshot())
    rows = {r.vni: r for r in ov.vnis}
    # hv-b lags in 100 and missed a refresh (60 s of a 90 s hold gone); the static
    # member expires in 30 s: both count as expiring soon in VNI 100
    assert (rows[100].lagging, rows[100].expiring, rows[100].health) == (1, 2, "lagging")
    assert (rows[200].lagging, rows[200].expiring, rows[200].health) == (0, 0, "ok")
    assert rows[300].health == "empty"
    agents = {a.node_id: a for a in ov.agents}
    assert (agents["hv-b"].behind_vnis, agents["hv-b"].behind_by) == (1, 2)
    assert agents["hv-b"].expiring and agents["hv-b"].health == "lagging"
    assert agents["hv-a"].health == "ok" and agents["hv-a"].vnis == (100,)
    assert ov.summary == model.Summary(3, 2, 3, 4, 1, 1, 1, True)


def test_table_query_parse_is_total() -> None:
    cols = model.VNI_COLUMNS
    assert model.TableQuery.parse(" 4711 ", "-members", "2", cols) == model.TableQuery(
        "4711", "members", True, 2
    )
    assert model.TableQuery.parse("x" * 500, "nope", "-3", cols) == model.TableQuery(
        "x" * model.QUERY_MAX, "vni", False, 1
    )
    assert model.TableQuery.parse("", "", "", cols).page == 1
    q = model.TableQuery(sort="members", desc=False)
    assert (q.sorted_by("members"), q.sorted_by("vni")) == ("-members", "vni")


def test_query_table_search_sort_page() -> None:
    ov = model.overview(snapshot())
    by_lag = model.TableQuery.parse("", "-lagging", "1", model.VNI_COLUMNS)
    page = model.query_table(ov.vnis, by_lag, model.VNI_COLUMNS, model.match_vni, page_size=2)
    assert [r.vni for r in page.rows] == [100, 200]
    assert (page.total, page.all, page.page, page.pages) == (3, 3, 1, 2)
    last = model.TableQuery.parse("", "-lagging", "99", model.VNI_COLUMNS)
    page = model.query_table(ov.vnis, last, model.VNI_COLUMNS, model.match_vni, page_size=2)
    assert [r.vni for r in page.rows] == [300] and page.page == 2
    found = model.TableQuery.parse("lagging", "", "", model.AGENT_COLUMNS)
    agents = model.query_table(ov.agents, found, model.AGENT_COLUMNS, model.match_agent)
    assert [a.node_id for a in agents.rows] == ["hv-b"]
    in_vni = model.TableQuery.parse("200", "", "", model.AGENT_COLUMNS)
    agents = model.query_table(ov.agents, in_vni, model.AGENT_COLUMNS, model.match_agent)
    assert [a.node_id for a in agents.rows] == ["hv-c"]


def test_member_and_change_rows() -> None:
    snap = snapshot()
    members = [
        st.Member(100, "192.0.2.1", st.Origin.REGISTERED, "hv-a", NOW + 80, None, NOW),
        st.Member(100, "192.0.2.2", st.Origin.REGISTERED, "hv-b", NOW + 30, None, NOW),
        st.Member(100, "203.0.113.1", st.Origin.STATIC, None, None, "rtr", NOW),
    ]
    nodes = {n.node_id: n for n in snap.nodes}
    rows = model.member_rows(members, snap.memberships, nodes, 7, NOW)
    assert [(r.applied, r.lagging, r.expiring) for r in rows] == [
        (7, False, False),
        (5, True, True),
        (None, False, False),
    ]
    log = [st.Change(100, 7, "192.0.2.2", "add"), st.Change(100, 6, "192.0.2.9", "del")]
    changes = model.change_rows(log, members, 7, NOW - 5, {6: NOW - 60})
    assert [(c.owner, c.when) for c in changes] == [("hv-b", NOW - 5), (None, NOW - 60)]
    assert model.change_rows(log, members, 7, None, {})[1].when is None


def test_rejected_windows() -> None:
    r = Rejected()
    assert r.table() == ([], None)
    r.add(NOW - 1000, {"bad-tag": 1})
    r.add(NOW - 600, {"bad-tag": 4})
    r.add(NOW - 120, {"bad-tag": 10, "replay": 1})
    r.add(NOW, {"bad-tag": 12, "replay": 3})
    rows, since = r.table()
    # each window counts from the newest sample at least that old: 1 min from NOW-120,
    # 5 min from NOW-600, 15 min from NOW-1000
    assert rows == [("bad-tag", [2.0, 8.0, 11.0], 12), ("replay", [2.0, 3.0, 3.0], 3)]
    assert since == NOW - 1000
    r.add(NOW + 10, {"bad-tag": 12, "replay": 3})
    assert r.samples[0][0] == NOW - 1000  # still the base of the 15-minute window
    r.add(NOW + 400, {"bad-tag": 12, "replay": 3})
    assert r.samples[0][0] == NOW - 600


def test_patch_replaces_only_the_vnis_read() -> None:
    snap = snapshot()
    joined = node("hv-d", 0)
    members = [
        st.Member(200, "192.0.2.3", st.Origin.REGISTERED, "hv-c", None, None, NOW),
        st.Member(200, "192.0.2.4", st.Origin.REGISTERED, "hv-d", None, None, NOW),
    ]
    memberships = [
        st.NodeVni("hv-c", 200, "192.0.2.3", 2, 3),
        st.NodeVni("hv-d", 200, "192.0.2.4", 0, 3),
    ]
    later = NOW + 1
    out = model.patch(snap, [model.VniRead(200, 3, members, memberships)], {"hv-d": joined}, later)
    assert [v for v in out.vnis if v.vni == 200] == [st.VniSummary(200, 3, 2, 0, later)]
    assert [v for v in out.vnis if v.vni != 200] == [v for v in snap.vnis if v.vni != 200]
    assert [n.node_id for n in out.nodes] == ["hv-a", "hv-b", "hv-c", "hv-d"]
    assert model.lagging_vnis(out) == {100, 200}
    # re-read for acks only (same generation): the VNI keeps its time of last change
    acked = [st.NodeVni("hv-c", 200, "192.0.2.3", 3, 3), st.NodeVni("hv-d", 200, "192.0.2.4", 3, 3)]
    again = model.patch(out, [model.VniRead(200, 3, members, acked)], {}, later + 5)
    assert [v.updated_at for v in again.vnis if v.vni == 200] == [later]
    assert model.lagging_vnis(again) == {100}
    # a node that left is dropped; a VNI with no generation and no members disappears
    gone = model.patch(again, [model.VniRead(300, 0, [], [])], {"hv-b": None}, later + 6)
    assert [v.vni for v in gone.vnis] == [100, 200]
    assert "hv-b" not in {n.node_id for n in gone.nodes}


def test_the_conflicts_part_lists_each_refused_claimant() -> None:
    env = h.environment()
    now = 1_764_000_000.0
    rows = [Conflict("hv-7", "192.0.2.7", "192.0.2.8", now - 30, now - 2, 4)]
    html = h._macro(env, "conflicts", rows, now)
    assert 'href="/ui/nodes/hv-7"' in html and "192.0.2.7" in html and "192.0.2.8" in html
    assert ">4<" in html
    assert "No node-id conflict" in h._macro(env, "conflicts", [], now)
