"""The registry's write model: pure data, the one expiry rule, no SQL underneath."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vxsnd.registry.model import (
    Batch,
    Refresh,
    Registration,
    StaticVtep,
    Withdrawal,
    expiry,
    is_expired,
)

ROOT = Path(__file__).resolve().parents[2]
PURE = ("vxsnd/registry/model.py", "vxsnd/registry/records.py", "vxsnd/registry/errors.py")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("module", PURE)
def test_the_model_imports_no_sql(module: str) -> None:
    """Neither the module nor any project module it imports, transitively."""
    seen: set[str] = set()
    todo = [ROOT / module]
    while todo:
        path = todo.pop()
        for name in _imports(path):
            assert not name.startswith(("sqlalchemy", "alembic")), f"{path} imports {name}"
            candidate = ROOT / (name.replace(".", "/") + ".py")
            if candidate.exists() and name not in seen:
                seen.add(name)
                todo.append(candidate)


def test_expiry_is_decided_in_one_place() -> None:
    assert expiry(100.0, 30.0) == 130.0
    assert expiry(100.0, None) is None  # a static entry without hold time never expires
    assert is_expired(130.0, 130.0) and not is_expired(130.0, 129.9)
    assert not is_expired(None, 1e18)


def test_refresh_takes_a_hold_time_and_never_downgrades() -> None:
    batch = Batch()
    batch.refresh("a", hold_time=30)
    assert batch.node_ops["a"] == Refresh("a", 30.0)
    batch.register(Registration("b", 1, "192.0.2.9", 4789, 30, {100: "192.0.2.9"}))
    batch.refresh("b", hold_time=30)
    assert isinstance(batch.node_ops["b"], Registration)
    batch.withdraw("a")
    batch.refresh("a", hold_time=30)
    assert batch.node_ops["a"] == Withdrawal("a")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_hold_times_must_be_finite(bad: float) -> None:
    batch = Batch()
    with pytest.raises(ValueError, match="finite"):
        batch.refresh("a", hold_time=bad)
    with pytest.raises(ValueError, match="finite"):
        batch.enrol_static(StaticVtep(100, "192.0.2.1", bad))
    with pytest.raises(ValueError, match="finite"):
        batch.register(Registration("a", 1, "192.0.2.9", 4789, bad, {}))
    assert not batch
