"""The OpenAPI 3.1 document of the REST API, built from the API's own route table.

vxsnd/api.py declares every endpoint once, as a `Route` (method, path, handler,
access, request and response schemas from schema/rest.py); it registers the
routes with aiohttp from that table and serves `build_document(ROUTES)` at
/v1/openapi.json. Nothing is described twice, so the document cannot drift from
the handlers; tests/integration/test_api.py checks both directions anyway.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from vxflood.schema.rest import ERROR_SCHEMA, Json

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

API_TITLE = "vxsnd REST API"
API_VERSION = "1"
OPENAPI_VERSION = "3.1.0"


class Access(enum.Enum):
    """Who may call a route when a token file is configured."""

    PUBLIC = "public"  # no token ever (health, the document itself)
    READ = "read"  # a read or admin token
    ADMIN = "admin"  # an admin token


@dataclass(frozen=True)
class Body:
    """A request body: its schema, whether it may be omitted, its size limit in bytes."""

    schema: Json
    required: bool
    limit: int


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # aiohttp and OpenAPI share the {name} template syntax
    handler: Handler
    name: str  # operationId and the aiohttp route name
    summary: str
    access: Access
    # status -> (description, JSON schema); a None schema is a text/plain body.
    responses: Mapping[int, tuple[str, Json | None]]
    params: Mapping[str, Json] = field(default_factory=dict)
    body: Body | None = None
    tag: str = "registry"
    media: str = "text/plain"  # the content type of responses whose schema is None

    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)


def _error(description: str) -> tuple[str, Json | None]:
    return description, ERROR_SCHEMA


def responses_of(route: Route, authenticated: bool = True) -> dict[int, tuple[str, Json | None]]:
    """The route's own responses plus the error responses every such route can give."""
    out: dict[int, tuple[str, Json | None]] = {}
    if route.params or route.body is not None:
        out[400] = _error("invalid VNI, address or payload; nothing was changed")
    if authenticated and route.access is not Access.PUBLIC:
        out[401] = _error("missing or unknown bearer token")
        if route.access is Access.ADMIN:
            out[403] = _error("the token's role is read; this needs admin")
    if route.params:
        out[404] = _error("no such object")
    if route.body is not None:
        out[408] = _error("the request body did not arrive in time")
        out[413] = _error("request body too large")
        out[415] = _error("request body is not application/json")
    if route.tag == "registry":
        out[503] = _error("the registry database does not answer")
    out.update(route.responses)
    return out


def build_document(
    routes: Iterable[Route], *, server_url: str | None = None, authenticated: bool = True
) -> Json:
    """The document as served: with `authenticated` (a token file is configured) every
    non-public operation declares bearer security and its 401/403; without, none does
    and the document declares no security scheme at all."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        op: dict[str, Any] = {
            "operationId": route.name,
            "summary": route.summary,
            "tags": [route.tag],
            "responses": {},
        }
        if authenticated and route.access is not Access.PUBLIC:
            op["security"] = [{"bearer": []}]
            op["x-vxsnd-role"] = route.access.value
        params = [
            {"name": name, "in": "path", "required": True, "schema": route.params[name]}
            for name in route.path_params()
        ]
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = {
                "required": route.body.required,
                "content": {"application/json": {"schema": route.body.schema}},
            }
        for status, (description, schema) in sorted(responses_of(route, authenticated).items()):
            response: dict[str, Any] = {"description": description}
            if schema is None:
                response["content"] = {route.media: {"schema": {"type": "string"}}}
            else:
                response["content"] = {"application/json": {"schema": schema}}
            op["responses"][str(status)] = response
        paths.setdefault(route.path, {})[route.method.lower()] = op
    access = (
        "Every /v1 request needs a bearer token (role read), every change role admin."
        if authenticated
        else "This service node runs without a token file: no request needs a token "
        "(the API then listens on loopback only)."
    )
    doc: Json = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": API_TITLE,
            "version": API_VERSION,
            "description": (
                "Registry of the vxflood service node: VNIs, their VTEPs (registered by "
                "agents or enrolled as static), and the agents. " + access
            ),
        },
        "paths": paths,
    }
    if authenticated:
        doc["components"] = {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        }
    if server_url is not None:
        doc["servers"] = [{"url": server_url}]
    return doc
