"""Registry watch: notice changes written by another vxsnd on the same registry.

Several service nodes may share one registry; each pushes what changes through
itself. Every `interval` seconds this asks the engine to read the registry's
generations in its next step (one SELECT) and to push, to the nodes registered
here, every VNI that moved without this instance writing it. Without it such a
change would reach them only with their next refresh.
"""

from __future__ import annotations

import asyncio

from vxsnd.engine import Engine


async def run_watch(engine: Engine, interval: float) -> None:
    """Run until cancelled."""
    while True:
        await asyncio.sleep(interval)
        engine.request_watch()
