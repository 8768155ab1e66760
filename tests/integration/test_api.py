"""The REST API on a real aiohttp server and a real registry (SQLite; PostgreSQL too)."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.agent_sim import Agent, wait_until
from tests.integration.apiharness import (
    ADMIN_TOKEN,
    READ_TOKEN,
    Harness,
    postgres_database,
    register,
    serve,
    snapshot,
    sqlite_url,
    write_tokens,
)
from tests.integration.vxsnd_harness import make_config, running, server_addr
from vxsnd import api
from vxsnd import registry as st
from vxsnd.api import ApiConfigError, build_app, check_bind
from vxsnd.api_backend import Backend
from vxsnd.conflicts import Conflict
from vxsnd.daemon import Daemon
from vxsnd.openapi import build_document
from vxsnd.tokens import Tokens

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
READ = {"Authorization": f"Bearer {READ_TOKEN}"}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: Any = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"headers": headers or {}}
    if body is not None:
        kwargs["json"] = body
    if data is not None:
        kwargs["data"] = io.BytesIO(data)
    async with session.request(method, url, **kwargs) as r:
        raw = await r.read()
        if r.content_type == "application/json":
            return r.status, json.loads(raw)
        return r.status, raw.decode()


# ------------------------------------------------------------------- CRUD


async def crud(store: st.Store, session: aiohttp.ClientSession) -> None:
    now = time.time()
    await register(store, "hv-1", {100: "192.0.2.1", 200: "192.0.2.1"}, now)
    harness = Harness(store)
    async with serve(harness) as base:
        status, data = await call(session, "GET", f"{base}/v1/vnis")
        assert status == 200
        assert data == {
            "vnis": [
                {"vni": 100, "generation": 1, "members": 1, "static": 0},
                {"vni": 200, "generation": 1, "members": 1, "static": 0},
            ]
        }

        # enrol: 201, generation bumped once, push hook told
        status, data = await call(
            session,
            "PUT",
            f"{base}/v1/vnis/100/vteps/198.51.100.7",
            body={"description": "tor-4", "hold_time": None},
        )
        assert status == 201, data
        assert data["created"] is True and data["generation"] == 2
        assert data["member"] == {
            "address": "198.51.100.7",
            "origin": "static",
            "node": None,
            "expires_at": None,
            "description": "tor-4",
        }
        assert [r.generations for r in harness.changes] == [{100: 2}]

        # update: 200, no membership change, no bump, no push
        status, data = await call(
            session,
            "PUT",
            f"{base}/v1/vnis/100/vteps/198.51.100.7",
            body={"hold_time": 600, "description": "tor-4b"},
        )
        assert status == 200 and data["created"] is False and data["generation"] == 2
        assert data["member"]["expires_at"] == pytest.approx(time.time() + 600, abs=30)
        assert len(harness.changes) == 1

        # no body at all is fine, IPv6 canonicalised
        status, data = await call(session, "PUT", f"{base}/v1/vnis/100/vteps/2001:DB8:0::9")
        assert status == 201 and data["member"]["address"] == "2001:db8::9"
        assert data["generation"] == 3

        status, data = await call(session, "GET", f"{base}/v1/vnis/100")
        assert status == 200
        assert data["generation"] == 3
        assert [(m["address"], m["origin"], m["node"]) for m in data["members"]] == [
            ("192.0.2.1", "registered", "hv-1"),
            ("198.51.100.7", "static", None),
            ("2001:db8::9", "static", None),
        ]
        registered = data["members"][0]
        assert registered["expires_at"] == pytest.approx(now + 60)

        # remove: 200 with the bumped generation; again: 404
        status, data = await call(session, "DELETE", f"{base}/v1/vnis/100/vteps/2001:db8::9")
        assert status == 200 and data == {"vni": 100, "address": "2001:db8::9", "generation": 4}
        assert harness.changes[-1].generations == {100: 4}
        status, data = await call(session, "DELETE", f"{base}/v1/vnis/100/vteps/2001:db8::9")
        assert status == 404 and data["error"] == "unknown-vtep"
        status, data = await call(session, "DELETE", f"{base}/v1/vnis/300/vteps/192.0.2.50")
        assert status == 404

        # a registered VTEP cannot be removed through the API
        status, data = await call(session, "DELETE", f"{base}/v1/vnis/100/vteps/192.0.2.1")
        assert status == 409 and data["error"] == "registered-vtep"
        assert "hv-1" in data["detail"]
        assert (await store.members(100))[0] == 4

        status, data = await call(session, "GET", f"{base}/v1/vnis/4242")
        assert status == 404 and data["error"] == "unknown-vni"

        # nodes
        status, data = await call(session, "GET", f"{base}/v1/nodes")
        assert status == 200
        [node] = data["nodes"]
        assert node["id"] == "hv-1" and node["address"] == "192.0.2.1"
        assert node["port"] == 10002 and node["incarnation"] == 7 and node["hold_time"] == 60
        status, data = await call(session, "GET", f"{base}/v1/nodes/hv-1")
        assert status == 200
        assert data["last_seen"] == pytest.approx(now)
        assert data["vnis"] == [
            {"vni": 100, "local_address": "192.0.2.1", "applied_generation": 0, "generation": 4},
            {"vni": 200, "local_address": "192.0.2.1", "applied_generation": 0, "generation": 1},
        ]
        status, data = await call(session, "GET", f"{base}/v1/nodes/nope")
        assert status == 404 and data["error"] == "unknown-node"

        # replace-all
        status, data = await call(
            session,
            "PUT",
            f"{base}/v1/static",
            body={
                "vteps": [
                    {"vni": 100, "address": "198.51.100.7", "description": "kept"},
                    {"vni": 300, "address": "198.51.100.8", "hold_time": 30},
                ]
            },
        )
        assert status == 200, data
        assert data == {"added": 1, "removed": 0, "kept": 1, "changed_vnis": [300]}
        assert harness.changes[-1].generations == {300: 1}
        status, data = await call(session, "PUT", f"{base}/v1/static", body={"vteps": []})
        assert status == 200
        assert data == {"added": 0, "removed": 2, "kept": 0, "changed_vnis": [100, 300]}
        _, members = await store.members(100)
        assert [m.address for m in members] == ["192.0.2.1"]

        status, data = await call(session, "GET", f"{base}/healthz")
        assert status == 200 and data == {"status": "ok"}


async def test_crud_sqlite(store: st.Store, session: aiohttp.ClientSession) -> None:
    await crud(store, session)


@pytest.mark.postgres
async def test_crud_postgres(session: aiohttp.ClientSession) -> None:
    async with postgres_database() as url:
        s = await st.Store.open(url)
        try:
            await crud(s, session)
        finally:
            await s.close()


async def test_enrol_over_registered_pins_it(
    store: st.Store, session: aiohttp.ClientSession
) -> None:
    await register(store, "hv-1", {100: "192.0.2.1"}, time.time())
    harness = Harness(store)
    async with serve(harness) as base:
        status, data = await call(session, "PUT", f"{base}/v1/vnis/100/vteps/192.0.2.1")
        assert status == 200 and data["created"] is False
        assert data["member"]["origin"] == "static" and data["generation"] == 1
        assert harness.changes == []  # same flood list: nothing to push
        status, _ = await call(session, "DELETE", f"{base}/v1/vnis/100/vteps/192.0.2.1")
        assert status == 200
        _, members = await store.members(100)
        assert [(m.origin, m.node_id) for m in members] == [(st.Origin.REGISTERED, "hv-1")]


async def test_changes_take_the_daemons_batch_path(
    store: st.Store, session: aiohttp.ClientSession
) -> None:
    seen: list[st.Batch] = []

    class Daemon:
        def __init__(self) -> None:
            self.store = store

        async def apply_batch(self, batch: st.Batch, now: float) -> st.BatchResult:
            seen.append(batch)
            return await store.apply(batch, now)

        def node_id_conflicts(self, now: float) -> list[Conflict]:
            return []

    async with serve(Daemon()) as base:
        status, _ = await call(session, "PUT", f"{base}/v1/vnis/5/vteps/192.0.2.5")
        assert status == 201
    assert len(seen) == 1 and seen[0].static_ops


async def test_a_daemon_without_the_batch_path_is_refused(store: st.Store) -> None:
    class StoreOnly:
        def __init__(self) -> None:
            self.store = store

    with pytest.raises(TypeError, match="apply_batch"):
        await api.start_api(StoreOnly(), "127.0.0.1", 0)


# ------------------------------------------------------------------- auth


async def test_auth(store: st.Store, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with serve(Harness(store), write_tokens(tmp_path)) as base:
        url = f"{base}/v1/vnis/7/vteps/192.0.2.7"
        status, data = await call(session, "GET", f"{base}/v1/vnis")
        assert status == 401 and data["detail"] == "missing bearer token"
        async with session.get(f"{base}/v1/vnis") as r:
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        status, data = await call(
            session, "GET", f"{base}/v1/vnis", headers={"Authorization": "Bearer nope"}
        )
        assert status == 401 and data["detail"] == "unknown bearer token"
        status, _ = await call(
            session, "GET", f"{base}/v1/vnis", headers={"Authorization": f"Basic {READ_TOKEN}"}
        )
        assert status == 401
        assert (await call(session, "GET", f"{base}/v1/vnis", headers=READ))[0] == 200
        assert (await call(session, "GET", f"{base}/v1/nodes", headers=ADMIN))[0] == 200
        status, data = await call(session, "PUT", url, headers=READ)
        assert status == 403 and data["error"] == "forbidden"
        assert (await call(session, "PUT", url))[0] == 401
        assert await store.vnis() == []
        assert (await call(session, "PUT", url, headers=ADMIN))[0] == 201
        assert (await call(session, "DELETE", url, headers=READ))[0] == 403
        assert (await call(session, "PUT", f"{base}/v1/static", headers=READ, body={"vteps": []}))[
            0
        ] == 403
        assert (await call(session, "DELETE", url, headers=ADMIN))[0] == 200
        # no token needed: health and the document; metrics need read
        assert (await call(session, "GET", f"{base}/healthz"))[0] == 200
        assert (await call(session, "GET", f"{base}/v1/openapi.json"))[0] == 200
        assert (await call(session, "GET", f"{base}/metrics"))[0] == 401
        status, text = await call(session, "GET", f"{base}/metrics", headers=READ)
        assert status == 200 and "vxsnd_test_marker_total 0.0" in text


def test_unauthenticated_api_stays_on_loopback() -> None:
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("localhost", None)
    for host in ("0.0.0.0", "::", "192.0.2.1", "example.org"):
        with pytest.raises(ApiConfigError, match="without a token file"):
            check_bind(host, None)
    check_bind("0.0.0.0", Tokens.parse("x" * 20 + " admin\n"))


async def test_start_refuses_bad_token_file(store: st.Store, tmp_path: Path) -> None:
    bad = tmp_path / "tokens"
    bad.write_text("abc admin\n")
    with pytest.raises(ApiConfigError, match=r"tokens:1: token is 3 characters"):
        await api.start_api(Harness(store), "127.0.0.1", 0, str(bad))
    with pytest.raises(ApiConfigError, match="without a token file"):
        await api.start_api(Harness(store), "0.0.0.0", 0, None)


# ---------------------------------------------------------- invalid input


BAD_REQUESTS: list[tuple[str, str, Any]] = [
    ("PUT", "/v1/vnis/0/vteps/192.0.2.9", None),
    ("PUT", "/v1/vnis/16777216/vteps/192.0.2.9", None),
    ("PUT", "/v1/vnis/ten/vteps/192.0.2.9", None),
    ("PUT", "/v1/vnis/-5/vteps/192.0.2.9", None),
    ("PUT", "/v1/vnis/100/vteps/224.0.0.5", None),
    ("PUT", "/v1/vnis/100/vteps/ff02::1", None),
    ("PUT", "/v1/vnis/100/vteps/127.0.0.1", None),
    ("PUT", "/v1/vnis/100/vteps/::1", None),
    ("PUT", "/v1/vnis/100/vteps/0.0.0.0", None),
    ("PUT", "/v1/vnis/100/vteps/::", None),
    ("PUT", "/v1/vnis/100/vteps/255.255.255.255", None),
    ("PUT", "/v1/vnis/100/vteps/not-an-address", None),
    ("PUT", "/v1/vnis/100/vteps/192.0.2.300", None),
    ("PUT", "/v1/vnis/100/vteps/192.0.2.9", {"hold_time": 0}),
    ("PUT", "/v1/vnis/100/vteps/192.0.2.9", {"hold_time": "60"}),
    ("PUT", "/v1/vnis/100/vteps/192.0.2.9", {"hold_time": 1.5}),
    ("PUT", "/v1/vnis/100/vteps/192.0.2.9", {"description": 7}),
    ("PUT", "/v1/vnis/100/vteps/192.0.2.9", {"description": "x" * 201}),
    ("PUT", "/v1/vnis/100/vteps/192.0.2.9", {"colour": "red"}),
    ("PUT", "/v1/vnis/100/vteps/192.0.2.9", [1, 2]),
    ("PUT", "/v1/vnis/100/vteps/192.0.2.9", b"{not json"),
    ("PUT", "/v1/vnis/100/vteps/192.0.2.9", b'{"hold_time": NaN}'),
    ("PUT", "/v1/vnis/100/vteps/192.0.2.9", b'{"hold_time": 5, "hold_time": 6}'),
    ("PUT", "/v1/vnis/100/vteps/192.0.2.9", b"\xff\xfe"),
    ("DELETE", "/v1/vnis/0/vteps/192.0.2.1", None),
    ("DELETE", "/v1/vnis/100/vteps/239.1.1.1", None),
    ("GET", "/v1/vnis/0", None),
    ("GET", "/v1/vnis/abc", None),
    ("PUT", "/v1/static", None),
    ("PUT", "/v1/static", {}),
    ("PUT", "/v1/static", {"vteps": {}}),
    ("PUT", "/v1/static", {"vteps": [], "extra": 1}),
    ("PUT", "/v1/static", {"vteps": [{"vni": 100}]}),
    ("PUT", "/v1/static", {"vteps": [{"vni": "100", "address": "192.0.2.1"}]}),
    ("PUT", "/v1/static", {"vteps": [{"vni": 100, "address": "192.0.2.1", "x": 1}]}),
    # one bad line in an otherwise good import changes nothing
    (
        "PUT",
        "/v1/static",
        {
            "vteps": [
                {"vni": 100, "address": "192.0.2.20"},
                {"vni": 101, "address": "192.0.2.21"},
                {"vni": 102, "address": "224.0.0.1"},
            ]
        },
    ),
]


async def test_invalid_input_is_400_and_changes_nothing(
    store: st.Store, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    now = time.time()
    await register(store, "hv-1", {100: "192.0.2.1"}, now)
    batch = st.Batch()
    batch.enrol_static(st.StaticVtep(100, "198.51.100.1"))
    await store.apply(batch, now)
    before = await snapshot(store)
    harness = Harness(store)
    async with serve(harness, write_tokens(tmp_path)) as base:
        for method, path, body in BAD_REQUESTS:
            headers = dict(ADMIN)
            data = None
            if isinstance(body, bytes):
                data = body
                headers["Content-Type"] = "application/json"
            elif body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            status, payload = await call(session, method, base + path, data=data, headers=headers)
            assert status == 400, (method, path, body, status, payload)
            assert set(payload) == {"error", "detail"}, payload
            assert payload["detail"], payload
    assert await snapshot(store) == before
    assert harness.changes == []


async def test_oversized_and_wrong_type_bodies(
    store: st.Store, session: aiohttp.ClientSession
) -> None:
    before = await snapshot(store)
    async with serve(Harness(store)) as base:
        big = json.dumps(
            {"vteps": [{"vni": 1, "address": "192.0.2.1", "description": "x" * 200}] * 6000}
        ).encode()
        assert len(big) > 1024 * 1024
        status, data = await call(
            session,
            "PUT",
            f"{base}/v1/static",
            data=big,
            headers={"Content-Type": "application/json"},
        )
        assert status == 413 and data["error"] == "request-entity-too-large"
        status, data = await call(
            session,
            "PUT",
            f"{base}/v1/vnis/1/vteps/192.0.2.1",
            data=b'{"description": "' + b"x" * 70000 + b'"}',
            headers={"Content-Type": "application/json"},
        )
        assert status == 413
        status, data = await call(
            session,
            "PUT",
            f"{base}/v1/vnis/1/vteps/192.0.2.1",
            data=b"hold_time=5",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert status == 415 and set(data) == {"error", "detail"}
        status, data = await call(session, "POST", f"{base}/v1/vnis")
        assert status == 405 and set(data) == {"error", "detail"}
        status, data = await call(session, "GET", f"{base}/v2/nothing")
        assert status == 404 and set(data) == {"error", "detail"}
    assert await snapshot(store) == before


async def test_healthz_503_when_registry_down(
    store: st.Store, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down() -> st.RegistryHealth:
        return st.RegistryHealth(False, "the registry does not answer")

    async with serve(Harness(store)) as base:
        monkeypatch.setattr(store, "check", down)
        status, data = await call(session, "GET", f"{base}/healthz")
        assert status == 503 and data["status"] == "degraded"
        assert data["reason"] == "the registry does not answer"


# -------------------------------------------------------- OpenAPI in step


def test_every_route_is_documented_and_vice_versa() -> None:
    class NoStore(st.Store):
        def __init__(self) -> None:  # never touches a database
            pass

    nostore = NoStore()
    app = build_app(Backend(nostore, nostore.apply))
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    }
    doc = build_document(api.ROUTES)
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert served == documented
    for path, ops in doc["paths"].items():
        for op in ops.values():
            params = {p["name"] for p in op.get("parameters", [])}
            assert params == set(path.replace("}", "{").split("{")[1::2]), path
            for status, response in op["responses"].items():
                assert response["content"], (path, status)


# ------------------------------------------- the real daemon pushes static changes


async def test_static_changes_are_pushed_by_the_daemon(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    daemon_cfg = make_config(sqlite_url(tmp_path))
    async with running(daemon_cfg) as daemon:
        runner = await api.start_api(daemon, "127.0.0.1", 0, None)
        base = f"http://127.0.0.1:{api.bound_port(runner)}"
        agent = await Agent.create("hv-1", server_addr(daemon))
        try:
            agent.register({100: ipaddress.ip_address("192.0.2.1")})
            await wait_until(lambda: 100 in agent.members, 5, "the first membership")
            static = ipaddress.ip_address("198.51.100.7")

            status, _ = await call(session, "PUT", f"{base}/v1/vnis/100/vteps/{static}")
            assert status == 201
            await wait_until(lambda: static in agent.peers(100), 5, "the enrolled VTEP")

            status, _ = await call(session, "DELETE", f"{base}/v1/vnis/100/vteps/{static}")
            assert status == 200
            await wait_until(lambda: static not in agent.peers(100), 5, "the removal")

            other = ipaddress.ip_address("198.51.100.8")
            status, _ = await call(
                session,
                "PUT",
                f"{base}/v1/static",
                body={"vteps": [{"vni": 100, "address": str(other)}]},
            )
            assert status == 200
            await wait_until(lambda: agent.peers(100) == {other}, 5, "the imported VTEP")
            status, text = await call(session, "GET", f"{base}/metrics")
            assert status == 200 and "vxsnd_pushes" in text
        finally:
            agent.close()
            await runner.cleanup()


async def test_api_service_hook(
    tmp_path: Path, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`daemon.services.append(api_service(...))`: the API lives as long as the daemon."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    original = Daemon.__init__

    def with_api(self: Daemon, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.services.append(api.api_service("127.0.0.1", port, None))

    monkeypatch.setattr(Daemon, "__init__", with_api)
    async with running(make_config(sqlite_url(tmp_path))):
        status, data = await call(session, "GET", f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and data == {"status": "ok"}
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(session, "GET", f"http://127.0.0.1:{port}/healthz")


async def test_a_node_id_conflict_is_refused_on_the_wire_and_listed(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """Issue 10: a second live agent claiming hv-1 from another address gets a
    Refusal naming the holder; /v1/conflicts, vxsndctl and /metrics show it."""
    async with running(make_config(sqlite_url(tmp_path))) as daemon:
        runner = await api.start_api(daemon, "127.0.0.1", 0, None)
        base = f"http://127.0.0.1:{api.bound_port(runner)}"
        holder = await Agent.create("hv-1", server_addr(daemon))
        clone = await Agent.create("hv-1", server_addr(daemon), host="127.0.0.2")
        try:
            holder.register({100: ipaddress.ip_address("192.0.2.1")})
            await wait_until(lambda: 100 in holder.members, 5, "the holder's membership")
            clone.register({100: ipaddress.ip_address("192.0.2.2")})
            clone.register({100: ipaddress.ip_address("192.0.2.2")})
            await wait_until(lambda: len(clone.refusals) == 2, 5, "two refusals")
            assert {(r.reason, str(r.holder)) for r in clone.refusals} == {
                ("node-id-conflict", "127.0.0.1")
            }
            assert 0 < clone.refusals[0].expires_in <= 90 and clone.members == {}
            status, data = await call(session, "GET", f"{base}/v1/conflicts")
            assert status == 200
            (listed,) = data["conflicts"]
            assert (listed["node_id"], listed["holder"], listed["claimant"]) == (
                "hv-1",
                "127.0.0.1",
                "127.0.0.2",
            )
            assert listed["refused"] == 2
            status, text = await call(session, "GET", f"{base}/metrics")
            assert "vxsnd_node_id_conflicts_total 2.0" in text
            status, node = await call(session, "GET", f"{base}/v1/nodes/hv-1")
            assert node["address"] == "127.0.0.1"  # the first keeps it
            ctl = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "vxsnd.ctl", "--api", base, "conflicts"),
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await ctl.communicate()
            assert ctl.returncode == 0
            assert out.decode().splitlines()[1].split()[:4] == [
                "hv-1",
                "127.0.0.1",
                "127.0.0.2",
                "2",
            ]
        finally:
            holder.close()
            clone.close()
            await runner.cleanup()
