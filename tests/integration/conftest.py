"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.apiharness import sqlite_url
from vxsnd import registry as st


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[st.Store]:
    """A new registry in an SQLite file of its own (test_store.py overrides this with
    one that also runs on PostgreSQL)."""
    s = await st.Store.open(sqlite_url(tmp_path))
    try:
        yield s
    finally:
        await s.close()
