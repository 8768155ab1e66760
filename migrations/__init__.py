"""Alembic environment and revisions of the vxsnd registry.

`alembic_config()` is the one way vxflood builds an Alembic configuration, so
that the migration scripts are found from a source tree and from an installed
package alike (they ship as package data next to this file).
"""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

SCRIPT_LOCATION = Path(__file__).resolve().parent


def alembic_config(url: str | None = None) -> Config:
    """An Alembic `Config` for the registry at `url` (None: see env.py's fallbacks)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    cfg.attributes["programmatic"] = True
    if url is not None:
        # ConfigParser interpolation: a literal '%' (e.g. in a password) must be doubled.
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg
