"""The real `vxrd` process as systemd runs a Type=notify unit (issue 13): READY=1
once the first kernel dump is done, journald priority prefixes, a clean stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.integration.netns import vxlan_namespace


@pytest.fixture
def ns() -> Iterator[str]:
    require_root()
    with vxlan_namespace("vxdp") as name:
        yield name


async def test_ready_after_the_first_dump_with_journal_priorities(ns: str, tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.setblocking(False)
    sock, err = tmp_path / "vxrd.sock", tmp_path / "vxrd.log"
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
    with err.open("wb") as stream:
        st = os.fstat(stream.fileno())
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        proc = await asyncio.create_subprocess_exec(
            *("ip", "netns", "exec", ns, sys.executable, "-m", "vxrd"),
            *("--server", "127.0.0.1:9", "--status-socket", str(sock), "--node-id", "p1"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stream,
            env=env,
        )
    loop = asyncio.get_running_loop()
    try:
        ready = (await asyncio.wait_for(loop.sock_recv(listener, 4096), 20)).decode()
        assert "READY=1" in ready.splitlines() and "1 device(s) managed" in ready
        # at READY=1 the status socket answers and the device is known
        done = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "vxrd.ctl", "devices", "--json", "--socket", str(sock)),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await done.communicate()
        assert done.returncode == 0
        assert [d["name"] for d in json.loads(out)] == ["vx100"]
        proc.send_signal(signal.SIGTERM)
        stopping = (await asyncio.wait_for(loop.sock_recv(listener, 4096), 20)).decode()
        assert "STOPPING=1" in stopping.splitlines()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        listener.close()
    lines = err.read_text().splitlines()
    assert lines and all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), lines
    assert any(line.startswith("<4>WARNING vxrd: no key file") for line in lines)
    assert any(line.startswith("<6>INFO vxrd: vxrd ready") for line in lines)
