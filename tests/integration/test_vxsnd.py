"""A real vxsnd on loopback with simulated agents (tests/integration/agent_sim.py).

The key scenarios run on SQLite and, via the `db` fixture, on PostgreSQL (a
fresh database per test; skipped with a reason when the server is missing,
failed in CI).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agent_sim import Agent, wait_until
from tests.integration.apiharness import postgres_database
from tests.integration.vxsnd_harness import make_config, running, server_addr
from vxflood.schema.keys import Key, Keyring
from vxflood.schema.wire import Ack, Codec, Envelope, Register, VniEntry, address
from vxsnd import registry as store_mod
from vxsnd.daemon import Daemon

VNI = 100
KEY = Keyring([Key("k1", bytes(range(32)))])
OTHER_KEY = Keyring([Key("k1", bytes(range(1, 33)))])


def vtep(i: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(f"10.0.0.{i}")


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        async with postgres_database() as url:
            yield url


async def agents(daemon: Daemon, n: int, **kw: object) -> list[Agent]:
    return [await Agent.create(f"node{i}", server_addr(daemon), **kw) for i in range(1, n + 1)]


def converged(group: list[Agent], vni: int = VNI) -> bool:
    want = {a.vnis[vni] for a in group}
    return all(a.members.get(vni) == want for a in group)


async def join_three(daemon: Daemon) -> list[Agent]:
    group = await agents(daemon, 3)
    for i, a in enumerate(group, start=1):
        a.register({VNI: vtep(i)})
    await wait_until(lambda: converged(group), 10, "three agents to converge")
    return group


async def test_three_agents_join_and_each_sees_the_other_two(db: str) -> None:
    async with running(make_config(db)) as daemon:
        group = await join_three(daemon)
        for i, a in enumerate(group, start=1):
            assert a.peers(VNI) == {vtep(j) for j in (1, 2, 3) if j != i}
        gens = await daemon.store.generations()
        assert all(a.applied[VNI] == gens[VNI] for a in group)
        m = daemon.metrics
        await wait_until(lambda: m.value("vxsnd_acks_total") >= 3, 5, "acks counted")
        assert m.value("vxsnd_vni_members", vni=str(VNI)) == 3
        assert m.value("vxsnd_registrations_total") == 3
        for a in group:
            a.close()


async def test_a_mixed_fleet_each_agent_in_the_form_it_reads(tmp_path: Path) -> None:
    """Agents from before protocol version 3 (their registers say nothing of what
    they read) get list memberships, version-3 agents compact ones, in one VNI big
    enough for several parts; all hold the same members."""
    db = f"sqlite:///{tmp_path / 'registry.db'}"
    async with running(make_config(db)) as daemon:
        addr = server_addr(daemon)
        old = [await Agent.create(f"old{i}", addr, reads=0) for i in range(150)]
        new = [await Agent.create(f"new{i}", addr) for i in range(150)]
        group = old + new
        addrs = [ipaddress.IPv4Address(0x0A010000 + i + 1) for i in range(len(group))]
        for a, address in zip(group, addrs, strict=True):
            a.register({VNI: address})
        want = set(addrs)
        await wait_until(lambda: all(a.members.get(VNI) == want for a in group), 20, "all")
        assert all(set(a.stats.versions) == {1} for a in old)  # replies and lists: v1
        assert all(a.stats.versions.get(3, 0) >= 1 for a in new)
        assert all(set(a.stats.versions) <= {1, 3} for a in new)  # replies stay v1
        for a in group:
            a.close()


async def test_leave_removes_at_once_and_hold_zero_withdraws(db: str) -> None:
    async with running(make_config(db)) as daemon:
        a, b, c = await join_three(daemon)
        c.register({200: vtep(3)})  # stops listing VNI 100
        await wait_until(lambda: a.peers(VNI) == {vtep(2)}, 2, "leave pushed to a")
        await wait_until(lambda: b.peers(VNI) == {vtep(1)}, 2, "leave pushed to b")
        b.withdraw()
        await wait_until(lambda: a.members[VNI] == {vtep(1)}, 2, "withdrawal pushed")
        assert await daemon.store.node("node2") is None
        _, members = await daemon.store.member_addresses(VNI)
        assert members == {"10.0.0.1"}
        assert daemon.metrics.value("vxsnd_withdrawals_total") == 1
        for x in (a, b, c):
            x.close()


async def test_expiry_pushes_the_removal(db: str) -> None:
    async with running(make_config(db)) as daemon:
        a, b = await agents(daemon, 2)
        a.register({VNI: vtep(1)})
        b.hold_time = 1
        b.register({VNI: vtep(2)})  # never refreshed: expires after 1 s
        await wait_until(lambda: a.members.get(VNI) == {vtep(1), vtep(2)}, 5, "join")
        took = await wait_until(lambda: a.members[VNI] == {vtep(1)}, 5, "expiry pushed")
        assert took < 3
        assert daemon.metrics.value("vxsnd_expiries_total") == 1
        assert await daemon.store.node("node2") is None
        a.close()
        b.close()


async def test_forged_unsigned_replayed_dropped_and_counted(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'registry.db'}"
    async with running(make_config(db), keyring=KEY) as daemon:
        addr = server_addr(daemon)
        good = await Agent.create("good", addr, keyring=KEY)
        forger = await Agent.create("forger", addr, keyring=OTHER_KEY)
        plain = await Agent.create("plain", addr)
        good.register({VNI: vtep(1)})
        forger.register({VNI: vtep(2)})
        plain.register({VNI: vtep(3)})
        await wait_until(lambda: good.members.get(VNI) == {vtep(1)}, 5, "signed agent joins")
        # replay: the exact bytes of a datagram the server already accepted
        codec = Codec(KEY)
        env = Envelope("replayer", 42, 1, int(__import__("time").time() * 1000))
        data = codec.encode(Register(env, 90, "", 1, 0, 1, (VniEntry(VNI, vtep(4)),)))
        good.transport.sendto(data, addr)  # type: ignore[union-attr]
        good.transport.sendto(data, addr)  # type: ignore[union-attr]
        good.transport.sendto(b"VF\x01\x09garbage", addr)  # type: ignore[union-attr]
        m = daemon.metrics
        await wait_until(
            lambda: (
                m.value("vxsnd_rejected_datagrams_total", reason="replay") == 1
                and m.value("vxsnd_rejected_datagrams_total", reason="bad-tag") >= 1
                and m.value("vxsnd_rejected_datagrams_total", reason="unsigned") >= 1
                and m.value("vxsnd_rejected_datagrams_total", reason="type") >= 1
            ),
            5,
            "rejections counted by reason",
        )
        await wait_until(lambda: good.members[VNI] == {vtep(1), vtep(4)}, 5, "replayer joins once")
        _, members = await daemon.store.member_addresses(VNI)
        assert members == {"10.0.0.1", "10.0.0.4"}  # neither forger nor unsigned got in
        # and the daemon keeps working
        late = await Agent.create("late", addr, keyring=KEY)
        late.register({VNI: vtep(5)})
        await wait_until(
            lambda: good.members[VNI] == {vtep(1), vtep(4), vtep(5)}, 5, "later join pushed"
        )
        assert m.value("vxsnd_handler_errors_total") == 0
        for x in (good, forger, plain, late):
            x.close()


async def test_restart_keeps_registry_and_refresh_bumps_nothing(db: str) -> None:
    cfg = make_config(db)
    async with running(cfg) as daemon:
        group = await join_three(daemon)
        registry_id = daemon.store.registry_id
        gens = await daemon.store.generations()
        port = server_addr(daemon)[1]
    cfg2 = make_config(db, listen=(cfg.listen[0].__class__("127.0.0.1", port),))
    async with running(cfg2) as daemon:
        assert daemon.store.registry_id == registry_id
        assert await daemon.store.generations() == gens
        before = {a.node_id: set(a.members[VNI]) for a in group}
        for a in group:
            a.register()  # the agents' next refresh, carrying their applied generations
        m = daemon.metrics
        await wait_until(  # the first refresh may be written on its own: wait for all
            lambda: len(daemon.engine.nodes) == 3 and not daemon.engine.has_work(),
            5,
            "refreshes applied",
        )
        assert await daemon.store.generations() == gens  # nothing bumped
        assert m.value("vxsnd_pushes_total", kind="snapshot") == 0
        assert m.value("vxsnd_pushes_total", kind="delta") == 0
        assert {a.node_id: a.members[VNI] for a in group} == before
        # and it still pushes changes after the restart
        newcomer = await Agent.create("node4", server_addr(daemon))
        newcomer.register({VNI: vtep(4)})
        await wait_until(lambda: converged([*group, newcomer]), 5, "join after restart")
        assert (await daemon.store.generations())[VNI] == gens[VNI] + 1
        for a in (*group, newcomer):
            a.close()


async def test_converges_with_30_percent_loss_both_ways(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'registry.db'}"
    async with running(make_config(db)) as daemon:
        group = [
            await Agent.create(f"lossy{i}", server_addr(daemon), loss=0.3, seed=i, hold_time=3)
            for i in range(1, 9)
        ]
        for i, a in enumerate(group, start=1):
            a.register({VNI: vtep(i), 300 + i % 2: vtep(i)})
            a.start_refresh()
        took = await wait_until(lambda: converged(group), 30, "lossy agents to converge")
        odd = [a for i, a in enumerate(group, start=1) if i % 2]
        even = [a for i, a in enumerate(group, start=1) if not i % 2]
        await wait_until(lambda: converged(odd, 301) and converged(even, 300), 30, "second VNIs")
        assert sum(a.stats.dropped_in + a.stats.dropped_out for a in group) > 0
        assert daemon.metrics.value("vxsnd_retransmits_total") > 0 or took < 1
        for a in group:
            a.close()


async def test_ack_from_unknown_node_and_membership_to_server_are_harmless(
    tmp_path: Path,
) -> None:
    db = f"sqlite:///{tmp_path / 'registry.db'}"
    async with running(make_config(db)) as daemon:
        addr = server_addr(daemon)
        a = await Agent.create("node1", addr)
        codec = Codec()
        a.send(
            codec.encode(
                Ack(Envelope("ghost", 1, 1, int(__import__("time").time() * 1000)), "", ((VNI, 3),))
            )
        )
        a.register({VNI: address("10.0.0.1")})
        await wait_until(lambda: a.members.get(VNI) == {vtep(1)}, 5, "join")
        assert daemon.metrics.value("vxsnd_handler_errors_total") == 0
        a.close()


async def test_restart_after_outage_longer_than_hold_time_keeps_members(db: str) -> None:
    cfg = make_config(db)
    async with running(cfg) as daemon:
        group = await agents(daemon, 3, hold_time=2)
        for i, a in enumerate(group, start=1):
            a.register({VNI: vtep(i)})
        await wait_until(lambda: converged(group), 10, "three agents to converge")
        gens = await daemon.store.generations()
        port = server_addr(daemon)[1]
    await asyncio.sleep(2.5)  # the outage: every registration's expiry passes
    cfg2 = make_config(db, listen=(cfg.listen[0].__class__("127.0.0.1", port),))
    async with running(cfg2) as daemon:
        await asyncio.sleep(0.5)  # several sweeps (every 0.1 s here) before anyone refreshes
        assert await daemon.store.generations() == gens
        for a in group:
            a.register()
        await wait_until(lambda: len(daemon.engine.nodes) == 3, 5, "refreshes applied")
        m = daemon.metrics  # nobody refreshes again: the refreshed hold time rules
        await wait_until(lambda: m.value("vxsnd_expiries_total") == 3, 5, "expiry after grace")
        for a in group:
            a.close()


class ReplyAgent(Agent):
    """A simulated agent that also records the server's register replies."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.replies: list[Ack] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = self.codec.decode(data)
        if isinstance(msg, Ack):
            self.replies.append(msg)
            return
        super().datagram_received(data, addr)

    def got(self) -> list[Ack]:
        return self.replies


