"""Where the registry's SQL runs: one call, one transaction, on a sync Connection.

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
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

__all__ = ["CHUNK", "Database", "chunks", "normalize_url", "open_database"]

CHUNK: Final = 500  # keys per IN (...) list: far below SQLite's and asyncpg's bind limits
SQLITE_THREADS: Final = 2  # one writer at a time (Store's lock); a reader beside it (WAL)
SQLITE_BUSY_TIMEOUT: Final = 30.0  # seconds a writer waits for another process's lock

_P = ParamSpec("_P")
_T = TypeVar("_T")


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


class _Sqlite(Database):
    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        memory = not parsed.database or parsed.database == ":memory:"
        if not memory:
            Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
        self.sync_engine = create_engine(
            parsed,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False},
            # one in-memory database must be one connection, used by one thread; a file
            # reuses the connection used last, whose page cache is warm (a write through
            # one connection makes the others re-read what they cached)
            **({"poolclass": StaticPool} if memory else {"pool_use_lifo": True}),
        )
        self.dialect = self.sync_engine.dialect.name
        event.listen(self.sync_engine, "connect", _sqlite_connect)
        event.listen(self.sync_engine, "begin", _sqlite_begin)
        self._pool = ThreadPoolExecutor(
            max_workers=1 if memory else SQLITE_THREADS, thread_name_prefix="vxsnd-sqlite"
        )

    def _write(self, fn: Callable[..., _T], args: tuple[Any, ...], kw: dict[str, Any]) -> _T:
        with self.sync_engine.connect() as conn:
            conn.execution_options(**{_IMMEDIATE: True})
            with conn.begin():
                return fn(conn, *args, **kw)

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
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self.sync_engine.dispose)
        self._pool.shutdown(wait=True)


def _sqlite_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN (see _sqlite_begin)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


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


def open_database(url: str) -> Database:
    """The database at `url` (any spelling `normalize_url` accepts); nothing connects yet."""
    url = normalize_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        return _Sqlite(url)
    return _Async(url)
