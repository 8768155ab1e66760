"""The protocol core (vxsnd.protocol) driven by hand against an in-memory registry.

No socket, file, netlink or event loop: `step` below is vxsnd.engine.Engine.step
written out synchronously, so each test sees exactly what the core asks of the
registry (`Need*`) and what it sends.
"""

from __future__ import annotations

import ipaddress

import pytest

from tests.unit.fake_registry import FakeRegistry
from vxflood.schema.wire import (
    Ack,
    Codec,
    Membership,
    Refusal,
    Register,
    Sequencer,
    VniEntry,
    split_register,
)
from vxsnd import pushes as pushes_mod
from vxsnd.metrics import Metrics
from vxsnd.protocol import Core, NeedDelta, NeedSnapshot, Outgoing, Settings
from vxsnd.push import Backoff
from vxsnd.pushes import Need

T0 = 1_700_000_000.0
CODEC = Codec()


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def make(
    reg: FakeRegistry | None = None, hold: int = 90, now: float = T0
) -> tuple[Core, FakeRegistry]:
    reg = reg or FakeRegistry()
    settings = Settings("srv", retransmit=Backoff(0.25, 2.0), hold_time=hold)
    core = Core(reg.registry_id, CODEC, settings, Metrics())
    grace = core.grace(reg.nodes_now(), now)
    if grace:
        reg.apply_now(grace, now)
    core.load(reg.vnis_now(), now)
    return core, reg


def step(
    core: Core, reg: FakeRegistry, now: float, needs_seen: list[Need] | None = None
) -> list[Outgoing]:
    batch = core.take_batch(now)
    if batch:
        core.batch_applied(batch, reg.apply_now(batch, now))
    if core.watch_wanted:
        core.watched(reg.gens)
    out: list[Outgoing] = []
    needs = core.plan(now, out)
    while needs:
        if needs_seen is not None:
            needs_seen.extend(needs)
        for need in needs:
            if isinstance(need, NeedDelta):
                core.pushes.delta_read(need, reg.delta_now(need.vni, need.base))
            else:
                core.pushes.snapshot_read(need.vni, *reg.member_addresses_now(need.vni))
        needs = core.plan(now, out)
    core.finish(now, now, out)
    return out


class Agent:
    def __init__(
        self,
        name: str,
        port: int,
        host: str = "127.0.0.1",
        incarnation: int = 7,
        reads: int = 0,
    ) -> None:
        self.now = T0  # the agent's clock, for its envelopes
        self.seq = Sequencer(name, incarnation=incarnation, clock=lambda: self.now)
        self.addr = (host, port)
        self.round = 0
        self.registry = ""
        self.reads = reads  # the newest version its registers say it reads (0: not said)

    def register(
        self, vnis: dict[int, str], applied: dict[int, int] | None = None, hold: int = 90
    ) -> list[bytes]:
        self.round += 1
        tmpl = Register(
            self.seq.next(), hold, self.registry, self.round, 0, 1, (), max_version=self.reads
        )
        entries = [VniEntry(v, ip(a), (applied or {}).get(v, 0)) for v, a in sorted(vnis.items())]
        return [CODEC.encode(p) for p in split_register(CODEC, tmpl, entries, self.seq.many())]

    def ack(self, vni: int, gen: int) -> bytes:
        return CODEC.encode(Ack(self.seq.next(), self.registry, ((vni, gen),)))

    def send(self, core: Core, datagrams: list[bytes], now: float = T0) -> None:
        for d in datagrams:
            core.receive(d, self.addr, 0, now)


def to(out: list[Outgoing], agent: Agent) -> list[Membership | Ack]:
    msgs = [CODEC.decode(d) for d, addr, _ in out if addr == agent.addr]
    assert all(isinstance(m, Membership | Ack) for m in msgs)
    return [m for m in msgs if isinstance(m, Membership | Ack)]


def pushes(out: list[Outgoing], agent: Agent) -> list[Membership]:
    return [m for m in to(out, agent) if isinstance(m, Membership)]


