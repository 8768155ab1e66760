"""`vxsnd db upgrade` and `vxsnd db current`: schema management of the registry.

Plain functions for vxsnd.cli to call (synchronous: they run their own event
loop, so call them before the daemon's loop starts). The SQL itself lives in
vxsnd.registry.
"""

from __future__ import annotations

import asyncio

from vxsnd.registry import current_revision, default_db_url, head_revision, upgrade_schema


def db_upgrade(url: str | None = None) -> None:
    """Create the registry at `url` or bring it to the head revision (idempotent)."""
    asyncio.run(upgrade_schema(url or default_db_url()))


def db_current(url: str | None = None) -> str:
    """One line for people: the registry's revision and whether it is current.

    e.g. `0001 (head)`, `none (empty database; run vxsnd db upgrade)`.
    """
    current = asyncio.run(current_revision(url or default_db_url()))
    head = head_revision()
    if not current:
        return "none (empty database; run `vxsnd db upgrade`)"
    if current == (head,):
        return f"{head} (head)"
    return f"{', '.join(current)} (head is {head}; run `vxsnd db upgrade`)"
