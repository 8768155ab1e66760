"""Schemathesis against the served /v1/openapi.json: real server, real registry, admin token.

The server (vxsnd.api.start_api on a real SQLite Store) runs in its own thread
and event loop, because schemathesis calls it synchronously. Every operation of
the document gets a bounded number of generated cases, positive (valid by the
schema) and negative (invalid by it); any finding fails the test.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.apiharness import ADMIN_TOKEN, Harness, register, sqlite_url, write_tokens
from vxsnd import registry as st
from vxsnd.api import bound_port, start_api

POSITIVE_EXAMPLES = 40
NEGATIVE_EXAMPLES = 25
POSITIVE_CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]
NEGATIVE_CHECKS = [not_a_server_error, response_schema_conformance, negative_data_rejection]


class ServerThread:
    """vxsnd's API on a fresh registry in a thread with its own loop."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.base = ""
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="vxsnd-api", daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the API server did not start")
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to the test thread
            self.error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        store = await st.Store.open(sqlite_url(self.directory))
        try:
            now = time.time()
            await register(store, "hv-1", {100: "192.0.2.1", 200: "2001:db8::1"}, now, 3600)
            batch = st.Batch()
            batch.enrol_static(st.StaticVtep(100, "198.51.100.1", None, "seed"))
            await store.apply(batch, now)
            runner = await start_api(
                Harness(store), "127.0.0.1", 0, str(write_tokens(self.directory))
            )
            try:
                self.base = f"http://127.0.0.1:{bound_port(runner)}"
                self._ready.set()
                await self._stop.wait()
            finally:
                await runner.cleanup()
        finally:
            await store.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    with ServerThread(tmp_path_factory.mktemp("schemathesis")) as s:
        yield s


def run_operation(
    operation: Any, base: str, mode: GenerationMode, examples: int, checks: list[Any]
) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    http = requests.Session()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    def check(case: Any) -> None:
        case.call_and_validate(base_url=base, session=http, headers=headers, checks=checks)

    try:
        check()
    finally:
        http.close()


def test_schemathesis_finds_nothing(server: ServerThread) -> None:
    schema = schemathesis.openapi.from_url(f"{server.base}/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {
        "GET /v1/vnis",
        "GET /v1/vnis/{vni}",
        "PUT /v1/vnis/{vni}/vteps/{address}",
        "DELETE /v1/vnis/{vni}/vteps/{address}",
        "PUT /v1/static",
        "GET /v1/nodes",
        "GET /v1/nodes/{node}",
        "GET /healthz",
    } <= labels, labels
    started = time.monotonic()
    for operation in operations:
        run_operation(
            operation, server.base, GenerationMode.POSITIVE, POSITIVE_EXAMPLES, POSITIVE_CHECKS
        )
        if operation.method.upper() != "GET" or "{" in operation.path:
            run_operation(
                operation, server.base, GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES, NEGATIVE_CHECKS
            )
    assert time.monotonic() - started < 120
