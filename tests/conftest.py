"""Shared test prerequisites.

A test that needs root (network namespaces) or the PostgreSQL server asks for it
through `require_root()` / `require_postgres()`. In CI (CI=true) a missing
prerequisite is a failure; on a developer machine it is a skip with the reason.
PostgreSQL is the server and database of $VXFLOOD_TEST_PG (default
postgresql+asyncpg://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import socket
from collections.abc import Iterator

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POSTGRES_URL = os.environ.get(
    "VXFLOOD_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


PG_SKIP = "PostgreSQL tests:"


def missing(reason: str) -> None:
    """Fail in CI, skip elsewhere: CI must never hide a missing prerequisite."""
    if IN_CI:
        pytest.fail(f"prerequisite missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_root() -> None:
    if os.geteuid() != 0:
        missing("needs root to create network namespaces")


def postgres_reachable(host: str = "127.0.0.1", port: int = 5432) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


@functools.cache
def postgres_problem() -> str | None:
    """Why the PostgreSQL tests cannot run against $VXFLOOD_TEST_PG (None: they can).

    Checked once per run: the host and port of the URL answer, and the URL's user
    logs in to its database (a server without a `test` database, or with Debian's
    default scram auth for a password-less user, is a reason, not 22 tracebacks)."""
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES_URL)
    host, port = url.host or "127.0.0.1", url.port or 5432
    if not postgres_reachable(host, port):
        return f"no PostgreSQL server answers on {host}:{port}"

    async def login() -> None:
        import asyncpg

        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn, timeout=5)
        await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # callers may be inside a loop
        try:
            pool.submit(asyncio.run, login()).result()
        except Exception as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            shown = url.render_as_string(hide_password=True)
            return f"cannot log in to {shown}: {reason}"
    return None


def require_postgres() -> None:
    problem = postgres_problem()
    if problem is not None:
        missing(
            f"{PG_SKIP} {problem} (set VXFLOOD_TEST_PG="
            "postgresql+asyncpg://USER[:PASSWORD]@HOST:PORT/DATABASE, see README)"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Every PostgreSQL skip under one location, so the summary holds ONE line for
    them (pytest groups skips by location and reason), not one per test module."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and PG_SKIP in str(longrepr[2]):
        report.longrepr = (__file__, require_postgres.__code__.co_firstlineno, longrepr[2])
