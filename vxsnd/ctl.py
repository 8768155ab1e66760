"""vxsndctl: the REST client (not yet available)."""

from __future__ import annotations

import sys


def main() -> int:
    print("vxsndctl: not yet available", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
