"""The agent's per-server protocol state, fed messages directly: no sockets, no kernel."""

from __future__ import annotations

import asyncio

from schema.keys import Key, Keyring
from schema.wire import Ack, Codec, Envelope, Membership, Sequencer, address, split_membership
from vxrd.client import ASSEMBLY_TIMEOUT, ServerClient, ServerState, union_members
from vxrd.config import ServerAddr

A, B, C, D = (address(f"10.0.0.{i}") for i in range(1, 5))
ENV = Envelope("snd", 1, 1, 0)


def snap(
    vni: int, gen: int, *members: object, registry: str = "r1", part: int = 0, parts: int = 1
) -> Membership:
    return Membership(ENV, registry, vni, gen, None, tuple(members), (), part, parts)  # type: ignore[arg-type]


def delta(
    vni: int,
    base: int,
    gen: int,
    add: tuple[object, ...] = (),
    remove: tuple[object, ...] = (),
    registry: str = "r1",
) -> Membership:
    return Membership(ENV, registry, vni, gen, base, add, remove)  # type: ignore[arg-type]


def test_snapshot_sets_members_and_acks_after_apply() -> None:
    st = ServerState()
    out = st.handle(snap(100, 3, A, B), 0.0)
    assert out.changed == {100}
    assert out.acks == [(100, 3)]
    assert out.reacks == []
    assert st.members(100) == {A, B}
    assert st.applied(100) == 3
    assert st.registry == "r1"


def test_snapshot_parts_are_assembled_before_anything_changes() -> None:
    st = ServerState()
    st.handle(snap(100, 1, A), 0.0)
    codec = Codec()
    many = tuple(address(f"10.1.{i // 250}.{i % 250 + 1}") for i in range(600))
    parts = split_membership(codec, snap(100, 5, *many), Sequencer("snd").many())
    assert len(parts) > 1
    for p in reversed(parts[1:]):  # out of order
        out = st.handle(p, 0.0)
        assert out.ignored == "partial" and not out.changed
        assert st.members(100) == {A}
    out = st.handle(parts[0], 0.0)
    assert out.changed == {100} and out.acks == [(100, 5)]
    assert st.members(100) == set(many)


def test_partial_assembly_expires() -> None:
    st = ServerState()
    st.handle(snap(7, 2, A, part=0, parts=2), 0.0)
    # the other part arrives too late: the first part was forgotten
    out = st.handle(snap(7, 2, B, part=1, parts=2), ASSEMBLY_TIMEOUT + 1)
    assert out.ignored == "partial"
    assert st.members(7) is None


def test_delta_applies_only_on_matching_base() -> None:
    st = ServerState()
    st.handle(snap(100, 3, A, B), 0.0)
    out = st.handle(delta(100, 3, 4, add=(C,), remove=(A,)), 0.0)
    assert out.changed == {100} and out.acks == [(100, 4)]
    assert st.members(100) == {B, C}
    # base 5 != applied 4: ignored, and the server is told where we are
    out = st.handle(delta(100, 5, 6, add=(D,)), 0.0)
    assert not out.changed and out.ignored == "base-mismatch"
    assert out.reacks == [(100, 4)]
    assert st.members(100) == {B, C} and st.applied(100) == 4


def test_delta_for_unknown_vni_needs_base_zero() -> None:
    st = ServerState()
    assert st.handle(delta(9, 2, 3, add=(A,)), 0.0).ignored == "base-mismatch"
    assert st.members(9) is None
    assert st.handle(delta(9, 0, 1, add=(A,)), 0.0).changed == {9}
    assert st.members(9) == {A}


def test_duplicate_is_reacked_with_the_applied_generation() -> None:
    st = ServerState()
    st.handle(snap(100, 3, A), 0.0)
    for dup in (snap(100, 3, A), snap(100, 2, B), delta(100, 1, 3, add=(C,))):
        out = st.handle(dup, 0.0)
        assert out.ignored == "duplicate"
        assert not out.changed and not out.acks
        assert out.reacks == [(100, 3)]
    assert st.members(100) == {A}


def test_registry_change_resets_generations_but_keeps_members_until_answered() -> None:
    st = ServerState()
    st.handle(snap(100, 40, A, B), 0.0)
    st.handle(snap(200, 41, C), 0.0)
    # a recreated registry starts again at low generations: not a duplicate
    out = st.handle(snap(100, 2, B, registry="r2"), 0.0)
    assert out.reset and out.changed == {100}
    assert st.registry == "r2"
    assert st.members(100) == {B} and st.applied(100) == 2
    # VNI 200 has no answer from r2 yet: fail-static, members kept, generation 0
    assert st.members(200) == {C}
    assert st.applied(200) == 0
    assert [e.applied for e in st.entries({100: A, 200: A})] == [2, 0]
    # a delta from 0 of the new registry replaces the stale set (0 = empty set)
    out = st.handle(delta(200, 0, 3, add=(D,), registry="r2"), 0.0)
    assert out.changed == {200}
    assert st.members(200) == {D}


def test_first_registry_is_not_a_reset() -> None:
    st = ServerState()
    assert not st.handle(snap(1, 1, A), 0.0).reset


def test_union_across_servers() -> None:
    s1, s2, s3 = ServerState(), ServerState(), ServerState()
    s1.handle(snap(100, 1, A, B), 0.0)
    s2.handle(snap(100, 7, B, C, registry="other"), 0.0)
    assert union_members([s1, s2, s3], 100) == {A, B, C}
    assert union_members([s3], 100) is None  # nobody answered: adopt the kernel's state
    s1.handle(snap(100, 2), 0.0)
    assert union_members([s1, s2, s3], 100) == {B, C}


def test_servers_of_one_registry_newest_generation_wins() -> None:
    """Two servers on one registry: the one that stopped at an older generation (it
    died) does not keep a member that left in the list the live one reports."""
    dead, live, other = ServerState(), ServerState(), ServerState()
    dead.handle(snap(100, 3, A, B, C), 0.0)
    live.handle(snap(100, 5, A, B, D), 0.0)
    assert union_members([dead, live], 100) == {A, B, D}
    assert union_members([live, dead], 100) == {A, B, D}  # order does not matter
    # another registry still joins: its answer cannot be ordered against these
    other.handle(snap(100, 1, C, registry="other"), 0.0)
    assert union_members([dead, live, other], 100) == {A, B, C, D}
    # answers kept from before a registry change are joined too (fail-static)
    dead.handle(snap(200, 1, A, registry="r2"), 0.0)  # dead's registry changed
    assert dead.vnis[100].stale
    assert union_members([dead, live], 100) == {A, B, C, D}


def test_entries_report_applied_generations() -> None:
    st = ServerState()
    st.handle(snap(100, 3, A), 0.0)
    entries = st.entries({200: A, 100: A})
    assert [(e.vni, e.applied) for e in entries] == [(100, 3), (200, 0)]


# ------------------------------------------------------------ datagram checks (no socket)


def _client(keyring: Keyring | None = None) -> tuple[ServerClient, list[bytes]]:
    sent: list[bytes] = []
    c = ServerClient(ServerAddr("192.0.2.1"), "node", Codec(keyring), lambda *_: None)
    c.address = ("192.0.2.1", 10001)
    c._send = sent.append  # type: ignore[method-assign]
    return c, sent


def _wire(codec: Codec, msg: Membership, seq: Sequencer) -> bytes:
    from dataclasses import replace

    return codec.encode(replace(msg, env=seq.next()))


def test_feed_checks_source_tag_and_replay() -> None:
    key = Keyring([Key("k1", b"x" * 32)])
    c, sent = _client(key)
    seq = Sequencer("snd")
    good = _wire(Codec(key), snap(100, 1, A), seq)
    assert c.feed(good, "192.0.2.9", seq._clock(), 0.0) is None
    assert c.drops["unexpected-source"] == 1
    bad = _wire(Codec(Keyring([Key("k1", b"y" * 32)])), snap(100, 1, A), seq)
    assert c.feed(bad, "192.0.2.1", seq._clock(), 0.0) is None
    assert c.drops["bad-tag"] == 1
    unsigned = _wire(Codec(), snap(100, 1, A), seq)
    assert c.feed(unsigned, "192.0.2.1", seq._clock(), 0.0) is None
    assert c.drops["unsigned"] == 1
    assert c.state.members(100) is None and c.last_contact is None
    out = c.feed(good, "192.0.2.1", seq._clock(), 0.0)
    assert out is not None and out.changed == {100}
    assert c.feed(good, "192.0.2.1", seq._clock(), 0.0) is None
    assert c.drops["replay"] == 1
    # a duplicate generation in a fresh datagram is re-acked at once
    out = c.feed(_wire(Codec(key), snap(100, 1, A), seq), "::ffff:192.0.2.1", seq._clock(), 0.0)
    assert out is not None and out.reacks == [(100, 1)]
    assert len(sent) == 1
    ack = Codec(key).decode(sent[0])
    assert ack.applied == ((100, 1),)  # type: ignore[union-attr]


