"""The status page's handlers: HTML pages, their live parts as JSON, and the assets.

Every page is rendered whole on the server (it works without JavaScript:
search, sort and paging are GET links and forms). The page's script polls the
matching /ui/live endpoint with the version it shows; the answer is either
"unchanged" or the page's changing parts, rendered by the same template
macros, which the script swaps in place.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web
from markupsafe import Markup

from vxflood.schema import rest
from vxflood.schema.rest import Json
from vxsnd import api_backend as reg
from vxsnd import registry as st
from vxsnd.conflicts import Conflict
from vxsnd.web import model
from vxsnd.web.monitor import WINDOWS, Monitor

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CHANGES_SHOWN: Final = 50
NODE_VNIS_SHOWN: Final = 8
OVERVIEW_PARAMS: Final = ("vq", "vs", "vp", "aq", "as", "ap")

LIVE_SCHEMA: Final[Json] = {
    "type": "object",
    "required": ["version", "changed", "html"],
    "properties": {
        "version": {"type": "integer", "minimum": 0},
        "changed": {"type": "boolean"},
        "html": {
            "type": "object",
            "description": "element id -> its new inner HTML",
            "additionalProperties": {"type": "string"},
        },
    },
}


@dataclass
class PageState:
    store: st.Store
    monitor: Monitor
    env: jinja2.Environment
    # the node-id conflicts the daemon refused (vxsnd.conflicts), as of `now`
    conflicts: Callable[[float], list[Conflict]] = lambda _now: []
    _cache: tuple[int, model.Overview] | None = field(default=None, repr=False)

    async def overview(self) -> tuple[model.Snapshot, model.Overview]:
        """The overview of the monitor's snapshot, computed once per version."""
        snap = await reg._guard(self.monitor.current())
        version = self.monitor.version
        if self._cache is None or self._cache[0] != version:
            self._cache = (version, model.overview(snap))
        return snap, self._cache[1]


PAGE: Final = web.AppKey("vxsnd_web_page", PageState)


# ------------------------------------------------------------------ templates


def _utc(ts: float | None) -> str:
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z"


def _span(seconds: float) -> str:
    s = abs(seconds)
    if s < 90:
        text = f"{s:.0f} s"
    elif s < 5400:
        text = f"{s / 60:.0f} min"
    elif s < 172800:
        text = f"{s / 3600:.0f} h"
    else:
        text = f"{s / 86400:.0f} d"
    return text


def _ago(ts: float | None, now: float) -> Markup:
    if ts is None:
        return Markup("never")
    words = f"{_span(now - ts)} ago" if ts <= now else f"in {_span(ts - now)}"
    return Markup('<time datetime="{}" title="{}">{}</time>').format(_utc(ts), _utc(ts), words)


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("vxsnd.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = _utc
    env.filters["span"] = _span
    env.filters["q"] = lambda text: quote(str(text), safe="")
    env.globals["ago"] = _ago
    env.globals["page_size"] = model.PAGE_SIZE
    env.globals["windows"] = [_span(w) for w in WINDOWS]
    return env


def _macro(env: jinja2.Environment, name: str, *args: Any) -> str:
    return str(getattr(env.get_template("parts.html").module, name)(*args))


def _html(env: jinja2.Environment, template: str, status: int = 200, **ctx: Any) -> web.Response:
    body = env.get_template(template).render(**ctx)
    return web.Response(
        text=body,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
        },
    )


def _live(version: int, changed: bool, html: Mapping[str, str]) -> web.Response:
    return web.json_response(
        {"version": version, "changed": changed, "html": dict(html)},
        headers={"Cache-Control": "no-store"},
    )


def _since(request: web.Request) -> int | None:
    text = request.query.get("since", "")
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None


def _page(request: web.Request) -> PageState:
    return request.app[PAGE]


# ------------------------------------------------------------------ overview


@dataclass(frozen=True)
class OverviewView:
    params: dict[str, str]
    vnis: model.TablePage[model.VniRow]
    agents: model.TablePage[model.AgentRow]

    def link(self, **change: str) -> str:
        """This overview's URL with some parameters changed (empty ones left out)."""
        params = {**self.params, **change}
        return "/ui?" + urlencode({k: v for k, v in params.items() if v and v != "1"})


def _overview_view(request: web.Request, ov: model.Overview) -> OverviewView:
    q = request.query
    params = {k: q.get(k, "")[: model.QUERY_MAX] for k in OVERVIEW_PARAMS}
    vq = model.TableQuery.parse(params["vq"], params["vs"], params["vp"], model.VNI_COLUMNS)
    aq = model.TableQuery.parse(params["aq"], params["as"], params["ap"], model.AGENT_COLUMNS)
    return OverviewView(
        params,
        model.query_table(ov.vnis, vq, model.VNI_COLUMNS, model.match_vni),
        model.query_table(ov.agents, aq, model.AGENT_COLUMNS, model.match_agent),
    )


def _overview_parts(
    state: PageState, snap: model.Snapshot, ov: model.Overview, view: OverviewView
) -> dict[str, str]:
    env, now, mon = state.env, snap.taken_at, state.monitor
    rejected, since = mon.rejected.table()
    return {
        "summary": _macro(env, "summary", ov.summary, now),
        "vni-table": _macro(env, "vni_table", view, model.VNI_COLUMNS, now),
        "agent-table": _macro(env, "agent_table", view, model.AGENT_COLUMNS, now, NODE_VNIS_SHOWN),
        "rejected": _macro(env, "rejected", rejected, since, now),
        "registry": _macro(env, "registry", _registry_info(state.store, snap), now),
        "service-nodes": _macro(env, "service_nodes", _service_nodes(state, snap), now),
        "conflicts": _macro(env, "conflicts", state.conflicts(now), now),
    }


