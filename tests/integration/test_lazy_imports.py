"""What vxsnd imports to start (issue 11): Alembic only for a registry that is not at
the head, asyncpg only for PostgreSQL. Each check runs in a fresh interpreter on a
real SQLite registry file; creating the registry is the positive control (it must
import Alembic, so the check would see it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import asyncio, json, sys
from vxsnd.registry import Store

async def main() -> None:
    async with await Store.open(sys.argv[1]) as store:
        created = store.created
    mods = sorted({m.split(".")[0] for m in sys.modules} & {"alembic", "mako", "asyncpg"})
    print(json.dumps({"created": created, "modules": mods}))

asyncio.run(main())
"""


def open_store(url: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return report


def test_a_registry_at_the_head_is_opened_without_alembic_or_asyncpg(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    first = open_store(url)  # a new file: created through Alembic's upgrade
    assert first["created"] is True
    assert "alembic" in first["modules"]  # type: ignore[operator]
    again = open_store(url)
    assert again == {"created": False, "modules": []}


def test_the_daemon_module_imports_neither() -> None:
    code = (
        "import sys, vxsnd.daemon, vxsnd.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'alembic', 'mako', 'asyncpg'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
