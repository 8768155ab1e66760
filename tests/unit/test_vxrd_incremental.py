"""vxrd's per-change path is incremental (issue 11): a delta costs its own size.

The answers' edit log (VniState), the mirror's journal (FloodMirror.take), the
per-device FloodState and the planner that ties them together are checked
against the rules computed from whole sets (the full reconcile), and for not
touching the whole member set on a one-member change.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence, Set
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vxflood.schema.validate import Address
from vxflood.schema.wire import Ack, Envelope, Membership
from vxrd import reconcile as rc
from vxrd.answers import EDIT_MAX, EDITS, ServerState, VniState, counting, union_members
from vxrd.config import Config
from vxrd.metrics import Metrics
from vxrd.mirror import JOURNAL_MAX, FloodMirror
from vxrd.model import ApplyError, ApplyResult, FloodChange, FloodDiff, VxlanDevice
from vxrd.planner import Plan, Planner
from vxrd.reconcile import FloodState, desired_for, reconcile
from vxrd.writer import FloodWriter

A = ipaddress.ip_address
OWN = A("10.0.0.1")
ENV = Envelope("snd", 1, 1, 0)
HOLD = 90.0
P = [A(f"10.0.1.{i}") for i in range(1, 9)]
V6 = A("2001:db8::5")  # another family than OWN: never programmed


def snap(gen: int, *members: Address, registry: str = "r1", **kw: Any) -> Membership:
    return Membership(ENV, registry, 100, gen, None, members, (), **kw)


def delta(
    base: int,
    gen: int,
    add: Sequence[Address] = (),
    remove: Sequence[Address] = (),
    registry: str = "r1",
    **kw: Any,
) -> Membership:
    return Membership(ENV, registry, 100, gen, base, tuple(add), tuple(remove), **kw)


def device(ifindex: int = 5, local: Address = OWN) -> VxlanDevice:
    return VxlanDevice(ifindex, f"vx{ifindex}", 100, local, 4789, None, True, False, False)


def planner(*devices: VxlanDevice) -> Planner:
    pl = Planner(Config(hold_time=int(HOLD)))
    for d in devices or (device(),):
        pl.set_device(d)
    pl.mirror.load({})
    return pl


def carry_out(pl: Planner, plan: Plan, kernel: dict[int, set[Address]]) -> None:
    """What the agent does with a plan: commit, write (the kernel and the mirror),
    then the echo of the write arrives."""
    pl.commit(plan)
    echo = []
    for ifindex, diff in plan.diffs.items():
        have = kernel.setdefault(ifindex, set())
        echo += [FloodChange(ifindex, a, False) for a in diff.remove if a in have]
        echo += [FloodChange(ifindex, a, True) for a in diff.add if a not in have]
        have.difference_update(diff.remove)
        have.update(diff.add)
    pl.mirror.written(plan.diffs)
    pl.drift(echo)


def reference(
    pl: Planner, states: Sequence[ServerState], now: float
) -> tuple[dict[int, FloodDiff], dict[int, frozenset[Address]]]:
    """The rules from whole sets, as the planner applied them before issue 11."""
    diffs: dict[int, FloodDiff] = {}
    programmed: dict[int, frozenset[Address]] = {}
    for ifindex, view in pl.devices.items():
        if view.status != "managed" or view.dev.vni is None:
            continue
        counted = counting(states, view.dev.vni, now, HOLD)
        members = union_members(counted, view.dev.vni)
        if members is None:
            continue
        desired = desired_for(frozenset(members), view.local)
        actual = frozenset(pl.mirror.get(ifindex))
        if any(s.additive(now, HOLD) for s in counted):
            diff = FloodDiff(add=desired - actual)
            desired = desired | actual
        else:
            diff = reconcile(desired, actual)
        programmed[ifindex] = desired
        if not diff.empty:
            diffs[ifindex] = diff
    return diffs, programmed


def rebuilds(pl: Planner, ifindex: int = 5) -> FloodState:
    return pl._flood[ifindex].state


# ------------------------------------------------------------------ the edit log


def test_a_delta_edits_the_member_set_in_place_and_logs_it() -> None:
    s = ServerState()
    s.handle(snap(1, OWN, P[0], P[1]), 0.0)
    v = s.vnis[100]
    members, epoch = v.members, v.epoch
    s.handle(delta(1, 2, [P[2]], [P[0]]), 0.0)
    assert v.members is members and v.members == {OWN, P[1], P[2]} and v.epoch == epoch
    assert sorted(v.changed_since(1) or [], key=str) == sorted([P[2], P[0]], key=str)
    assert v.changed_since(2) == []
    s.handle(delta(2, 5, [P[3]]), 0.0)
    assert set(v.changed_since(1) or []) == {P[0], P[2], P[3]}
    assert v.changed_since(3) is None  # not a generation it went through
    assert v.changed_since(0) is None  # before the snapshot
    s.handle(snap(6, P[4]), 0.0)  # a snapshot replaces: followers compare it all
    assert v.members is not members and v.epoch == epoch + 1 and v.changed_since(5) is None


def test_an_add_and_remove_of_one_address_in_one_delta_removes_it() -> None:
    s = ServerState()
    s.handle(snap(1, P[0]), 0.0)
    s.handle(delta(1, 2, [P[1]], [P[1]]), 0.0)
    assert s.members(100) == {P[0]}


def test_the_edit_log_is_bounded() -> None:
    s = ServerState()
    s.handle(snap(1, P[0]), 0.0)
    for gen in range(2, EDITS + 3):
        s.handle(delta(gen - 1, gen, [P[gen % 8]]), 0.0)
    v = s.vnis[100]
    assert len(v.edits) == EDITS and v.changed_since(1) is None
    assert v.changed_since(v.applied - EDITS) is not None
    big = [A("11.0.0.0") + i for i in range(EDIT_MAX + 1)]
    s.handle(delta(v.applied, v.applied + 1, big), 0.0)
    assert not v.edits and v.changed_since(v.applied - 1) is None  # logged as a replace


def test_a_delta_whose_base_does_not_match_changes_nothing() -> None:
    s = ServerState()
    s.handle(snap(1, P[0]), 0.0)
    v = s.vnis[100]
    out = s.handle(delta(3, 4, [P[1]]), 0.0)
    assert out.ignored == "base-mismatch" and not out.changed and out.reacks == [(100, 1)]
    assert v.members == {P[0]} and v.applied == 1 and not v.edits


# ------------------------------------------------------------------ the mirror's journal


def test_the_mirror_journals_changes_per_device() -> None:
    m = FloodMirror()
    m.load({5: [P[0]], 6: [P[1]]})
    assert m.take(5) is None and m.take(6) is None  # read again: compare it all
    assert m.take(5) == set()
    m.apply([FloodChange(5, P[2], True), FloodChange(5, P[0], True)])  # the 2nd: known
    m.written({5: FloodDiff(add=frozenset({P[3]}), remove=frozenset({P[0]}))})
    assert m.get(5) == {P[2], P[3]}
    assert m.take(5) == {P[2]} and m.take(5) == set()  # its own writes: the plan's
    m.load_device(5, [P[4]])
    assert m.take(5) is None
    m.begin_read()
    m.apply([FloodChange(6, P[5], True)])  # while the dump was being read
    m.load({6: [P[1]]})
    assert m.get(6) == {P[1], P[5]} and m.take(6) is None and m.take(5) is None
    for i in range(JOURNAL_MAX + 1):
        m.apply([FloodChange(7, A("11.0.0.0") + i, True)])
    assert m.take(7) is None  # bounded: too many to journal counts as replaced


class EchoingKernel:
    """A kernel whose echo is read by the event watcher while apply() waits (as a
    large write's is): the notifications reach the mirror before apply returns."""

    def __init__(self, mirror: FloodMirror, fail: Address | None = None) -> None:
        self.mirror = mirror
        self.fail = fail

    async def apply(self, changes: dict[int, FloodDiff]) -> ApplyResult:
        errors = []
        for ifindex, diff in changes.items():
            for a in diff.add:
                if a == self.fail:
                    errors.append(ApplyError(ifindex, a, 22, "refused"))
                else:
                    self.mirror.apply([FloodChange(ifindex, a, True)])
        return ApplyResult(sum(len(d.add) for d in changes.values()), 0, errors)


async def test_the_echo_of_a_write_read_while_it_waits_is_no_news() -> None:
    mirror = FloodMirror()
    mirror.load({})
    many = frozenset(A("11.0.0.0") + i for i in range(4000))
    writer = FloodWriter(EchoingKernel(mirror), mirror, Metrics())  # type: ignore[arg-type]
    await writer.apply({5: FloodDiff(add=many)})
    assert mirror.get(5) == many and mirror.take(5) == set() and not mirror.stale()
    writer = FloodWriter(EchoingKernel(mirror, fail=P[0]), mirror, Metrics())  # type: ignore[arg-type]
    await writer.apply({5: FloodDiff(add=frozenset({P[0], P[1]}))})
    assert mirror.stale() == {5}  # unknown what the kernel holds: read it again


# ------------------------------------------------------------------ FloodState


@given(
    st.frozensets(st.sampled_from(P), max_size=8),
    st.frozensets(st.sampled_from(P), max_size=8),
    st.frozensets(st.sampled_from(P), max_size=8),
    st.frozensets(st.sampled_from(P), max_size=8),
    st.booleans(),
)
def test_a_flood_state_follows_changes_like_a_full_reconcile(
    desired: frozenset[Address],
    actual: frozenset[Address],
    desired2: frozenset[Address],
    actual2: frozenset[Address],
    kept: bool,
) -> None:
    state = FloodState(set(desired), actual)
    assert state.diff(False) == reconcile(desired, actual)
    state.commit(kept)  # and written: the kernel holds what was decided
    before = written = (desired | actual) if kept else desired
    touched = (desired ^ desired2) | (written ^ actual2)
    state.update(touched, desired2.__contains__, actual2)
    assert state.desired == desired2 and state.diff(False) == reconcile(desired2, actual2)
    assert state.diff(True) == FloodDiff(add=desired2 - actual2)
    assert set(state.decided) == before  # the decision stands until the next commit
    assert all((a in state.decided) == (a in before) for a in P)
    state.commit(kept)
    assert set(state.decided) == ((desired2 | actual2) if kept else desired2)


def test_a_drained_set_is_copied_small() -> None:
    many = {A("11.0.0.0") + i for i in range(400)}
    state = FloodState(set(many), frozenset())
    table = state.missing
    state.update(many, many.__contains__, many)  # all written
    assert not state.missing and state.missing is not table


# ------------------------------------------------------------------ the planner


def test_a_delta_on_top_of_a_snapshot_is_planned_from_the_change_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    members = [A("11.0.0.0") + i for i in range(10_000)]
    s = ServerState()
    pl = planner()
    kernel: dict[int, set[Address]] = {}
    s.handle(snap(1, OWN, *members), 0.0)
    plan = pl.plan([s], 0.0)
    assert plan.diffs[5].add == set(members) and OWN not in plan.diffs[5].add
    carry_out(pl, plan, kernel)
    assert pl.plan([s], 0.0).diffs == {}  # the echo of the write changes nothing
    state = rebuilds(pl)
    seen: list[int] = []
    update = FloodState.update

    def counting_update(self: FloodState, touched: Any, *args: Any) -> None:
        touched = list(touched)
        seen.append(len(touched))
        update(self, touched, *args)

    monkeypatch.setattr(FloodState, "update", counting_update)
    extra = A("12.0.0.1")
    s.handle(delta(1, 2, [extra]), 0.0)
    plan = pl.plan([s], 0.0)
    assert plan.diffs == {5: FloodDiff(add=frozenset({extra}))} and plan.repairs == 0
    carry_out(pl, plan, kernel)
    s.handle(delta(2, 3, remove=[members[7]]), 0.0)
    plan = pl.plan([s], 0.0)
    assert plan.diffs == {5: FloodDiff(remove=frozenset({members[7]}))}
    carry_out(pl, plan, kernel)
    assert rebuilds(pl) is state  # never rebuilt from whole sets
    assert max(seen) <= 3  # the addresses of the change (and the previous write's)
    assert kernel[5] == (set(members) | {extra}) - {members[7]}
    assert extra in pl.programmed[5] and members[7] not in pl.programmed[5]


def test_a_removal_another_server_still_lists_stays() -> None:
    s1, s2 = ServerState(), ServerState()
    pl = planner()
    kernel: dict[int, set[Address]] = {}
    s1.handle(snap(1, OWN, P[0], P[1], registry="r1"), 0.0)
    s2.handle(snap(7, OWN, P[1], P[2], registry="r2"), 0.0)
    carry_out(pl, pl.plan([s1, s2], 0.0), kernel)
    assert kernel[5] == {P[0], P[1], P[2]}
    state = rebuilds(pl)
    s1.handle(delta(1, 2, remove=[P[1]], registry="r1"), 0.0)
    assert pl.plan([s1, s2], 0.0).diffs == {}  # r2 still lists it
    s2.handle(delta(7, 8, [P[3]], [P[1]], registry="r2"), 0.0)
    plan = pl.plan([s1, s2], 0.0)
    assert plan.diffs == {5: FloodDiff(add=frozenset({P[3]}), remove=frozenset({P[1]}))}
    carry_out(pl, plan, kernel)
    assert kernel[5] == {P[0], P[2], P[3]} and rebuilds(pl) is state


def test_servers_of_one_registry_taking_turns_stay_incremental() -> None:
    """Two vxsnd on one registry push the same change, in either order: the newest
    answer moves between them, and the change is still followed, not rebuilt."""
    s1, s2 = ServerState(), ServerState()
    pl = planner()
    kernel: dict[int, set[Address]] = {}
    for s in (s1, s2):
        s.handle(snap(1, OWN, P[0]), 0.0)
    carry_out(pl, pl.plan([s1, s2], 0.0), kernel)
    state = rebuilds(pl)
    s2.handle(delta(1, 2, [P[1]]), 0.0)  # s2 is ahead: its answer counts
    carry_out(pl, pl.plan([s1, s2], 0.0), kernel)
    assert kernel[5] == {P[0], P[1]}
    s1.handle(delta(1, 2, [P[1]]), 0.0)  # a tie: s1's (the first) counts again
    s1.handle(delta(2, 3, remove=[P[0]]), 0.0)
    carry_out(pl, pl.plan([s1, s2], 0.0), kernel)
    assert kernel[5] == {P[1]} and rebuilds(pl) is state
    # s2 catches up from 2 to 5 in one delta; P2 came at 4 and left at 5, so the
    # delta does not name it: s2's log cannot tell the change from 3, s1's answer
    # (at 4, with P2) is compared with s2's (at 5) in full
    s1.handle(delta(3, 4, [P[2]]), 0.0)
    carry_out(pl, pl.plan([s1, s2], 0.0), kernel)
    assert kernel[5] == {P[1], P[2]} and pl.plan([s1, s2], 0.0).diffs == {}
    s2.handle(delta(2, 5, [P[3]], [P[0]]), 0.0)
    carry_out(pl, pl.plan([s1, s2], 0.0), kernel)
    assert kernel[5] == {P[1], P[3]}


def test_a_learning_server_only_adds_until_it_has_authority() -> None:
    s = ServerState()
    pl = planner()
    pl.mirror.load({5: [P[5], P[6]]})  # entries from before (a registry that was lost)
    kernel = {5: {P[5], P[6]}}
    s.handle_reply(Ack(ENV, "r-new", (), learning=True), 0.0)
    s.handle(snap(1, OWN, P[0], registry="r-new", learning=True), 0.0)
    plan = pl.plan([s], 0.0)
    assert plan.diffs == {5: FloodDiff(add=frozenset({P[0]}))}  # P5, P6 kept
    carry_out(pl, plan, kernel)
    assert pl.programmed[5] == {P[0], P[5], P[6]}
    state = rebuilds(pl)
    s.handle(delta(1, 2, [P[5], P[1]], [P[0]], registry="r-new", learning=True), 0.0)
    plan = pl.plan([s], 0.0)
    assert plan.diffs == {5: FloodDiff(add=frozenset({P[1]}))}  # P0 kept too
    carry_out(pl, plan, kernel)
    assert rebuilds(pl) is state and pl.programmed[5] == {P[0], P[1], P[5], P[6]}
    out = s.handle_reply(Ack(ENV, "r-new", ()), 1.0)  # authority: now it may remove
    assert out.authority
    plan = pl.plan([s], 1.0)
    assert plan.diffs == {5: FloodDiff(remove=frozenset({P[0], P[6]}))} and plan.repairs == 0
    carry_out(pl, plan, kernel)
    assert kernel[5] == {P[1], P[5]} and pl.programmed[5] == {P[1], P[5]}


def test_an_answer_replaced_and_stale_again_between_two_plans_is_compared_in_full() -> None:
    s = ServerState()
    pl = planner()
    kernel: dict[int, set[Address]] = {}
    s.handle(snap(1, OWN, P[0]), 0.0)
    s.handle_reply(Ack(ENV, "r2", ()), 0.0)  # a new registry: the answer is stale
    carry_out(pl, pl.plan([s], 0.0), kernel)
    assert kernel[5] == {P[0]}
    s.handle(snap(1, OWN, P[1], registry="r2"), 0.0)
    s.handle_reply(Ack(ENV, "r3", ()), 0.0)  # and another: stale again, other members
    assert s.vnis[100].stale and s.vnis[100].applied == 0
    plan = pl.plan([s], 0.0)
    assert plan.diffs == {5: FloodDiff(add=frozenset({P[1]}))}  # additive: P0 kept


def test_an_entry_changed_by_hand_is_repaired_and_counted() -> None:
    s = ServerState()
    pl = planner()
    kernel: dict[int, set[Address]] = {}
    s.handle(snap(1, OWN, P[0], P[1]), 0.0)
    carry_out(pl, pl.plan([s], 0.0), kernel)
    assert pl.drift([FloodChange(5, P[0], False), FloodChange(5, P[7], True)])
    plan = pl.plan([s], 0.0)
    assert plan.diffs == {5: FloodDiff(add=frozenset({P[0]}), remove=frozenset({P[7]}))}
    assert plan.repairs == 2


def test_a_new_local_address_or_a_full_read_rebuilds() -> None:
    s = ServerState()
    pl = planner()
    kernel: dict[int, set[Address]] = {}
    s.handle(snap(1, OWN, P[0], P[1]), 0.0)
    carry_out(pl, pl.plan([s], 0.0), kernel)
    state = rebuilds(pl)
    pl.mirror.load({5: kernel[5]})  # the periodic reconcile read the kernel again
    assert pl.plan([s], 0.0).diffs == {} and rebuilds(pl) is not state
    pl.set_device(device(local=P[0]))
    plan = pl.plan([s], 0.0)
    assert plan.diffs == {5: FloodDiff(add=frozenset({OWN}), remove=frozenset({P[0]}))}


# ------------------------------------------------------------------ against the rules


ADDRS = [*P[:6], OWN, V6]
_some = st.frozensets(st.sampled_from(ADDRS), max_size=3)
_change = st.tuples(st.just("change"), st.integers(0, 1), _some, _some)
_push = st.tuples(
    st.just("push"), st.integers(0, 2), st.sampled_from(["snap", "delta", "delta", "gap"])
)
_ops = st.one_of(
    _change,
    _change,
    _push,
    _push,
    _push,
    st.tuples(st.just("reply"), st.integers(0, 2)),
    st.tuples(st.just("learning"), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("recreate"), st.integers(0, 1)),
    st.tuples(st.just("hand"), st.sampled_from([5, 6]), st.sampled_from(ADDRS), st.booleans()),
    st.tuples(st.just("write"), st.booleans()),
    st.tuples(st.just("read")),
    st.tuples(st.just("time"), st.sampled_from([1.0, 100.0])),
)


class Registry:
    """A registry as its servers tell it: the members at every generation."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.history: list[frozenset[Address]] = [frozenset()]
        self.learning = False


class Lab:
    """Three servers, two of them on one registry, one on another; two devices of
    the VNI; the kernel; what was decided, kept as whole sets."""

    def __init__(self) -> None:
        self.states = [ServerState() for _ in range(3)]
        self.groups = [Registry("r1"), Registry("r2")]
        self.group_of = [0, 0, 1]
        self.pl = planner(device(5), device(6, local=P[0]))
        self.kernel: dict[int, set[Address]] = {5: set(), 6: set()}
        self.decided: dict[int, frozenset[Address]] = {}
        self.now = 0.0
        self.steps = 0

    def push(self, i: int, how: str) -> None:
        reg = self.groups[self.group_of[i]]
        state, latest = self.states[i], len(reg.history) - 1
        applied = state.applied(100) if state.registry == reg.name else 0
        was, now = reg.history[min(applied, latest)], reg.history[latest]
        kw: dict[str, Any] = {"registry": reg.name, "learning": reg.learning}
        if how == "snap":
            msg = snap(latest, *_sorted(now), **kw)
        else:
            base = applied if how == "delta" else applied + 1
            msg = delta(base, latest, _sorted(now - was), _sorted(was - now), **kw)
        state.handle(msg, self.now)

    def step(self, op: tuple[Any, ...]) -> None:
        self.steps += 1
        kind, *args = op
        if kind == "change":
            g, add, remove = args
            history = self.groups[g].history
            history.append((history[-1] | add) - remove)
        elif kind == "push":
            self.push(*args)
        elif kind == "reply":
            reg = self.groups[self.group_of[args[0]]]
            ack = Ack(ENV, reg.name, (), learning=reg.learning)
            self.states[args[0]].handle_reply(ack, self.now)
        elif kind == "learning":
            self.groups[args[0]].learning = args[1]
        elif kind == "recreate":
            self.groups[args[0]] = Registry(f"{self.groups[args[0]].name}.{self.steps}")
        elif kind == "hand":
            ifindex, a, present = args
            (self.kernel[ifindex].add if present else self.kernel[ifindex].discard)(a)
            self.pl.drift([FloodChange(ifindex, a, present)])
        elif kind == "write":
            plan = self.check()
            if args[0]:  # carried out (else dropped, as when apply_now cannot write)
                carry_out(self.pl, plan, self.kernel)
                self.decided.update(reference(self.pl, self.states, self.now)[1])
        elif kind == "read":
            self.pl.mirror.load(self.kernel)
        elif kind == "time":
            self.now += args[0]

    def check(self) -> Plan:
        """The plan, its decision and its repair count are the whole sets' ones."""
        plan = self.pl.plan(self.states, self.now)
        want_diffs, want_programmed = reference(self.pl, self.states, self.now)
        assert plan.diffs == want_diffs
        got = {i: frozenset(_decision(st, kept)) for i, (st, kept) in plan.decided.items()}
        assert got == want_programmed
        assert {i: frozenset(p) for i, p in self.pl.programmed.items()} == self.decided
        repairs = 0
        for ifindex, d in plan.diffs.items():
            if (before := self.decided.get(ifindex)) is not None:
                repairs += len(d.add & before) + len(d.remove - before)
        assert plan.repairs == repairs
        return plan


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_ops, st.booleans()), max_size=40))
def test_incremental_plans_match_the_full_reconcile(
    ops: list[tuple[tuple[Any, ...], bool]],
) -> None:
    """After every step (a registry change, a push as a snapshot, a delta or a
    delta with a gap, learning, a recreated registry, an entry changed by hand, a
    write carried out or dropped, a full read, time passing) the plan equals the
    one whole sets give. Some steps are not planned after, so that several
    changes meet one plan."""
    lab = Lab()
    lab.step(("change", 0, frozenset(P[:3]), frozenset()))
    lab.step(("change", 1, frozenset(P[2:5]), frozenset()))
    for i in range(3):
        lab.step(("push", i, "snap"))
    lab.check()
    for op, check in ops:
        lab.step(op)
        if check:
            lab.check()
    lab.check()


def _sorted(addresses: Set[Address]) -> list[Address]:
    return sorted(addresses, key=str)


def _decision(state: FloodState, kept: bool) -> Set[Address]:
    return state.desired | state.extra if kept else state.desired


def test_vni_state_defaults_follow_nothing() -> None:
    v = VniState()
    assert v.members == set() and v.changed_since(0) == [] and v.changed_since(1) is None
    assert rc.desired_set([{OWN, P[0], V6}], OWN) == {P[0]}
