"""The real `python -m vxsnd` process: start, serve an agent, SIGTERM -> exit 0;
and configuration errors -> exit 2 with a message naming the file and key."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.integration.agent_sim import Agent, wait_until

VNI = 4242


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "vxsnd.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "vxsnd",
            "--listen",
            f"127.0.0.1:{port}",
            "--db",
            f"sqlite:///{tmp_path / 'registry.db'}",
            "--server-id",
            "proc-test",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
        )
    try:
        await wait_until(lambda: b"vxsnd ready" in log.read_bytes(), 20, "vxsnd to start")
        agent = await Agent.create("node1", ("127.0.0.1", port))
        agent.register({VNI: ipaddress.IPv4Address("10.0.0.1")})
        await wait_until(lambda: VNI in agent.members, 10, "the agent's snapshot")
        agent.close()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = log.read_text()
    assert code == 0, text
    assert "stopping" in text and "stopped" in text
    assert "Traceback" not in text


async def test_sighup_reloads_the_token_file(tmp_path: Path) -> None:
    """SIGHUP: the new token file takes effect; a broken one leaves the old in force."""
    port, api = free_port(), free_tcp_port()
    tokens, log = tmp_path / "tokens", tmp_path / "vxsnd.log"
    first, second = "a" * 32, "b" * 32
    tokens.write_text(f"{first} read\n")
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "vxsnd", "--listen", f"127.0.0.1:{port}"),
            *("--db", f"sqlite:///{tmp_path / 'registry.db'}", "--server-id", "hup"),
            *("--api", f"127.0.0.1:{api}", "--token-file", str(tokens)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
        )
    url = f"http://127.0.0.1:{api}/v1/vnis"

    async def status(token: str) -> int:
        async with aiohttp.ClientSession() as s, s.get(url, headers=bearer(token)) as r:
            return r.status

    try:
        await wait_until(lambda: b"vxsnd ready" in log.read_bytes(), 20, "vxsnd to start")
        assert (await status(first), await status(second)) == (200, 401)
        tokens.write_text(f"{second} read\n")
        proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: b"tokens reloaded" in log.read_bytes(), 10, "the reload")
        assert (await status(first), await status(second)) == (401, 200)
        tokens.write_text("short read\n")
        proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: b"reload failed" in log.read_bytes(), 10, "the refusal")
        assert await status(second) == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert "Traceback" not in log.read_text()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_sequence_jumps_cost_nothing_and_lock_nobody_out(tmp_path: Path) -> None:
    """Hostile-input findings 1 and 2 on the real daemon, unsigned (the default): two
    datagrams jumping the sequence by 2**33 and 2**36 took vxsnd from 68 MB to 2.25 GB
    and made every later datagram of the node a replay."""
    port = free_port()
    log = tmp_path / "vxsnd.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "vxsnd", "--listen", f"127.0.0.1:{port}"),
            *("--db", f"sqlite:///{tmp_path / 'registry.db'}", "--server-id", "jump"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
        )
    try:
        await wait_until(lambda: b"vxsnd ready" in log.read_bytes(), 20, "vxsnd to start")
        victim = await Agent.create("victim", ("127.0.0.1", port))
        victim.register({VNI: ipaddress.IPv4Address("10.0.0.1")})
        await wait_until(lambda: VNI in victim.members, 10, "the victim's snapshot")
        before = rss_kib(proc.pid)
        # the attacker speaks as the victim, with its incarnation (unsigned: anyone can)
        attacker = await Agent.create("victim", ("127.0.0.1", port))
        attacker.seq.incarnation = victim.seq.incarnation
        for jump in (2**33, 2**36):
            attacker.seq.seq = victim.seq.seq + jump
            attacker.register({VNI: ipaddress.IPv4Address("10.0.0.66")})
        await asyncio.sleep(0.5)  # observation window: what the two datagrams cost
        grown = rss_kib(proc.pid) - before
        assert grown < 20_000, f"vxsnd grew by {grown} KiB"
        # the victim carries on with its own sequence and is still heard
        other = await Agent.create("other", ("127.0.0.1", port))
        other.register({VNI: ipaddress.IPv4Address("10.0.0.2")})
        victim.register({VNI: ipaddress.IPv4Address("10.0.0.1"), VNI + 1: victim.vnis[VNI]})
        await wait_until(lambda: VNI + 1 in victim.members, 10, "the victim's new VNI")
        await wait_until(
            lambda: victim.peers(VNI) == {ipaddress.IPv4Address("10.0.0.2")}, 10, "the peer"
        )
        for a in (victim, attacker, other):
            a.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = log.read_text()
    assert "Traceback" not in text and "ahead" in text


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def run_vxsnd(*args: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "vxsnd", *args], capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stderr


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ("listen = ['127.0.0.1:10001']\nhold_tme = 90\n", "hold_tme"),
        ("batch_window = 'fast'\n", "batch_window"),
        ("listen = ['[::1:10001']\n", "listen"),
        ("budget = 12\n", "budget"),
    ],
)
def test_broken_config_exits_2_naming_file_and_key(tmp_path: Path, content: str, key: str) -> None:
    cfg = tmp_path / "vxsnd.toml"
    cfg.write_text(content)
    code, err = run_vxsnd("--config", str(cfg))
    assert code == 2
    assert str(cfg) in err and repr(key) in err
    assert "Traceback" not in err


def test_not_toml_and_bad_flag_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "vxsnd.toml"
    cfg.write_text("listen = [\n")
    code, err = run_vxsnd("--config", str(cfg))
    assert code == 2 and "not valid TOML" in err
    code, err = run_vxsnd("--retransmit-initial", "-1")
    assert code == 2 and "--retransmit-initial" in err
