"""Registry watch: notice changes written by another vxsnd on the same registry,
and tell them (and the status page) that this one serves it (`run_heartbeat`).

Several service nodes may share one registry; each pushes what changes through
itself. Every `interval` seconds this asks the engine to read the registry's
generations in its next step (one SELECT) and to push, to the nodes registered
here, every VNI that moved without this instance writing it. Without it such a
change would reach them only with their next refresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from vxsnd.engine import Engine
from vxsnd.registry import ServiceNode, Store

log = logging.getLogger("vxsnd.watch")


async def run_watch(engine: Engine, interval: float) -> None:
    """Run until cancelled."""
    while True:
        await asyncio.sleep(interval)
        engine.request_watch()


HEARTBEAT = 10.0  # seconds between this instance's service_nodes row updates


async def run_heartbeat(
    store: Store, me: Callable[[float], ServiceNode], interval: float = HEARTBEAT
) -> None:
    """Write this instance's row now and every `interval` until cancelled, so the
    others (and the status page) know it serves the registry. A failed write is
    only a missed beat: registry health is reported by the registry's own paths."""
    while True:
        try:
            await store.heartbeat(me(time.time()))
        except Exception:
            log.debug("service node heartbeat failed", exc_info=True)
        await asyncio.sleep(interval)
