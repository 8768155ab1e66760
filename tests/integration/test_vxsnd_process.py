"""The real `python -m vxsnd` process: start, serve an agent, SIGTERM -> exit 0;
configuration errors -> exit 2 with a message naming the file and key; and what
systemd sees (issue 13): READY=1 once every socket is bound, journald priority
prefixes, repeated signals during the shutdown ignored, one-line start-up
failures naming what failed."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import aiohttp
import pytest

from tests.integration.agent_sim import Agent, wait_until
from tests.integration.vxsnd_harness import make_config
from vxflood.lifecycle import TaskEnded
from vxsnd.daemon import Daemon

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


# ---------------------------------------------------------------- issue 13: runs like a daemon


class NotifyListener:
    """The systemd side of sd_notify: a datagram socket the daemon is pointed at."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.path = path

    async def next(self, deadline: float = 20.0) -> dict[str, str]:
        data = await asyncio.wait_for(
            asyncio.get_running_loop().sock_recv(self.sock, 4096), deadline
        )
        return dict(line.split("=", 1) for line in data.decode().splitlines())

    def close(self) -> None:
        self.sock.close()


def udp_port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


async def start_notify_vxsnd(
    tmp_path: Path, err: Path, *args: str, journal: bool = False
) -> tuple[asyncio.subprocess.Process, NotifyListener, dict[str, str]]:
    """vxsnd as systemd starts a Type=notify unit; returns at READY=1."""
    listener = NotifyListener(tmp_path / "notify")
    env = {**os.environ, "NOTIFY_SOCKET": str(listener.path)}
    with err.open("wb") as stream:
        if journal:
            st = os.fstat(stream.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "vxsnd", "--db", f"sqlite:///{tmp_path / 'registry.db'}"),
            *args,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stream,
            env=env,
        )
    try:
        ready = await listener.next()
    except BaseException:
        proc.kill()
        await proc.wait()
        listener.close()
        raise
    return proc, listener, ready


async def test_readiness_after_every_socket_is_bound_and_journal_priorities(
    tmp_path: Path,
) -> None:
    port, api = free_port(), free_tcp_port()
    err = tmp_path / "vxsnd.log"
    proc, listener, ready = await start_notify_vxsnd(
        tmp_path,
        err,
        *("--listen", f"127.0.0.1:{port}", "--api", f"127.0.0.1:{api}"),
        journal=True,
    )
    try:
        assert ready["READY"] == "1" and f"127.0.0.1:{port}" in ready["STATUS"]
        # at READY=1 the registry is open and every socket bound
        assert (tmp_path / "registry.db").exists()
        assert udp_port_taken(port)
        with socket.create_connection(("127.0.0.1", api), timeout=5):
            pass
        proc.send_signal(signal.SIGTERM)
        assert (await listener.next())["STOPPING"] == "1"
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        listener.close()
    lines = err.read_text().splitlines()
    assert lines and all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), lines
    assert any(line.startswith("<4>WARNING vxsnd: no key file") for line in lines)
    assert any(line.startswith("<6>INFO vxsnd: vxsnd ready") for line in lines)
    assert not any("alembic" in line or "Context impl" in line for line in lines), lines


async def test_repeated_signals_during_shutdown_are_ignored(tmp_path: Path) -> None:
    """Issue 13: a second SIGTERM ended vxsnd with 143 before the registry was closed,
    leaving SQLite -wal/-shm files (2 of 3 tries)."""
    for attempt in range(3):
        run = tmp_path / f"run{attempt}"
        run.mkdir()
        err = run / "vxsnd.log"
        proc, listener, _ = await start_notify_vxsnd(
            run, err, "--listen", "127.0.0.1:0", "--api", "off"
        )
        try:
            proc.send_signal(signal.SIGTERM)
            # then a storm (as `timeout` or a process-group kill sends) until it has exited
            storm = itertools.cycle((signal.SIGTERM, signal.SIGINT))
            deadline = time.monotonic() + 15
            while proc.returncode is None and time.monotonic() < deadline:
                with contextlib.suppress(ProcessLookupError):
                    # os.kill, not send_signal: Popen.send_signal polls, reaping the child
                    # behind asyncio's watcher (which then reports 255)
                    os.kill(proc.pid, next(storm))
                await asyncio.sleep(0.002)
            code = await asyncio.wait_for(proc.wait(), 15)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            listener.close()
        text = err.read_text()
        assert code == 0, text
        assert "Traceback" not in text
        left = sorted(p.name for p in run.iterdir() if p.name.startswith("registry.db-"))
        assert left == [], left


