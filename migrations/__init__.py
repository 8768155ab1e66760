"""Alembic environment and revisions of the vxsnd registry.

`alembic_config()` is the one way vxflood builds an Alembic configuration, so
that the migration scripts are found from a source tree and from an installed
package alike (they ship as package data next to this file).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config

SCRIPT_LOCATION = Path(__file__).resolve().parent

# The newest revision in versions/, so that a vxsnd starting on a registry at the head
# needs no Alembic import to know it; tests/unit check it against Alembic's own answer.
HEAD_REVISION = "0002"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic `Config` for the registry at `url` (None: see env.py's fallbacks)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    cfg.attributes["programmatic"] = True
    if url is not None:
        # ConfigParser interpolation: a literal '%' (e.g. in a password) must be doubled.
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg
