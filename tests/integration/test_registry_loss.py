"""A registry that goes missing is noticed (issue 9, findings 5 and 6), on real files.

The SQLite file is removed, replaced by another registry, or made read-only
(`chattr +i` on the write-ahead log, where SQLite writes first: the kernel then
refuses every write, also through descriptors opened before) under a running
store and a running daemon with its REST API. Each case must be refused or
adopted explicitly, and reported on /healthz, in `vxsnd_registry_ok` and in
one log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import require_root
from tests.integration.agent_sim import wait_until
from tests.integration.apiharness import sqlite_url
from tests.integration.vxsnd_harness import make_config, running
from vxsnd import api
from vxsnd import registry as st
from vxsnd.daemon import Daemon


def static_batch(vni: int, address: str) -> st.Batch:
    batch = st.Batch()
    batch.enrol_static(st.StaticVtep(vni, address))
    return batch


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """The kernel refuses every write to `path` (needs root and a filesystem with
    file attributes, e.g. ext4), until the block ends."""
    require_root()
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"chattr +i {path} failed: {done.stderr.strip()}", pytrace=False)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def wal(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


# ------------------------------------------------------------------ the store alone


async def test_a_new_registry_says_it_was_created_by_this_start(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    async with await st.Store.open(url) as first:
        assert first.created
        created_id = first.registry_id
    async with await st.Store.open(url) as again:
        assert not again.created and again.registry_id == created_id


async def test_a_removed_file_is_never_written_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = sqlite_url(tmp_path)
    path = tmp_path / "registry.db"
    async with await st.Store.open(url) as store:
        await store.apply(static_batch(100, "192.0.2.1"), 1.0)
        path.unlink()
        caplog.set_level(logging.WARNING, "vxsnd.registry")
        for now in (2.0, 3.0, 4.0):
            with pytest.raises(st.RegistryLost, match="removed"):
                await store.apply(static_batch(100, "192.0.2.2"), now)
        assert not path.exists()  # nothing recreated an empty registry in its place
        assert not store.status.ok and "removed" in (store.status.reason or "")
        assert not (await store.check()).ok
        degraded = [r for r in caplog.records if "degraded" in r.getMessage()]
        assert len(degraded) == 1  # one line, not one per refused write


async def test_a_replaced_file_is_adopted_and_reported(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    path = tmp_path / "registry.db"
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    async with await st.Store.open(sqlite_url(other_dir)) as other:
        other_id = other.registry_id
    changes: list[st.IdentityChange] = []
    async with await st.Store.open(url) as store:
        store.on_identity_change(changes.append)
        first_id = store.registry_id
        await store.apply(static_batch(100, "192.0.2.1"), 1.0)
        os.replace(other_dir / "registry.db", path)
        await store.apply(static_batch(200, "192.0.2.2"), 2.0)
        assert store.registry_id == other_id != first_id
        assert store.identity_epoch == 1
        assert [(c.old_id, c.new_id) for c in changes] == [(first_id, other_id)]
        assert store.status.ok
    async with await st.Store.open(url) as reopened:  # the write went to the file there now
        assert reopened.registry_id == other_id
        assert [v.vni for v in await reopened.vnis()] == [200]


async def test_writes_that_fail_make_the_store_degraded_until_one_succeeds(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.db"
    async with await st.Store.open(sqlite_url(tmp_path)) as store:
        await store.apply(static_batch(100, "192.0.2.1"), 1.0)
        with immutable(wal(path)):
            with pytest.raises(Exception, match="I/O"):
                await store.apply(static_batch(100, "192.0.2.2"), 2.0)
            assert not store.status.ok
            assert "registry writes fail" in (store.status.reason or "")
            assert not (await store.check()).ok  # reads work, but writes still fail
        await store.apply(static_batch(100, "192.0.2.3"), 3.0)
        assert store.status.ok


def test_an_unreadable_registry_at_start_is_one_line(tmp_path: Path) -> None:
    garbage = tmp_path / "registry.db"
    garbage.write_bytes(b"this is not an SQLite database\n" * 100)
    a_directory = tmp_path / "dir.db"
    a_directory.mkdir()
    for path in (garbage, a_directory):
        done = subprocess.run(
            [sys.executable, "-m", "vxsnd", "--db", f"sqlite:///{path}", "--listen", "127.0.0.1:0"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode != 0
        assert "Traceback" not in done.stderr, done.stderr
        failing = [line for line in lines if "registry" in line and str(path) in line]
        assert len(failing) == 1, done.stderr
        for action in ("current", "upgrade"):
            db = subprocess.run(
                [sys.executable, "-m", "vxsnd", "db", action, "--db", f"sqlite:///{path}"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert db.returncode == 1 and "Traceback" not in db.stderr, db.stderr
            assert len(db.stderr.strip().splitlines()) == 1, db.stderr
    assert garbage.read_bytes().startswith(b"this is not")  # left as it was


# ------------------------------------------------------------------ the running daemon


@contextlib.asynccontextmanager
async def daemon_with_api(directory: Path) -> AsyncIterator[tuple[Daemon, str]]:
    async with running(make_config(sqlite_url(directory))) as daemon:
        runner = await api.start_api(daemon, "127.0.0.1", 0, None)
        try:
            yield daemon, f"http://127.0.0.1:{api.bound_port(runner)}"
        finally:
            await runner.cleanup()


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, object]:
    async with session.get(url) as r:
        return r.status, await r.json()


async def put(session: aiohttp.ClientSession, url: str) -> int:
    async with session.put(url) as r:
        return r.status


async def wait_health(session: aiohttp.ClientSession, base: str, status: int) -> object:
    """Poll /healthz until it answers `status`; return its body."""
    deadline = time.monotonic() + 10
    while True:
        code, body = await get_json(session, f"{base}/healthz")
        if code == status:
            return body
        assert time.monotonic() < deadline, f"/healthz stayed {code}: {body}"
        await asyncio.sleep(0.02)


async def test_daemon_removed_registry(tmp_path: Path) -> None:
    """Fails on main: enrol answered 201 and /healthz 200 with the file gone."""
    path = tmp_path / "registry.db"
    async with daemon_with_api(tmp_path) as (daemon, base), aiohttp.ClientSession() as session:
        assert await put(session, f"{base}/v1/vnis/100/vteps/192.0.2.1") == 201
        path.unlink()
        body = await wait_health(session, base, 503)
        assert isinstance(body, dict) and body["status"] == "degraded"
        assert "removed" in body["reason"]
        assert await put(session, f"{base}/v1/vnis/100/vteps/192.0.2.2") == 503
        assert daemon.metrics.value("vxsnd_registry_ok") == 0
        assert not path.exists()
        assert (await get_json(session, f"{base}/healthz"))[0] == 503  # it stays refused


async def test_daemon_replaced_registry(tmp_path: Path) -> None:
    """Fails on main: the daemon went on writing into the replaced (unlinked) file."""
    path = tmp_path / "registry.db"
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    async with await st.Store.open(sqlite_url(other_dir)) as other:
        other_id = other.registry_id
    async with daemon_with_api(tmp_path) as (daemon, base), aiohttp.ClientSession() as session:
        assert await put(session, f"{base}/v1/vnis/100/vteps/192.0.2.1") == 201
        first_id = daemon.store.registry_id
        os.replace(other_dir / "registry.db", path)
        await wait_until(lambda: daemon.store.registry_id == other_id, 5, "the new registry id")
        assert await put(session, f"{base}/v1/vnis/300/vteps/192.0.2.3") == 201
        assert daemon.store.identity_epoch == 1 and first_id != other_id
        await wait_health(session, base, 200)
        assert daemon.metrics.value("vxsnd_registry_ok") == 1
    async with await st.Store.open(sqlite_url(tmp_path)) as reopened:
        assert [v.vni for v in await reopened.vnis()] == [300]


async def test_daemon_read_only_registry(tmp_path: Path) -> None:
    """Fails on main: /healthz stayed 200 while every registry write failed."""
    path = tmp_path / "registry.db"
    async with daemon_with_api(tmp_path) as (daemon, base), aiohttp.ClientSession() as session:
        assert await put(session, f"{base}/v1/vnis/100/vteps/192.0.2.1") == 201
        with immutable(wal(path)):
            assert await put(session, f"{base}/v1/vnis/100/vteps/192.0.2.2") == 503
            body = await wait_health(session, base, 503)
            assert isinstance(body, dict) and body["status"] == "degraded"
            assert "registry writes fail" in body["reason"]
            assert daemon.metrics.value("vxsnd_registry_ok") == 0
        await wait_health(session, base, 200)  # the sweeper's next transaction succeeds
        assert daemon.metrics.value("vxsnd_registry_ok") == 1


async def test_a_file_replaced_by_garbage_is_refused_until_a_registry_is_back(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.db"
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    async with await st.Store.open(sqlite_url(other_dir)) as other:
        other_id = other.registry_id
    async with await st.Store.open(sqlite_url(tmp_path)) as store:
        await store.apply(static_batch(100, "192.0.2.1"), 1.0)
        garbage = tmp_path / "garbage"
        garbage.write_bytes(b"not a registry\n" * 100)
        os.replace(garbage, path)
        with pytest.raises(st.RegistryError, match="not a database"):
            await store.apply(static_batch(100, "192.0.2.2"), 2.0)
        assert not store.status.ok and not (await store.check()).ok
        os.replace(other_dir / "registry.db", path)
        await store.apply(static_batch(300, "192.0.2.3"), 3.0)
        assert store.status.ok and store.registry_id == other_id
        assert [v.vni for v in await store.vnis()] == [300]
