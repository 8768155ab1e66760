"""The status page's HTTP side against a real vxsnd and real registries (no browser):
the live feed, a change written by another service node on the same registry,
rejected datagrams by reason, escaping, and the pages' errors."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.integration.agent_sim import Agent, wait_until
from tests.integration.apiharness import Harness, register, serve, sqlite_url
from tests.integration.vxsnd_harness import make_config, running, server_addr
from vxsnd import api
from vxsnd import registry as st


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str, Any]:
    async with http.get(url) as r:
        text = await r.text()
        data = await r.json() if r.content_type == "application/json" else None
        return r.status, text, data


async def test_live_feed_and_a_change_from_another_service_node(tmp_path: Path) -> None:
    """Two Store objects on one file stand for two vxsnd sharing a registry: a change
    written through the other one reaches the page's feed without this vxsnd's engine."""
    url = sqlite_url(tmp_path)
    mine = await st.Store.open(url)
    other = await st.Store.open(url)
    try:
        now = time.time()
        await register(mine, "hv-1", {100: "192.0.2.1"}, now, 90)
        async with serve(Harness(mine)) as base, aiohttp.ClientSession() as http:
            status, _, first = await get(http, f"{base}/ui/live")
            assert status == 200 and first["changed"] is True
            assert 'data-node="hv-1"' in first["html"]["agent-table"]
            version = first["version"]
            status, _, same = await get(http, f"{base}/ui/live?since={version}")
            assert same == {"version": version, "changed": False, "html": {}}

            await register(other, "hv-2", {100: "192.0.2.2"}, now, 90)
            changed: dict[str, Any] = {}

            async def seen() -> bool:
                _, _, data = await get(http, f"{base}/ui/live?since={version}")
                changed.update(data)
                return bool(data["changed"])

            deadline = time.monotonic() + 5
            while not await seen():
                assert time.monotonic() < deadline, "the other node's change never showed"
                await asyncio.sleep(0.05)
            assert changed["version"] > version
            assert 'data-node="hv-2"' in changed["html"]["agent-table"]
            assert '<dd id="n-agents">2</dd>' in changed["html"]["summary"]

            # the VNI page's feed shows the member and the change-log row
            _, _, vni = await get(http, f"{base}/ui/live/vnis/100")
            assert 'data-address="192.0.2.2"' in vni["html"]["members"]
            assert "192.0.2.2" in vni["html"]["changes"]
            _, _, node = await get(http, f"{base}/ui/live/nodes/hv-2")
            assert 'data-vni="100"' in node["html"]["node-vnis"]
    finally:
        await other.close()
        await mine.close()


async def test_search_sort_page_and_escaping(store: st.Store) -> None:
    now = time.time()
    for i in range(120):
        await register(store, f"hv-{i:03d}", {100 + i % 3: f"192.0.2.{i + 1}"}, now, 90)
    batch = st.Batch()
    batch.enrol_static(st.StaticVtep(100, "203.0.113.9", None, "<script>alert(1)</script>"))
    await store.apply(batch, now)
    async with serve(Harness(store)) as base, aiohttp.ClientSession() as http:
        status, html, _ = await get(http, f"{base}/ui?aq=hv-11&as=-id")
        assert status == 200
        order = [f"hv-{i}" for i in (119, 118, 117, 116, 115, 114, 113, 112, 111, 110)]
        positions = [html.index(f'data-node="{n}"') for n in order]
        assert positions == sorted(positions) and 'data-node="hv-109"' not in html
        status, html, _ = await get(http, f"{base}/ui?ap=3")
        assert 'data-node="hv-100"' in html and 'data-node="hv-099"' not in html
        status, html, _ = await get(http, f"{base}/ui?vs=bogus&vp=x&ap=-4&aq=" + "x" * 500)
        assert status == 200 and "No agent matches." in html
        status, html, _ = await get(http, f"{base}/ui/vnis/100")
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
        assert (await get(http, f"{base}/ui/vnis/4711"))[0] == 404
        assert (await get(http, f"{base}/ui/nodes/nobody"))[0] == 404
        status, _, data = await get(http, f"{base}/ui/vnis/0")
        assert status == 400 and data["error"] == "invalid-vni"
        status, _, data = await get(http, f"{base}/ui/live/vnis/4711")
        assert status == 404 and data["error"] == "unknown-vni"
        for asset in ("style.css", "app.js"):
            status, text, _ = await get(http, f"{base}/ui/static/{asset}")
            assert status == 200 and "http://" not in text and "https://" not in text


async def test_rejected_datagrams_by_reason(tmp_path: Path) -> None:
    cfg = make_config(sqlite_url(tmp_path))
    async with running(cfg) as daemon:
        runner = await api.start_api(daemon, "127.0.0.1", 0, None)
        base = f"http://127.0.0.1:{api.bound_port(runner)}"
        agent = await Agent.create("hv-1", server_addr(daemon))
        try:
            agent.register({100: ipaddress.ip_address("192.0.2.1")})
            await wait_until(lambda: 100 in agent.members, 5, "the first membership")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for _ in range(3):
                    s.sendto(b"not a vxflood datagram", server_addr(daemon))
            await wait_until(
                lambda: daemon.metrics.value("vxsnd_datagrams_received_total") >= 4,
                5,
                "the junk datagrams",
            )
            monitor = runner.app[api.status_page.handlers.PAGE].monitor
            monitor.sample_every = 0.05
            async with aiohttp.ClientSession() as http:
                deadline = time.monotonic() + 5
                while True:
                    _, _, data = await get(http, f"{base}/ui/live")
                    if "<td>" in data["html"]["rejected"]:
                        break
                    assert time.monotonic() < deadline, data["html"]["rejected"]
                    await asyncio.sleep(0.1)
            rows, _ = monitor.rejected.table()
            assert sum(total for _, _, total in rows) == 3
            reason = rows[0][0]
            assert f"<td>{reason}</td>" in data["html"]["rejected"]
            assert daemon.metrics.value("vxsnd_rejected_datagrams_total", reason=reason) == 3
        finally:
            agent.close()
            await runner.cleanup()


async def test_the_service_nodes_sharing_a_registry_are_listed(tmp_path: Path) -> None:
    """Two vxsnd on one registry: each writes its heartbeat row; the overview lists
    both, up, and marks which one serves the page. A row whose last heartbeat is old
    shows as down."""
    url = sqlite_url(tmp_path)
    async with (
        running(make_config(url, server_id="sn-a")) as a,
        running(make_config(url, server_id="sn-b")) as b,
    ):
        await wait_until(lambda: a.store.presence_id == "sn-a", 5, "a's first heartbeat")
        await wait_until(lambda: b.store.presence_id == "sn-b", 5, "b's first heartbeat")
        old = time.time() - 3600
        await a.store.heartbeat(st.ServiceNode("sn-gone", "[::]:10001", "0.0", old, old))
        await a.store.heartbeat(
            st.ServiceNode("sn-a", "127.0.0.1:0", "test", time.time(), time.time())
        )
        rows = await a.store.service_nodes()
        assert [r.server_id for r in rows] == ["sn-a", "sn-b", "sn-gone"]
        runner = await api.start_api(a, "127.0.0.1", 0, None)
        try:
            base = f"http://127.0.0.1:{api.bound_port(runner)}"
            async with aiohttp.ClientSession() as http:
                _, _, data = await get(http, f"{base}/ui/live")
            table = data["html"]["service-nodes"]
            rows_html = table.split("<tr>")[2:]  # after the header
            assert len(rows_html) == 3
            assert "sn-a" in rows_html[0] and "(this one)" in rows_html[0]
            assert "badge ok" in rows_html[0] and "badge ok" in rows_html[1]
            assert "sn-gone" in rows_html[2] and "badge down" in rows_html[2]
            assert table.count("(this one)") == 1
        finally:
            await runner.cleanup()
