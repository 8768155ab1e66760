"""systemd's readiness protocol (sd_notify), in the few lines it takes.

`Type=notify` units pass `$NOTIFY_SOCKET`, a UNIX datagram socket (a path, or
`@name` for the abstract namespace). The daemon sends newline-separated
`KEY=value` assignments: `READY=1` once it serves, `STOPPING=1` when it begins
to stop, `RELOADING=1` ... `READY=1` around a reload, `STATUS=...` for
`systemctl status`, and `WATCHDOG=1` at least every `$WATCHDOG_USEC` / 2 when
the unit sets `WatchdogSec=`. Without `$NOTIFY_SOCKET` every call is a no-op,
so the daemons run the same outside systemd.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("vxflood.notify")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if path.startswith("@"):
            self.address = "\0" + path[1:]
        elif path.startswith("/"):
            self.address = path
        self.watchdog_interval = _watchdog_interval(env)
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: object) -> bool:
        """Send `KEY=value` lines (READY=1 ...); False when not under systemd or it failed.

        Never raises: a supervisor that went away must not take the daemon with it."""
        if self.address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message, self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd at %s: %s", self.address.lstrip("\0"), exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(STOPPING=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between WATCHDOG=1 pings (half the unit's WatchdogSec), or None."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were forked or exec'd from it)
    return int(usec) / 1_000_000 / 2
