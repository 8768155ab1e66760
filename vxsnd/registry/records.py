"""What the registry's reads return: frozen records, no SQL."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from vxflood.schema.limits import ORIGIN_REGISTERED, ORIGIN_STATIC

__all__ = ["Delta", "Lagging", "Member", "Node", "NodeVni", "Origin", "VniSummary"]


class Origin(StrEnum):
    REGISTERED = ORIGIN_REGISTERED
    STATIC = ORIGIN_STATIC


@dataclass(frozen=True, slots=True)
class Member:
    vni: int
    address: str
    origin: Origin
    node_id: str | None  # None for static entries
    expires_at: float | None  # None: never
    description: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class Delta:
    """Membership change of `vni` from generation `base` to `generation`."""

    vni: int
    base: int
    generation: int
    added: frozenset[str]
    removed: frozenset[str]


@dataclass(frozen=True, slots=True)
class VniSummary:
    vni: int
    generation: int
    members: int
    static: int
    updated_at: float


@dataclass(frozen=True, slots=True)
class Node:
    node_id: str
    incarnation: int
    address: str
    port: int
    hold_time: float
    last_seen: float
    expires_at: float
    registered_at: float  # when this incarnation first registered
    last_seq: int = 0  # envelope of its last accepted register round (replay marks)
    last_sent_ms: int = 0


@dataclass(frozen=True, slots=True)
class NodeVni:
    node_id: str
    vni: int
    local_address: str
    applied_generation: int
    generation: int  # the VNI's current generation


@dataclass(frozen=True, slots=True)
class Change:
    """One change-log row: `address` was added or removed (`op`) at `generation`."""

    vni: int
    generation: int
    address: str
    op: str


@dataclass(frozen=True, slots=True)
class Lagging:
    """A node that has not acked the current generation of a VNI it serves."""

    node_id: str
    address: str
    port: int
    vni: int
    applied_generation: int
    generation: int


def address_order(address: str) -> tuple[int, bytes]:
    """Sort key: IPv4 before IPv6, then numerically."""
    ip = ipaddress.ip_address(address)
    return ip.version, ip.packed
