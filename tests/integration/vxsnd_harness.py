"""Run a real vxsnd daemon in the test's event loop (127.0.0.1, ephemeral port)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from vxflood.schema.keys import Keyring
from vxsnd.config import Config, ListenAddr
from vxsnd.daemon import Daemon


def make_config(db: str, **overrides: Any) -> Config:
    base = Config(
        listen=(ListenAddr("127.0.0.1", 0),),
        db=db,
        server_id="vxsnd-test",
        batch_window=2.0,
        retransmit_initial=0.1,
        retransmit_max=1.0,
        sweep_interval=0.1,
        drain_timeout=5.0,
    )
    return replace(base, **overrides)


@asynccontextmanager
async def running(cfg: Config, keyring: Keyring | None = None) -> AsyncIterator[Daemon]:
    daemon = Daemon(cfg, keyring=keyring)
    task = asyncio.create_task(daemon.run())
    started = asyncio.create_task(daemon.started.wait())
    done, _ = await asyncio.wait({task, started}, timeout=15, return_when="FIRST_COMPLETED")
    if task in done:
        started.cancel()
        task.result()  # raises the start-up error
        raise AssertionError("daemon exited during start-up")
    if started not in done:
        raise AssertionError("daemon did not start within 15 s")
    try:
        yield daemon
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 15)


def server_addr(daemon: Daemon) -> tuple[str, int]:
    host, port = daemon.addresses[0]
    return host, port
