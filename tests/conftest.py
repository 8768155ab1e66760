"""Shared test prerequisites.

A test that needs root (network namespaces) or the PostgreSQL server asks for it
through `require_root()` / `require_postgres()`. In CI (CI=true) a missing
prerequisite is a failure; on a developer machine it is a skip with the reason.
"""

from __future__ import annotations

import os
import socket

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POSTGRES_URL = os.environ.get(
    "VXFLOOD_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


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


def require_postgres() -> None:
    if not postgres_reachable():
        missing("needs the PostgreSQL server on 127.0.0.1:5432 (database 'test')")
