"""Pure flood-list reconciliation: what to write so the kernel matches the registry.

No I/O here, so the rules can be tested exhaustively without root. The kernel
layer (`vxrd.kernel`) imports `FloodDiff` from this module.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Set
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = ["Address", "FloodDiff", "desired_for", "reconcile"]


@dataclass(frozen=True, slots=True)
class FloodDiff:
    """Destinations to append to and delete from one device's all-zero fdb entry."""

    add: frozenset[Address] = frozenset()
    remove: frozenset[Address] = frozenset()

    @property
    def empty(self) -> bool:
        """True when the kernel already matches: nothing to send."""
        return not self.add and not self.remove


def reconcile(desired: Set[Address], actual: Set[Address]) -> FloodDiff:
    """Only the difference is written, so repeated runs are cheap and idempotent."""
    return FloodDiff(add=frozenset(desired - actual), remove=frozenset(actual - desired))


def desired_for(members: Iterable[Address], own: Address | None) -> frozenset[Address]:
    """Peers this host must flood to: every member except itself.

    A VTEP never floods to its own address (that would loop BUM traffic back).
    When the own address is known, members of the other IP version are dropped
    too: a device bound to an IPv4 local address cannot reach IPv6 peers.
    """
    if own is None:
        return frozenset(members)
    return frozenset(m for m in members if m != own and m.version == own.version)
