"""vxsndctl's transport: one REST request to vxsnd, its failures as `CtlError`.

The exit code travels with the error (vxflood.commands): refused by the API,
usage, or the API cannot be reached.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, Final

import aiohttp
from yarl import URL

from vxflood.commands import CTL_REFUSED, CTL_UNREACHABLE, CTL_USAGE

DEFAULT_API: Final = "http://127.0.0.1:10080"
EXIT_REFUSED: Final = CTL_REFUSED
EXIT_USAGE: Final = CTL_USAGE
EXIT_UNREACHABLE: Final = CTL_UNREACHABLE


class CtlError(Exception):
    def __init__(self, message: str, code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code = code


class Client:
    def __init__(self, api: str, token: str | None, timeout: float) -> None:
        self.api = URL(api.rstrip("/"))
        if self.api.scheme not in ("http", "https") or not self.api.host:
            raise CtlError(f"--api {api!r}: expected a URL like {DEFAULT_API}", EXIT_USAGE)
        self.token = token
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def request(
        self, method: str, segments: Sequence[str], body: object | None = None
    ) -> Any:
        url = self.api
        for segment in segments:
            url = url / segment
        headers = {"Accept": "application/json"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        try:
            async with (
                aiohttp.ClientSession(timeout=self.timeout) as session,
                session.request(method, url, data=data, headers=headers) as response,
            ):
                raw = await response.read()
                status = response.status
        except aiohttp.ClientConnectorError as exc:
            reason = _reason(exc)
            raise CtlError(
                f"cannot reach {self.api}: {reason} (is vxsnd running with --api?)",
                EXIT_UNREACHABLE,
            ) from None
        except TimeoutError:
            raise CtlError(
                f"no answer from {self.api} within {self.timeout.total:g} s", EXIT_UNREACHABLE
            ) from None
        except aiohttp.ClientError as exc:
            raise CtlError(f"talking to {self.api}: {exc}", EXIT_UNREACHABLE) from None
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        if status >= 400:
            if isinstance(payload, dict) and "error" in payload:
                detail = payload.get("detail") or payload["error"]
                raise CtlError(f"{status} {payload['error']}: {detail}")
            raise CtlError(f"{status} from {url}: {raw[:200].decode(errors='replace')}")
        if payload is None and raw:
            raise CtlError(f"{url} did not answer with JSON (is {self.api} vxsnd's API?)")
        return payload


def _reason(exc: aiohttp.ClientConnectorError) -> str:
    err = exc.os_error
    if err is None:
        return str(exc) or "connection failed"
    if err.errno:
        return os.strerror(err.errno).lower()
    return (err.strerror or str(err) or "connection failed").lower()
