"""Alembic environment of the vxsnd registry (SQLite batch mode).

Where the database URL comes from, first match wins:

1. a live connection handed over in ``config.attributes["connection"]`` (the
   store upgrades a new registry on the connection it already holds);
2. ``$VXFLOOD_DB_URL``;
3. the ``sqlalchemy.url`` option (set programmatically by ``vxsnd db upgrade``);
4. nothing configured (plain ``alembic check`` in this directory): a throwaway
   SQLite database in a temporary directory, upgraded to head first by a child
   process so that ``check`` and ``revision --autogenerate`` compare against head.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from vxflood.schema.tables import metadata

config = context.config
target_metadata = metadata

# Only the alembic CLI reads alembic.ini; programmatic use keeps the caller's logging.
if config.config_file_name is not None and not config.attributes.get("programmatic"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _throwaway_url() -> str:
    tmp = tempfile.mkdtemp(prefix="vxflood-alembic-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    path = Path(tmp) / "registry.db"
    url = f"sqlite:///{path}"
    subprocess.run(
        [sys.executable, "-m", "vxflood.migrations.check", "--prepare", url],
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return url


def _url() -> str:
    url = os.environ.get("VXFLOOD_DB_URL") or config.get_main_option("sqlalchemy.url")
    return url if url else _throwaway_url()


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def _run_on(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


def _run_sqlite(url: str) -> None:
    """SQLite through the stdlib driver, whatever driver the URL names."""
    engine = create_engine(make_url(url).set(drivername="sqlite"), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run_on(connection)
            connection.commit()
    finally:
        engine.dispose()


async def _run_async(url: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_on)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    url = _url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    shared = config.attributes.get("connection")
    if isinstance(shared, Connection):
        _run_on(shared)
        return
    url = _url()
    if make_url(url).get_backend_name() == "sqlite":
        _run_sqlite(url)
    else:
        asyncio.run(_run_async(url))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
