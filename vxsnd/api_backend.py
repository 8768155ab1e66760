"""What the REST API does with the registry: reads, static changes, and their JSON.

`Backend` sits between the aiohttp handlers (vxsnd/api.py) and the registry.
Reads go to the `Store`. Changes (static VTEPs) become a `registry.Batch`
and take ONE typed path: the daemon's `apply_batch(batch, now)`, which writes
the batch like every other one and pushes the members of each changed VNI
(`RegistryHost` is what the API needs of the daemon).

Static changes are serialised here (one at a time per process) so that the
counts the API reports (created, added/removed/kept) describe exactly the
change that was made.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable

from sqlalchemy import exc as sa_exc

from vxflood.schema import rest
from vxflood.schema.rest import Json
from vxflood.schema.validate import Address
from vxsnd import registry as st
from vxsnd.conflicts import Conflict as NodeIdConflict

log = logging.getLogger("vxsnd.api")

ApplyFn = Callable[[st.Batch, float], Awaitable[st.BatchResult]]
_T = TypeVar("_T")


@runtime_checkable
class RegistryHost(Protocol):
    """What the REST API needs of the daemon: the store, and the batch path that pushes."""

    @property
    def store(self) -> st.Store: ...

    async def apply_batch(self, batch: st.Batch, now: float) -> st.BatchResult: ...

    def node_id_conflicts(self, now: float) -> list[NodeIdConflict]: ...


class Unavailable(Exception):
    """The registry database did not answer (503)."""


class NotFound(Exception):
    """404 with a JSON error code and detail."""

    def __init__(self, detail: str, error: str = "not-found") -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail


class Conflict(Exception):
    """409: the request is valid but contradicts the registry's state."""

    def __init__(self, detail: str, error: str = "conflict") -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail


_DB_DOWN = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    OSError,
    st.RegistryError,
)


async def _guard(call: Awaitable[_T]) -> _T:
    try:
        return await call
    except st.RegistryError as exc:
        raise Unavailable(str(exc)) from exc
    except _DB_DOWN as exc:
        raise Unavailable(f"registry database error: {type(exc).__name__}") from exc


@dataclass(frozen=True)
class VniDetail:
    vni: int
    generation: int
    members: list[st.Member]


@dataclass(frozen=True)
class NodeDetail:
    node: st.Node
    vnis: list[st.NodeVni]


@dataclass(frozen=True)
class EnrolOutcome:
    vni: int
    generation: int
    created: bool
    member: st.Member


@dataclass(frozen=True)
class ReplaceCounts:
    added: int
    removed: int
    kept: int
    changed_vnis: list[int]

    def json(self) -> Json:
        return {
            "added": self.added,
            "removed": self.removed,
            "kept": self.kept,
            "changed_vnis": self.changed_vnis,
        }


