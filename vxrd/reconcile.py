"""Pure flood-list reconciliation: what to write so the kernel matches the registry.

No I/O here, so the rules can be tested exhaustively without root. The diff
type itself (`FloodDiff`) belongs to vxrd.model, below the kernel layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from itertools import repeat

from vxflood.schema.validate import Address
from vxrd.model import FloodDiff

__all__ = ["desired_for", "reconcile"]


def reconcile(desired: Set[Address], actual: Set[Address]) -> FloodDiff:
    """Only the difference is written, so repeated runs are cheap and idempotent."""
    return FloodDiff(add=frozenset(desired - actual), remove=frozenset(actual - desired))


def desired_for(members: Iterable[Address], own: Address | None) -> frozenset[Address]:
    """Peers this host must flood to: every member except itself.

    A VTEP never floods to its own address (that would loop BUM traffic back).
    When the own address is known, members of the other IP version are dropped
    too: a device bound to an IPv4 local address cannot reach IPv6 peers.

    Runs on every membership change over the whole member set, so it avoids
    per-member Python code: building a set from the members would call
    ipaddress's Python-level __hash__ for each, while a frozenset passed in is
    kept, filtered with set operations that reuse its stored hashes, and the
    family check is one C-level pass (isinstance through map).
    """
    peers = members if isinstance(members, frozenset) else frozenset(members)
    if own is None:
        return peers
    kind = type(own)
    if not all(map(isinstance, peers, repeat(kind))):
        peers = peers - {m for m in peers if not isinstance(m, kind)}
    return peers - {own} if own in peers else peers