def replies(out: list[Outgoing], agent: Agent) -> list[Ack]:
    return [m for m in to(out, agent) if isinstance(m, Ack)]


def joined(core: Core, reg: FakeRegistry, *agents: tuple[Agent, dict[int, str]]) -> None:
    """Register each agent and ack what it was pushed: a settled start."""
    for agent, vnis in agents:
        agent.send(core, agent.register(vnis))
        step(core, reg, T0)
        agent.registry = reg.registry_id
    for agent, vnis in agents:
        agent.send(core, [agent.ack(v, reg.gens[v]) for v in vnis])
    step(core, reg, T0)


def test_register_is_answered_then_pushed_a_snapshot_and_a_delta_after_the_ack() -> None:
    core, reg = make()
    a, b = Agent("a", 1001), Agent("b", 1002)
    a.send(core, a.register({100: "10.0.0.1"}))
    out = step(core, reg, T0)
    (reply, snap) = to(out, a)  # the register's answer goes ahead of the push
    assert isinstance(reply, Ack) and reply.applied == ((100, 1),) and not reply.learning
    assert isinstance(snap, Membership) and snap.is_snapshot and snap.add == (ip("10.0.0.1"),)
    a.registry = snap.registry
    b.send(core, b.register({100: "10.0.0.2"}))
    out = step(core, reg, T0)
    assert pushes(out, a) == []  # a has not acked generation 1: one push in flight
    (to_b,) = pushes(out, b)
    assert to_b.is_snapshot and set(to_b.add) == {ip("10.0.0.1"), ip("10.0.0.2")}
    a.send(core, [a.ack(100, 1)])
    (delta,) = pushes(step(core, reg, T0), a)
    assert (delta.base, delta.generation, delta.add, delta.remove) == (1, 2, (ip("10.0.0.2"),), ())
    assert reg.reads == ["members 100"]  # only the very first snapshot was read


def test_each_agent_gets_the_form_it_reads() -> None:
    """An agent whose register says it reads version 3 gets compact memberships; one
    that does not say (before version 3) gets the lists it knows, in the same VNI."""
    core, reg = make()
    old, new = Agent("old", 1001), Agent("new", 1002, reads=3)
    joined(core, reg, (old, {100: "10.0.0.1"}), (new, {100: "10.0.0.2"}))
    late = Agent("late", 1003, reads=3)
    late.send(core, late.register({100: "10.0.0.3"}))
    out = step(core, reg, T0)
    (snap,) = pushes(out, late)
    assert snap.compact and snap.is_snapshot and len(snap.add) == 3
    for agent, compact in ((old, False), (new, True)):
        (delta,) = pushes(out, agent)
        assert (delta.compact, delta.base, delta.add) == (compact, 2, (ip("10.0.0.3"),))
    forms = {d[2] for d, addr, _ in out if addr != late.addr and d[3] == 2}  # version byte
    assert forms == {1, 3}
    # an agent upgraded in place (new incarnation, says it reads 3) gets compact from then on
    up = Agent("old", 1001, incarnation=8, reads=3)
    up.send(core, up.register({100: "10.0.0.1"}))
    (again,) = pushes(step(core, reg, T0), up)
    assert again.compact and set(again.add) == {ip(f"10.0.0.{i}") for i in (1, 2, 3)}


def test_refresh_only_extends_the_expiry() -> None:
    core, reg = make()
    a = Agent("a", 1001)
    joined(core, reg, (a, {100: "10.0.0.1"}))
    a.send(core, a.register({100: "10.0.0.1"}, applied={100: 1}), T0 + 30)
    batch = core.take_batch(T0 + 30)
    assert list(batch.node_ops) == ["a"] and not batch.acks
    core.batch_applied(batch, reg.apply_now(batch, T0 + 30))
    out: list[Outgoing] = []
    assert core.plan(T0 + 30, out) == []
    core.finish(T0 + 30, T0 + 30, out)
    assert pushes(out, a) == [] and [r.applied for r in replies(out, a)] == [((100, 1),)]
    assert reg.gens == {100: 1} and reg.regs["a"].expires_at == T0 + 120