def _service_nodes(state: PageState, snap: model.Snapshot) -> list[dict[str, object]]:
    me = state.store.presence_id
    return [
        {
            "node": n,
            "me": n.server_id == me,
            "up": model.service_node_up(n, snap.taken_at),
        }
        for n in snap.service_nodes
    ]


def _registry_info(store: st.Store, snap: model.Snapshot) -> dict[str, object]:
    url = store.sync_engine.url
    return {
        "id": store.registry_id,
        "backend": url.get_backend_name(),
        "url": url.render_as_string(hide_password=True),
        "healthy": snap.healthy,
        "read_at": snap.taken_at,
    }


async def overview_page(request: web.Request) -> web.Response:
    state = _page(request)
    snap, ov = await state.overview()
    view = _overview_view(request, ov)
    parts = _overview_parts(state, snap, ov, view)
    return _html(
        state.env,
        "overview.html",
        title="vxsnd status",
        live=view.link().replace("/ui?", "/ui/live?", 1),
        version=state.monitor.version,
        parts=parts,
        view=view,
    )


async def overview_live(request: web.Request) -> web.Response:
    state = _page(request)
    since = _since(request)
    snap, ov = await state.overview()
    version = state.monitor.version
    if since == version:
        return _live(version, False, {})
    return _live(version, True, _overview_parts(state, snap, ov, _overview_view(request, ov)))


# ------------------------------------------------------------------ one VNI


async def _vni_parts(state: PageState, vni: int) -> dict[str, str] | None:
    snap = await reg._guard(state.monitor.current())
    store = state.store
    generation, members = await reg._guard(store.members(vni))
    if generation == 0 and not members:
        return None
    memberships = await reg._guard(store.memberships(vni))
    log = await reg._guard(store.change_log(vni, CHANGES_SHOWN))
    nodes = {n.node_id: n for n in snap.nodes}
    now = snap.taken_at
    rows = model.member_rows(members, memberships, nodes, generation, now)
    updated = next((v.updated_at for v in snap.vnis if v.vni == vni), None)
    seen = state.monitor.seen.get(vni, {})
    changes = model.change_rows(log, members, generation, updated, seen)
    env = state.env
    return {
        "vni-summary": _macro(env, "vni_summary", vni, generation, rows, updated, now),
        "members": _macro(env, "member_table", rows, generation, now),
        "changes": _macro(env, "change_table", changes, now),
    }


async def vni_page(request: web.Request) -> web.Response:
    state = _page(request)
    vni = rest.vni_from_path(request.match_info["vni"])
    parts = await _vni_parts(state, vni)
    if parts is None:
        what = f"VNI {vni} has no members and never had any."
        return _html(state.env, "missing.html", 404, title=f"VNI {vni}", what=what)
    return _html(
        state.env,
        "vni.html",
        title=f"VNI {vni}",
        vni=vni,
        live=f"/ui/live/vnis/{vni}",
        version=state.monitor.version,
        parts=parts,
    )


async def vni_live(request: web.Request) -> web.Response:
    state = _page(request)
    vni = rest.vni_from_path(request.match_info["vni"])
    since = _since(request)
    await reg._guard(state.monitor.current())
    version = state.monitor.version
    if since == version:
        return _live(version, False, {})
    parts = await _vni_parts(state, vni)
    if parts is None:
        raise reg.NotFound(f"VNI {vni} has no members and never had any", "unknown-vni")
    return _live(version, True, parts)


# ------------------------------------------------------------------ one agent


async def _node_parts(state: PageState, node_id: str) -> dict[str, str] | None:
    snap = await reg._guard(state.monitor.current())
    node = await reg._guard(state.store.node(node_id))
    if node is None:
        return None
    vnis = await reg._guard(state.store.node_vnis(node_id))
    now = snap.taken_at
    expiring = model.node_expiring(node, now)
    behind = sum(1 for v in vnis if v.applied_generation < v.generation)
    return {
        "node-info": _macro(state.env, "node_info", node, behind, expiring, now),
        "node-vnis": _macro(state.env, "node_vnis", vnis),
    }


async def node_page(request: web.Request) -> web.Response:
    state = _page(request)
    node_id = request.match_info["node"]
    parts = await _node_parts(state, node_id)
    if parts is None:
        what = f"No agent with id {node_id!r} is registered."
        return _html(state.env, "missing.html", 404, title="Unknown agent", what=what)
    return _html(
        state.env,
        "node.html",
        title=f"Agent {node_id}",
        node_id=node_id,
        live=f"/ui/live/nodes/{quote(node_id, safe='')}",
        version=state.monitor.version,
        parts=parts,
    )


async def node_live(request: web.Request) -> web.Response:
    state = _page(request)
    node_id = request.match_info["node"]
    since = _since(request)
    await reg._guard(state.monitor.current())
    version = state.monitor.version
    if since == version:
        return _live(version, False, {})
    parts = await _node_parts(state, node_id)
    if parts is None:
        raise reg.NotFound(f"no agent with id {node_id!r} is registered", "unknown-node")
    return _live(version, True, parts)


# ------------------------------------------------------------------ assets


def asset(name: str, media: str) -> Handler:
    """A handler serving one file of vxsnd/web/static (read once, from the wheel)."""
    body = resources.files("vxsnd.web").joinpath("static", name).read_bytes()

    async def serve(_request: web.Request) -> web.Response:
        return web.Response(
            body=body,
            content_type=media,
            charset="utf-8",
            headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
        )

    return serve
