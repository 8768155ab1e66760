"""Schemathesis against the served /v1/openapi.json: real server, real registry.

Every check (`--checks all`: server errors, status codes, content types,
response schemas and headers, positive data accepted, negative data rejected,
missing headers, unsupported methods, auth ignored, use after free, resource
availability, object-level authorization) and every phase (examples, coverage,
fuzzing, stateful) of the schemathesis CLI, once with a token file (admin
token) and once without (then the document declares no security at all). Any
finding fails the test; the counts are printed.

The server (vxsnd.api.start_api on a real SQLite Store) runs in its own thread
and event loop; the CLI runs as a child process against it.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.apiharness import ADMIN_TOKEN, Harness, register, sqlite_url, write_tokens
from vxsnd import registry as st
from vxsnd.api import bound_port, start_api

MAX_EXAMPLES = 60  # per operation and phase; `make fuzz`-style long runs pass more
PHASES = ("examples", "coverage", "fuzzing", "stateful")
CLI = Path(sys.executable).parent / "schemathesis"


class ServerThread:
    """vxsnd's API on a fresh registry in a thread with its own loop."""

    def __init__(self, directory: Path, with_tokens: bool = True) -> None:
        self.directory = directory
        self.with_tokens = with_tokens
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
            tokens = str(write_tokens(self.directory)) if self.with_tokens else None
            runner = await start_api(Harness(store), "127.0.0.1", 0, tokens)
            try:
                self.base = f"http://127.0.0.1:{bound_port(runner)}"
                self._ready.set()
                await self._stop.wait()
            finally:
                await runner.cleanup()
        finally:
            await store.close()


@pytest.fixture(params=[True, False], ids=["token-file", "no-token-file"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(tmp_path, with_tokens=request.param) as s:
        yield s


def run_schemathesis(base: str, with_tokens: bool, max_examples: int, report: Path) -> str:
    args = [
        str(CLI),
        "run",
        f"{base}/v1/openapi.json",
        "--checks",
        "all",
        "--phases",
        ",".join(PHASES),
        "--max-examples",
        str(max_examples),
        "--seed",
        "13",
        "--workers",
        "1",
        "--no-color",
        "--generation-database",
        "none",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
    ]
    if with_tokens:
        args += ["--header", f"Authorization: Bearer {ADMIN_TOKEN}"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    return output


def test_schemathesis_all_checks_all_phases_find_nothing(
    server: ServerThread, tmp_path: Path
) -> None:
    doc = requests.get(f"{server.base}/v1/openapi.json", timeout=10).json()
    declared = "securitySchemes" in doc.get("components", {})
    assert declared is server.with_tokens  # issue 13: no security without a token file
    operations = {f"{m.upper()} {p}" for p, ops in doc["paths"].items() for m in ops}
    assert {
        "GET /v1/vnis",
        "GET /v1/vnis/{vni}",
        "PUT /v1/vnis/{vni}/vteps/{address}",
        "DELETE /v1/vnis/{vni}/vteps/{address}",
        "PUT /v1/static",
        "GET /v1/nodes",
        "GET /v1/nodes/{node}",
        "GET /healthz",
    } <= operations, operations
    output = run_schemathesis(server.base, server.with_tokens, MAX_EXAMPLES, tmp_path / "j.xml")
    for phase in PHASES:
        assert re.search(rf"✅\s+{phase}\b", output, re.IGNORECASE), (phase, output[-3000:])
    counts = re.search(r"Test cases:\s*\n\s*(.+)", output)
    assert counts is not None, output[-3000:]
    assert "No issues found" in output, output[-3000:]
    # schemathesis leaves out the operation that serves the document itself
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", output)
    assert selected is not None, output[-3000:]
    assert selected[1] == selected[2] == selected[3] == str(len(operations) - 1), selected[0]
    print(f"schemathesis ({'token file' if server.with_tokens else 'no token file'}):", counts[1])
