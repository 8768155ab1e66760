"""The engine (the protocol core and its async driver) fed bytes directly: no sockets,
and an in-memory registry (tests/unit/fake_registry.py), so no file either."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

import pytest

from tests.unit.fake_registry import FakeRegistry
from vxflood.schema.wire import (
    Ack,
    Codec,
    Envelope,
    Membership,
    Register,
    Sequencer,
    VniEntry,
    split_register,
)
from vxsnd import registry as st
from vxsnd.assemble import Assembler, AssemblyError
from vxsnd.engine import Engine, Settings
from vxsnd.metrics import Metrics
from vxsnd.push import Backoff

T0 = 1_700_000_000.0
CODEC = Codec()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def engine() -> AsyncIterator[tuple[Engine, Clock]]:
    clock = Clock()
    settings = Settings("srv", retransmit=Backoff(0.25, 2.0))
    eng = Engine(FakeRegistry(), CODEC, settings, Metrics(), clock)
    await eng.start()
    yield eng, clock


class Node:
    def __init__(self, name: str, port: int, clock: Clock) -> None:
        self.seq = Sequencer(name, incarnation=7, clock=clock)
        self.addr = ("127.0.0.1", port)
        self.round = 0
        self.registry = ""

    def register(
        self,
        vnis: dict[int, str],
        applied: dict[int, int] | None = None,
        hold: int = 90,
        budget: int = 1400,
    ) -> list[bytes]:
        self.round += 1
        tmpl = Register(self.seq.next(), hold, self.registry, self.round, 0, 1, ())
        entries = [
            VniEntry(v, ipaddress.ip_address(a), (applied or {}).get(v, 0))
            for v, a in sorted(vnis.items())
        ]
        parts = split_register(CODEC, tmpl, entries, self.seq.many(), budget)
        return [CODEC.encode(p) for p in parts]

    def ack(self, vni: int, gen: int) -> bytes:
        return CODEC.encode(Ack(self.seq.next(), self.registry, ((vni, gen),)))


def feed(eng: Engine, node: Node, datagrams: list[bytes], now: float) -> None:
    for d in datagrams:
        eng.receive(d, node.addr, 0, now)


def decoded(out: list[tuple[bytes, tuple[str, int], int]], node: Node) -> list[Membership]:
    """The memberships sent to `node` (register replies left out: see `replies`)."""
    msgs = [CODEC.decode(d) for d, addr, _ in out if addr == node.addr]
    assert all(isinstance(m, Membership | Ack) for m in msgs)
    return [m for m in msgs if isinstance(m, Membership)]


def replies(out: list[tuple[bytes, tuple[str, int], int]], node: Node) -> list[Ack]:
    """The register replies (server Acks) sent to `node`."""
    msgs = [CODEC.decode(d) for d, addr, _ in out if addr == node.addr]
    return [m for m in msgs if isinstance(m, Ack)]


async def test_join_snapshot_then_delta_after_ack(engine: tuple[Engine, Clock]) -> None:
    eng, clock = engine
    a, b = Node("a", 1001, clock), Node("b", 1002, clock)
    feed(eng, a, a.register({100: "10.0.0.1"}), clock.now)
    (snap,) = decoded(await eng.step(clock.now), a)
    assert (
        snap.is_snapshot
        and snap.generation == 1
        and set(snap.add) == {ipaddress.ip_address("10.0.0.1")}
    )
    a.registry = snap.registry
    feed(eng, b, b.register({100: "10.0.0.2"}), clock.now)
    out = await eng.step(clock.now)
    assert decoded(out, a) == []  # a has not acked generation 1: window of one
    (to_b,) = decoded(out, b)
    assert to_b.is_snapshot and to_b.generation == 2 and len(to_b.add) == 2
    feed(eng, a, [a.ack(100, 1)], clock.now)
    (delta,) = decoded(await eng.step(clock.now), a)
    assert (delta.base, delta.generation) == (1, 2)
    assert delta.add == (ipaddress.ip_address("10.0.0.2"),) and delta.remove == ()
    assert eng.metrics.value("vxsnd_pushes_total", kind="delta") == 1


async def test_pushes_after_own_changes_need_no_registry_reads() -> None:
    """A batch's net change is the delta from the generation before and moves the member
    set on; only after another writer's change does a push read the registry."""
    counting = FakeRegistry()
    clock = Clock()
    eng = Engine(counting, CODEC, Settings("srv"), Metrics(), clock)
    await eng.start()
    a, b, c = (Node(n, 1000 + i, clock) for i, n in enumerate("abc"))
    feed(eng, a, a.register({100: "10.0.0.1"}), clock.now)
    (snap,) = decoded(await eng.step(clock.now), a)
    assert counting.reads == ["members 100"]  # a new VNI: nothing carried yet
    a.registry = snap.registry
    feed(eng, a, [a.ack(100, 1)], clock.now)
    await eng.step(clock.now)
    counting.reads.clear()
    # b joins: a gets a delta, b a snapshot, neither read from the registry
    feed(eng, b, b.register({100: "10.0.0.2"}), clock.now)
    out = await eng.step(clock.now)
    (to_a,) = decoded(out, a)
    (to_b,) = decoded(out, b)
    assert (to_a.base, to_a.generation, to_a.add) == (1, 2, (ipaddress.ip_address("10.0.0.2"),))
    assert to_b.is_snapshot and set(to_b.add) == {
        ipaddress.ip_address("10.0.0.1"),
        ipaddress.ip_address("10.0.0.2"),
    }
    assert counting.reads == []
    b.registry = to_b.registry
    for n in (a, b):
        feed(eng, n, [n.ack(100, 2)], clock.now)
    await eng.step(clock.now)
    # another instance writes generation 3 (c joins through it), then we write 4
    other = st.Batch()
    other.register(st.Registration("c", 1, "127.0.0.1", 1002, 90, {100: "10.0.0.3"}))
    counting.apply_now(other, clock.now)
    feed(eng, b, b.register({}, hold=0), clock.now)  # b leaves through us
    out = await eng.step(clock.now)
    (to_a,) = decoded(out, a)
    assert to_a.generation == 4
    assert counting.reads  # 2 -> 4 spans the other writer's change: read
    before = {ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.2")}
    held = set(to_a.add) if to_a.is_snapshot else (before | set(to_a.add)) - set(to_a.remove)
    assert held == {ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.3")}
    assert c.addr == ("127.0.0.1", 1002)


async def test_multi_part_round_and_refresh_bumps_nothing(engine: tuple[Engine, Clock]) -> None:
    eng, clock = engine
    a = Node("a", 1001, clock)
    vnis = {v: "10.0.0.1" for v in range(1, 201)}
    parts = a.register(vnis, budget=300)
    assert len(parts) > 1
    feed(eng, a, parts[:-1], clock.now)
    assert not eng.has_work()  # round incomplete
    feed(eng, a, parts[-1:], clock.now)
    out = await eng.step(clock.now)
    assert len(decoded(out, a)) == 200
    gens = dict(eng.generations)
    answer = replies(out, a)
    assert [v for r in answer for v in r.applied] == sorted(gens.items())
    assert all(len(r.applied) <= 64 for r in answer)
    a.registry = eng.registry.registry_id
    feed(eng, a, a.register(vnis, applied=gens), clock.now + 1)
    out = await eng.step(clock.now + 1)
    # a refresh: nothing pushed, nothing bumped, only the reply to the round
    assert decoded(out, a) == [] and eng.generations == gens
    answer = replies(out, a)
    assert len(out) == len(answer) == 4  # 200 VNIs, 64 per reply
    assert all(r.registry == eng.registry.registry_id for r in answer)
    assert [v for r in answer for v in r.applied] == sorted(gens.items())
    assert eng.metrics.value("vxsnd_refreshes_total") == 1


async def test_unacked_push_is_retransmitted_with_backoff(engine: tuple[Engine, Clock]) -> None:
    eng, clock = engine
    a = Node("a", 1001, clock)
    feed(eng, a, a.register({100: "10.0.0.1"}), clock.now)
    out = await eng.step(clock.now)
    assert len(decoded(out, a)) == 1
    assert [r.applied for r in replies(out, a)] == [((100, 1),)]
    assert await eng.step(clock.now + 0.1) == []
    clock.now += 0.3
    assert len(decoded(await eng.step(clock.now), a)) == 1
    assert eng.metrics.value("vxsnd_retransmits_total") == 1
    clock.now += 0.3  # the second wait is 0.5 s
    assert await eng.step(clock.now) == []
    a.registry = eng.registry.registry_id
    feed(eng, a, [a.ack(100, 1)], clock.now)
    clock.now += 5
    assert await eng.step(clock.now) == []  # acked: no more retransmits


async def test_leave_and_withdraw(engine: tuple[Engine, Clock]) -> None:
    eng, clock = engine
    a, b = Node("a", 1001, clock), Node("b", 1002, clock)
    feed(eng, a, a.register({100: "10.0.0.1"}), clock.now)
    feed(eng, b, b.register({100: "10.0.0.2", 200: "10.0.0.2"}), clock.now)
    await eng.step(clock.now)
    a.registry = b.registry = eng.registry.registry_id
    feed(eng, a, [a.ack(100, eng.generations[100])], clock.now)
    feed(eng, b, b.register({200: "10.0.0.2"}), clock.now)  # b leaves VNI 100
    out = await eng.step(clock.now)
    (to_a,) = decoded(out, a)
    if to_a.is_snapshot:  # as small as the delta here, so either is right
        assert to_a.add == (ipaddress.ip_address("10.0.0.1"),)
    else:
        assert to_a.remove == (ipaddress.ip_address("10.0.0.2"),) and to_a.add == ()
    feed(eng, b, b.register({}, hold=0), clock.now)
    await eng.step(clock.now)
    assert "b" not in eng.nodes
    assert eng.metrics.value("vxsnd_withdrawals_total") == 1


async def test_bad_input_is_counted_never_raised(engine: tuple[Engine, Clock]) -> None:
    eng, clock = engine
    a = Node("a", 1001, clock)
    for junk in (b"", b"VF", b"XX\x01\x01\x00", b"VF\x01\x01\x00\xc1", bytes(10_000)):
        eng.receive(junk, a.addr, 0, clock.now)
    feed(eng, a, a.register({100: "10.0.0.1"}, hold=5000), clock.now)
    replayed = a.register({100: "10.0.0.1"})
    feed(eng, a, replayed + replayed, clock.now)
    m = eng.metrics
    assert m.value("vxsnd_rejected_datagrams_total", reason="hold-time") == 1
    assert m.value("vxsnd_rejected_datagrams_total", reason="replay") == 1
    assert m.value("vxsnd_rejected_datagrams_total", reason="short") == 2
    assert m.value("vxsnd_rejected_datagrams_total", reason="malformed") == 1
    assert m.value("vxsnd_rejected_datagrams_total", reason="magic") == 1
    assert m.value("vxsnd_rejected_datagrams_total", reason="oversize") == 1
    assert m.value("vxsnd_handler_errors_total") == 0


def _reg(sender: str, rnd: int, part: int, parts: int, vni: int, hold: int = 90) -> Register:
    entry = VniEntry(vni, ipaddress.ip_address("10.0.0.1"))
    return Register(Envelope(sender, 1, rnd * 10 + part, 0), hold, "", rnd, part, parts, (entry,))


def test_assembler_orders_bounds_and_checks() -> None:
    asm = Assembler(max_age=5.0, max_rounds=2)
    assert asm.add(_reg("a", 1, 0, 2, 1), 0.0) is None
    done = asm.add(_reg("a", 1, 1, 2, 2), 0.1)
    assert done is not None and [e.vni for e in done[1]] == [1, 2]
    assert asm.add(_reg("a", 1, 0, 1, 3), 0.2) is None  # the same round again: stale
    assert asm.add(_reg("b", 1, 0, 2, 1), 0.0) is None
    assert asm.add(_reg("c", 1, 0, 2, 1), 0.0) is None
    assert asm.add(_reg("d", 1, 0, 2, 1), 0.0) is None  # evicts the oldest (b)
    assert len(asm) == 2 and asm.dropped == 1
    assert asm.add(_reg("e", 1, 0, 2, 1), 10.0) is None  # c and d too old
    assert len(asm) == 1
    with pytest.raises(AssemblyError):
        asm.add(_reg("e", 1, 1, 2, 2, hold=30), 10.1)  # parts disagree


class FlakyReads(FakeRegistry):
    """A registry whose member reads fail while `broken` is set."""

    broken = False

    async def member_addresses(self, vni: int) -> tuple[int, frozenset[str]]:
        if self.broken:
            raise OSError("registry read failed (fake)")
        return await super().member_addresses(vni)


async def test_a_failed_read_keeps_the_push_for_the_next_step() -> None:
    """The driver sends what needed no read (the register reply) and the push that
    waited for the failed read goes in the next step."""
    reg = FlakyReads()
    clock = Clock()
    eng = Engine(reg, CODEC, Settings("srv"), Metrics(), clock)
    await eng.start()
    a = Node("a", 1001, clock)
    reg.register_now("c", {100: "10.0.0.3"}, clock.now)  # written elsewhere: not carried
    reg.broken = True
    feed(eng, a, a.register({100: "10.0.0.1"}), clock.now)
    out = await eng.step(clock.now)
    assert decoded(out, a) == [] and len(replies(out, a)) == 1
    assert eng.has_work()  # the push is still to do
    reg.broken = False
    (snap,) = decoded(await eng.step(clock.now), a)
    assert set(snap.add) == {ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.3")}