def test_withdraw_pushes_the_removal_to_the_others() -> None:
    core, reg = make()
    a, b = Agent("a", 1001), Agent("b", 1002)
    joined(core, reg, (a, {100: "10.0.0.1"}), (b, {100: "10.0.0.2"}))
    b.send(core, b.register({}, hold=0))
    out = step(core, reg, T0)
    assert "b" not in core.nodes and replies(out, b) == []
    (to_a,) = pushes(out, a)
    assert to_a.generation == 3
    assert (to_a.is_snapshot and to_a.add == (ip("10.0.0.1"),)) or to_a.remove == (ip("10.0.0.2"),)


def test_only_the_registered_incarnation_may_withdraw() -> None:
    """Issue 10: a hold-time-0 register from another incarnation of b's id (a forger
    with the fleet key, a replay from b's last life) withdraws nobody."""
    core, reg = make()
    a, b = Agent("a", 1001), Agent("b", 1002)
    joined(core, reg, (a, {100: "10.0.0.1"}), (b, {100: "10.0.0.2"}))
    impostor = Agent("b", 1003)
    impostor.seq = Sequencer("b", incarnation=8, clock=lambda: T0)
    impostor.send(core, impostor.register({}, hold=0))
    out = step(core, reg, T0)
    assert "b" in core.nodes and "b" in reg.regs and pushes(out, a) == []
    assert core.metrics.value("vxsnd_rejected_datagrams_total", reason="not-owner") == 1
    assert core.metrics.value("vxsnd_withdrawals_total") == 0


def test_after_a_restart_the_registry_refuses_a_withdrawal_by_another_incarnation() -> None:
    """A fresh core knows no nodes yet: the registry's incarnation decides."""
    _, reg = make()
    first, _ = make(reg)
    b = Agent("b", 1002)
    joined(first, reg, (b, {100: "10.0.0.2"}))
    restarted, _ = make(reg)  # same registry, empty memory
    impostor = Agent("b", 1003)
    impostor.seq = Sequencer("b", incarnation=8, clock=lambda: T0)
    impostor.send(restarted, impostor.register({}, hold=0))
    step(restarted, reg, T0)
    assert "b" in reg.regs
    assert restarted.metrics.value("vxsnd_rejected_datagrams_total", reason="not-owner") == 1
    b.send(restarted, b.register({}, hold=0))  # the owner itself may
    step(restarted, reg, T0)
    assert "b" not in reg.regs
    assert restarted.metrics.value("vxsnd_withdrawals_total") == 1


def test_a_register_captured_before_a_restart_is_refused_after_it() -> None:
    """Issue 10: the replay marks live in the registry, so a restarted core refuses the
    very datagrams the previous one accepted; the agent's next round is accepted."""
    _, reg = make()
    first, _ = make(reg)
    b = Agent("b", 1002)
    b.send(first, b.register({100: "10.0.0.2"}))
    step(first, reg, T0)
    captured = b.register({100: "10.0.0.9"})  # b moves to .9 ...
    b.send(first, captured)
    step(first, reg, T0)
    b.send(first, b.register({100: "10.0.0.2"}))  # ... and back
    step(first, reg, T0)
    restarted, _ = make(reg)  # same registry, fresh memory
    b.send(restarted, captured)
    step(restarted, reg, T0)
    assert reg.regs["b"].reg.vnis == {100: "10.0.0.2"}
    assert restarted.metrics.value("vxsnd_rejected_datagrams_total", reason="replay") == 1
    b.send(restarted, b.register({100: "10.0.0.2"}))
    step(restarted, reg, T0)
    assert restarted.metrics.value("vxsnd_rejected_datagrams_total", reason="replay") == 1