async def test_every_register_round_is_answered_refreshes_included(db: str) -> None:
    async with running(make_config(db)) as daemon:
        group = await join_three(daemon)
        probe = await ReplyAgent.create("probe", server_addr(daemon))
        assert isinstance(probe, ReplyAgent)
        probe.register({VNI: vtep(4), 200: vtep(4)})
        await wait_until(lambda: bool(probe.got()), 5, "the register reply")
        first = probe.got()[0]
        gens = await daemon.store.generations()
        assert first.registry == daemon.store.registry_id
        assert first.applied == ((VNI, gens[VNI]), (200, gens[200]))
        await wait_until(lambda: converged([*group, probe]), 5, "the probe's join pushed")
        m = daemon.metrics
        pushes = m.value("vxsnd_pushes_total", kind="snapshot") + m.value(
            "vxsnd_pushes_total", kind="delta"
        )
        # a refresh (nothing changed) gets exactly one reply with the current generations
        n = len(probe.got())
        probe.register()
        await wait_until(lambda: len(probe.got()) > n, 5, "the refresh reply")
        reply = probe.got()[n]
        assert reply.registry == daemon.store.registry_id
        assert reply.applied == ((VNI, gens[VNI]), (200, gens[200]))
        assert reply.env.sender == daemon.engine.settings.server_id
        assert await daemon.store.generations() == gens  # nothing bumped
        await asyncio.sleep(0.2)
        assert len(probe.got()) == n + 1
        assert (
            m.value("vxsnd_pushes_total", kind="snapshot")
            + m.value("vxsnd_pushes_total", kind="delta")
            == pushes
        )
        for a in (*group, probe):
            a.close()


async def test_register_reply_is_split_within_the_budget(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'registry.db'}"
    async with running(make_config(db)) as daemon:
        probe = await ReplyAgent.create("probe", server_addr(daemon))
        assert isinstance(probe, ReplyAgent)
        vnis = {v: vtep(1) for v in range(1000, 1300)}
        probe.register(vnis)
        await wait_until(
            lambda: sum(len(r.applied) for r in probe.got()) == len(vnis), 5, "all replies"
        )
        assert len(probe.got()) > 1
        assert sorted(v for r in probe.got() for v, _ in r.applied) == sorted(vnis)
        probe.close()


async def test_registry_watch_pushes_changes_made_through_another_instance(db: str) -> None:
    """Two vxsnd on one registry, agents registered with A only: a static VTEP
    enrolled and a node withdrawn through B reach A's agents by A's registry watch."""
    a_cfg = make_config(db, server_id="vxsnd-a", registry_poll=0.2, api=None)
    b_cfg = make_config(db, server_id="vxsnd-b", registry_poll=0.2, api=None)
    async with running(a_cfg) as a_daemon, running(b_cfg) as b_daemon:
        one, two, three = await join_three(a_daemon)

        batch = store_mod.Batch()
        batch.enrol_static(store_mod.StaticVtep(VNI, "10.9.0.1"))
        await b_daemon.apply_batch(batch, time.time())
        static = ipaddress.IPv4Address("10.9.0.1")
        await wait_until(lambda: static in one.peers(VNI), 2, "static VTEP pushed by A")
        await wait_until(lambda: static in two.peers(VNI), 2, "static VTEP pushed by A")

        batch = store_mod.Batch()
        batch.withdraw("node3")
        await b_daemon.apply_batch(batch, time.time())
        await wait_until(lambda: one.peers(VNI) == {vtep(2), static}, 2, "withdrawal via B")
        await wait_until(lambda: two.peers(VNI) == {vtep(1), static}, 2, "withdrawal via B")
        gens = await a_daemon.store.generations()
        assert a_daemon.engine.generations[VNI] == gens[VNI]
        for agent in (one, two, three):
            agent.close()