async def test_json_log_format(tmp_path: Path) -> None:
    err = tmp_path / "vxsnd.log"
    proc, listener, _ = await start_notify_vxsnd(
        tmp_path, err, "--listen", "127.0.0.1:0", "--api", "off", "--log-format", "json"
    )
    try:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        listener.close()
    records = [json.loads(line) for line in err.read_text().splitlines()]
    assert {"WARNING", "INFO"} <= {r["level"] for r in records}
    assert all({"time", "level", "priority", "logger", "message"} <= set(r) for r in records)


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vxsnd", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"vxsnd (vxflood) {metadata.version('vxflood')}"


def one_line(err: str) -> str:
    """The failure: one line (start-up logs its progress at INFO and WARNING before it)."""
    lines = [line for line in err.splitlines() if not line.startswith(("INFO ", "WARNING "))]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_unknown_database_is_a_configuration_error() -> None:
    code, err = run_vxsnd("--db", "foo://bar")
    assert code == 2
    assert "unsupported database 'foo'" in one_line(err)


def test_registry_that_cannot_be_opened_names_it_without_the_password(tmp_path: Path) -> None:
    port = free_tcp_port()  # nothing listens there
    url = f"postgresql+asyncpg://alice:S3cret@127.0.0.1:{port}/registry"
    code, err = run_vxsnd("--db", url, "--api", "off", "--listen", "127.0.0.1:0")
    assert code == 1
    line = one_line(err)
    assert f"alice:***@127.0.0.1:{port}/registry" in line and "S3cret" not in err
    done = subprocess.run(
        [sys.executable, "-m", "vxsnd", "db", "current", "--db", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "S3cret" not in done.stderr
    assert len(done.stderr.splitlines()) == 1 and "alice:***@" in done.stderr


def test_ports_in_use_are_one_line_naming_the_address(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'registry.db'}"
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.bind(("127.0.0.1", 0))
        api, port = tcp.getsockname()[1], udp.getsockname()[1]
        code, err = run_vxsnd("--db", db, "--listen", "127.0.0.1:0", "--api", f"127.0.0.1:{api}")
        assert code == 1
        assert f"cannot listen on 127.0.0.1:{api} (REST API): address already in use" in one_line(
            err
        )
        code, err = run_vxsnd("--db", db, "--api", "off", "--listen", f"127.0.0.1:{port}")
        assert code == 1
        assert f"cannot listen on 127.0.0.1:{port} (UDP): address already in use" in one_line(err)


def test_registry_written_by_a_newer_vxsnd(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    db = f"sqlite:///{path}"
    assert (
        subprocess.run(
            [sys.executable, "-m", "vxsnd", "db", "upgrade", "--db", db], capture_output=True
        ).returncode
        == 0
    )
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    code, err = run_vxsnd("--db", db, "--api", "off", "--listen", "127.0.0.1:0")
    assert code == 1 and "written by a newer vxsnd" in one_line(err)
    for action, want in (("current", 0), ("upgrade", 1)):
        done = subprocess.run(
            [sys.executable, "-m", "vxsnd", "db", action, "--db", db],
            capture_output=True,
            text=True,
            timeout=60,
        )
        out = done.stdout + done.stderr
        assert done.returncode == want, out
        assert "written by a newer vxsnd" in out and "Traceback" not in out
        assert "run `vxsnd db upgrade`" not in out
    with sqlite3.connect(path) as conn:  # the refused upgrade changed nothing
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("9999",)]


async def test_the_servers_own_tasks_are_supervised(tmp_path: Path) -> None:
    """Issue 8: the UDP server's tasks ran unsupervised; one that ends now ends vxsnd
    (with the registry closed), instead of a daemon that no longer reads its socket."""
    cfg = make_config(f"sqlite:///{tmp_path / 'registry.db'}", api=None)
    daemon = Daemon(cfg, signals=False)
    run = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.started.wait(), 15)
    daemon.server._tasks[0].cancel()
    with pytest.raises(TaskEnded, match="vxsnd-receiver"):
        await asyncio.wait_for(run, 15)
    assert sorted(os.listdir(tmp_path)) == ["registry.db"]  # closed: no -wal, no -shm
