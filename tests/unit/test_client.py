"""The agent's per-server protocol state, fed messages directly: no sockets, no kernel."""

from __future__ import annotations

import asyncio
import logging

import pytest

from vxflood.schema.keys import Key, Keyring
from vxflood.schema.wire import (
    Ack,
    Codec,
    Envelope,
    Membership,
    Refusal,
    Register,
    Sequencer,
    address,
    split_membership,
)
from vxrd.answers import ASSEMBLY_TIMEOUT, Outcome, ServerState, counting, union_members
from vxrd.client import RENEW_AFTER, RETRY_AFTER_EXPIRY, ServerClient
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


class Recording(ServerClient):
    """A client whose datagrams go into a list instead of a socket."""

    def __init__(self, keyring: Keyring | None = None) -> None:
        super().__init__(ServerAddr("192.0.2.1"), "node", Codec(keyring))
        self.address = ("192.0.2.1", 10001)
        self.sent: list[bytes] = []
        self.fail: Exception | None = None

    def _send(self, data: bytes) -> None:
        self.sent.append(data)

    async def _ensure_socket(self) -> bool:
        return True

    def feed(
        self, data: bytes, source: str, now_wall: float, now_mono: float, wanted: object = ()
    ) -> Outcome:
        if self.fail is not None:
            raise self.fail
        return super().feed(data, source, now_wall, now_mono, wanted)  # type: ignore[arg-type]


def _client(keyring: Keyring | None = None) -> tuple[Recording, list[bytes]]:
    c = Recording(keyring)
    return c, c.sent


def _wire(codec: Codec, msg: Membership, seq: Sequencer) -> bytes:
    from dataclasses import replace

    return codec.encode(replace(msg, env=seq.next()))


WANT = {100}


def test_feed_checks_source_tag_and_replay() -> None:
    key = Keyring([Key("k1", b"x" * 32)])
    c, sent = _client(key)
    seq = Sequencer("snd")
    good = _wire(Codec(key), snap(100, 1, A), seq)
    out = c.feed(good, "192.0.2.9", seq._clock(), 0.0, WANT)
    assert out.dropped and out.ignored == "unexpected-source"
    assert c.drops["unexpected-source"] == 1
    bad = _wire(Codec(Keyring([Key("k1", b"y" * 32)])), snap(100, 1, A), seq)
    assert c.feed(bad, "192.0.2.1", seq._clock(), 0.0, WANT).dropped
    assert c.drops["bad-tag"] == 1
    unsigned = _wire(Codec(), snap(100, 1, A), seq)
    assert c.feed(unsigned, "192.0.2.1", seq._clock(), 0.0, WANT).dropped
    assert c.drops["unsigned"] == 1
    assert c.state.members(100) is None and c.last_contact is None
    out = c.feed(good, "192.0.2.1", seq._clock(), 0.0, WANT)
    assert not out.dropped and out.changed == {100}
    assert c.feed(good, "192.0.2.1", seq._clock(), 0.0, WANT).dropped
    assert c.drops["replay"] == 1
    # a duplicate generation in a fresh datagram: the re-ack is returned, not sent
    dup = _wire(Codec(key), snap(100, 1, A), seq)
    out = c.feed(dup, "::ffff:192.0.2.1", seq._clock(), 0.0, WANT)
    assert not out.dropped and out.reacks == [(100, 1)] and sent == []
    # a VNI this node has no device for
    other = _wire(Codec(key), snap(200, 1, A), seq)
    out = c.feed(other, "192.0.2.1", seq._clock(), 0.0, WANT)
    assert out.dropped and out.ignored == "not-for-us" and c.state.members(200) is None


