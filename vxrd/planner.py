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

Cost (issue 11): a membership delta or a kernel notification costs its own
size, not the VNI's. Per device, a `reconcile.FloodState` holds the desired
set and its difference from the mirror; each plan edits it with what changed
since the last one: the addresses the answers' edit logs name
(`VniState.changed_since`) and those the mirror journalled (`FloodMirror.take`).
Whenever that cannot be known (the answers that count are other ones, a
snapshot replaced one, a log does not reach back, the mirror was read again,
the local address changed) it is built from whole sets again: a full
reconcile, O(members), with the same result.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass, field
from itertools import chain

from vxflood.schema.validate import Address
from vxrd.answers import ServerState, VniState, contributors, counting, union_members
from vxrd.config import Config
from vxrd.mirror import FloodMirror, drifted
from vxrd.model import FloodChange, FloodDiff, VxlanDevice
from vxrd.reconcile import FloodState, desired_set, wants

log = logging.getLogger("vxrd")

# a change touching more than 1/FOLLOW_SHARE of a device's list (at least
# FOLLOW_MIN addresses) is compared in full: C-level set operations over the
# whole list then cost less than following it address by address in Python
FOLLOW_SHARE = 4
FOLLOW_MIN = 64

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
    """One reconcile's decision: the writes per device, the flood state each
    managed device's list was decided from (and whether extra entries are kept),
    and how many of the writes undo changes made outside vxrd."""

    diffs: dict[int, FloodDiff] = field(default_factory=dict)
    decided: dict[int, tuple[FloodState, bool]] = field(default_factory=dict)
    repairs: int = 0


# What a FloodState was last brought up to date with: the answers it follows (as
# contributors() gives them), each with its epoch and generation then.
_Seen = tuple[tuple[str, VniState, int, int], ...]


@dataclass(slots=True)
class _Follow:
    vni: int
    local: Address | None
    seen: _Seen
    state: FloodState


def _seen(sources: list[tuple[str, VniState]]) -> _Seen:
    return tuple((reg, v, v.epoch, v.applied) for reg, v in sources)


def _changed(
    follow: _Follow, vni: int, local: Address | None, sources: list[tuple[str, VniState]]
) -> list[Address] | None:
    """Addresses whose membership in the union of `sources` may differ from what
    `follow` last saw; None when that cannot be told without comparing it all
    (another VNI or local address, other answers, a log that does not reach back).

    An answer joined as it is ("" registry: stale, or no registry id) must be
    the very one seen, not replaced since. The newest answer of a registry may
    come from another server than before: one registry tells one membership per
    generation (answers.contributors), so its edit log from the generation seen
    on tells the change."""
    seen = follow.seen
    if follow.vni != vni or follow.local != local or len(seen) != len(sources):
        return None
    out: list[Address] = []
    for (reg, v), (reg0, v0, epoch0, applied0) in zip(sources, seen, strict=True):
        if reg != reg0 or (not reg and (v is not v0 or v.epoch != epoch0)):
            return None
        if v is v0 and v.epoch == epoch0 and v.applied == applied0:
            continue
        changed = v.changed_since(applied0)
        if changed is None:
            return None
        out += changed
    return out


class Planner:
    """Devices, the kernel mirror and the flood lists last decided on."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.hold = float(config.hold_time)
        self.devices: dict[int, DeviceView] = {}
        self.mirror = FloodMirror()  # the kernel's flood lists, between dumps
        self.programmed: dict[int, Set[Address]] = {}  # ifindex -> the list last decided on
        self._wanted: frozenset[int] | None = None  # VNIs of eligible devices; None: recompute
        self._logged: dict[int, str] = {}
        self._flood: dict[int, _Follow] = {}  # ifindex -> its flood state, and what it follows

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
        self._flood.pop(ifindex, None)
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

    def members(self, states: Sequence[ServerState], vni: int, now: float) -> Set[Address] | None:
        """The members of `vni` as the servers that count tell them."""
        return union_members(counting(states, vni, now, self.hold), vni)

    def plan(self, states: Sequence[ServerState], now: float) -> Plan:
        """What to write so every managed device holds the union of what the
        servers said, from the mirror. Decides nothing (see commit()): it only
        brings the devices' flood states up to date with the answers and the
        mirror, which planning again, committed or not, would do the same."""
        plan = Plan()
        for ifindex, view in self.devices.items():
            if view.status != MANAGED or view.dev.vni is None:
                continue
            counted = counting(states, view.dev.vni, now, self.hold)
            state = self._state(ifindex, view, counted)
            if state is None:
                continue  # no server answered yet: adopt what the kernel holds
            kept = any(s.additive(now, self.hold) for s in counted)
            diff = state.diff(kept)
            before = self.programmed.get(ifindex)
            if before is not None and not diff.empty:
                plan.repairs += sum(1 for a in diff.add if a in before)
                plan.repairs += sum(1 for a in diff.remove if a not in before)
            plan.decided[ifindex] = (state, kept)
            if not diff.empty:
                plan.diffs[ifindex] = diff
        return plan

    def commit(self, plan: Plan) -> None:
        """The plan is being carried out: remember what was decided."""
        for ifindex, (state, kept) in plan.decided.items():
            state.commit(kept)
            self.programmed[ifindex] = state.decided

    def next_authority(self, states: Sequence[ServerState], now: float) -> float | None:
        """The earliest time a server's additive period ends by the clock (plan again
        then: entries of members seen to leave meanwhile go)."""
        ends = [
            t
            for s in states
            if (t := s.additive_until(self.hold)) is not None and t > now and not s.learning
        ]
        return min(ends, default=None)

    def _state(
        self, ifindex: int, view: DeviceView, counted: Sequence[ServerState]
    ) -> FloodState | None:
        """The device's flood state, up to date with what the counting servers said
        and with the mirror; None when no server answered for its VNI yet."""
        vni = view.dev.vni
        assert vni is not None
        touched = self.mirror.take(ifindex)
        sources = contributors(counted, vni)
        if not sources:
            self._flood.pop(ifindex, None)
            return None
        actual = self.mirror.get(ifindex)
        members = [v.members for _, v in sources]
        follow = self._flood.get(ifindex)
        changed = None
        if follow is not None and touched is not None:
            changed = _changed(follow, vni, view.local, sources)
            limit = max(FOLLOW_MIN, len(follow.state.desired) // FOLLOW_SHARE)
            if changed is not None and len(changed) + len(touched) > limit:
                changed = None
        if follow is None or touched is None or changed is None:
            state = FloodState(desired_set(members, view.local), actual)
            self._flood[ifindex] = _Follow(vni, view.local, _seen(sources), state)
            return state
        follow.state.update(chain(changed, touched), wants(members, view.local), actual)
        follow.seen = _seen(sources)
        return follow.state

    def forget_programmed(self) -> None:
        self.programmed.clear()
