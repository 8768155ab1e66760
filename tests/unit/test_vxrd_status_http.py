"""The status socket's small HTTP server (vxrd.status) on what vxrdctl never sends:
wrong paths and methods, malformed or oversized requests. The endpoints themselves
are tested against a running agent in tests/integration/test_vxrd.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, cast

import pytest

from vxrd.agent import Agent
from vxrd.status import MAX_HEAD, start_status, stop_status


async def exchange(path: Path, request: bytes) -> tuple[int, dict[str, Any], str]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    return int(lines[0].split(" ")[1]), json.loads(body), head.decode()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /nope HTTP/1.1\r\n\r\n", 404),
        (b"POST /v1/status HTTP/1.1\r\n\r\n", 405),
        (b"GET /v1/leave HTTP/1.1\r\n\r\n", 405),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /v1/status HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET /v1/status HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n", 413),
        (b"GET /v1/status HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"GET /v1/status HTTP/1.1\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n", 431),
    ],
)
async def test_bad_requests_get_a_json_error_and_a_closed_connection(
    tmp_path: Path, request_bytes: bytes, status: int
) -> None:
    path = tmp_path / "vxrd.sock"
    server = await start_status(cast(Agent, object()), path)  # no endpoint is reached
    try:
        code, body, head = await exchange(path, request_bytes)
    finally:
        await stop_status(server, path)
    assert code == status
    assert isinstance(body["error"], str) and body["error"]
    assert "Connection: close" in head and "application/json" in head
    assert not path.exists()
