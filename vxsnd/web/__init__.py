"""The operators' status page, served by vxsnd's REST API on the same listener.

`ROUTES` joins the API's route table (vxsnd/api.py), so the pages share its
token rules (a read token, or loopback without a token file) and appear in
the OpenAPI document. Browsers cannot send a bearer header when following a
link, so page routes also take the token as the password of HTTP Basic
authentication (any user name), and a refused page request challenges with
Basic: the browser asks once and sends it on every later request, polls
included. `setup(app, backend, metrics)` adds what the pages need beside the
routes: templates and the registry monitor that runs with the app.

Read-only: nothing on the page changes the registry.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry

from vxflood.schema.rest import ERROR_SCHEMA, VNI_SCHEMA, Json
from vxsnd.conflicts import Conflict
from vxsnd.openapi import Access, Route
from vxsnd.registry import Store
from vxsnd.web import handlers as h
from vxsnd.web.monitor import Monitor

TAG: Final = "web"
CHALLENGE: Final = 'Basic realm="vxsnd", charset="UTF-8"'

_NODE: Final[Json] = {"type": "string", "minLength": 1, "maxLength": 64}
_VNI: Final[Json] = VNI_SCHEMA
_DOWN: Final[tuple[str, Json | None]] = ("the registry database does not answer", ERROR_SCHEMA)
_QUERY_NOTE: Final = (
    " Query parameters (all optional): vq/aq search the VNI/agent table, vs/as sort it "
    "(column key, '-' first for descending), vp/ap choose its page."
)
_SINCE_NOTE: Final = (
    " With since=VERSION (the version of the page's last update) the answer says only "
    "whether anything changed, cheaply; the page polls this."
)


def _page(path: str, handler: h.Handler, name: str, summary: str, **params: Json) -> Route:
    responses: dict[int, tuple[str, Json | None]] = {200: ("the page (HTML)", None), 503: _DOWN}
    if params:
        responses[404] = ("no such VNI or agent (HTML)", None)
    return Route(
        "GET",
        path,
        handler,
        name,
        summary,
        Access.READ,
        responses,
        params=params,
        tag=TAG,
        media="text/html",
    )


def _live(path: str, handler: h.Handler, name: str, summary: str, **params: Json) -> Route:
    responses: dict[int, tuple[str, Json | None]] = {
        200: ("what changed on the page since `since`", h.LIVE_SCHEMA),
        503: _DOWN,
    }
    if params:
        responses[404] = ("no such VNI or agent", ERROR_SCHEMA)
    return Route(
        "GET", path, handler, name, summary, Access.READ, responses, params=params, tag=TAG
    )


def _asset(name: str, media: str) -> Route:
    return Route(
        "GET",
        f"/ui/static/{name}",
        h.asset(name, media),
        f"web_asset_{name.replace('.', '_')}",
        f"The status page's {name} (no data, no external resources)",
        Access.PUBLIC,
        {200: (name, None)},
        tag=TAG,
        media=media,
    )


ROUTES: Final[tuple[Route, ...]] = (
    _page("/ui", h.overview_page, "web_overview", "Status page: overview." + _QUERY_NOTE),
    _page("/ui/vnis/{vni}", h.vni_page, "web_vni", "Status page: one VNI", vni=_VNI),
    _page("/ui/nodes/{node}", h.node_page, "web_node", "Status page: one agent", node=_NODE),
    _live(
        "/ui/live",
        h.overview_live,
        "web_overview_live",
        "The overview's changing parts." + _QUERY_NOTE + _SINCE_NOTE,
    ),
    _live(
        "/ui/live/vnis/{vni}",
        h.vni_live,
        "web_vni_live",
        "One VNI page's changing parts." + _SINCE_NOTE,
        vni=_VNI,
    ),
    _live(
        "/ui/live/nodes/{node}",
        h.node_live,
        "web_node_live",
        "One agent page's changing parts." + _SINCE_NOTE,
        node=_NODE,
    ),
    _asset("style.css", "text/css"),
    _asset("app.js", "text/javascript"),
)


def basic_token(request: web.Request) -> str | None:
    """The password of an HTTP Basic `Authorization` header (the token), if any."""
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, colon, password = decoded.partition(":")
    return password if colon and password else None


def setup(
    app: web.Application,
    store: Store,
    metrics: CollectorRegistry | None,
    conflicts: Callable[[float], list[Conflict]] = lambda _now: [],
) -> None:
    """Give `app` what the page routes need; the monitor runs while the app does."""
    monitor = Monitor(store, metrics)
    app[h.PAGE] = h.PageState(store, monitor, h.environment(), conflicts)

    async def monitor_task(_app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(monitor.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(monitor_task)
