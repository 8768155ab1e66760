"""Whether the registry can be used right now, and the one log line when that changes.

The registry is `ok` until a write fails (disk full, read-only file, the
database gone) or its identity is lost (file removed or replaced, registry id
changed); it is `ok` again after the next write or check that succeeds.
`/healthz` answers 503 `degraded` with the reason while it is not, the
`vxsnd_registry_ok` gauge reads 0, and each change is logged once: WARNING
when it goes wrong, INFO when it is back (a new reason meanwhile is DEBUG).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["IdentityChange", "IdentityListener", "RegistryHealth", "Tracker", "describe"]

log = logging.getLogger("vxsnd.registry")


@dataclass(frozen=True, slots=True)
class RegistryHealth:
    ok: bool
    reason: str | None = None  # one line: why not ok


@dataclass(frozen=True, slots=True)
class IdentityChange:
    """This vxsnd's registry is another one than before (recreated, replaced, restored)."""

    old_id: str
    new_id: str  # equal to old_id when a copy of the same registry replaced the file
    reason: str


IdentityListener = Callable[[IdentityChange], None]


def describe(exc: BaseException) -> str:
    """One line for an exception from the database: the driver's message, not SQL."""
    inner = getattr(exc, "orig", None) or exc
    lines = str(inner).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__


class Tracker:
    """The registry's current health; logs each transition once."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.state = RegistryHealth(True)

    def ok(self) -> None:
        if not self.state.ok:
            log.info("registry %s usable again (was: %s)", self.where, self.state.reason)
            self.state = RegistryHealth(True)

    def failed(self, reason: str) -> None:
        if self.state.ok:
            log.warning("registry %s degraded: %s", self.where, reason)
        elif self.state.reason != reason:  # an outage goes through several reasons: one line
            log.debug("registry %s still degraded: %s", self.where, reason)
        self.state = RegistryHealth(False, reason)
