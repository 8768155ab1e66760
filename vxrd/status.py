"""Local status API of vxrd: JSON over HTTP on a UNIX socket.

    GET  /v1/status           node id, uptime, servers (last contact, registry id)
    GET  /v1/devices          VXLAN devices and what vxrd does with each
    GET  /v1/peers[?vni=N]    per VNI: members per server, the union, the kernel's list
    POST /v1/leave            withdraw from every server, flush, then exit

The socket is created with mode 0660: whoever can reach it can make the host leave.

The server is a few lines of asyncio streams, not aiohttp: one request per
connection (`Connection: close`), JSON answers, which is all vxrdctl (http.client)
speaks. Importing aiohttp.web costs vxrd more start-up CPU and memory than the
rest of it together (issue 11); only --metrics pulls it in.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from vxflood.schema.validate import InvalidValue, parse_vni
from vxrd import views
from vxrd.agent import Agent

log = logging.getLogger("vxrd.status")

SOCKET_MODE = 0o660
MAX_HEAD = 16 * 1024  # request line and headers; vxrdctl sends about 100 bytes
MAX_BODY = 64 * 1024  # no endpoint reads a body: it is read and dropped
READ_TIMEOUT = 10.0  # seconds for a client to send its request
DRAIN_TIMEOUT = 5.0  # seconds in-flight requests get to finish when vxrd stops


class StatusSocketError(OSError):
    """The status socket cannot be created (in use, or the path is unusable)."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    data: Any


Handler = Callable[[Agent, dict[str, list[str]]], Awaitable[Answer]]


async def _status(agent: Agent, query: dict[str, list[str]]) -> Answer:
    return Answer(200, views.status(agent))


async def _devices(agent: Agent, query: dict[str, list[str]]) -> Answer:
    return Answer(200, views.devices(agent, await agent.kernel.flood_entries()))


async def _peers(agent: Agent, query: dict[str, list[str]]) -> Answer:
    vni = None
    if "vni" in query:
        try:
            vni = parse_vni(query["vni"][0])
        except InvalidValue as exc:
            return Answer(400, {"error": str(exc)})
    actual = await agent.kernel.flood_entries()
    return Answer(200, views.peers(agent, actual, vni, time.monotonic()))


async def _leave(agent: Agent, query: dict[str, list[str]]) -> Answer:
    summary = await agent.leave()
    agent.stop.set()
    return Answer(200, summary)


ROUTES: dict[str, tuple[str, Handler]] = {
    "/v1/status": ("GET", _status),
    "/v1/devices": ("GET", _devices),
    "/v1/peers": ("GET", _peers),
    "/v1/leave": ("POST", _leave),
}


def _error(status: HTTPStatus, text: str | None = None) -> Answer:
    return Answer(status, {"error": text or status.phrase.lower()})


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str] | Answer:
    """(method, target) of one request, its headers and body read and dropped."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        return _error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return _error(HTTPStatus.BAD_REQUEST, "malformed request line")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return _error(HTTPStatus.BAD_REQUEST, "bad Content-Length")
        elif name.strip().lower() == "transfer-encoding":
            return _error(HTTPStatus.NOT_IMPLEMENTED, "chunked bodies are not accepted")
    if not 0 <= length <= MAX_BODY:
        return _error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    await reader.readexactly(length)
    return parts[0], parts[1]


async def _answer(agent: Agent, method: str, target: str) -> Answer:
    url = urlsplit(target)
    route = ROUTES.get(url.path)
    if route is None:
        return _error(HTTPStatus.NOT_FOUND)
    if method != route[0]:
        return _error(HTTPStatus.METHOD_NOT_ALLOWED)
    try:
        return await route[1](agent, parse_qs(url.query))
    except Exception:
        log.exception("status API %s %s failed", method, url.path)
        return _error(HTTPStatus.INTERNAL_SERVER_ERROR)


def _encode(answer: Answer) -> bytes:
    body = json.dumps(answer.data).encode()
    reason = HTTPStatus(answer.status).phrase
    head = (
        f"HTTP/1.1 {answer.status} {reason}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


@dataclass(eq=False)
class StatusServer:
    """The listening socket and the requests in flight (finished before vxrd stops)."""

    agent: Agent
    server: asyncio.Server | None = None
    inflight: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.inflight.add(task)
        try:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    request = await _read_request(reader)
            except (TimeoutError, asyncio.IncompleteReadError, OSError):
                return
            if isinstance(request, Answer):
                answer = request
            else:
                answer = await _answer(self.agent, *request)
            writer.write(_encode(answer))
            with contextlib.suppress(OSError):
                await writer.drain()
        finally:
            writer.close()
            if task is not None:
                self.inflight.discard(task)


def _prepare_path(path: Path) -> None:
    """Make the directory; remove a stale socket, refuse one another vxrd serves."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StatusSocketError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody listens: a leftover of a killed vxrd
        return
    finally:
        probe.close()
    raise StatusSocketError(errno.EADDRINUSE, f"{path} is in use (is another vxrd running?)")


async def start_status(agent: Agent, path: Path) -> StatusServer:
    """Serve the status API on a UNIX socket; the caller stops it with stop_status."""
    _prepare_path(path)
    status = StatusServer(agent)
    old = os.umask(0o117)  # the socket is born 0660, never briefly wider
    try:
        status.server = await asyncio.start_unix_server(status.handle, str(path), limit=MAX_HEAD)
    finally:
        os.umask(old)
    os.chmod(path, SOCKET_MODE)
    return status


async def stop_status(status: StatusServer, path: Path) -> None:
    """Stop listening, let requests in flight finish (vxrdctl leave gets its answer)."""
    if status.server is not None:
        status.server.close()
        await status.server.wait_closed()
    if status.inflight:
        _, late = await asyncio.wait(set(status.inflight), timeout=DRAIN_TIMEOUT)
        for task in late:
            task.cancel()
    with contextlib.suppress(OSError):
        os.unlink(path)