def test_unacked_push_is_retransmitted_with_back_off_then_as_a_snapshot() -> None:
    core, reg = make()
    a, b = Agent("a", 1001), Agent("b", 1002)
    joined(core, reg, (a, {100: "10.0.0.1"}))
    for i in range(2, 6):  # a busy VNI: a delta is not worth it on a second try
        reg.register_now(f"n{i}", {100: f"10.0.0.{i}"}, T0)  # through another vxsnd
    core.request_watch()
    step(core, reg, T0)
    a.send(core, [a.ack(100, reg.gens[100])])
    step(core, reg, T0)
    b.send(core, b.register({100: "10.0.0.9"}))
    out = step(core, reg, T0)
    (first,) = pushes(out, a)
    b.registry = reg.registry_id
    b.send(core, [b.ack(100, reg.gens[100])])  # only a's pushes go missing
    assert first.base == 5 and first.add == (ip("10.0.0.9"),)
    assert step(core, reg, T0 + 0.2) == []  # not due yet
    (again,) = pushes(step(core, reg, T0 + 0.26), a)
    assert again.base == 5  # the first retransmit repeats the delta
    assert pushes(step(core, reg, T0 + 0.26 + 0.4), a) == []  # the second wait is 0.5 s
    (third,) = pushes(step(core, reg, T0 + 0.77), a)
    assert third.is_snapshot and len(third.add) == 6
    assert core.metrics.value("vxsnd_retransmits_total") == 2
    a.send(core, [a.ack(100, reg.gens[100])], T0 + 0.8)
    assert pushes(step(core, reg, T0 + 10), a) == []  # acked: no more retransmits


def test_a_change_written_elsewhere_is_read_as_a_delta_or_a_snapshot() -> None:
    core, reg = make()
    a, b = Agent("a", 1001), Agent("b", 1002)
    joined(core, reg, (a, {100: "10.0.0.1"}), (b, {100: "10.0.0.2"}))
    reg.register_now("c", {100: "10.0.0.3"}, T0)  # another vxsnd on the registry
    core.request_watch()
    needs: list[Need] = []
    out = step(core, reg, T0, needs)
    assert needs == [NeedDelta(100, 2, 3)]  # one read for both nodes
    for agent in (a, b):
        (delta,) = pushes(out, agent)
        assert (delta.base, delta.add) == (2, (ip("10.0.0.3"),))
    # a new node's snapshot of a VNI whose members were never carried here
    reg.register_now("d", {200: "10.0.0.4"}, T0)
    b.send(core, b.register({100: "10.0.0.2", 200: "10.0.0.2"}))
    needs.clear()
    (to_b,) = [m for m in pushes(step(core, reg, T0, needs), b) if m.vni == 200]
    assert needs == [NeedSnapshot(200)]
    assert set(to_b.add) == {ip("10.0.0.2"), ip("10.0.0.4")} and to_b.generation == 2


def test_expiry_is_swept_and_pushed_as_a_removal() -> None:
    core, reg = make()
    a, b = Agent("a", 1001), Agent("b", 1002)
    joined(core, reg, (a, {100: "10.0.0.1"}))
    b.send(core, b.register({100: "10.0.0.2"}, hold=10))
    step(core, reg, T0)
    a.send(core, [a.ack(100, 2)])
    step(core, reg, T0)
    a.send(core, a.register({100: "10.0.0.1"}, applied={100: 2}), T0 + 60)
    assert core.request_sweep()  # not learning: a registry that had nobody, and no loss
    out = step(core, reg, T0 + 60)
    assert "b" not in core.nodes and core.metrics.value("vxsnd_expiries_total") == 1
    (to_a,) = pushes(out, a)
    assert to_a.generation == 3 and ip("10.0.0.2") not in to_a.add


def test_replays_and_junk_are_counted_never_raised() -> None:
    core, _ = make()
    a = Agent("a", 1001)
    for junk in (b"", b"VF", bytes(10_000)):
        core.receive(junk, a.addr, 0, T0)
    datagrams = a.register({100: "10.0.0.1"})
    a.send(core, datagrams + datagrams)
    assert core.metrics.value("vxsnd_rejected_datagrams_total", reason="replay") == 1
    assert core.metrics.value("vxsnd_handler_errors_total") == 0
    assert len(core.take_batch(T0).node_ops) == 1


