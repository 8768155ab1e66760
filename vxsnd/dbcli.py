"""`vxsnd db upgrade` and `vxsnd db current`: schema management of the registry.

Plain functions for vxsnd.cli to call (synchronous: they run their own event
loop, so call them before the daemon's loop starts). The SQL itself lives in
vxsnd.registry. A registry at a revision this vxsnd does not know was written by a
newer vxsnd: both commands say so (and `upgrade` refuses: the fix is a newer
vxsnd, not a migration).
"""

from __future__ import annotations

import asyncio

from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError

from vxflood.logs import mask_url
from vxflood.migrations import alembic_config
from vxsnd.registry import current_revision, default_db_url, head_revision, upgrade_schema


class NewerRegistry(RuntimeError):
    """The registry is at a revision unknown to this vxsnd."""


def _unknown(current: tuple[str, ...]) -> list[str]:
    script = ScriptDirectory.from_config(alembic_config())
    unknown = []
    for rev in current:
        try:
            known = script.get_revision(rev)
        except (CommandError, RevisionError):
            known = None
        if known is None:
            unknown.append(rev)
    return unknown


def _newer(url: str, unknown: list[str]) -> str:
    return (
        f"registry {mask_url(url)} is at revision {', '.join(unknown)}, unknown to this "
        f"vxsnd (head {head_revision()}): it was written by a newer vxsnd; run that "
        "vxsnd (or a newer one) instead, there is nothing to upgrade"
    )


def db_upgrade(url: str | None = None) -> None:
    """Create the registry at `url` or bring it to the head revision (idempotent)."""
    url = url or default_db_url()
    unknown = _unknown(asyncio.run(current_revision(url)))
    if unknown:
        raise NewerRegistry(_newer(url, unknown))
    asyncio.run(upgrade_schema(url))


def db_current(url: str | None = None) -> str:
    """One line for people: the registry's revision and whether it is current.

    e.g. `0001 (head)`, `none (empty database; run vxsnd db upgrade)`.
    """
    url = url or default_db_url()
    current = asyncio.run(current_revision(url))
    head = head_revision()
    if not current:
        return "none (empty database; run `vxsnd db upgrade`)"
    if current == (head,):
        return f"{head} (head)"
    unknown = _unknown(current)
    if unknown:
        return (
            f"{', '.join(current)} (written by a newer vxsnd: this vxsnd knows revisions "
            f"up to {head}; run that vxsnd or a newer one, not `db upgrade`)"
        )
    return f"{', '.join(current)} (head is {head}; run `vxsnd db upgrade`)"
