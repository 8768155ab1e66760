"""`Store`: the registry's front door - open, write one batch, read, and stay honest.

The store never reads the clock: every write takes `now` (float epoch seconds).
It serialises this process's writers (one asyncio lock; PostgreSQL adds an
advisory lock across processes) and knows which registry it has open:

* `registry_id` and `created` (this start gave the registry its id: a new,
  empty registry - what the protocol core's learning period keys on);
* every write first checks, inside its transaction, that the registry is
  still the one it opened (the SQLite file by device and inode, the registry
  id in `meta`). A removed file is never written again (`RegistryLost`); a
  replaced file or a changed id is adopted, counted in `identity_epoch` and
  reported to the `on_identity_change` listeners, then the write goes on;
* `status` says whether the registry is usable (see `vxsnd.registry.health`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from vxsnd.registry import notify, presence, reads
from vxsnd.registry.errors import (
    RegistryError,
    RegistryLost,
    RegistryMissing,
    RegistryUnreadable,
)
from vxsnd.registry.health import (
    IdentityChange,
    IdentityListener,
    RegistryHealth,
    Tracker,
    describe,
)
from vxsnd.registry.model import Batch, BatchResult
from vxsnd.registry.presence import ServiceNode
from vxsnd.registry.records import Change, Delta, Lagging, Member, Node, NodeVni, VniSummary
from vxsnd.registry.revisions import ensure_registry_id, prepare, read_registry_id
from vxsnd.registry.runner import (
    Database,
    FileReplaced,
    normalize_url,
    open_database,
    safe_url,
    sqlite_path,
)
from vxsnd.registry.writer import apply_batch

__all__ = ["DEFAULT_DB_PATH", "DEFAULT_LOG_DEPTH", "Store", "default_db_url"]

log = logging.getLogger("vxsnd.registry")

DEFAULT_DB_PATH: Final = Path("/var/lib/vxsnd/registry.db")
DEFAULT_LOG_DEPTH: Final = 64


def default_db_url(environ: Mapping[str, str] | None = None) -> str:
    """`sqlite:////var/lib/vxsnd/registry.db`, or in `$STATE_DIRECTORY`.

    systemd sets STATE_DIRECTORY (colon-separated when a unit has several; the
    first is used) for units with `StateDirectory=`.
    """
    env = os.environ if environ is None else environ
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    path = Path(state) / DEFAULT_DB_PATH.name if state else DEFAULT_DB_PATH
    return f"sqlite:///{path}"


class _IdChanged(RegistryLost):
    def __init__(self, found: str) -> None:
        super().__init__(f"registry id changed to {found}")
        self.found = found


def _open_tx(conn: Connection, url: str, create: bool) -> tuple[str, bool]:
    created = prepare(conn, url, create=create)
    registry_id, new_id = ensure_registry_id(conn)
    return registry_id, created or new_id


_READ_ID: Final = "SELECT value FROM meta WHERE key = 'registry_id'"


def _identity(conn: Connection, expected: str) -> None:
    """Is the registry on `conn` still the one with id `expected`? (runs first in a write)"""
    try:  # on every write: the driver's SQL straight, no statement to compile
        found = conn.exec_driver_sql(_READ_ID).scalar_one_or_none()
    except sa_exc.DBAPIError as exc:  # no meta table: someone emptied the database
        raise RegistryLost(f"the registry's tables are gone ({describe(exc)})") from None
    if found is None:
        raise RegistryLost("the registry has no registry id any more")
    if found != expected:
        raise _IdChanged(found)


def _checked_apply(
    conn: Connection, batch: Batch, now: float, log_depth: int, expected: str, token: str
) -> BatchResult:
    result = apply_batch(conn, batch, now, log_depth, check=lambda c: _identity(c, expected))
    if result.changed:
        notify.notify(conn, expected, token)
    return result


def _reason(exc: Exception, what: str) -> str:
    """One line for `status`: a RegistryError says it all, a database error gets `what`."""
    return str(exc) if isinstance(exc, RegistryError) else f"{what}: {describe(exc)}"


def _registry_id_or(conn: Connection, default: str) -> str:
    return read_registry_id(conn) or default


async def _open_db(url: str, create: bool) -> tuple[Database, str, bool]:
    """Open and check the database at `url`; any failure is one RegistryError line."""
    path = sqlite_path(url)
    if path is not None and not create and not path.exists():
        raise RegistryMissing(
            f"registry file {path} does not exist; run `vxsnd db upgrade --db "
            f"{safe_url(url)}` to create it"
        )
    try:
        db = open_database(url, create=create)
    except (OSError, sa_exc.DBAPIError, ValueError) as exc:
        raise RegistryUnreadable(
            f"cannot open the registry {safe_url(url)}: {describe(exc)}"
        ) from None
    try:
        registry_id, created = await db.write(_open_tx, url, create)
        db.pin_file()
    except BaseException as exc:
        await db.dispose()
        if isinstance(exc, RegistryError) or not isinstance(exc, Exception):
            raise
        where = safe_url(url) if path is None else str(path)
        raise RegistryUnreadable(f"cannot read the registry {where}: {describe(exc)}") from None
    return db, registry_id, created


class _Closed(Database):
    """Stands in while a replaced registry file is reopened, or when that failed: every
    write tries to reopen it again (the file may be usable by then)."""

    async def write(self, fn: Any, *args: Any, **kw: Any) -> Any:
        raise FileReplaced("the registry file was replaced and could not be reopened yet")

    async def read(self, fn: Any, *args: Any, **kw: Any) -> Any:
        raise RegistryLost("the registry file was replaced and could not be reopened yet")

    def check_file(self) -> None:
        raise FileReplaced("the registry file was replaced and could not be reopened yet")

    async def dispose(self) -> None:
        pass


class Store:
    """The registry. Create with `await Store.open(url)`; `await store.close()` at the end."""

    def __init__(
        self, url: str, db: Database, registry_id: str, created: bool, log_depth: int
    ) -> None:
        self._url = url
        self._db = db
        self._log_depth = log_depth
        self._lock = asyncio.Lock()  # one writer per process; PostgreSQL adds a lock across
        self._registry_id = registry_id
        self._health = Tracker(safe_url(url))
        self._listeners: list[IdentityListener] = []
        self.created: Final = created
        self.identity_epoch = 0  # +1 each time the registry changed identity under us
        self._write_failed = False
        self._token = secrets.token_hex(8)  # names this store's own change notifications
        self.presence_id: str | None = None  # the service_nodes row this store writes

    @classmethod
    async def open(
        cls,
        url: str | None = None,
        *,
        create: bool = True,
        log_depth: int = DEFAULT_LOG_DEPTH,
    ) -> Store:
        """Open the registry at `url` (default: `default_db_url()`).

        An empty database (a new SQLite file) is created at the head revision
        when `create`; one at another revision raises `SchemaOutdated` (run
        `vxsnd db upgrade`) or `SchemaUnknown`; one that cannot be read at all
        `RegistryUnreadable`. All are `RegistryError`s with a one-line message.
        """
        if log_depth < 1:
            raise ValueError("log_depth must be at least 1")
        url = normalize_url(url or default_db_url())
        db, registry_id, created = await _open_db(url, create)
        if created:
            log.info("registry %s created (id %s)", safe_url(url), registry_id)
        return cls(url, db, registry_id, created, log_depth)

    async def close(self) -> None:
        await self._db.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    @property
    def registry_id(self) -> str:
        return self._registry_id

    @property
    def log_depth(self) -> int:
        return self._log_depth

    @property
    def sync_engine(self) -> Engine:
        """The SQLAlchemy engine underneath, for event listeners (benchmarks count statements)."""
        return self._db.sync_engine

    @property
    def status(self) -> RegistryHealth:
        """Usable or not, as of the last write or check (no I/O)."""
        return self._health.state

    def on_identity_change(self, listener: IdentityListener) -> None:
        """Call `listener` (synchronously, on the loop) whenever the registry is adopted anew."""
        self._listeners.append(listener)

    @property
    def notifies(self) -> bool:
        """Whether other instances' changes are announced (PostgreSQL), not only polled."""
        return make_url(self._url).get_backend_name() != "sqlite"

    async def follow_changes(self, wake: Callable[[], None]) -> None:
        """Run until cancelled: `wake()` whenever another vxsnd changed a flood list.

        PostgreSQL LISTEN/NOTIFY (`vxsnd.registry.notify`); returns at once on
        SQLite, where the registry poll is the only way."""
        if make_url(self._url).get_backend_name() == "sqlite":
            return
        await notify.follow(self._url, lambda: self._registry_id, self._token, wake)

    # ---- identity

    async def _adopt(self, reason: str) -> None:
        """The registry changed under us: take the one that is there now, or stay degraded."""
        old = self._registry_id
        if sqlite_path(self._url) is not None:
            # close the old file first and remove its -wal and -shm, which would
            # otherwise be read as the new file's log
            stale, self._db = self._db, _Closed()
            await stale.dispose()
            stale.drop_stale_log()
            self._db, registry_id, _ = await _open_db(self._url, create=False)
        else:
            registry_id = await self._db.read(_registry_id_or, old)
        self._registry_id = registry_id
        self.identity_epoch += 1
        change = IdentityChange(old, registry_id, reason)
        log.warning(
            "registry %s changed identity (%s): id %s -> %s",
            safe_url(self._url),
            reason,
            old,
            registry_id,
        )
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:  # a listener's bug must not fail the write
                log.exception("registry identity listener failed")

    async def _write_once(self, batch: Batch, now: float) -> BatchResult:
        return await self._db.write(
            _checked_apply, batch, now, self._log_depth, self._registry_id, self._token
        )

    # ---- writes

    async def apply(self, batch: Batch, now: float) -> BatchResult:
        """Apply `batch` in one transaction, on the registry this store has open.

        Raises `RegistryLost` when that registry is gone (and leaves it unwritten);
        any failure makes `status` degraded until a write succeeds again."""
        async with self._lock:
            try:
                try:
                    result = await self._write_once(batch, now)
                except (FileReplaced, _IdChanged) as exc:
                    await self._adopt(str(exc))
                    result = await self._write_once(batch, now)
            except Exception as exc:
                self._write_failed = True
                self._health.failed(_reason(exc, "registry writes fail"))
                raise
            self._write_failed = False
            self._health.ok()
            return result

    async def check(self) -> RegistryHealth:
        """Look now: does the registry answer, and is it still the one we opened?

        Read-only; a replaced registry is adopted (as a write would)."""
        async with self._lock:
            try:
                try:
                    self._db.check_file()
                    await self._db.read(_identity, self._registry_id)
                except (FileReplaced, _IdChanged) as exc:
                    await self._adopt(str(exc))
            except Exception as exc:
                self._health.failed(_reason(exc, "the registry does not answer"))
                return self._health.state
            if not self._write_failed:  # failing writes clear only when a write succeeds
                self._health.ok()
            return self._health.state

    # ---- reads

    async def generations(self, vnis: Iterable[int] | None = None) -> dict[int, int]:
        """Current generation of the given (default: all) VNIs; unknown VNIs are left out."""
        return await self._db.read(reads.generations, None if vnis is None else sorted(set(vnis)))

    async def members(self, vni: int) -> tuple[int, list[Member]]:
        """(generation, members in address order); (0, []) for an unknown VNI.

        A registered member's `expires_at` is its node's.
        """
        return await self._db.read(reads.members, vni)

    async def member_addresses(self, vni: int) -> tuple[int, frozenset[str]]:
        """(generation, canonical addresses): what a snapshot push carries."""
        return await self._db.read(reads.member_addresses, vni)

    async def delta(self, vni: int, base: int) -> Delta | None:
        """Adds/removes from generation `base` to now, or None when the log cannot tell.

        None when `base` is ahead of the current generation, negative, or older
        than the change log reaches; `base` == current gives an empty delta.
        """
        return await self._db.read(reads.delta, vni, base)

    async def vnis(self) -> list[VniSummary]:
        """Every VNI the registry knows (including ones whose last member left)."""
        return await self._db.read(reads.vnis)

    async def nodes(self) -> list[Node]:
        return await self._db.read(reads.nodes)

    async def node(self, node_id: str) -> Node | None:
        return await self._db.read(reads.node, node_id)

    async def node_vnis(self, node_id: str) -> list[NodeVni]:
        """The VNIs a node claims, with what it applied and the VNI's current generation."""
        return await self._db.read(reads.node_vnis, node_id)

    async def lagging(self, vnis: Iterable[int] | None = None) -> list[Lagging]:
        """Nodes whose applied generation is behind, in the given (default: all) VNIs."""
        return await self._db.read(reads.lagging, None if vnis is None else sorted(set(vnis)))

    async def memberships(self, vni: int | None = None) -> list[NodeVni]:
        """Every node's claims (or one VNI's) in one read: the status page's lag view."""
        return await self._db.read(reads.memberships, vni)

    async def static_members(self) -> list[Member]:
        """Static members of every VNI (few): the status page's expiry view."""
        return await self._db.read(reads.static_members)

    async def change_log(self, vni: int, limit: int) -> list[Change]:
        """The newest `limit` rows of a VNI's change log, newest first."""
        return await self._db.read(reads.change_log, vni, limit)

    async def health(self) -> bool:
        """True when the registry answers and is still the one this store opened."""
        return (await self.check()).ok

    # ---- service nodes (vxsnd.registry.presence)

    async def heartbeat(self, me: ServiceNode) -> None:
        """Write this instance's service_nodes row (`presence_id` says which is ours)."""
        self.presence_id = me.server_id
        await self._db.write(presence.heartbeat, me)

    async def service_nodes(self) -> list[ServiceNode]:
        return await self._db.read(presence.service_nodes)
