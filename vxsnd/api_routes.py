"""The REST API's endpoints: handlers, their shared state and the `ROUTES` table.

Every endpoint is one `Route` (vxsnd/openapi.py), which both registers it with
aiohttp and describes it in the OpenAPI document served at /v1/openapi.json.
Reads go straight to the store; changes (static VTEPs) go through
`api_backend.Backend`, the same batch path as registrations, so members are
pushed like after any other change. Errors are always JSON
`{"error": CODE, "detail": TEXT}`; nothing is written before the whole request
has been validated. vxsnd/api.py assembles the application around these.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from vxflood.schema import rest
from vxflood.schema.rest import Json
from vxsnd import api_backend as reg
from vxsnd import web as status_page
from vxsnd.api_body import read_json
from vxsnd.openapi import Access, Body, Route
from vxsnd.tokens import Tokens

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


async def list_conflicts(request: web.Request) -> web.Response:
    conflicts = _state(request).backend.conflicts(time.time())
    return json_response({"conflicts": [reg.conflict_json(c) for c in conflicts]})


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
        "/v1/conflicts",
        list_conflicts,
        "list_conflicts",
        "Node-id conflicts this service node refused in the last 10 minutes: a second "
        "live agent claiming a node id another one holds (the holder keeps it)",
        Access.READ,
        {200: ("the refused claimants", rest.CONFLICT_LIST_SCHEMA)},
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