@dataclass
class Backend:
    store: st.Store
    apply: ApplyFn  # writes the batch and pushes what changed
    # the node-id conflicts the daemon refused (vxsnd.conflicts), as of `now`
    conflicts: Callable[[float], list[NodeIdConflict]] = lambda _now: []
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @classmethod
    def from_daemon(cls, daemon: object) -> Backend:
        if not isinstance(daemon, RegistryHost):
            raise TypeError(
                "the API needs a daemon with a `store` (vxsnd.registry.Store), "
                "`apply_batch(batch, now)` and `node_id_conflicts(now)`"
            )
        return cls(daemon.store, daemon.apply_batch, daemon.node_id_conflicts)

    # ---- reads

    async def vnis(self) -> list[st.VniSummary]:
        return await _guard(self.store.vnis())

    async def vni(self, vni: int) -> VniDetail | None:
        generation, members = await _guard(self.store.members(vni))
        if generation == 0 and not members:
            return None
        return VniDetail(vni, generation, members)

    async def nodes(self) -> list[st.Node]:
        return await _guard(self.store.nodes())

    async def node(self, node_id: str) -> NodeDetail | None:
        node = await _guard(self.store.node(node_id))
        if node is None:
            return None
        return NodeDetail(node, await _guard(self.store.node_vnis(node_id)))

    async def health(self) -> st.RegistryHealth:
        """Is the registry usable (answers, still the one opened, writes succeed)?"""
        try:
            return await self.store.check()
        except Exception as exc:  # health must answer, whatever the store does
            return st.RegistryHealth(False, f"registry check failed: {type(exc).__name__}")

    # ---- changes

    async def _apply(self, batch: st.Batch, now: float) -> st.BatchResult:
        return await _guard(self.apply(batch, now))

    async def enrol(self, vtep: rest.StaticVtep, now: float) -> EnrolOutcome:
        address = str(vtep.address)
        async with self._lock:
            _, before = await _guard(self.store.members(vtep.vni))
            existing = _find(before, address)
            batch = st.Batch()
            batch.enrol_static(st.StaticVtep(vtep.vni, address, vtep.hold_time, vtep.description))
            await self._apply(batch, now)
            generation, after = await _guard(self.store.members(vtep.vni))
        member = _find(after, address)
        if member is None:  # pragma: no cover - the store just wrote it
            raise Unavailable(f"VTEP {address} in VNI {vtep.vni} vanished after enrolment")
        if existing is not None and existing.origin is st.Origin.REGISTERED:
            log.info(
                "static VTEP %s in VNI %d pinned (was registered by %s)",
                address,
                vtep.vni,
                existing.node_id,
            )
        else:
            log.info(
                "static VTEP %s in VNI %d %s",
                address,
                vtep.vni,
                "updated" if existing else "enrolled",
            )
        return EnrolOutcome(vtep.vni, generation, existing is None, member)

    async def remove(self, vni: int, address: Address, now: float) -> int:
        text = str(address)
        async with self._lock:
            batch = st.Batch()
            batch.remove_static(vni, text)
            result = await self._apply(batch, now)
            generation, members = await _guard(self.store.members(vni))
        if (vni, text) in result.missing_static:
            member = _find(members, text)
            if member is not None and member.origin is st.Origin.REGISTERED:
                raise Conflict(
                    f"{text} in VNI {vni} is registered by agent {member.node_id!r}, not "
                    "static: it leaves when that agent withdraws it or stops refreshing",
                    "registered-vtep",
                )
            raise NotFound(f"no static VTEP {text} in VNI {vni}", "unknown-vtep")
        log.info("static VTEP %s in VNI %d removed", text, vni)
        return generation

    async def replace_all(self, vteps: Iterable[rest.StaticVtep], now: float) -> ReplaceCounts:
        wanted = [st.StaticVtep(v.vni, str(v.address), v.hold_time, v.description) for v in vteps]
        keys = {(v.vni, v.address) for v in wanted}
        async with self._lock:
            before = await self._static_keys()
            batch = st.Batch()
            batch.replace_static(wanted)
            result = await self._apply(batch, now)
        counts = ReplaceCounts(
            added=len(keys - before),
            removed=len(before - keys),
            kept=len(keys & before),
            changed_vnis=sorted(result.changed),
        )
        log.info(
            "static VTEPs replaced: %d added, %d removed, %d kept",
            counts.added,
            counts.removed,
            counts.kept,
        )
        return counts

    async def _static_keys(self) -> set[tuple[int, str]]:
        keys: set[tuple[int, str]] = set()
        for summary in await _guard(self.store.vnis()):
            if summary.static:
                _, members = await _guard(self.store.members(summary.vni))
                keys.update((m.vni, m.address) for m in members if m.origin is st.Origin.STATIC)
        return keys


def _find(members: Iterable[st.Member], address: str) -> st.Member | None:
    return next((m for m in members if m.address == address), None)


# ------------------------------------------------------------------------- JSON


def member_json(m: st.Member) -> Json:
    return {
        "address": m.address,
        "origin": str(m.origin),
        "node": m.node_id,
        "expires_at": m.expires_at,
        "description": m.description,
    }


def vni_summary_json(v: st.VniSummary) -> Json:
    return {"vni": v.vni, "generation": v.generation, "members": v.members, "static": v.static}


def vni_detail_json(d: VniDetail) -> Json:
    return {
        "vni": d.vni,
        "generation": d.generation,
        "members": [member_json(m) for m in d.members],
    }


def enrol_json(o: EnrolOutcome) -> Json:
    return {
        "vni": o.vni,
        "generation": o.generation,
        "created": o.created,
        "member": member_json(o.member),
    }


def _node_common(n: st.Node) -> Json:
    return {
        "id": n.node_id,
        "address": n.address,
        "port": n.port,
        "incarnation": n.incarnation,
        "hold_time": n.hold_time,
        "last_seen": n.last_seen,
        "expires_at": n.expires_at,
    }


def node_summary_json(n: st.Node) -> Json:
    return _node_common(n)


def node_detail_json(d: NodeDetail) -> Json:
    return {
        **_node_common(d.node),
        "vnis": [
            {
                "vni": v.vni,
                "local_address": v.local_address,
                "applied_generation": v.applied_generation,
                "generation": v.generation,
            }
            for v in d.vnis
        ],
    }


def conflict_json(c: NodeIdConflict) -> Json:
    return {
        "node_id": c.node_id,
        "holder": c.holder,
        "claimant": c.claimant,
        "first_refused": c.first_refused,
        "last_refused": c.last_refused,
        "refused": c.refused,
    }