def test_receive_never_raises_and_logs_errors_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """receive() runs in the datagram callback: garbage is counted; an unexpected
    error (a bug) is counted as "error" and logged for the 1st, 2nd, 4th, 8th...
    occurrence, with a traceback only the first time, never raised."""
    c, _ = _client()
    seq = Sequencer("snd")
    out = c.receive(_wire(Codec(), snap(100, 1, A), seq), "192.0.2.1", WANT)
    assert out.changed == {100}
    out = c.receive(b"garbage", "192.0.2.1", WANT)
    assert out.dropped and c.drops["magic"] == 1
    c.fail = MemoryError("boom")
    with caplog.at_level(logging.ERROR, "vxrd.client"):
        for _ in range(9):
            out = c.receive(b"anything", "192.0.2.1", WANT)
            assert out.dropped and out.ignored == "error"
    assert c.errors == 9 and c.drops["error"] == 9
    lines = [r for r in caplog.records if "error handling a datagram" in r.getMessage()]
    assert len(lines) == 4  # 1, 2, 4, 8
    assert lines[0].exc_info is not None and not any(r.exc_info for r in lines[1:])


def test_feed_refuses_old_datagrams() -> None:
    c, _ = _client()
    seq = Sequencer("snd", clock=lambda: 1000.0)
    data = _wire(Codec(), snap(100, 1, A), seq)
    assert c.feed(data, "192.0.2.1", 1000.0 + 3600, 0.0, WANT).dropped
    assert c.drops["stale"] == 1


def test_server_ack_answers_the_round_and_carries_the_registry_id() -> None:
    c, sent = _client()
    seq = Sequencer("snd")
    codec = Codec()
    c.answered = True  # as after an earlier round; a new round clears it
    c.poke.clear()
    asyncio.run(c.send_register({100: A}, 90))
    assert not c.answered and c.round_sent is not None and c.poke.is_set()
    # the first reply: registry id learnt, not a reset
    reply = codec.encode(Ack(seq.next(), "r1", ((100, 4),)))
    out = c.feed(reply, "192.0.2.9", seq._clock(), 0.0, WANT)  # wrong source: dropped
    assert out.dropped and not c.answered and c.drops["unexpected-source"] == 1
    now = seq._clock()
    out = c.feed(reply, "192.0.2.1", now, 0.0, WANT)
    assert out.answered and not out.reset and not out.changed and not out.acks
    assert c.answered and c.last_contact == now and c.state.registry == "r1"
    assert c.feed(reply, "192.0.2.1", now, 0.0, WANT).dropped and c.drops["replay"] == 1
    # the server's generation differs from ours: nothing to do, it pushes on its own
    c.feed(_wire(codec, snap(100, 2, A, B), seq), "192.0.2.1", now, 0.0, WANT)
    out = c.feed(codec.encode(Ack(seq.next(), "r1", ((100, 3),))), "192.0.2.1", now + 1, 1.0)
    assert not out.reset and c.state.applied(100) == 2
    assert c.last_contact == now + 1
    # a new registry id: like a membership from a new registry
    out = c.feed(codec.encode(Ack(seq.next(), "r2", ((100, 1),))), "192.0.2.1", now + 2, 2.0)
    assert out.reset and c.state.changed_at == 2.0
    assert c.state.registry == "r2" and c.state.applied(100) == 0
    assert c.state.members(100) == {A, B}  # kept (fail-static) until r2 answers
    # a register reply needs no ack back (only the register itself went out)
    assert all(not isinstance(Codec().decode(d), Ack) for d in sent)


def _incarnations(sent: list[bytes]) -> list[int]:
    return [m.env.incarnation for d in sent if isinstance(m := Codec().decode(d), Register)]


def test_unanswered_rounds_bring_a_new_incarnation_once_per_streak() -> None:
    """A server that answered this incarnation and then left RENEW_AFTER rounds in a
    row unanswered (it may refuse our datagrams as replays): the next round goes out
    under a new incarnation; not again until the server has answered that one."""
    c, sent = _client()
    seq = Sequencer("snd")
    first = c.seq.incarnation

    async def rounds(n: int) -> list[bool]:
        return [await c.send_register({100: A}, 90) for _ in range(n)]

    # never answered: no renewal however long the silence (the server may be down)
    assert asyncio.run(rounds(RENEW_AFTER + 3)) == [False] * (RENEW_AFTER + 3)
    assert set(_incarnations(sent)) == {first}
    c.feed(Codec().encode(Ack(seq.next(), "r1", ())), "192.0.2.1", seq._clock(), 0.0)
    assert c.unanswered == 0
    sent.clear()
    renewed = asyncio.run(rounds(RENEW_AFTER + 4))
    # round 1 answered-before; rounds 2..RENEW_AFTER+1 follow unanswered ones
    assert renewed == [False] * RENEW_AFTER + [True] + [False] * 3
    incs = _incarnations(sent)
    assert incs[:RENEW_AFTER] == [first] * RENEW_AFTER
    assert len(set(incs[RENEW_AFTER:])) == 1 and incs[-1] != first
    assert c.renewals == 1
    # the new incarnation is answered: a later streak renews again
    c.feed(Codec().encode(Ack(seq.next(), "r1", ())), "192.0.2.1", seq._clock(), 0.0)
    assert asyncio.run(rounds(RENEW_AFTER + 1))[-1] is True and c.renewals == 2


