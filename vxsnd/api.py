"""The REST API of the service node (aiohttp, JSON, under /v1): the application.

Runs inside vxsnd's own event loop: the daemon enters `api_service(...)` (or a
test calls `start_api(daemon, ...)` and gets an `AppRunner` back to clean up).
The endpoints and their table are in vxsnd/api_routes.py; this module holds
what wraps them: the error and token middleware, the bind rules, start and
token-file reload.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from vxflood.schema import rest
from vxflood.schema.rest import PayloadError
from vxsnd import api_backend as reg
from vxsnd import web as status_page
from vxsnd.api_body import http_log
from vxsnd.api_routes import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    ROUTE_BY_NAME,
    ROUTES,
    STATE,
    ApiState,
    _state,
    error_response,
)
from vxsnd.api_routes import (
    ApiConfigError as ApiConfigError,
)
from vxsnd.openapi import Access, build_document
from vxsnd.tokens import Role, TokenFileError, Tokens

log = logging.getLogger("vxsnd.api")

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
    status_page.setup(app, backend.store, metrics_registry, backend.conflicts)
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
