"""`python -m vxflood.migrations.check`: does the newest revision match schema.tables?

Upgrades a throwaway SQLite database (or the database given with --url) to
head, then runs `alembic check`, which fails when autogenerate would produce
operations, i.e. when someone changed schema/tables.py without a revision.
`--prepare URL` only upgrades URL to head (used by env.py's fallback).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.util import CommandError

from vxflood.migrations import alembic_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vxflood.migrations.check", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--url", help="check this database instead of a throwaway SQLite one")
    group.add_argument("--prepare", metavar="URL", help="only upgrade URL to head")
    args = parser.parse_args(argv)
    if args.prepare:
        command.upgrade(alembic_config(args.prepare), "head")
        return 0
    with tempfile.TemporaryDirectory(prefix="vxflood-check-") as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'registry.db'}"
        cfg = alembic_config(url)
        try:
            command.upgrade(cfg, "head")
            command.check(cfg)
        except CommandError as exc:
            print(f"migrations check failed: {exc}", file=sys.stderr)
            return 1
    print("migrations check: schema/tables.py matches the head revision")
    return 0


if __name__ == "__main__":
    sys.exit(main())