def test_a_refusal_is_an_answer_that_names_the_holder_until_a_round_is_accepted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 10: the server refuses our node id (another live agent holds it): logged at
    ERROR with the holder's address, shown, no new incarnation for it (that would not
    help), retried when the holder's registration runs out; an Ack ends it."""
    c, _ = _client()
    seq = Sequencer("snd")
    codec = Codec()

    def refusal(expires_in: int) -> bytes:
        return codec.encode(
            Refusal(seq.next(), "r1", "node-id-conflict", address("192.0.2.50"), expires_in)
        )

    for n in range(RENEW_AFTER + 2):
        asyncio.run(c.send_register({100: A}, 90))
        with caplog.at_level(logging.ERROR, "vxrd.client"):
            out = c.feed(refusal(80), "192.0.2.1", seq._clock(), 10.0 + n, WANT)
        assert out.ignored == "node-id-conflict" and not out.dropped and not out.changed
    assert c.answered and c.unanswered == 0 and c.renewals == 0
    r = c.refused
    assert r is not None and (r.holder, r.reason, r.count) == ("192.0.2.50", "node-id-conflict", 5)
    assert r.retry_at == 10.0 + RENEW_AFTER + 1 + 80 + RETRY_AFTER_EXPIRY
    errors = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.ERROR]
    assert len(errors) == 3  # refusals 1, 2 and 4: rate-limited
    assert "refuses node id node " in errors[0] and "192.0.2.50" in errors[0]
    assert c.feed(refusal(80), "192.0.2.9", seq._clock(), 20.0, WANT).dropped  # not the server
    c.feed(codec.encode(Ack(seq.next(), "r1", ())), "192.0.2.1", seq._clock(), 30.0, WANT)
    assert c.refused is None and c.answered


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


# ------------------------------------------------------------ authority (issue 9)


def test_a_registry_change_is_additive_for_a_hold_time_and_learning_until_it_ends() -> None:
    st = ServerState()
    st.handle(snap(100, 4, A, B), 10.0)
    assert st.changed_at is None and not st.additive(10.0, 30)  # the first registry
    out = st.handle(snap(100, 1, A, registry="r2"), 20.0)
    assert out.reset and st.changed_at == 20.0
    assert st.additive(49.9, 30) and not st.additive(50.0, 30)
    assert st.additive_until(30) == 50.0
    st.learning = True  # as after an answer saying learning (the wire half: vxsnd)
    assert st.additive(60.0, 30)
    out = st.handle_reply(Ack(ENV, "r2", ()), 61.0)
    assert out.answered and out.authority and not st.learning and not st.additive(61.0, 30)


def test_the_servers_that_count_are_the_live_ones_that_answered() -> None:
    live, dead, mute = ServerState(), ServerState(), ServerState()
    live.handle(snap(100, 1, A), 100.0)
    dead.handle(snap(100, 1, A, B), 10.0)
    mute.handle_reply(Ack(ENV, "r1", ()), 100.0)  # live, but said nothing of VNI 100
    states = [live, dead, mute]
    assert counting(states, 100, 100.0, 30) == [live, mute]
    assert counting(states, 200, 100.0, 30) == states  # no live answer for 200: all
    assert counting(states, 100, 20.0, 30) == states  # everyone heard within the hold
