"""The transaction runner: where the registry's SQL runs, one call per transaction.

Every piece of registry SQL is a plain function `fn(conn, *args)` over a
synchronous SQLAlchemy `Connection`; this module decides how it runs:

* SQLite (the default): the stdlib `sqlite3` driver in a small thread pool,
  the whole call in one hop. sqlite3 blocks, so a thread is forced on us; an
  async driver (aiosqlite) hops to its thread and back for every statement,
  which measured about 0.5 ms per statement against 0.02 ms for the statement
  itself, and a registry transaction has about ten.
* PostgreSQL: asyncpg on the event loop, the function run through
  `AsyncConnection.run_sync` (each statement is one await, no thread).

WAL, synchronous=NORMAL and foreign keys are set on every SQLite connection.
Transactions begin with an explicit BEGIN (SQLAlchemy decides, not the
sqlite3 module), so that reads inside a transaction are one snapshot.

An SQLite registry file is opened read-write but never created by a
connection (`mode=rw`): a file removed under a running vxsnd must not come
back as an empty registry on the next connect. `open_database(create=True)`
creates the file once, explicitly. `pin_file()` records which file (device,
inode) the registry is; every write checks, under the write lock, that the
path still names that file, and refuses with `RegistryLost` otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool, StaticPool

from vxsnd.registry.errors import RegistryLost

__all__ = [
    "CHUNK",
    "Database",
    "FileReplaced",
    "chunks",
    "normalize_url",
    "open_database",
    "safe_url",
    "sqlite_path",
]

CHUNK: Final = 500  # keys per IN (...) list: far below SQLite's and asyncpg's bind limits
SQLITE_THREADS: Final = 2  # one writer at a time (Store's lock); a reader beside it (WAL)
SQLITE_BUSY_TIMEOUT: Final = 30.0  # seconds a writer waits for another process's lock

_P = ParamSpec("_P")
_T = TypeVar("_T")


class FileReplaced(RegistryLost):
    """The registry's path now names another file than the one this vxsnd opened."""


def chunks(items: Iterable[_T], size: int = CHUNK) -> Iterator[list[_T]]:
    """`items` in lists of at most `size` (for IN lists and array parameters)."""
    chunk: list[_T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def normalize_url(url: str) -> str:
    """One spelling per backend: `sqlite:///PATH` (stdlib driver), `postgresql+asyncpg://`.

    `sqlite+aiosqlite://` and `sqlite+pysqlite://` name the same file and are
    accepted, as are `postgresql://` and `postgres://`.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.drivername != "sqlite":
        parsed = parsed.set(drivername="sqlite")
    elif backend in ("postgresql", "postgres") and parsed.drivername != "postgresql+asyncpg":
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def safe_url(url: str) -> str:
    """`url` as it may appear in a log line or an error: password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not even a URL: say so without echoing it
        return "<unparsable URL>"


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite URL; None for PostgreSQL and in-memory SQLite."""
    parsed = make_url(url)
    db = parsed.database
    if parsed.get_backend_name() != "sqlite" or not db or db == ":memory:":
        return None
    return Path(db)


class Database:
    """Runs `fn(conn, *args)`: `write` in a transaction that commits, `read` in one that
    rolls back. Subclasses pick the driver; `sync_engine` is there for event listeners."""

    dialect: str
    sync_engine: Engine

    async def write(
        self, fn: Callable[Concatenate[Connection, _P], _T], *args: _P.args, **kw: _P.kwargs
    ) -> _T:
        raise NotImplementedError

    async def read(
        self, fn: Callable[Concatenate[Connection, _P], _T], *args: _P.args, **kw: _P.kwargs
    ) -> _T:
        raise NotImplementedError

    async def dispose(self) -> None:
        raise NotImplementedError

    def pin_file(self) -> None:
        """Remember which file the registry is (SQLite files only; a no-op otherwise)."""

    def check_file(self) -> None:
        """Raise `RegistryLost` (`FileReplaced`) when the pinned file is gone (replaced)."""

    def drop_stale_log(self) -> None:
        """Remove what SQLite left of a replaced file (nothing to do elsewhere)."""


def _wal(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def _shm(path: Path) -> Path:
    return path.with_name(path.name + "-shm")


def _file_id(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


class _Sqlite(Database):
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._pinned: tuple[int, int] | None = None
        self._wal: tuple[int, int] | None = None
        if path is None:
            engine = create_engine(
                "sqlite://",
                connect_args={"check_same_thread": False},
                poolclass=StaticPool,  # one in-memory database is one connection
            )
        else:
            uri = f"file:{urllib.parse.quote(str(path))}?mode=rw"
            engine = create_engine(
                "sqlite://",
                creator=lambda: sqlite3.connect(
                    uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT, check_same_thread=False
                ),
                # reuse the connection used last: its page cache is warm (a write through
                # one connection makes the others re-read what they cached)
                poolclass=QueuePool,
                pool_use_lifo=True,
            )
        self.sync_engine = engine
        self.dialect = engine.dialect.name
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        self._pool = ThreadPoolExecutor(
            max_workers=1 if path is None else SQLITE_THREADS, thread_name_prefix="vxsnd-sqlite"
        )

    def pin_file(self) -> None:
        if self.path is not None:
            self._pinned = _file_id(self.path)
            with contextlib.suppress(FileNotFoundError):
                self._wal = _file_id(_wal(self.path))

    def drop_stale_log(self) -> None:
        """After `dispose()` of a replaced file: remove its write-ahead log if still there.

        SQLite names the log after the path, not the file: left in place, the old
        file's -wal would be read as the new file's log (and its pages win)."""
        if self.path is None or self._wal is None:
            return
        wal = _wal(self.path)
        with contextlib.suppress(FileNotFoundError):
            if _file_id(wal) == self._wal:
                wal.unlink()
                _shm(self.path).unlink(missing_ok=True)

    def check_file(self) -> None:
        """Is the path still the file this registry was opened on? (writes: under the lock)"""
        if self.path is None or self._pinned is None:
            return
        try:
            now = _file_id(self.path)
        except FileNotFoundError:
            raise RegistryLost(
                f"registry file {self.path} was removed while vxsnd ran; refusing to write "
                "into the unlinked file: restore the file (or restart vxsnd to start an "
                "empty registry)"
            ) from None
        if now != self._pinned:
            raise FileReplaced(f"registry file {self.path} was replaced by another file")

    def _write(self, fn: Callable[..., _T], args: tuple[Any, ...], kw: dict[str, Any]) -> _T:
        try:
            return self._write_on_a_connection(fn, args, kw)
        except sa_exc.OperationalError as exc:
            if "readonly" not in str(exc.orig):
                raise
            # a connection opened while the file could not be written stays read-only
            # after it can: the transaction rolled back, so try it once on a new one
            return self._write_on_a_connection(fn, args, kw)

    def _write_on_a_connection(
        self, fn: Callable[..., _T], args: tuple[Any, ...], kw: dict[str, Any]
    ) -> _T:
        with self.sync_engine.connect() as conn:
            conn.execution_options(**{_IMMEDIATE: True})
            try:
                with conn.begin():
                    self.check_file()
                    return fn(conn, *args, **kw)
            except sa_exc.OperationalError:
                # after an I/O error (disk full, read-only file) SQLite may keep the
                # connection read-only: never hand it out again
                conn.invalidate()
                raise

    def _read(self, fn: Callable[..., _T], args: tuple[Any, ...], kw: dict[str, Any]) -> _T:
        with self.sync_engine.connect() as conn:
            return fn(conn, *args, **kw)

    async def write(
        self, fn: Callable[Concatenate[Connection, _P], _T], *args: _P.args, **kw: _P.kwargs
    ) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._write, fn, args, kw)

    async def read(
        self, fn: Callable[Concatenate[Connection, _P], _T], *args: _P.args, **kw: _P.kwargs
    ) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._read, fn, args, kw)

    async def dispose(self) -> None:
        # a caller cancelled mid-call leaves its call running in the pool, holding a
        # connection: let it finish first, or that connection outlives the close (and
        # SQLite keeps its -wal and -shm files)
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        self._pool.shutdown(wait=True)
        self.sync_engine.dispose()


def _sqlite_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN (see _sqlite_begin)
    cursor = dbapi_connection.cursor()
    _journal_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _journal_wal(cursor: Any) -> None:
    """Switch to WAL (kept in the file: a no-op once done). Switching a new file needs
    an exclusive lock, and SQLite answers "database is locked" at once, busy timeout or
    not, when another connection is in the middle of a write meanwhile (several vxsnd
    starting together on a new file): wait and try again, as for any busy lock."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)  # a pool thread: the event loop is not held
        delay = min(delay * 2, 0.2)


_IMMEDIATE: Final = "vxsnd_sqlite_immediate"


def _sqlite_begin(connection: Connection) -> None:
    """A write takes the write lock when it begins (BEGIN IMMEDIATE): a deferred
    transaction that read first cannot wait for the lock when another process (a
    second vxsnd on the file) wrote meanwhile, and fails with "database is locked"
    whatever the busy timeout. Reads stay deferred (a snapshot, no lock)."""
    immediate = connection.get_execution_options().get(_IMMEDIATE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class _Async(Database):
    def __init__(self, url: str) -> None:
        self._engine: AsyncEngine = create_async_engine(url, pool_pre_ping=True)
        self.sync_engine = self._engine.sync_engine
        self.dialect = self.sync_engine.dialect.name

    async def write(
        self, fn: Callable[Concatenate[Connection, _P], _T], *args: _P.args, **kw: _P.kwargs
    ) -> _T:
        async with self._engine.begin() as conn:
            return await conn.run_sync(fn, *args, **kw)

    async def read(
        self, fn: Callable[Concatenate[Connection, _P], _T], *args: _P.args, **kw: _P.kwargs
    ) -> _T:
        async with self._engine.connect() as conn:
            return await conn.run_sync(fn, *args, **kw)

    async def dispose(self) -> None:
        await self._engine.dispose()


def open_database(url: str, *, create: bool = False) -> Database:
    """The database at `url` (any spelling `normalize_url` accepts); nothing connects yet.

    An SQLite file that does not exist is created (empty) only when `create`;
    otherwise connecting to it fails instead of creating it."""
    url = normalize_url(url)
    if make_url(url).get_backend_name() != "sqlite":
        return _Async(url)
    path = sqlite_path(url)
    if path is not None and create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        sqlite3.connect(path).close()  # an empty file: the schema check fills it
    return _Sqlite(path)
