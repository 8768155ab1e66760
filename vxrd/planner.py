"""The agent's planner: which devices are ours, what their flood lists must hold,
and what to write to get there (pure: no I/O, no clock; `now` is an argument).

The agent (vxrd.agent) drives it: it feeds device discoveries and kernel
events in, asks for a `Plan` against the mirror of the kernel's flood lists
(vxrd.mirror), writes the plan's diffs through its kernel and commits the plan.

Rules, in one place:

- a device is managed when configuration includes it, it has a VNI, no
  multicast group or remote, and a local address (`classify`);
- a VNI's flood list is the union of what the servers that count said
  (answers.counting, answers.union_members), minus the own address;
- nothing is written for a VNI no server has answered for yet: whatever the
  kernel holds is adopted (fail-static at start);
- while a counting server is additive (learning, or its registry id changed
  less than a hold time ago: answers.ServerState.additive) entries are only
  added, never removed (fail-static across registry loss).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from vxflood.schema.validate import Address
from vxrd.answers import ServerState, counting, union_members
from vxrd.config import Config
from vxrd.mirror import FloodMirror, drifted
from vxrd.model import FloodChange, FloodDiff, VxlanDevice
from vxrd.reconcile import desired_for, reconcile

log = logging.getLogger("vxrd")

MANAGED = "managed"
DOWN = "down"

__all__ = ["DOWN", "MANAGED", "DeviceView", "Plan", "Planner", "classify"]


@dataclass(frozen=True, slots=True)
class DeviceView:
    """A VXLAN device and what vxrd does with it."""

    dev: VxlanDevice
    status: str  # MANAGED, DOWN, or why it is left alone
    local: Address | None  # effective VTEP address (device's own or --local)

    @property
    def eligible(self) -> bool:
        """Ours to program: managed now, or down but kept (it may come back up)."""
        return self.status in (MANAGED, DOWN)


def classify(dev: VxlanDevice, config: Config) -> DeviceView:
    if not any(fnmatch.fnmatchcase(dev.name, g) for g in config.include) or any(
        fnmatch.fnmatchcase(dev.name, g) for g in config.exclude
    ):
        return DeviceView(dev, "excluded by configuration", None)
    if dev.external or dev.vnifilter or dev.vni is None:
        mode = "vnifilter" if dev.vnifilter else "external (collect-metadata)"
        return DeviceView(dev, f"{mode} mode is not supported yet", None)
    if dev.group is not None:
        kind = "multicast group" if dev.group.is_multicast else "remote"
        return DeviceView(dev, f"has {kind} {dev.group}", None)
    local = dev.local or config.local
    if local is None:
        return DeviceView(dev, "no local address (set --local to manage it)", None)
    return DeviceView(dev, MANAGED if dev.up else DOWN, local)


@dataclass(slots=True)
class Plan:
    """One reconcile's decision: the writes per device, the flood lists decided on
    for the managed devices, and how many of the writes undo changes made outside
    vxrd."""

    diffs: dict[int, FloodDiff] = field(default_factory=dict)
    programmed: dict[int, frozenset[Address]] = field(default_factory=dict)
    repairs: int = 0


# What the servers said about one VNI, as far as union_members looks at it: per server
# (registry, generation, stale, members); members compared by identity (replaced,
# never mutated, on change), the rest by value.
_Sources = tuple[tuple[str, int, bool, frozenset[Address]] | None, ...]


def _sources(states: Sequence[ServerState], vni: int) -> _Sources:
    return tuple(
        None if (v := st.vnis.get(vni)) is None else (st.registry, v.applied, v.stale, v.members)
        for st in states
    )


def _same_sources(a: _Sources, b: _Sources) -> bool:
    return len(a) == len(b) and all(
        x is y or (x is not None and y is not None and x[:3] == y[:3] and x[3] is y[3])
        for x, y in zip(a, b, strict=True)
    )


class Planner:
    """Devices, the kernel mirror and the flood lists last decided on."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.hold = float(config.hold_time)
        self.devices: dict[int, DeviceView] = {}
        self.mirror = FloodMirror()  # the kernel's flood lists, between dumps
        self.programmed: dict[int, frozenset[Address]] = {}  # ifindex -> desired last written
        self._wanted: frozenset[int] | None = None  # VNIs of eligible devices; None: recompute
        self._logged: dict[int, str] = {}
        # ifindex -> (what the servers said, as _sources() keys it; local; desired)
        self._cache: dict[int, tuple[_Sources, Address | None, frozenset[Address] | None]] = {}

    # -- devices ------------------------------------------------------------------

    def set_device(self, dev: VxlanDevice) -> DeviceView:
        if dev.ifindex not in self.devices:
            # first sight: read its entries before trusting the mirror (a reused
            # ifindex must not inherit a deleted device's entries)
            self.mirror.mark_stale(dev.ifindex)
        view = classify(dev, self.config)
        self.devices[dev.ifindex] = view
        self._wanted = None
        self._note(view)
        return view

    def drop_device(self, ifindex: int) -> None:
        view = self.devices.pop(ifindex, None)
        self._wanted = None
        self.programmed.pop(ifindex, None)
        self.mirror.forget(ifindex)
        self._cache.pop(ifindex, None)
        self._logged.pop(ifindex, None)
        if view is not None and view.eligible:
            log.info("%s: deleted, VNI %s withdrawn", view.dev.name, view.dev.vni)

    def sync_devices(self, devs: Iterable[VxlanDevice]) -> None:
        """A full device list: forget the ones gone, take the others."""
        devs = list(devs)
        seen = {d.ifindex for d in devs}
        for ifindex in [i for i in self.devices if i not in seen]:
            self.drop_device(ifindex)
        for d in devs:
            self.set_device(d)

    def _note(self, view: DeviceView) -> None:
        """One log line per device and reason, not one per rescan."""
        if self._logged.get(view.dev.ifindex) == view.status:
            return
        self._logged[view.dev.ifindex] = view.status
        d = view.dev
        if view.status == MANAGED:
            log.info("%s: managing VNI %s, local %s, port %s", d.name, d.vni, view.local, d.port)
        elif view.status == DOWN:
            log.info("%s: down, VNI %s withdrawn (flood entries kept)", d.name, d.vni)
        else:
            log.info("%s: left alone: %s", d.name, view.status)

    @property
    def wanted(self) -> frozenset[int]:
        """VNIs with a device of ours: asked for every membership received, so kept
        between device changes, not a walk of them all."""
        if self._wanted is None:
            self._wanted = frozenset(
                v.dev.vni for v in self.devices.values() if v.eligible and v.dev.vni is not None
            )
        return self._wanted

    def managed_count(self) -> int:
        return sum(1 for v in self.devices.values() if v.status == MANAGED)

    def serve_map(self) -> dict[int, Address]:
        """What to register: VNI -> local VTEP of the managed devices."""
        out: dict[int, Address] = {}
        for ifindex in sorted(self.devices):
            view = self.devices[ifindex]
            if view.status != MANAGED or view.local is None or view.dev.vni is None:
                continue
            if view.dev.vni in out and out[view.dev.vni] != view.local:
                log.warning(
                    "%s: VNI %s already served with local %s; registering that one",
                    view.dev.name,
                    view.dev.vni,
                    out[view.dev.vni],
                )
                continue
            out.setdefault(view.dev.vni, view.local)
        return out

    def stale_managed(self) -> list[int]:
        """Managed devices whose mirror must be read before it is trusted."""
        return [
            i
            for i in self.mirror.stale()
            if (view := self.devices.get(i)) is not None and view.status == MANAGED
        ]

    def drift(self, changes: Iterable[FloodChange]) -> bool:
        """Follow flood-entry events in the mirror; True when one moved a managed
        device away from what vxrd wants (an entry of ours deleted by hand, an
        extra one added). The echo of vxrd's own write, or a change that agrees
        with it, is not drift."""
        news = self.mirror.apply(changes)
        if not news:
            return False
        for ifindex in drifted(self.programmed, news):
            view = self.devices.get(ifindex)
            if view is not None and view.status == MANAGED:
                return True
        return False

    # -- flood lists ----------------------------------------------------------------

    def members(
        self, states: Sequence[ServerState], vni: int, now: float
    ) -> frozenset[Address] | None:
        """The members of `vni` as the servers that count tell them."""
        return union_members(counting(states, vni, now, self.hold), vni)

    def plan(self, states: Sequence[ServerState], now: float) -> Plan:
        """What to write so every managed device holds the union of what the
        servers said, from the mirror. Changes nothing: see commit()."""
        plan = Plan()
        for ifindex, view in self.devices.items():
            if view.status != MANAGED or view.dev.vni is None:
                continue
            counted = counting(states, view.dev.vni, now, self.hold)
            desired = self._desired(ifindex, view, counted)
            if desired is None:
                continue  # no server answered yet: adopt what the kernel holds
            actual = self.mirror.get(ifindex)
            if any(s.additive(now, self.hold) for s in counted):
                diff = FloodDiff(add=frozenset(desired - actual))
                if not actual <= desired:
                    desired = desired | actual  # kept: not removed because of it
            else:
                diff = reconcile(desired, actual)
            before = self.programmed.get(ifindex)
            if before is not None:
                plan.repairs += len(diff.add & before) + len(diff.remove - before)
            plan.programmed[ifindex] = desired
            if not diff.empty:
                plan.diffs[ifindex] = diff
        return plan

    def commit(self, plan: Plan) -> None:
        """The plan is being carried out: remember what was decided."""
        self.programmed.update(plan.programmed)

    def next_authority(self, states: Sequence[ServerState], now: float) -> float | None:
        """The earliest time a server's additive period ends by the clock (plan again
        then: entries of members seen to leave meanwhile go)."""
        ends = [
            t
            for s in states
            if (t := s.additive_until(self.hold)) is not None and t > now and not s.learning
        ]
        return min(ends, default=None)

    def _desired(
        self, ifindex: int, view: DeviceView, counted: Sequence[ServerState]
    ) -> frozenset[Address] | None:
        """desired_for() of what the counting servers said, cached while that input
        and the local address stay the same."""
        vni = view.dev.vni
        assert vni is not None
        sources = _sources(counted, vni)
        hit = self._cache.get(ifindex)
        if hit is not None and hit[1] == view.local and _same_sources(hit[0], sources):
            return hit[2]
        members = union_members(counted, vni)
        desired = None if members is None else desired_for(members, view.local)
        self._cache[ifindex] = (sources, view.local, desired)
        return desired

    def forget_programmed(self) -> None:
        self.programmed.clear()
