"""The built wheel: vxflood owns no generic top-level import name.

PyPI's `schema` package once collided with ours (`pip install vxflood schema`
overwrote its `__init__.py`); these build the real wheel with pip and install it
beside the real PyPI package, as an operator's venv would.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (whl,) = out.glob("vxflood-*.whl")
    return whl, build.stdout + build.stderr


def test_wheel_installs_only_vxflood_names(wheel: tuple[Path, str]) -> None:
    whl, _ = wheel
    names = zipfile.ZipFile(whl).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"vxflood", "vxsnd", "vxrd"}
    assert "vxflood/schema/wire.py" in names
    assert "vxflood/migrations/alembic.ini" in names
    assert any(n.startswith("vxflood/migrations/versions/v0001") for n in names)
    (info,) = dist_info
    assert f"{info}/licenses/LICENSE" in names
    metadata = zipfile.ZipFile(whl).read(f"{info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata


def test_build_has_no_deprecation_warnings(wheel: tuple[Path, str]) -> None:
    _, log = wheel
    assert "eprecat" not in log, log


def test_pypi_schema_package_and_vxflood_side_by_side(
    wheel: tuple[Path, str], tmp_path: Path
) -> None:
    whl, _ = wheel
    target = tmp_path / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(whl),
            "schema==0.7.8",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import schema, vxflood.schema.wire, vxflood.migrations\n"
        "assert schema.Schema(int).validate(7) == 7\n"
        "assert vxflood.schema.wire.__file__.startswith(sys.argv[1])\n"
        "assert vxflood.migrations.__file__.startswith(sys.argv[1])\n"
        "print(schema.__file__)\n"
    )
    run = subprocess.run(
        [sys.executable, "-I", "-c", probe, str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith(str(target / "schema"))
