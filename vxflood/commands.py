"""What the four commands share on the command line: --version and, for the two
ctl tools, global flags accepted after the command and one set of exit codes.

Exit status of vxsndctl and vxrdctl (documented in both --help texts and README):

    0  done
    1  the daemon refused or failed the request
    2  usage error, or a local file that cannot be read or parsed
    3  the daemon cannot be reached (not running, wrong address or socket)
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, Final

DISTRIBUTION: Final = "vxflood"

CTL_OK: Final = 0
CTL_REFUSED: Final = 1
CTL_USAGE: Final = 2
CTL_UNREACHABLE: Final = 3
CTL_CONFLICT: Final = 4  # vxrdctl status: a service node refuses the agent's node id
CTL_EXIT_CODES: Final = (
    "Exit status: 0 done, 1 refused or failed by the daemon, 2 usage or local file "
    "error, 3 daemon not reachable."
)


def version() -> str:
    """The installed distribution's version (what `pip show vxflood` says)."""
    from importlib import metadata  # not at import: 15 ms of every daemon start

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """argparse's "version" action, but the version is looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "show the version and exit")
        kwargs["default"] = argparse.SUPPRESS  # also under a parser's argument_default
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(f"{parser.prog} (vxflood) {version()}")  # stdout, as argparse's own
        parser.exit()


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action=_VersionAction)


class GlobalFlags:
    """Flags a ctl tool accepts before and after its command (`vxsndctl vni 100 --json`).

    `add` declares a flag on the top-level parser with its default; `copy_to`
    declares it again on a sub-command with `default=SUPPRESS`, so a flag given
    after the command wins and an absent one leaves the top-level value."""

    def __init__(self) -> None:
        self._flags: list[tuple[tuple[str, ...], dict[str, Any]]] = []

    def add(self, parser: argparse.ArgumentParser, *flags: str, **kwargs: Any) -> None:
        parser.add_argument(*flags, **kwargs)
        self._flags.append((flags, kwargs))

    def copy_to(self, sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        for flags, kwargs in self._flags:
            sub.add_argument(*flags, **{**kwargs, "default": argparse.SUPPRESS})
        return sub
