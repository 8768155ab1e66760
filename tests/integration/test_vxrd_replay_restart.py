"""A push captured before a vxrd restart is refused after it (issue 10 item 5, vxrd's
half): the real vxrd process in a namespace, a scripted service node beside it that
answers once, keeps the push's bytes and sends them again to the restarted agent."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_root
from tests.integration.netns import vxlan_namespace
from vxrd.marks import MARKS_FILE

PORT = 10011
SERVER = f"""
import socket, sys
from vxflood.schema.wire import Ack, Codec, Membership, Sequencer, address
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", {PORT}))
codec, seq = Codec(), Sequencer("fake-sn")
captured, peer = b"", None
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "answer":  # the agent's first register: an answer and a push
        _, peer = sock.recvfrom(9000)
        push = codec.encode(
            Membership(seq.next(), "reg-1", 100, 1, None, (address("192.0.2.77"),), ())
        )
        sock.sendto(codec.encode(Ack(seq.next(), "reg-1", ((100, 1),))), peer)
        sock.sendto(push, peer)
        captured = push
        print("answered", flush=True)
    else:  # a restarted agent (another source port): the captured push again
        while True:
            _, new = sock.recvfrom(9000)
            if new != peer:
                break
        peer = new
        sock.sendto(captured, peer)
        print("replayed", flush=True)
"""


@pytest.fixture
def ns() -> Iterator[str]:
    require_root()
    with vxlan_namespace("vxrp") as name:
        yield name


class Lab:
    def __init__(self, ns: str, tmp_path: Path) -> None:
        self.ns = ns
        self.state = tmp_path / "state"
        self.state.mkdir()
        self.sock = tmp_path / "vxrd.sock"
        self.log = tmp_path / "vxrd.log"
        self.server: asyncio.subprocess.Process | None = None

    async def say(self, command: str, answer: str) -> None:
        assert self.server is not None and self.server.stdin and self.server.stdout
        self.server.stdin.write(f"{command}\n".encode())
        await self.server.stdin.drain()
        line = await asyncio.wait_for(self.server.stdout.readline(), 20)
        assert line.decode().strip() == answer

    @asynccontextmanager
    async def vxrd(self) -> AsyncIterator[asyncio.subprocess.Process]:
        with self.log.open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                *("ip", "netns", "exec", self.ns, sys.executable, "-m", "vxrd"),
                *("--server", f"127.0.0.1:{PORT}", "--node-id", "p1"),
                *("--state-dir", str(self.state), "--status-socket", str(self.sock)),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=err,
            )
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0, self.log.read_text()

    async def ctl(self, *args: str) -> Any:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "vxrd.ctl", "--json", "--socket", str(self.sock), *args),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        return json.loads(out) if proc.returncode == 0 else None

    async def wait(self, what: str, check: Any) -> Any:
        for _ in range(400):
            try:
                got = await check()
            except (KeyError, IndexError, TypeError):
                got = None
            if got:
                return got
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log.read_text()}")

    async def up(self) -> bool:
        return await self.ctl("status") is not None

    async def members(self) -> list[str] | None:
        peers = await self.ctl("peers", "100")
        server = peers[0]["servers"].get(f"127.0.0.1:{PORT}") if peers else None
        return None if server is None else server["members"]

    async def drops(self) -> dict[str, int]:
        status = await self.ctl("status")
        return dict(status["servers"][0]["dropped"]) if status else {}


async def test_a_push_captured_before_a_restart_is_a_replay_after_it(
    ns: str, tmp_path: Path
) -> None:
    lab = Lab(ns, tmp_path)
    lab.server = await asyncio.create_subprocess_exec(
        *("ip", "netns", "exec", ns, sys.executable, "-c", SERVER),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert lab.server.stdout is not None
        assert (await asyncio.wait_for(lab.server.stdout.readline(), 20)).strip() == b"ready"
        async with lab.vxrd():
            await lab.say("answer", "answered")
            assert await lab.wait("the push applied", lab.members) == ["192.0.2.77"]
        marks = (lab.state / MARKS_FILE).read_text()
        assert '"fake-sn"' in marks  # written at the clean stop

        async with lab.vxrd():  # the restart: the same push, sent again
            await lab.wait("the restarted agent's status", lab.up)
            await lab.say("replay", "replayed")
            drops = await lab.wait("the replay dropped", lambda: _replays(lab))
            assert drops == 1 and await lab.members() is None  # nothing applied

        (lab.state / MARKS_FILE).unlink()  # the control: without the marks it passes
        async with lab.vxrd():
            await lab.wait("the agent's status", lab.up)
            await lab.say("replay", "replayed")
            assert await lab.wait("the replay applied", lab.members) == ["192.0.2.77"]
    finally:
        lab.server.kill()
        await lab.server.wait()


async def _replays(lab: Lab) -> int:
    return (await lab.drops()).get("replay", 0)
