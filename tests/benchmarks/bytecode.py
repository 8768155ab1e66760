"""Start-up benchmarks measure vxflood as installed: with its bytecode compiled.

`pip install` (and Debian's packaging) compile every module at install time, so
an installed vxrd never compiles Python at start. A checkout run with
PYTHONDONTWRITEBYTECODE=1 (as this project's machines set it) compiles vxrd's
36 modules at every start: about 50 ms of CPU per start here (`import
vxrd.cli`, 30 interleaved runs each: median 284 ms from source, 236 ms from
bytecode). That is not the daemon's cost, and a lab of 30 hosts starting
together pays it 30 times.
"""

from __future__ import annotations

import compileall
from pathlib import Path

PACKAGES = ("vxflood", "vxrd", "vxsnd")


def compile_tree(*trees: Path | None) -> None:
    """Write __pycache__ for the project's packages in each tree, as an install would."""
    for tree in filter(None, trees):
        for name in PACKAGES:
            package = tree / name
            if package.is_dir() and not compileall.compile_dir(package, quiet=1):
                raise RuntimeError(f"compiling {package} failed")
