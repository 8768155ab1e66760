"""Expiry: registrations that are not refreshed within their hold time go.

A timer asks the engine to add an expiry sweep to the next batch every
`interval` seconds. The sweep runs inside the batch's transaction (the store
removes nodes whose hold time passed and hands over or deletes their members),
so an expiry bumps generations and is pushed exactly like a leave. The
decision itself (`last refresh + hold time <= now`) is `vxsnd.registry.is_expired`;
the store applies the same rule to its `expires_at` column.
"""

from __future__ import annotations

import asyncio

from vxsnd.engine import Engine


async def run_sweeper(engine: Engine, interval: float) -> None:
    """Run until cancelled."""
    while True:
        await asyncio.sleep(interval)
        engine.request_sweep()