async def test_reload_rotates_keys_and_a_bad_key_file_keeps_the_old(tmp_path: Path) -> None:
    """The rotation the key file's format is made for, without a restart: add the new
    key second, reload; move it first, reload (vxsnd now signs with it, agents still on
    the old key are heard); a broken file changes nothing."""
    old, new = bytes(range(32)), bytes(range(100, 132))
    key_file = tmp_path / "vxflood.keys"
    key_file.write_text(f"old {old.hex()}\n")
    key_file.chmod(0o600)
    cfg = make_config(f"sqlite:///{tmp_path / 'registry.db'}", key_file=key_file)
    async with running(cfg, keyring=Keyring.load(key_file)) as daemon:
        addr = server_addr(daemon)
        on_old = await Agent.create("on-old", addr, keyring=Keyring([Key("old", old)]))
        on_old.register({VNI: vtep(1)})
        await wait_until(lambda: on_old.members.get(VNI) == {vtep(1)}, 5, "joins on the old key")

        key_file.write_text(f"old {old.hex()}\nnew {new.hex()}\n")
        assert daemon.reload()
        key_file.write_text(f"new {new.hex()}\nold {old.hex()}\n")
        assert daemon.reload()
        # an agent that only knows the new key hears vxsnd, and is heard
        on_new = await Agent.create("on-new", addr, keyring=Keyring([Key("new", new)]))
        on_new.register({VNI: vtep(2)})
        await wait_until(lambda: on_new.members.get(VNI) == {vtep(1), vtep(2)}, 5, "new key")
        # the agent still on the old key is still heard (its join reaches on-new)
        on_old.register({VNI: vtep(1), VNI + 1: vtep(1)})
        await wait_until(lambda: VNI + 1 in daemon.engine.nodes["on-old"].vnis, 5, "old key")

        key_file.write_text("new not-hex\n")
        assert not daemon.reload()  # logged, and nothing changed
        assert daemon.engine.codec.keyring is not None
        assert daemon.engine.codec.keyring.signing.key_id == "new"
        later = await Agent.create("later", addr, keyring=Keyring([Key("new", new)]))
        later.register({VNI: vtep(3)})
        await wait_until(
            lambda: on_new.members.get(VNI) == {vtep(1), vtep(2), vtep(3)}, 5, "after bad reload"
        )
        for a in (on_old, on_new, later):
            a.close()


