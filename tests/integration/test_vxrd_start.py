"""What a vxrd start-up imports (issue 11): aiohttp and prometheus_client only
when --metrics is given (prometheus_client at the first scrape).

vxrd is started for real in a fresh process inside a network namespace with one
VXLAN device (vxrd.cli.serve: kernel dump, status socket, registrar), its status
socket is asked once (and its metrics endpoint scraped, when it has one), it is
stopped, and the process reports which aiohttp and prometheus_client modules it
had imported. The same run with --metrics is the positive control: the check
would see them if they were there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.integration.netns import vxlan_namespace

REPO = Path(__file__).resolve().parents[2]

# run inside the namespace: start vxrd, wait for its status socket, stop it, report
SCRIPT = """
import asyncio, json, sys
from vxrd.cli import serve
from vxrd.config import load

async def main() -> None:
    config = load(sys.argv[1:])
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, stop=stop, signals=False))
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        try:
            reader, writer = await asyncio.open_unix_connection(str(config.status_socket))
        except OSError:
            if task.done() or asyncio.get_running_loop().time() > deadline:
                raise SystemExit("vxrd did not come up")
            await asyncio.sleep(0.05)
            continue
        writer.write(b"GET /v1/status HTTP/1.1\\r\\nHost: vxrd\\r\\n\\r\\n")
        answer = await reader.read()
        writer.close()
        break
    scraped = b""
    if config.metrics is not None:
        reader, writer = await asyncio.open_connection(*config.metrics)
        writer.write(b"GET /metrics HTTP/1.1\\r\\nHost: vxrd\\r\\nConnection: close\\r\\n\\r\\n")
        scraped = await reader.read()
        writer.close()
    stop.set()
    await task
    status = json.loads(answer.partition(b"\\r\\n\\r\\n")[2])
    def mods(top):
        return sorted(m for m in sys.modules if m == top or m.startswith(top + "."))
    print(json.dumps({
        "node_id": status["node_id"],
        "aiohttp": mods("aiohttp"),
        "prometheus_client": mods("prometheus_client"),
        "scraped": b"vxrd_fdb_adds_total" in scraped,
    }))

asyncio.run(main())
"""


@pytest.fixture
def ns() -> Iterator[str]:
    require_root()
    with vxlan_namespace("vxst") as name:
        yield name


def start_and_report(ns: str, tmp_path: Path, *args: str) -> dict[str, object]:
    argv = [
        *("ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT),
        *("--server", "127.0.0.1:9", "--status-socket", str(tmp_path / "vxrd.sock")),
        *("--state-dir", str(tmp_path / "state"), "--log-level", "WARNING", *args),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr
    report: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return report


def test_vxrd_without_metrics_never_imports_aiohttp_or_prometheus(ns: str, tmp_path: Path) -> None:
    plain = start_and_report(ns, tmp_path)
    assert plain["aiohttp"] == [] and plain["prometheus_client"] == []
    assert isinstance(plain["node_id"], str) and plain["node_id"]  # it really served
    with_metrics = start_and_report(ns, tmp_path, "--metrics", "127.0.0.1:9791")
    assert "aiohttp.web" in with_metrics["aiohttp"]  # type: ignore[operator]
    assert "prometheus_client" in with_metrics["prometheus_client"]  # type: ignore[operator]
    assert with_metrics["scraped"] is True
    assert with_metrics["node_id"] == plain["node_id"]  # kept in the state dir


def test_importing_the_entry_module_does_not_import_aiohttp() -> None:
    code = (
        "import sys, vxrd.cli, vxrd.ctl; "
        "print(sorted(m for m in sys.modules if 'aiohttp' in m or 'prometheus' in m))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
