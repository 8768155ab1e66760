"""The agent over a fake kernel: planning, the hot path, fail-static (no root, no socket).

The real kernel is exercised in tests/integration/test_kernel.py and test_vxrd.py;
here `FakeKernel` implements vxrd.model.KernelPort in memory (entries per device,
an echo queued for every write, like the kernel's own notifications) and the
server clients send into lists. Datagrams are real encoded wire messages.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from vxflood.schema.validate import Address
from vxflood.schema.wire import Ack, Codec, Envelope, Membership, Register, Sequencer, address
from vxrd.agent import Agent
from vxrd.caps import has_net_admin
from vxrd.client import ServerClient
from vxrd.config import Config, ServerAddr
from vxrd.model import (
    ApplyResult,
    FdbChanged,
    FdbListener,
    FloodChange,
    FloodDiff,
    KernelEvent,
    Resync,
    VxlanDevice,
)
from vxrd.planner import DOWN, MANAGED, classify

CFG = Config(exclude=("mgmt*",))
OWN = address("10.0.0.1")
P2, P3, P4, P5 = (address(f"10.0.0.{i}") for i in (2, 3, 4, 5))
SERVER = "192.0.2.1"


def dev(name: str = "vx100", **kw: object) -> VxlanDevice:
    base: dict[str, object] = dict(
        ifindex=5,
        name=name,
        vni=100,
        local=OWN,
        port=4789,
        group=None,
        up=True,
        external=False,
        vnifilter=False,
    )
    base.update(kw)
    return VxlanDevice(**base)  # type: ignore[arg-type]


# ------------------------------------------------------------------ classification


def test_managed_and_down() -> None:
    assert classify(dev(), CFG).status == MANAGED
    view = classify(dev(up=False), CFG)
    assert view.status == DOWN and view.eligible


def test_left_alone_with_a_reason() -> None:
    cases = {
        "excluded by configuration": dev("mgmt0"),
        "has multicast group 239.1.1.1": dev(group=address("239.1.1.1")),
        "has remote 10.0.0.9": dev(group=address("10.0.0.9")),
        "external (collect-metadata) mode is not supported yet": dev(vni=None, external=True),
        "vnifilter mode is not supported yet": dev(vni=None, external=True, vnifilter=True),
        "no local address (set --local to manage it)": dev(local=None),
    }
    for reason, d in cases.items():
        view = classify(d, CFG)
        assert view.status == reason and not view.eligible


def test_local_option_fills_in() -> None:
    cfg = Config(local=address("10.9.9.9"))
    view = classify(dev(local=None), cfg)
    assert view.status == MANAGED and view.local == address("10.9.9.9")
    assert classify(dev(), cfg).local == address("10.0.0.1")  # the device's own wins


def test_include_globs() -> None:
    cfg = Config(include=("vx1*",))
    assert classify(dev("vx100"), cfg).status == MANAGED
    assert classify(dev("vx200"), cfg).status == "excluded by configuration"


# ------------------------------------------------------------------ the fake kernel


class FakeKernel:
    """KernelPort in memory. Writes change `entries` and queue their echo, read by
    read_fdb() (as the kernel's notification socket would hold it). `busy` makes
    apply_now() refuse to write without waiting."""

    def __init__(self, devices: list[VxlanDevice]) -> None:
        self.devices = {d.ifindex: d for d in devices}
        self.entries: dict[int, set[Address]] = {d.ifindex: set() for d in devices}
        self.echo: list[FloodChange] = []
        self.busy = False
        self.writes: list[tuple[str, dict[int, FloodDiff]]] = []  # ("now"|"wait", diffs)
        self.dumps: list[int | None] = []
        self.listener: FdbListener | None = None
        self.queue: asyncio.Queue[KernelEvent | None] = asyncio.Queue()

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        self.queue.put_nowait(None)

    async def list_vxlan(self) -> list[VxlanDevice]:
        return list(self.devices.values())

    async def get_vxlan(self, ifindex: int) -> VxlanDevice | None:
        return self.devices.get(ifindex)

    async def flood_entries(self, ifindex: int | None = None) -> dict[int, set[Address]]:
        self.dumps.append(ifindex)
        return {i: set(a) for i, a in self.entries.items() if ifindex in (None, i) and a}

    def _write(self, changes: Mapping[int, FloodDiff]) -> ApplyResult:
        for ifindex, diff in changes.items():
            have = self.entries.setdefault(ifindex, set())
            for a in diff.remove:
                if a in have:
                    have.discard(a)
                    self.echo.append(FloodChange(ifindex, a, False))
            for a in diff.add:
                if a not in have:
                    have.add(a)
                    self.echo.append(FloodChange(ifindex, a, True))
        added = sum(len(d.add) for d in changes.values())
        return ApplyResult(added, sum(len(d.remove) for d in changes.values()))

    async def apply(self, changes: Mapping[int, FloodDiff]) -> ApplyResult:
        self.writes.append(("wait", dict(changes)))
        return self._write(changes)

    def apply_now(self, changes: Mapping[int, FloodDiff]) -> ApplyResult | None:
        if self.busy:
            return None
        self.writes.append(("now", dict(changes)))
        return self._write(changes)

    def read_fdb(self) -> list[FdbChanged | Resync]:
        echo, self.echo = self.echo, []
        return [FdbChanged(tuple(echo))] if echo else []

    def by_hand(self, ifindex: int, a: Address, present: bool) -> None:
        """Someone else changed an entry: the watcher hands it to the listener."""
        (self.entries[ifindex].add if present else self.entries[ifindex].discard)(a)
        if self.listener is not None:
            self.listener(FdbChanged((FloodChange(ifindex, a, present),)))

    async def events(self, on_fdb: FdbListener | None = None) -> AsyncIterator[KernelEvent]:
        self.listener = on_fdb
        try:
            while (ev := await self.queue.get()) is not None:
                yield ev
        finally:
            self.listener = None


class QuietClient(ServerClient):
    """A server client that sends into a list: no socket."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.address = (self.server.host, self.server.port)
        self.sent: list[bytes] = []

    async def _ensure_socket(self) -> bool:
        return True

    def _send(self, data: bytes) -> None:
        self.sent.append(data)

    def acks(self) -> list[tuple[tuple[int, int], ...]]:
        return [m.applied for d in self.sent if isinstance(m := Codec().decode(d), Ack)]

    def registers(self) -> list[Register]:
        return [m for d in self.sent if isinstance(m := Codec().decode(d), Register)]


class FakeAgent(Agent):
    client_class = QuietClient


class Server:
    """Encodes what a service node sends, with its own sequencer."""

    def __init__(self, registry: str = "r1") -> None:
        self.registry = registry
        self.seq = Sequencer("snd")
        self.codec = Codec()

    def snapshot(self, gen: int, *members: Address, vni: int = 100, **kw: Any) -> bytes:
        msg = Membership(self.seq.next(), self.registry, vni, gen, None, members, ())
        return self.codec.encode(dataclasses.replace(msg, **kw))

    def delta(self, base: int, gen: int, add: tuple[Address, ...] = (), **kw: Any) -> bytes:
        remove = kw.pop("remove", ())
        msg = Membership(self.seq.next(), self.registry, 100, gen, base, add, remove)
        return self.codec.encode(dataclasses.replace(msg, **kw))

    def ack(self, **kw: Any) -> bytes:
        return self.codec.encode(dataclasses.replace(Ack(self.seq.next(), self.registry, ()), **kw))


def config(servers: int = 1, **kw: Any) -> Config:
    addrs = tuple(ServerAddr(f"192.0.2.{i + 1}", 10001) for i in range(servers))
    return Config(servers=addrs, node_id="n1", **kw)


async def started(cfg: Config, kernel: FakeKernel) -> FakeAgent:
    agent = FakeAgent(cfg, kernel)
    await agent.open()
    await agent.reconcile_now()  # the first full read of the kernel
    return agent


def client(agent: Agent, i: int = 0) -> QuietClient:
    c = agent.clients[i]
    assert isinstance(c, QuietClient)
    return c


def flood(kernel: FakeKernel) -> set[Address]:
    return kernel.entries[5]


# ------------------------------------------------------------------ the hot path


async def test_a_push_is_written_and_acked_inside_the_datagram_callback() -> None:
    kern = FakeKernel([dev()])
    agent = await started(config(), kern)
    srv = Server()
    reg = client(agent).registers()[0]
    assert [(e.vni, e.local) for e in reg.vnis] == [(100, OWN)]
    agent.datagram(agent.clients[0], srv.snapshot(1, OWN, P2, P3), SERVER)
    assert flood(kern) == {P2, P3}  # never the own address
    assert kern.writes[-1][0] == "now" and client(agent).acks() == [((100, 1),)]
    assert agent.planner.programmed[5] == {P2, P3} and agent.mirror.get(5) == {P2, P3}
    agent._due = None  # (the kick of the start-up rescan, no reconciler running here)
    agent.datagram(agent.clients[0], srv.delta(1, 2, (P4,), remove=(P2,)), SERVER)
    assert flood(kern) == {P3, P4} and client(agent).acks()[-1] == ((100, 2),)
    assert kern.echo == [] and agent._due is None  # the echo was read: nothing to do
    # a gap: nothing applied, the server told where we are
    agent.datagram(agent.clients[0], srv.delta(7, 9, (P5,)), SERVER)
    assert flood(kern) == {P3, P4} and client(agent).acks()[-1] == ((100, 2),)
    assert agent.reconciles == 0
    await agent.close()


async def test_a_push_that_cannot_be_written_at_once_goes_to_the_reconciler() -> None:
    kern = FakeKernel([dev()])
    agent = await started(config(), kern)
    task = asyncio.create_task(agent.run())
    srv = Server()
    kern.busy = True
    agent.datagram(agent.clients[0], srv.snapshot(1, P2), SERVER)
    assert flood(kern) == set() and client(agent).acks() == []
    kern.busy = False
    await until(lambda: client(agent).acks() == [((100, 1),)])
    assert flood(kern) == {P2} and kern.writes[-1][0] == "wait" and agent.reconciles >= 1
    agent.stop.set()
    await task
    await agent.close()


async def test_kernel_entries_are_adopted_until_a_server_answers() -> None:
    kern = FakeKernel([dev()])
    kern.entries[5] = {P4, P5}
    agent = await started(config(), kern)
    assert flood(kern) == {P4, P5} and kern.writes == []
    agent.datagram(agent.clients[0], Server().snapshot(1, P2), SERVER)
    assert flood(kern) == {P2}


async def test_an_entry_deleted_by_hand_is_repaired() -> None:
    kern = FakeKernel([dev()])
    agent = await started(config(), kern)
    task = asyncio.create_task(agent.run())
    agent.datagram(agent.clients[0], Server().snapshot(1, P2, P3), SERVER)
    await until(lambda: kern.listener is not None)
    kern.by_hand(5, P3, False)
    kern.by_hand(5, P2, True)  # agrees with the plan: no drift from this one
    await until(lambda: flood(kern) == {P2, P3})
    assert agent.metrics.registry.get_sample_value("vxrd_reconcile_repairs_total") == 1
    agent.stop.set()
    await task


async def test_leave_withdraws_and_flushes() -> None:
    kern = FakeKernel([dev()])
    agent = await started(config(), kern)
    agent.datagram(agent.clients[0], Server().snapshot(1, P2, P3), SERVER)
    left = await agent.leave()
    assert left == {"servers": ["192.0.2.1:10001"], "devices": ["vx100"], "flushed": 2}
    assert flood(kern) == set()
    assert [r.hold_time for r in client(agent).registers()][-3:] == [0, 0, 0]


# ------------------------------------------------------------------ whose answer counts


async def test_a_silent_server_does_not_hold_back_a_leave() -> None:
    """Two service nodes with registries of their own: one goes silent (down) holding
    an old answer; once it has not been heard for a hold time, what the live one says
    is the flood list. With no server heard, every last answer counts (fail-static)."""
    kern = FakeKernel([dev()])
    agent = await started(config(2, hold_time=90), kern)
    down, up = agent.clients
    agent.datagram(down, Server("r-down").snapshot(3, P2, P3, P4), "192.0.2.1")
    agent.datagram(up, Server("r-up").snapshot(9, P2, P3), "192.0.2.2")
    assert flood(kern) == {P2, P3, P4}  # both live: union
    t = up.state.heard
    assert t is not None
    planner, states = agent.planner, agent.states
    down.state.heard = t - 91
    assert planner.plan(states, t).diffs == {5: FloodDiff(remove=frozenset({P4}))}
    up.state.heard = t - 91
    assert planner.plan(states, t).diffs == {}  # nobody heard: keep all


# ------------------------------------------------------------------ fail-static (issue 9)


async def test_a_new_registry_only_adds_for_a_hold_time() -> None:
    """vxsnd restarted on an empty registry: its first answers list only the hosts
    that refreshed so far. The registry id changed, so for one hold time (and while
    it says `learning`) its answers only add; then it has authority again, and a
    member that left meanwhile goes."""
    kern = FakeKernel([dev()])
    agent = await started(config(hold_time=30), kern)
    task = asyncio.create_task(agent.run())
    old = Server("r-old")
    agent.datagram(agent.clients[0], old.snapshot(5, OWN, P2, P3, P4), SERVER)
    assert flood(kern) == {P2, P3, P4}
    new = Server("r-new")
    agent.datagram(agent.clients[0], new.snapshot(1, OWN), SERVER)  # only we refreshed
    st = agent.states[0]
    assert st.changed_at is not None and flood(kern) == {P2, P3, P4}
    await until(lambda: len(client(agent).registers()) >= 2)  # told the new registry at once
    agent.datagram(agent.clients[0], new.delta(1, 2, (P2, P5)), SERVER)  # P5 is new
    assert flood(kern) == {P2, P3, P4, P5}
    agent.datagram(agent.clients[0], new.delta(2, 3, (P3,)), SERVER)  # P4 never comes
    assert flood(kern) == {P2, P3, P4, P5}
    # a hold time later the new registry has authority: what it does not list goes
    later = st.changed_at + 30
    assert agent.planner.next_authority(agent.states, st.changed_at) == later
    assert agent.planner.plan(agent.states, later - 0.1).diffs == {}
    assert agent.planner.plan(agent.states, later).diffs == {5: FloodDiff(remove=frozenset({P4}))}
    st.changed_at -= 30  # as if the hold time had passed: the planned wake-up runs
    agent.kick(0.0)
    await until(lambda: flood(kern) == {P2, P3, P5})
    agent.stop.set()
    await task


@dataclasses.dataclass(frozen=True, slots=True)
class _LearningMembership(Membership):
    learning: bool = True


def learning(msg: Membership) -> Membership:
    """`msg` with learning=True: the wire field where schema.wire has it (the vxsnd
    half of the contract, built in parallel), else a stand-in carrying the flag."""
    if "learning" in Membership.__dataclass_fields__:
        flag: dict[str, Any] = {"learning": True}
        return dataclasses.replace(msg, **flag)
    return _LearningMembership(*(getattr(msg, f.name) for f in dataclasses.fields(Membership)))


async def test_a_learning_server_only_adds_until_it_stops_learning() -> None:
    """A server that says `learning` (its registry is new and still filling) is
    additive even on the first contact, when the kernel's entries were adopted; its
    first answer without `learning` has authority."""
    kern = FakeKernel([dev()])
    kern.entries[5] = {P3, P4}
    agent = await started(config(hold_time=30), kern)
    st = agent.states[0]
    st.handle(learning(Membership(ENV, "r1", 100, 1, None, (OWN, P2), ())), 0.0)
    assert st.learning and st.additive(0.0, 30) and st.changed_at is None
    await agent.reconcile_now()
    assert flood(kern) == {P2, P3, P4}
    out = st.handle(Membership(ENV, "r1", 100, 2, 1, (P5,), ()), 1.0)  # not learning now
    assert out.authority and not st.additive(1.0, 30)
    await agent.reconcile_now()
    assert flood(kern) == {P2, P5}


async def until(predicate: Any, within: float = 5.0) -> None:
    """Poll under a deadline (the loop runs meanwhile)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


ENV = Envelope("snd", 1, 1, 0)


# ------------------------------------------------------------------ start-up and silence


def test_net_admin_is_read_from_the_effective_capabilities(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tvxrd\nCapEff:\t000001fffeffffff\n")
    assert has_net_admin(str(status))
    status.write_text("Name:\tvxrd\nCapEff:\t000001fffeffefff\n")  # bit 12 cleared
    assert not has_net_admin(str(status))


async def test_info_when_a_server_first_answers_warning_when_none_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 10 item 6: a mistyped --server used to be silent at INFO."""
    kern = FakeKernel([dev()])
    agent = await started(config(2, hold_time=30), kern)
    reg = agent.registrar
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO, "vxrd"):
        caplog.clear()  # the device lines of the start, if an earlier test set INFO
        reg.check_silence(t0 + 29)
        assert not any("answered" in r.getMessage() for r in caplog.records)
        reg.check_silence(t0 + 31)
        reg.check_silence(t0 + 32)  # once per silence, not per round
        warned = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1 and "no service node has answered" in warned[0].getMessage()
        agent.datagram(agent.clients[1], Server().ack(), "192.0.2.2")
        agent.datagram(agent.clients[1], Server().ack(), "192.0.2.2")
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == ["server 192.0.2.2:10001 answered (registry r1)"]
    heard = agent.states[1].heard
    assert heard is not None
    caplog.clear()
    reg.check_silence(heard + 29)  # heard recently: quiet, and the next silence warns again
    reg.check_silence(heard + 31)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
