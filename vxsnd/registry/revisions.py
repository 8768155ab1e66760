"""Schema revisions of the registry: check, create and upgrade through ONE helper.

The schema lives in `schema.tables` and only changes through Alembic
(`migrations/`). `prepare()` is the one place that looks at a database's
revision and decides: accept the head, create an empty database, upgrade an
older one (when asked), or refuse with a message that says what to run.

Creating or upgrading is serialised across processes, so that any number of
vxsnd started at once on an empty registry all come up: on PostgreSQL by a
transaction-scoped advisory lock taken before anything is read (the loser
waits, then finds the schema at head); on SQLite by the write lock that the
runner's BEGIN IMMEDIATE takes.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from sqlalchemy import Connection, insert, inspect, select, text
from sqlalchemy import exc as sa_exc

from vxflood.migrations import HEAD_REVISION
from vxflood.schema import tables as t
from vxsnd.registry.errors import (
    RegistryMissing,
    RegistryUnreadable,
    SchemaOutdated,
    SchemaUnknown,
)
from vxsnd.registry.health import describe
from vxsnd.registry.runner import normalize_url, open_database, safe_url, sqlite_path

__all__ = [
    "PG_LOCK_KEY",
    "current_revision",
    "ensure_registry_id",
    "head_revision",
    "lock_registry",
    "prepare",
    "read_registry_id",
    "upgrade_schema",
]

PG_LOCK_KEY: Final = 0x7678666C6F6F64  # "vxflood": serialises writers sharing one PostgreSQL

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

# Alembic (with Mako and Pygments) is imported only to create, upgrade or explain a
# registry that is not at the head: a vxsnd starting on a registry at the head reads
# alembic_version itself (issue 11: 8 MB and 90 ms less at every start).


def lock_registry(conn: Connection) -> None:
    """Serialise this transaction with every other writer of the registry.

    PostgreSQL: an advisory lock held until the transaction ends. SQLite: the
    transaction already holds the write lock (BEGIN IMMEDIATE)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})


def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    from vxflood.migrations import alembic_config

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this vxsnd knows (the migration scripts' head)."""
    head = _scripts().get_current_head()
    assert head is not None
    return head


def _heads(conn: Connection) -> tuple[str, ...]:
    """The revisions applied (the rows of alembic_version; none: not there)."""
    if "alembic_version" not in inspect(conn).get_table_names():
        return ()
    rows = conn.execute(text("SELECT version_num FROM alembic_version"))
    return tuple(sorted(str(r[0]) for r in rows))


def _to_head(conn: Connection, url: str) -> None:
    from alembic import command

    from vxflood.migrations import alembic_config

    cfg = alembic_config(url)
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


def _refuse(conn: Connection, url: str, current: set[str], heads: set[str]) -> None:
    """Raise why a non-empty database at another revision cannot be used as it is."""
    where = safe_url(url)
    if "alembic_version" not in inspect(conn).get_table_names():
        raise SchemaUnknown(
            f"database {where} has tables but no Alembic revision: "
            "not a vxsnd registry (use an empty database)"
        )
    for rev in current:
        if not _known(rev):
            raise SchemaUnknown(
                f"registry {where} is at revision {rev}, unknown to this vxsnd "
                f"(head {', '.join(sorted(heads))}): it was written by a newer vxsnd"
            )
    at = ", ".join(sorted(current)) or "base (no revision applied)"
    raise SchemaOutdated(
        f"registry {where} is at schema revision {at}, this vxsnd needs "
        f"{', '.join(sorted(heads))}: run `vxsnd db upgrade --db {where}`"
    )


def prepare(conn: Connection, url: str, *, create: bool, upgrade: bool = False) -> bool:
    """Bring the registry on `conn` to a usable state; True when this call created it.

    Accepts the head revision; creates an empty database when `create`;
    upgrades an older one only when `upgrade` (`vxsnd db upgrade`); refuses
    the rest. Holds the registry lock for the rest of the transaction."""
    lock_registry(conn)
    heads = {HEAD_REVISION}
    current = set(_heads(conn))
    if current == heads:
        return False
    tables = set(inspect(conn).get_table_names())
    if not tables:
        if not create:
            raise RegistryMissing(
                f"registry {safe_url(url)} is empty; run `vxsnd db upgrade --db "
                f"{safe_url(url)}` to create it"
            )
        _to_head(conn, url)
        return True
    if upgrade and "alembic_version" in tables and all(_known(rev) for rev in current):
        _to_head(conn, url)
        return False
    _refuse(conn, url, current, heads)
    return False  # pragma: no cover - _refuse always raises


def _known(rev: str) -> bool:
    from alembic.util import CommandError

    try:
        return _scripts().get_revision(rev) is not None
    except CommandError:
        return False


def read_registry_id(conn: Connection) -> str | None:
    query = select(t.meta.c.value).where(t.meta.c.key == "registry_id")
    found = conn.execute(query).scalar_one_or_none()
    return None if found is None else str(found)


def ensure_registry_id(conn: Connection) -> tuple[str, bool]:
    """The registry's id, and whether this call gave it one (call under the lock)."""
    found = read_registry_id(conn)
    if found is not None:
        return found, False
    registry_id = secrets.token_hex(16)
    conn.execute(insert(t.meta).values(key="registry_id", value=registry_id))
    return registry_id, True


async def upgrade_schema(url: str) -> None:
    """Bring the registry at `url` to the head revision (creates it if empty)."""
    url = normalize_url(url)
    with _unreadable(url):
        db = open_database(url, create=True)
        try:
            await db.write(_upgrade, url)
        finally:
            await db.dispose()


@contextlib.contextmanager
def _unreadable(url: str) -> Iterator[None]:
    """A database that cannot be opened or read at all is one `RegistryUnreadable` line."""
    try:
        yield
    except (sa_exc.DBAPIError, OSError) as exc:
        raise RegistryUnreadable(
            f"cannot read the registry {safe_url(url)}: {describe(exc)}"
        ) from None


def _upgrade(conn: Connection, url: str) -> None:
    # no registry id yet: the first vxsnd to open the registry gives it one, and knows
    # that it starts on a new registry (`Store.created`)
    prepare(conn, url, create=True, upgrade=True)


async def current_revision(url: str) -> tuple[str, ...]:
    """Revisions applied to the registry at `url` (empty: none, e.g. a new database)."""
    url = normalize_url(url)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return ()  # do not create a file just to look at it
    with _unreadable(url):
        db = open_database(url)
        try:
            return await db.read(_heads)
        finally:
            await db.dispose()