def test_a_registry_lost_under_its_agents_learns_for_one_hold_time() -> None:
    """Issue 9 item 5: an empty registry and an agent that was served by another
    registry: answers say `learning`, no expiry sweep runs, for one hold time."""
    core, reg = make(hold=30)
    a, b = Agent("a", 1001), Agent("b", 1002)
    a.registry = "a-lost-registry"
    a.send(core, a.register({100: "10.0.0.1"}))
    out = step(core, reg, T0)
    (reply,) = replies(out, a)
    (snap,) = pushes(out, a)
    assert core.learning and reply.learning and snap.learning
    b.send(core, b.register({100: "10.0.0.2"}, hold=10))
    step(core, reg, T0)
    assert not core.request_sweep()  # b expired at T0 + 10, but we are learning
    assert "b" in core.nodes
    assert core.next_timer() is not None
    a.registry = reg.registry_id
    a.send(core, [a.ack(100, 2)], T0 + 31)
    a.send(core, a.register({100: "10.0.0.1"}, applied={100: 2}), T0 + 31)
    assert core.request_sweep()  # a hold time after start: authority
    out = step(core, reg, T0 + 31)
    assert not core.learning
    assert [r.learning for r in replies(out, a)] == [False]
    (to_a,) = pushes(out, a)
    assert not to_a.learning and ip("10.0.0.2") not in to_a.add


def test_a_first_start_or_a_populated_registry_does_not_learn() -> None:
    core, reg = make()
    a = Agent("a", 1001)
    a.send(core, a.register({100: "10.0.0.1"}))  # registry id "": never served before
    out = step(core, reg, T0)
    assert not core.learning and not any(m.learning for m in to(out, a))
    # a restart on that (populated) registry: an agent with an old id changes nothing
    core, _ = make(reg, now=T0 + 1)
    b = Agent("b", 1002)
    b.registry = "some-other-registry"
    b.send(core, b.register({100: "10.0.0.2"}), T0 + 1)
    step(core, reg, T0 + 1)
    assert not core.learning and core.request_sweep()


# ------------------------------------------------------------ node-id conflicts (issue 10)


def refusals(out: list[Outgoing], agent: Agent) -> list[Refusal]:
    msgs = [CODEC.decode(d) for d, addr, _ in out if addr == agent.addr]
    return [m for m in msgs if isinstance(m, Refusal)]


def conflict_lab() -> tuple[Core, FakeRegistry, Agent, Agent, Agent]:
    """a (at 127.0.0.1) and b registered in VNI 100; a clone of a's node id at 127.0.0.2."""
    core, reg = make()
    a, b = Agent("a", 1001), Agent("b", 1002)
    joined(core, reg, (a, {100: "10.0.0.1"}), (b, {100: "10.0.0.2"}))
    clone = Agent("a", 1003, host="127.0.0.2", incarnation=8)
    return core, reg, a, b, clone


def test_a_second_live_agent_claiming_a_node_id_is_refused_and_the_first_keeps_it() -> None:
    core, reg, a, _, clone = conflict_lab()
    gens = dict(reg.gens)
    for attempt in (1, 2):
        clone.send(core, clone.register({100: "10.0.0.9"}), T0 + attempt)
        out = step(core, reg, T0 + attempt)
        (refusal,) = refusals(out, clone)
        assert refusal.reason == "node-id-conflict" and refusal.holder == ip("127.0.0.1")
        assert refusal.expires_in == 90 - attempt and refusal.registry == reg.registry_id
        assert [addr for _, addr, _ in out] == [clone.addr]  # nobody else hears of it
    assert reg.regs["a"].reg.incarnation == 7 and reg.gens == gens
    assert core.nodes["a"].addr == a.addr
    assert core.metrics.value("vxsnd_node_id_conflicts_total") == 2
    (listed,) = core.conflicts.current(T0 + 2)
    assert (listed.node_id, listed.holder, listed.claimant, listed.refused) == (
        "a",
        "127.0.0.1",
        "127.0.0.2",
        2,
    )
    a.send(core, a.register({100: "10.0.0.1"}, applied={100: reg.gens[100]}), T0 + 3)
    assert replies(step(core, reg, T0 + 3), a)  # the holder refreshes as ever


