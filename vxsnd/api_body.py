"""Reading REST request bodies whole, and keeping aiohttp's complaints about
malformed requests to one line: the part of the API that faces hostile clients.

Nothing is decided on a prefix of a body: it is read to its end (bounded by the
route's limit and BODY_READ_TIMEOUT) and only then decoded (schema/jsonbody.py),
so a body that arrives in pieces (TCP segments, HTTP chunks) is judged as a whole.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from vxflood.schema import rest
from vxflood.schema.rest import PayloadError
from vxsnd.openapi import Body

http_log = logging.getLogger("vxsnd.api.http")  # aiohttp's protocol layer logs here

BODY_READ_TIMEOUT: Final = 30.0  # seconds for a whole request body to arrive
_READ_CHUNK: Final = 64 * 1024


async def read_json(request: web.Request, body: Body) -> object:
    """The request body read WHOLE (up to its limit), then decoded as JSON.

    `rest.ABSENT` when there is no body and none is required. Nothing is decided
    on a prefix: a body that arrives in pieces (TCP segments, HTTP chunks) is
    judged only once its last byte is in, so a valid start followed by garbage
    is refused as a whole.
    """
    length = request.content_length
    if length is not None and length > body.limit:
        raise web.HTTPRequestEntityTooLarge(max_size=body.limit, actual_size=length)
    raw = await _read_whole(request, body.limit)
    if not raw.strip():
        if body.required:
            raise PayloadError("a JSON request body is required")
        return rest.ABSENT
    ctype = request.headers.get("Content-Type")
    if ctype is not None and request.content_type not in ("application/json", ""):
        raise web.HTTPUnsupportedMediaType(text=f"expected application/json, got {ctype}")
    return rest.decode_json(raw)


async def _read_whole(request: web.Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_READ_TIMEOUT):
            while chunk := await request.content.read(_READ_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
                chunks.append(chunk)
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            text=f"the request body did not arrive within {BODY_READ_TIMEOUT:g} s"
        ) from None
    except (HttpProcessingError, web.RequestPayloadError) as exc:  # broken chunking, bad gzip
        raise PayloadError(f"request body is malformed: {exc}") from None
    return b"".join(chunks)


class ClientErrorLines(logging.Filter):
    """aiohttp logs every malformed request (the client's fault, already answered 400)
    as an ERROR with a traceback: one WARNING line instead, at most one per `interval`
    seconds, counting the others, so no client can fill the log."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self.last = -interval
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        now = time.monotonic()
        if now - self.last < self.interval:
            self.suppressed += 1
            return False
        lines = (exc.message or "").strip().splitlines()
        more = f" ({self.suppressed} more since)" if self.suppressed else ""
        record.msg = "malformed HTTP request refused with %d: %s%s"
        record.args = (exc.code, ascii(lines[0][:200]) if lines else "''", more)
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        self.last, self.suppressed = now, 0
        return True


CLIENT_ERRORS: Final = ClientErrorLines()
http_log.addFilter(CLIENT_ERRORS)