def test_receive_tells_the_agent_of_changes_and_never_raises() -> None:
    """receive() is the datagram callback itself: a change reaches on_change at
    once; garbage is counted; an error in the agent is logged, not raised into
    the event loop."""
    c, _ = _client()
    changes: list[set[int]] = []
    c.on_change = lambda client, out: changes.append(out.changed)
    seq = Sequencer("snd")
    c.receive(_wire(Codec(), snap(100, 1, A), seq), "192.0.2.1")
    assert changes == [{100}]
    c.receive(b"garbage", "192.0.2.1")
    assert c.drops["magic"] == 1 and changes == [{100}]

    def broken(client: ServerClient, out: object) -> None:
        raise RuntimeError("agent bug")

    c.on_change = broken
    c.receive(_wire(Codec(), delta(100, 1, 2, (B,)), seq), "192.0.2.1")
    assert c.state.applied(100) == 2  # fed; the agent's failure did not escape


def test_feed_refuses_old_datagrams() -> None:
    c, _ = _client()
    seq = Sequencer("snd", clock=lambda: 1000.0)
    data = _wire(Codec(), snap(100, 1, A), seq)
    assert c.feed(data, "192.0.2.1", 1000.0 + 3600, 0.0) is None
    assert c.drops["stale"] == 1


def test_server_ack_answers_the_round_and_carries_the_registry_id() -> None:
    c, sent = _client()
    seq = Sequencer("snd")
    codec = Codec()
    c.answered = True  # as after an earlier round; a new round clears it
    c.poke.clear()
    c._ensure_socket = lambda: _done(True)  # type: ignore[method-assign]
    asyncio.run(c.send_register({100: A}, 90))
    assert not c.answered and c.round_sent is not None and c.poke.is_set()
    # the first reply: registry id learnt, not a reset
    reply = codec.encode(Ack(seq.next(), "r1", ((100, 4),)))
    out = c.feed(reply, "192.0.2.9", seq._clock(), 0.0)  # wrong source: dropped
    assert out is None and not c.answered and c.drops["unexpected-source"] == 1
    now = seq._clock()
    out = c.feed(reply, "192.0.2.1", now, 0.0)
    assert out is not None and not out.reset and not out.changed and not out.acks
    assert c.answered and c.last_contact == now and c.state.registry == "r1"
    assert c.feed(reply, "192.0.2.1", now, 0.0) is None and c.drops["replay"] == 1
    # the server's generation differs from ours: nothing to do, it pushes on its own
    c.feed(_wire(codec, snap(100, 2, A, B), seq), "192.0.2.1", now, 0.0)
    out = c.feed(codec.encode(Ack(seq.next(), "r1", ((100, 3),))), "192.0.2.1", now + 1, 0.0)
    assert out is not None and not out.reset and c.state.applied(100) == 2
    assert c.last_contact == now + 1
    # a new registry id: like a membership from a new registry
    out = c.feed(codec.encode(Ack(seq.next(), "r2", ((100, 1),))), "192.0.2.1", now + 2, 0.0)
    assert out is not None and out.reset
    assert c.state.registry == "r2" and c.state.applied(100) == 0
    assert c.state.members(100) == {A, B}  # kept (fail-static) until r2 answers
    # a register reply needs no ack back (only the register itself went out)
    assert all(not isinstance(Codec().decode(d), Ack) for d in sent)


async def _done(value: bool) -> bool:
    return value


def test_source_check_matches_the_resolved_server_cheaply() -> None:
    from vxrd import client as client_mod

    c, _ = _client()
    c.address = None
    assert not c.from_server("192.0.2.1")  # not resolved yet
    c.address = ("192.0.2.1", 10001)
    client_mod._norm.cache_clear()
    for _ in range(3):
        assert c.from_server("192.0.2.1")
    info = client_mod._norm.cache_info()
    assert info.hits == info.misses == 0  # the common case parses nothing
    assert c.from_server("::ffff:192.0.2.1")  # IPv4-mapped
    assert not c.from_server("192.0.2.11")
    assert not c.from_server("::ffff:192.0.2.11")
    assert not c.from_server("not an address")


def test_source_check_ipv6_spellings_and_scope() -> None:
    c, _ = _client()
    c.address = ("2001:DB8:0:0::1", 10001)  # normalised once, when set
    assert c.from_server("2001:db8::1")
    assert not c.from_server("2001:db8::2")
    c.address = ("fe80::1%eth0", 10001)
    assert c.from_server("fe80::1%eth0")
    assert c.from_server("fe80::1")  # the scope id is not compared
    assert not c.from_server("fe80::2%eth0")
