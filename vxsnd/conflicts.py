"""Node-id conflicts this service node refused: what the REST API, vxsndctl and the
status page list. No I/O and no clock.

Two live agents claiming one node id (cloned images with a fixed `--node-id`, a
copied config) cannot both be registered: the first keeps it, the other's rounds
are refused (vxsnd.protocol, rule in vxsnd.registry.model.conflicts). Each refused
claimant is kept here, per (node id, claimant address), until it has not been heard
for `MEMORY` seconds or it takes the node id over; at most `MAX` of them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

MEMORY: Final = 600.0  # seconds a refused claimant stays listed after its last try
MAX: Final = 1024  # claimants listed at most (the oldest go first)


@dataclass(slots=True)
class Conflict:
    node_id: str
    holder: str  # address the node id is registered from
    claimant: str  # address of the refused agent
    first_refused: float
    last_refused: float
    refused: int  # register rounds refused


class Conflicts:
    def __init__(self) -> None:
        self._by_claim: OrderedDict[tuple[str, str], Conflict] = OrderedDict()

    def record(self, node_id: str, holder: str, claimant: str, now: float) -> bool:
        """Count one refused round; True when this claimant is new (worth a log line)."""
        self._prune(now)
        key = (node_id, claimant)
        known = self._by_claim.get(key)
        if known is not None:
            known.holder, known.last_refused = holder, now
            known.refused += 1
            self._by_claim.move_to_end(key)
            return False
        if len(self._by_claim) >= MAX:
            self._by_claim.popitem(last=False)
        self._by_claim[key] = Conflict(node_id, holder, claimant, now, now, 1)
        return True

    def resolved(self, node_id: str) -> None:
        """The node id was registered (taken over, or the holder restarted): its
        conflicts are over. Called for every registration: nothing to do, normally."""
        if not self._by_claim:
            return
        for key in [k for k in self._by_claim if k[0] == node_id]:
            del self._by_claim[key]

    def current(self, now: float) -> list[Conflict]:
        self._prune(now)
        return sorted(self._by_claim.values(), key=lambda c: (c.node_id, c.claimant))

    def _prune(self, now: float) -> None:
        while self._by_claim:
            key, oldest = next(iter(self._by_claim.items()))
            if oldest.last_refused >= now - MEMORY:
                break
            del self._by_claim[key]

    def __len__(self) -> int:
        return len(self._by_claim)