SN_KEY = Key("sn", bytes(range(100, 132)))
A_SECRET, B_SECRET = bytes(range(32, 64)), bytes(range(64, 96))


async def test_a_bound_host_key_cannot_speak_for_another_host(tmp_path: Path) -> None:
    """Per-host keys (nodes=/vteps=): a's key can't register as b, claim b's VTEP or
    withdraw b; each try is dropped and counted and no flood list changes."""
    service = Keyring.parse(
        f"sn {SN_KEY.secret.hex()}\n"
        f"a {A_SECRET.hex()} nodes=hv-a vteps=10.0.0.1\n"
        f"b {B_SECRET.hex()} nodes=hv-b vteps=10.0.0.2\n"
    )
    keys_a = Keyring([Key("a", A_SECRET), SN_KEY])
    keys_b = Keyring([Key("b", B_SECRET), SN_KEY])
    db = f"sqlite:///{tmp_path / 'registry.db'}"
    async with running(make_config(db), keyring=service) as daemon:
        addr = server_addr(daemon)
        a = await Agent.create("hv-a", addr, keyring=keys_a)
        b = await Agent.create("hv-b", addr, keyring=keys_b)
        a.register({VNI: vtep(1)})
        b.register({VNI: vtep(2)})
        await wait_until(lambda: converged([a, b]), 5, "both hosts join with their own keys")
        as_b = await Agent.create("hv-b", addr, keyring=keys_a)
        as_b.register({VNI: vtep(9)})  # a's key, b's node id
        thief = await Agent.create("hv-a", addr, keyring=keys_a)
        thief.register({VNI: vtep(2)})  # a's node id, b's VTEP
        as_b.withdraw()  # a's key withdrawing b
        m = daemon.metrics
        await wait_until(
            lambda: m.value("vxsnd_rejected_datagrams_total", reason="not-allowed") >= 3,
            5,
            "three not-allowed drops counted",
        )
        assert await daemon.store.node("hv-b") is not None
        _, members = await daemon.store.member_addresses(VNI)
        assert members == {"10.0.0.1", "10.0.0.2"}
        assert a.members[VNI] == {vtep(1), vtep(2)} and b.members[VNI] == {vtep(1), vtep(2)}
        for x in (a, b, as_b, thief):
            x.close()


async def test_a_register_captured_before_a_restart_changes_nothing_after_it(
    db: str,
) -> None:
    """Issue 10: the replay marks are in the registry, so a restarted vxsnd refuses a
    datagram its previous process accepted (within the timestamp window)."""
    async with running(make_config(db)) as daemon:
        a = await Agent.create("hv-a", server_addr(daemon))
        a.register({VNI: vtep(1)})
        await wait_until(lambda: a.members.get(VNI) == {vtep(1)}, 5, "a joins at .1")
        a.round += 1
        round_ = Register(a.seq.next(), 90, "", a.round, 0, 1, (VniEntry(VNI, vtep(9)),))
        captured = a.codec.encode(round_)
        a.send(captured)  # a moves to .9 ...
        await wait_until(lambda: a.members.get(VNI) == {vtep(9)}, 5, "a moves to .9")
        a.register({VNI: vtep(1)})  # ... and back to .1
        await wait_until(lambda: a.members.get(VNI) == {vtep(1)}, 5, "a back at .1")
        a.close()
    async with running(make_config(db)) as daemon:
        b = await Agent.create("hv-b", server_addr(daemon))
        assert b.transport is not None
        b.transport.sendto(captured, server_addr(daemon))  # the replay, from anywhere
        m = daemon.metrics
        await wait_until(
            lambda: m.value("vxsnd_rejected_datagrams_total", reason="replay") == 1,
            5,
            "the replay refused by the restarted vxsnd",
        )
        _, members = await daemon.store.member_addresses(VNI)
        assert members == {"10.0.0.1"}
        b.close()
