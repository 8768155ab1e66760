"""vxflood: the lifecycle, logging, readiness and helpers both daemons share."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from vxflood import logs
from vxflood.commands import GlobalFlags
from vxflood.hostport import parse_host_port, unmap
from vxflood.lifecycle import Lifecycle, StartupError, TaskEnded
from vxflood.notify import Notifier
from vxflood.tables import ago, duration, since, table, until

# ---------------------------------------------------------------- logging


def record(level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord("vxsnd", level, __file__, 1, msg, (), None)


def test_journal_prefixes_only_when_stderr_is_the_journal(tmp_path: Path) -> None:
    with (tmp_path / "err").open("w") as stream:
        st = os.fstat(stream.fileno())
        journal = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        other = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}
        assert logs.stderr_is_journal(stream, journal)
        assert not logs.stderr_is_journal(stream, other)
        assert not logs.stderr_is_journal(stream, {})
        fmt = logs.make_formatter("text", stream, journal)
        plain = logs.make_formatter("text", stream, other)
    lines = {
        level: fmt.format(record(level, "two\nlines"))
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, 50)
    }
    assert lines[logging.ERROR] == "<3>ERROR vxsnd: two\n<3>lines"
    assert lines[logging.WARNING].startswith("<4>WARNING")
    assert lines[logging.INFO].startswith("<6>INFO")
    assert lines[logging.DEBUG].startswith("<7>DEBUG")
    assert lines[50].startswith("<2>CRITICAL")
    assert plain.format(record(logging.WARNING, "x")) == "WARNING vxsnd: x"


def test_json_lines() -> None:
    fmt = logs.JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("vxrd", logging.ERROR, __file__, 1, "a %s\nb", ("x",), None)
        rec.exc_info = __import__("sys").exc_info()
    line = fmt.format(rec)
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "ERROR" and data["priority"] == 3 and data["logger"] == "vxrd"
    assert data["message"] == "a x\nb" and "ValueError: boom" in data["exception"]
    assert data["time"].endswith("+00:00")


def test_setup_quiets_third_party_info() -> None:
    stream = io.StringIO()
    logs.setup_logging("INFO", "text", stream)
    logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    logging.getLogger("alembic").warning("a real warning")
    logging.getLogger("vxsnd").info("ours")
    assert stream.getvalue().splitlines() == [
        "WARNING alembic: a real warning",
        "INFO vxsnd: ours",
    ]
    with pytest.raises(ValueError, match="text, json"):
        logs.parse_log_format("yaml")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+asyncpg://alice:S3cret@db:5432/r", "postgresql+asyncpg://alice:***@db:5432/r"),
        ("postgresql://alice@db/r", "postgresql://alice@db/r"),
        ("postgresql://al:p@ss@db/r", "postgresql://al:***@db/r"),
        ("sqlite:////var/lib/vxsnd/registry.db", "sqlite:////var/lib/vxsnd/registry.db"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert logs.mask_url(url) == shown


def test_redact_removes_the_password_in_any_spelling() -> None:
    url = "postgresql://alice:S3%40cret@db/r"
    text = f"could not parse {url}; password S3@cret or S3%40cret refused"
    out = logs.redact(text, url)
    assert "S3" not in out and "alice:***@db" in out


# ---------------------------------------------------------------- sd_notify


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def test_notify_path_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.ready("serving")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
    assert n.stopping()
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
    n.close()


def test_notify_abstract_socket() -> None:
    name = f"vxflood-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.send(WATCHDOG=1)
        assert sock.recv(4096) == b"WATCHDOG=1"
        n.close()


def test_notify_without_systemd_and_with_a_dead_socket(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert not Notifier({}).enabled and not Notifier({}).ready("x")
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert not gone.ready("x") and not gone.ready("x")  # never raises
    assert caplog.text.count("cannot notify systemd") == 1
    gone.close()
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(env).watchdog_interval == 15.0
    assert Notifier({**env, "WATCHDOG_PID": "1"}).watchdog_interval is None


# ---------------------------------------------------------------- lifecycle


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []

    def service(self, name: str, fail: bool = False):  # type: ignore[no-untyped-def]
        @asynccontextmanager
        async def cm(life: Lifecycle) -> AsyncIterator[None]:
            if fail:
                raise StartupError(f"{name} cannot start")
            self.events.append(f"enter {name}")
            try:
                yield
            finally:
                self.events.append(f"exit {name}")

        return cm


async def test_services_enter_in_order_exit_in_reverse_and_drain_first() -> None:
    rec = Recorder()
    life = Lifecycle("t", signals=False)

    async def drain() -> None:
        rec.events.append("drain")

    @asynccontextmanager
    async def with_drain(life: Lifecycle) -> AsyncIterator[None]:
        life.drains.append(drain)
        yield

    run = asyncio.create_task(life.run([rec.service("a"), rec.service("b"), with_drain]))
    await asyncio.wait_for(life.ready.wait(), 5)
    life.stop()
    life.stop()  # a second stop during the shutdown is ignored
    await asyncio.wait_for(run, 5)
    assert rec.events == ["enter a", "enter b", "drain", "exit b", "exit a"]


async def test_a_service_that_cannot_start_unwinds_the_others() -> None:
    rec = Recorder()
    life = Lifecycle("t", signals=False)
    with pytest.raises(StartupError, match="b cannot start"):
        await life.run([rec.service("a"), rec.service("b", fail=True), rec.service("c")])
    assert rec.events == ["enter a", "exit a"]
    assert not life.ready.is_set()


async def test_a_failed_or_finished_task_stops_the_daemon() -> None:
    async def boom() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("task broke")

    async def quits() -> None:
        await asyncio.sleep(0)

    for coro, error in ((boom, RuntimeError), (quits, TaskEnded)):
        rec = Recorder()

        @asynccontextmanager
        async def spawner(life: Lifecycle, coro=coro) -> AsyncIterator[None]:  # type: ignore[no-untyped-def]
            life.spawn(coro(), "worker")
            yield

        life = Lifecycle("t", signals=False)
        with pytest.raises(error):
            await asyncio.wait_for(life.run([rec.service("a"), spawner]), 5)
        assert rec.events == ["enter a", "exit a"]


async def test_finishing_tasks_are_awaited_and_the_drain_is_time_limited() -> None:
    stop = asyncio.Event()
    done: list[str] = []

    async def finisher() -> None:
        await stop.wait()
        done.append("finished")

    async def stuck() -> None:
        await asyncio.Event().wait()

    @asynccontextmanager
    async def spawner(life: Lifecycle) -> AsyncIterator[None]:
        life.spawn(finisher(), "finisher", finish=True)
        life.drains.append(stuck)
        yield

    life = Lifecycle("t", signals=False, stop=stop, drain_timeout=0.2)
    run = asyncio.create_task(life.run([spawner]))
    await asyncio.wait_for(life.ready.wait(), 5)
    stop.set()  # someone else (vxrdctl leave) sets the Event
    await asyncio.wait_for(run, 5)
    assert life.stopping


async def test_reload_hooks_and_notifications(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    calls: list[str] = []

    def good() -> None:
        calls.append("good")

    def bad() -> None:
        raise ValueError("key file line 2: not hex")

    life = Lifecycle("t", signals=False, notifier=Notifier({"NOTIFY_SOCKET": path}))
    life.reloaders += [bad, good]
    run = asyncio.create_task(life.run([], lambda: "all bound"))
    await asyncio.wait_for(life.ready.wait(), 5)
    assert sock.recv(4096) == b"READY=1\nSTATUS=all bound"
    assert not life.reload() and calls == ["good"]
    assert sock.recv(4096) == b"RELOADING=1"
    assert sock.recv(4096) == b"READY=1"
    life.stop()
    await asyncio.wait_for(run, 5)
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"


# ---------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("text", "names", "want"),
    [
        ("192.0.2.1", False, ("192.0.2.1", 7)),
        ("192.0.2.1:9", False, ("192.0.2.1", 9)),
        ("[2001:db8::0001]:9", False, ("2001:db8::1", 9)),
        ("2001:db8::1", False, ("2001:db8::1", 7)),
        ("vxsnd.example:9", True, ("vxsnd.example", 9)),
    ],
)
def test_parse_host_port(text: str, names: bool, want: tuple[str, int]) -> None:
    assert parse_host_port(text, 7, "server", names=names) == want


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must not be empty"),
        ("vxsnd.example", "not an IPv4 or IPv6 address"),
        ("[fe80::1x]:5", "not an IPv6 address"),
        (":5", "missing address"),
    ],
)
def test_parse_host_port_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_host_port(text, 7, "address")


def test_unmap() -> None:
    assert unmap("::ffff:192.0.2.1") == "192.0.2.1"
    assert unmap("2001:db8::1") == "2001:db8::1"
    assert unmap("192.0.2.1") == "192.0.2.1"
    assert unmap("a-name") == "a-name"


def test_tables_and_durations() -> None:
    assert table(["A", "LONGER"], [(1, None), ("wide", "")]) == "A     LONGER\n1     -\nwide  -"
    assert [duration(s) for s in (5, 65, 3700, 90000)] == ["5s", "1m05s", "1h01m", "1d01h"]
    assert (ago(100, 165), ago(None, 0), ago(200, 100)) == ("1m05s ago", "-", "in 1m40s")
    assert (until(None, 0), until(90, 100), until(110, 100)) == ("never", "expired", "in 10s")
    assert (since(None), since(3.7)) == ("never", "3s ago")


def test_global_flags_before_and_after_the_command() -> None:
    import argparse

    p = argparse.ArgumentParser()
    flags = GlobalFlags()
    flags.add(p, "--json", action="store_true")
    flags.add(p, "--api", default="http://default")
    sub = p.add_subparsers(dest="command")
    flags.copy_to(sub.add_parser("vni")).add_argument("vni")
    for argv in (["--json", "vni", "7"], ["vni", "7", "--json"], ["vni", "--json", "7"]):
        ns = p.parse_args(argv)
        assert (ns.json, ns.api, ns.vni) == (True, "http://default", "7")
    assert p.parse_args(["--api", "x", "vni", "7"]).api == "x"
    assert p.parse_args(["vni", "7", "--api", "y"]).api == "y"
    assert p.parse_args(["vni", "7"]).json is False


async def test_watchdog_pings_come_from_the_loop(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000", "WATCHDOG_PID": str(os.getpid())}
    life = Lifecycle("t", signals=False, notifier=Notifier(env))
    run = asyncio.create_task(life.run([]))
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    assert (await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)).startswith(b"READY=1")
    pings = 0
    while pings < 3:  # every 10 ms (half of WatchdogSec)
        assert await asyncio.wait_for(loop.sock_recv(sock, 4096), 5) == b"WATCHDOG=1"
        pings += 1
    life.stop()
    await asyncio.wait_for(run, 5)


def test_the_head_revision_constant_is_alembics_head() -> None:
    from alembic.script import ScriptDirectory

    from vxflood.migrations import HEAD_REVISION, alembic_config

    assert ScriptDirectory.from_config(alembic_config()).get_heads() == [HEAD_REVISION]
