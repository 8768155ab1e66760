"""The REST API of the service node (aiohttp, JSON, under /v1).

Runs inside vxsnd's own event loop: the daemon calls `start_api(daemon, ...)`
and gets an `AppRunner` back to clean up on shutdown. Every endpoint is one
`Route` in `ROUTES` (vxsnd/openapi.py), which both registers it with aiohttp
and describes it in the OpenAPI document served at /v1/openapi.json.

Reads go straight to the store. Changes (static VTEPs) go through the same
batch path as registrations: `Backend.submit` hands the operation to the
engine when the daemon offers that, or applies it to the store and tells the
engine which VNIs changed, so members are pushed like after any other change.

Errors are always JSON `{"error": CODE, "detail": TEXT}`. Nothing is written
before the whole request has been validated.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from vxflood.schema import rest
from vxflood.schema.rest import Json, PayloadError
from vxsnd import api_backend as reg
from vxsnd import web as status_page
from vxsnd.api_body import http_log, read_json
from vxsnd.openapi import Access, Body, Route, build_document
from vxsnd.tokens import Role, TokenFileError, Tokens

log = logging.getLogger("vxsnd.api")

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 10080


class ApiConfigError(ValueError):
    """The API cannot start as configured (message says why and what to do)."""


@dataclass
class ApiState:
    backend: reg.Backend
    tokens: Tokens | None
    metrics: CollectorRegistry | None
    document: Json


STATE: Final = web.AppKey("vxsnd_api_state", ApiState)
ROUTE_BY_NAME: Final = web.AppKey("vxsnd_api_routes", dict[str, Route])


def _state(request: web.Request) -> ApiState:
    return request.app[STATE]


# --------------------------------------------------------------------- helpers


def json_response(data: Json, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), allow_nan=False)


def error_response(status: int, error: str, detail: str) -> web.Response:
    return json_response({"error": error, "detail": detail}, status=status)


def _address_param(request: web.Request) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return rest.address_from_text(request.match_info["address"])


# -------------------------------------------------------------------- handlers


async def list_vnis(request: web.Request) -> web.Response:
    vnis = await _state(request).backend.vnis()
    return json_response({"vnis": [reg.vni_summary_json(v) for v in vnis]})


async def get_vni(request: web.Request) -> web.Response:
    vni = rest.vni_from_path(request.match_info["vni"])
    detail = await _state(request).backend.vni(vni)
    if detail is None:
        raise reg.NotFound(f"VNI {vni} has no members and never had any", "unknown-vni")
    return json_response(reg.vni_detail_json(detail))


async def enrol_vtep(request: web.Request) -> web.Response:
    route = request.app[ROUTE_BY_NAME]["enrol_vtep"]
    vni = rest.vni_from_path(request.match_info["vni"])
    address = _address_param(request)
    assert route.body is not None
    enrol = rest.parse_enrol(await read_json(request, route.body))
    vtep = rest.StaticVtep(vni, address, enrol.hold_time, enrol.description)
    outcome = await _state(request).backend.enrol(vtep, time.time())
    return json_response(reg.enrol_json(outcome), status=201 if outcome.created else 200)


async def remove_vtep(request: web.Request) -> web.Response:
    vni = rest.vni_from_path(request.match_info["vni"])
    address = _address_param(request)
    generation = await _state(request).backend.remove(vni, address, time.time())
    return json_response({"vni": vni, "address": str(address), "generation": generation})


async def replace_static(request: web.Request) -> web.Response:
    route = request.app[ROUTE_BY_NAME]["replace_static"]
    assert route.body is not None
    vteps = rest.parse_replace_all(await read_json(request, route.body))
    counts = await _state(request).backend.replace_all(vteps, time.time())
    return json_response(counts.json())


async def list_nodes(request: web.Request) -> web.Response:
    nodes = await _state(request).backend.nodes()
    return json_response({"nodes": [reg.node_summary_json(n) for n in nodes]})


async def get_node(request: web.Request) -> web.Response:
    node_id = rest.node_from_path(request.match_info["node"])
    detail = await _state(request).backend.node(node_id)
    if detail is None:
        raise reg.NotFound(f"no agent with id {node_id!r} is registered", "unknown-node")
    return json_response(reg.node_detail_json(detail))


async def healthz(request: web.Request) -> web.Response:
    health = await _state(request).backend.health()
    if health.ok:
        return json_response({"status": "ok"})
    return json_response({"status": "degraded", "reason": health.reason or "unknown"}, status=503)


async def metrics(request: web.Request) -> web.Response:
    registry = _state(request).metrics
    body = generate_latest(registry) if registry is not None else b""
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_document(request: web.Request) -> web.Response:
    return json_response(_state(request).document)


_VNI: Final = {"vni": rest.VNI_SCHEMA}
_VTEP: Final = {"vni": rest.VNI_SCHEMA, "address": rest.ADDRESS_SCHEMA}

ROUTES: Final[tuple[Route, ...]] = (
    Route(
        "GET",
        "/v1/vnis",
        list_vnis,
        "list_vnis",
        "Every VNI with its generation and member counts",
        Access.READ,
        {200: ("the VNIs", rest.VNI_LIST_SCHEMA)},
    ),
    Route(
        "GET",
        "/v1/vnis/{vni}",
        get_vni,
        "get_vni",
        "One VNI: generation and every member (registered or static)",
        Access.READ,
        {200: ("the VNI", rest.VNI_DETAIL_SCHEMA)},
        params=_VNI,
    ),
    Route(
        "PUT",
        "/v1/vnis/{vni}/vteps/{address}",
        enrol_vtep,
        "enrol_vtep",
        "Enrol a static VTEP (for devices that run no agent), or update its hold time "
        "and description; an address an agent registered becomes static (pinned). "
        "Members are pushed the new flood list",
        Access.ADMIN,
        {
            200: ("the static VTEP was updated", rest.ENROL_RESULT_SCHEMA),
            201: ("the static VTEP was enrolled", rest.ENROL_RESULT_SCHEMA),
        },
        params=_VTEP,
        body=Body(rest.ENROL_SCHEMA, required=False, limit=rest.BODY_MAX),
    ),
    Route(
        "DELETE",
        "/v1/vnis/{vni}/vteps/{address}",
        remove_vtep,
        "remove_vtep",
        "Remove a static VTEP; members are pushed the new flood list",
        Access.ADMIN,
        {
            200: ("the static VTEP was removed", rest.REMOVE_RESULT_SCHEMA),
            409: ("the address is registered by an agent, not static", rest.ERROR_SCHEMA),
        },
        params=_VTEP,
    ),
    Route(
        "PUT",
        "/v1/static",
        replace_static,
        "replace_static",
        "Atomically replace every static VTEP with the given list",
        Access.ADMIN,
        {
            200: ("the static VTEPs were replaced", rest.REPLACE_RESULT_SCHEMA),
            409: ("one VTEP is listed twice with different settings", rest.ERROR_SCHEMA),
        },
        body=Body(rest.REPLACE_ALL_SCHEMA, required=True, limit=rest.IMPORT_BODY_MAX),
    ),
    Route(
        "GET",
        "/v1/nodes",
        list_nodes,
        "list_nodes",
        "Every registered agent",
        Access.READ,
        {200: ("the agents", rest.NODE_LIST_SCHEMA)},
    ),
    Route(
        "GET",
        "/v1/nodes/{node}",
        get_node,
        "get_node",
        "One agent: address, VNIs with local address and applied generation",
        Access.READ,
        {200: ("the agent", rest.NODE_DETAIL_SCHEMA)},
        params={"node": rest.NODE_ID_SCHEMA},
    ),
    Route(
        "GET",
        "/healthz",
        healthz,
        "healthz",
        "200 when the registry answers, 503 otherwise",
        Access.PUBLIC,
        {
            200: ("the registry answers", rest.HEALTH_SCHEMA),
            503: ("the registry does not answer", rest.HEALTH_SCHEMA),
        },
        tag="service",
    ),
    Route(
        "GET",
        "/metrics",
        metrics,
        "metrics",
        "Prometheus metrics (text exposition format)",
        Access.READ,
        {200: ("the metrics", None)},
        tag="service",
    ),
    Route(
        "GET",
        "/v1/openapi.json",
        openapi_document,
        "openapi",
        "This document",
        Access.PUBLIC,
        {200: ("the OpenAPI document", {"type": "object"})},
        tag="service",
    ),
    *status_page.ROUTES,
)


# ----------------------------------------------------------------- middleware


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def _path(request: web.Request) -> str:
    """The path as received, for a log line or a message: escaped and cut, since a
    client chooses every byte of it."""
    raw = request.raw_path
    shown = raw if len(raw) <= 200 else raw[:197] + "..."
    return ascii(shown)[1:-1] if not shown.isascii() or not shown.isprintable() else shown


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except PayloadError as exc:
        return error_response(exc.status, exc.error, exc.detail)
    except reg.NotFound as exc:
        return error_response(404, exc.error, exc.detail)
    except reg.Conflict as exc:
        return error_response(409, exc.error, exc.detail)
    except reg.Unavailable as exc:
        log.warning("registry unavailable during %s %s: %s", request.method, _path(request), exc)
        return error_response(503, "registry-unavailable", str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "-")
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else ""
        if exc.status == 404:
            detail = f"no such endpoint: {_path(request)}"
        elif exc.status == 405:
            allowed = exc.headers.get("Allow", "")
            detail = f"{request.method} is not allowed here (allowed: {allowed})"
        elif exc.status == 413:
            detail = "request body too large"
        response = error_response(exc.status, code, detail or exc.reason)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("internal error in %s %s", request.method, _path(request))
        return error_response(500, "internal", "internal error; see the vxsnd log")


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    tokens = _state(request).tokens
    route = request.app[ROUTE_BY_NAME].get(request.match_info.route.name or "")
    if tokens is None or route is None or route.access is Access.PUBLIC:
        return await handler(request)
    presented = _bearer(request)
    if presented is None and route.tag == status_page.TAG:
        presented = status_page.basic_token(request)
    token = tokens.lookup(presented) if presented is not None else None
    if token is None:
        response = error_response(
            401,
            "unauthorized",
            "missing bearer token" if presented is None else "unknown bearer token",
        )
        response.headers["WWW-Authenticate"] = (
            status_page.CHALLENGE if route.tag == status_page.TAG else 'Bearer realm="vxsnd"'
        )
        return response
    needed = Role.ADMIN if route.access is Access.ADMIN else Role.READ
    if not token.role.allows(needed):
        return error_response(
            403, "forbidden", f"token {token.name!r} has role read; this change needs admin"
        )
    if needed is Role.ADMIN:
        log.info("%s %s by token %r", request.method, _path(request), token.name)
    return await handler(request)


# ------------------------------------------------------------------ assembly


def build_app(
    backend: reg.Backend,
    *,
    tokens: Tokens | None = None,
    metrics_registry: CollectorRegistry | None = None,
) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware],
        client_max_size=rest.IMPORT_BODY_MAX,
    )
    document = build_document(ROUTES, authenticated=tokens is not None)
    app[STATE] = ApiState(backend, tokens, metrics_registry, document)
    app[ROUTE_BY_NAME] = {route.name: route for route in ROUTES}
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler, name=route.name)
    status_page.setup(app, backend.store, metrics_registry)
    return app


def check_bind(host: str, tokens: Tokens | None) -> None:
    """Without tokens the API is open, so it may only listen on loopback."""
    if tokens is not None:
        return
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ApiConfigError(
            f"refusing to serve the REST API on {host} without a token file: "
            "give --token-file, or bind it to loopback (e.g. --api 127.0.0.1:10080)"
        )


def check_api_config(host: str, token_file: str | None) -> Tokens | None:
    """Everything start_api would refuse, checked before the daemon starts (ApiConfigError)."""
    tokens = load_tokens(token_file)
    check_bind(host, tokens)
    return tokens


def load_tokens(token_file: str | None) -> Tokens | None:
    if token_file is None:
        return None
    try:
        return Tokens.load(token_file)
    except TokenFileError as exc:
        raise ApiConfigError(str(exc)) from None


async def start_api(
    daemon: object,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token_file: str | None = None,
) -> web.AppRunner:
    """Serve the API for `daemon` on host:port in the running loop.

    `daemon` needs a `store`; optionally `metrics.registry` (prometheus), and one
    of `submit_static(ops)` or `on_static_change(result)` (see vxsnd/api_backend.py).
    Raises ApiConfigError for a bad token file or an unauthenticated non-loopback
    address; OSError when the address cannot be bound. Stop with `runner.cleanup()`.
    """
    tokens = check_api_config(host, token_file)
    metrics_obj = getattr(daemon, "metrics", None)
    registry = getattr(metrics_obj, "registry", None)
    app = build_app(reg.Backend.from_daemon(daemon), tokens=tokens, metrics_registry=registry)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, logger=http_log)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    where = ", ".join(_addresses(runner)) or f"{host}:{port}"
    if tokens is None:
        log.warning("REST API on http://%s without authentication (loopback only)", where)
    else:
        log.info(
            "REST API on http://%s, %d token(s) from %s", where, len(tokens.entries), tokens.source
        )
    return runner


def _addresses(runner: web.AppRunner) -> Sequence[str]:
    out = []
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            host = str(addr[0])
            out.append(f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}")
    return out


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port actually bound (useful with port 0)."""
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    raise RuntimeError("the API is not listening")


def api_service(
    host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token_file: str | None = None
) -> Callable[[Any], AbstractAsyncContextManager[web.AppRunner]]:
    """A `Daemon.services` factory: the API runs while the daemon serves.

    `daemon.services.append(api_service(host, port, token_file))`
    """

    @asynccontextmanager
    async def service(daemon: Any) -> AsyncIterator[web.AppRunner]:
        runner = await start_api(daemon, host, port, token_file)
        reloaders: list[Callable[[], None]] | None = getattr(daemon, "reloaders", None)
        state = runner.app[STATE]

        def reload_tokens() -> None:
            assert token_file is not None
            tokens = Tokens.load(token_file)
            state.tokens = tokens
            log.info("tokens reloaded from %s: %d token(s)", token_file, len(tokens.entries))

        if token_file is not None and reloaders is not None:
            reloaders.append(reload_tokens)
        try:
            yield runner
        finally:
            if token_file is not None and reloaders is not None:
                reloaders.remove(reload_tokens)
            await runner.cleanup()

    return service
