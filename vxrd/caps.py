"""Whether this process may program flood entries (CAP_NET_ADMIN)."""

from __future__ import annotations

import errno

from vxrd.floodnl import KernelError

__all__ = ["CAP_NET_ADMIN", "NO_NET_ADMIN", "NoNetAdmin", "has_net_admin"]

CAP_NET_ADMIN = 12  # capability bit (linux/capability.h)


class NoNetAdmin(KernelError):
    """This process lacks CAP_NET_ADMIN: every flood-entry write would fail."""

    def __init__(self) -> None:
        super().__init__(errno.EPERM, NO_NET_ADMIN)

    def __str__(self) -> str:
        return NO_NET_ADMIN


NO_NET_ADMIN = (
    "needs CAP_NET_ADMIN to write flood entries (run as root, or with "
    "AmbientCapabilities=CAP_NET_ADMIN in the systemd unit)"
)


def has_net_admin(status: str = "/proc/self/status") -> bool:
    """Whether this process may write fdb entries: CAP_NET_ADMIN in its effective set.
    Without it every flood-entry write fails (EPERM), so vxrd refuses to start."""
    try:
        with open(status, encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        return True  # cannot tell (not Linux /proc): let the kernel say
    return True