def test_the_refused_agent_takes_over_once_the_holder_expires_or_withdraws() -> None:
    core, reg, a, _, clone = conflict_lab()
    clone.send(core, clone.register({100: "10.0.0.9"}), T0 + 1)
    step(core, reg, T0 + 1)
    clone.now = T0 + 91
    clone.send(core, clone.register({100: "10.0.0.9"}), T0 + 91)  # a never refreshed
    out = step(core, reg, T0 + 91)
    assert refusals(out, clone) == [] and replies(out, clone)
    assert reg.regs["a"].reg.incarnation == 8 and core.conflicts.current(T0 + 91) == []
    assert core.metrics.value("vxsnd_node_id_conflicts_total") == 1

    core, reg, a, _, clone = conflict_lab()
    a.send(core, a.register({}, hold=0), T0 + 1)  # a clean stop
    step(core, reg, T0 + 1)
    clone.send(core, clone.register({100: "10.0.0.9"}), T0 + 1)
    out = step(core, reg, T0 + 1)
    assert refusals(out, clone) == [] and reg.regs["a"].reg.incarnation == 8


def test_a_new_incarnation_from_the_holders_address_is_a_restart_not_a_conflict() -> None:
    core, reg, *_ = conflict_lab()
    restarted = Agent("a", 1009, incarnation=9)  # same host, new process, new port
    restarted.send(core, restarted.register({100: "10.0.0.1"}), T0 + 5)
    out = step(core, reg, T0 + 5)
    assert refusals(out, restarted) == [] and replies(out, restarted)
    assert reg.regs["a"].reg.incarnation == 9
    assert core.metrics.value("vxsnd_node_id_conflicts_total") == 0


def test_a_holder_only_the_registry_knows_is_defended_by_the_registry() -> None:
    """After a vxsnd restart (or a holder registered through another vxsnd) the
    core's memory is empty: the registry's transaction refuses the clone."""
    _, reg = make()
    first, _ = make(reg)
    a = Agent("a", 1001)
    joined(first, reg, (a, {100: "10.0.0.1"}))
    restarted, _ = make(reg)
    clone = Agent("a", 1003, host="127.0.0.2", incarnation=8)
    clone.send(restarted, clone.register({100: "10.0.0.9"}), T0 + 2)
    out = step(restarted, reg, T0 + 2)
    (refusal,) = refusals(out, clone)
    assert refusal.holder == ip("127.0.0.1") and refusal.expires_in == 88
    assert [m for m in (CODEC.decode(d) for d, _, _ in out) if not isinstance(m, Refusal)] == []
    assert reg.regs["a"].reg.incarnation == 7 and "a" not in restarted.nodes
    assert restarted.metrics.value("vxsnd_node_id_conflicts_total") == 1


def test_a_step_plans_a_bounded_number_of_pushes_and_the_next_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 11: a storm's pushes go out over several steps of at most STEP_DATAGRAMS,
    not all at once (memory held by one step, a burst no receiver absorbs)."""
    monkeypatch.setattr(pushes_mod, "STEP_DATAGRAMS", 4)
    core, reg = make()
    agents = [Agent(f"h{i}", 2000 + i) for i in range(10)]
    for i, agent in enumerate(agents):
        agent.send(core, agent.register({100: f"10.0.0.{i + 1}"}))
    out = step(core, reg, T0)
    first = [m for a in agents for m in pushes(out, a)]
    assert len(first) == 4 and core.pushes.dirty  # the rest is still due
    assert core.has_work(T0)
    got = {a.addr for a in agents if pushes(out, a)}
    for _ in range(5):
        out = step(core, reg, T0)
        assert len([m for a in agents for m in pushes(out, a)]) <= 4
        got |= {a.addr for a in agents if pushes(out, a)}
    assert got == {a.addr for a in agents} and not core.pushes.dirty
