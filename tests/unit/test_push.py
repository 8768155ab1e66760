"""Pure push planning, retransmit back-off and expiry decisions (vxsnd.push)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vxflood.schema.keys import Key, Keyring
from vxflood.schema.wire import (
    Codec,
    Envelope,
    Membership,
    Sequencer,
    address,
    split_membership,
)
from vxsnd import push
from vxsnd.push import Backoff, InFlight, Plan
from vxsnd.stamp import Stamped, sender_prefix


def test_plan_up_to_date_needs_nothing() -> None:
    assert push.plan(100, applied=5, generation=5, log_floor=1) is None
    assert push.plan(100, applied=9, generation=5, log_floor=1) is None


def test_plan_new_node_gets_snapshot() -> None:
    p = push.plan(100, applied=0, generation=5, log_floor=0)
    assert p == Plan(100, 5, None)
    assert p.base is None


def test_plan_delta_when_log_reaches_back() -> None:
    p = push.plan(100, applied=3, generation=5, log_floor=2)
    assert p == Plan(100, 5, 3)
    assert p is not None and p.base is not None


def test_plan_snapshot_when_log_too_short_or_absent() -> None:
    assert push.plan(100, applied=3, generation=9, log_floor=4) == Plan(100, 9, None)
    assert push.plan(100, applied=3, generation=9, log_floor=None) == Plan(100, 9, None)


def test_plan_escalates_to_snapshot_after_two_unacked_attempts() -> None:
    assert push.plan(100, 3, 5, 1, attempt=1) == Plan(100, 5, 3)
    assert push.plan(100, 3, 5, 1, attempt=2) == Plan(100, 5, None)


def test_delta_worth_it() -> None:
    assert push.delta_worth_it(1, 100)
    assert not push.delta_worth_it(100, 100)
    assert push.delta_worth_it(0, 0)


def test_backoff_doubles_and_caps() -> None:
    b = Backoff(0.25, 30.0)
    assert [b.delay(i) for i in range(9)] == [0.25, 0.5, 1, 2, 4, 8, 16, 30, 30]
    assert b.delay(10_000) == 30.0


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(0, 1)
    with pytest.raises(ValueError):
        Backoff(2, 1)


def test_inflight_retransmit_schedule() -> None:
    b = Backoff(0.25, 1.0)
    f = InFlight.start(4, now=10.0, backoff=b)
    assert (f.generation, f.attempt, f.due) == (4, 0, 10.25)
    assert not push.may_push(f, 10.1)
    assert push.may_push(f, 10.25)
    f.resent(6, 10.25, b)
    assert (f.generation, f.attempt, f.due, f.first_sent) == (6, 1, 10.75, 10.0)
    f.resent(6, 10.75, b)
    f.resent(6, 11.75, b)
    assert f.due == 12.75  # capped at 1 s
    assert not f.acked_by(5)
    assert f.acked_by(6)
    assert f.acked_by(7)


def test_follow_up_after_ack() -> None:
    b = Backoff()
    f = InFlight.start(4, 0.0, b)
    assert not push.follow_up(f, acked=6, current=6)  # up to date
    assert push.follow_up(f, acked=4, current=6)  # acked the push, VNI moved on
    assert not push.follow_up(f, acked=3, current=6)  # an old ack: push still in flight
    assert push.follow_up(None, acked=3, current=6)


def test_check_hold_time() -> None:
    assert push.check_hold_time(90, 3600) is None
    assert push.check_hold_time(3600, 3600) is None
    assert push.check_hold_time(3601, 3600) == "hold-time"


@pytest.mark.parametrize("keyed", [False, True])
def test_stamped_equals_codec_encode(keyed: bool) -> None:
    keyring = Keyring([Key("k1", bytes(range(32)))]) if keyed else None
    codec = Codec(keyring)
    members = tuple(address(f"10.0.{i // 250}.{i % 250 + 1}") for i in range(700))
    template = Membership(Envelope("srv", 1, 1, 1), "reg", 100, 7, None, members, ())
    seq = iter(range(1, 100))
    parts = split_membership(codec, template, (Envelope("srv", 9, next(seq), 5) for _ in range(99)))
    assert len(parts) > 1
    for part in parts:
        st = Stamped(codec, part)
        for env in (Envelope("srv", 2**62, 2**40, 1_700_000_000_000), Envelope("s", 0, 1, 0)):
            expect = codec.encode(replace(part, env=env))
            assert st.stamp(env) == expect
            assert codec.decode(st.stamp(env)).env == env
            prefix = sender_prefix(env.sender, env.incarnation)
            assert st.stamp_at(prefix, env.seq, env.time_ms) == expect


def test_stamped_integers_of_every_msgpack_width() -> None:
    codec = Codec()
    part = Membership(Envelope("srv", 1, 1, 1), "reg", 100, 7, None, (address("10.0.0.1"),), ())
    st = Stamped(codec, part)
    prefix = sender_prefix("srv", 1)
    for v in (0, 127, 128, 255, 256, 2**16 - 1, 2**16, 2**32 - 1, 2**32, 2**63, 2**64 - 1):
        env = Envelope("srv", 1, v, v)
        assert st.stamp_at(prefix, v, v) == codec.encode(replace(part, env=env)), v


def test_sequencer_take_numbers_a_burst_and_stamps_it_alike() -> None:
    seq = Sequencer("srv", incarnation=5, clock=lambda: 1_700_000_000.25)
    seq.next()
    assert seq.take(3) == (2, 1_700_000_000_250)
    assert seq.next().seq == 5


def test_stranded_delta() -> None:
    b = Backoff()
    f = InFlight.start(9, 0.0, b)
    f.base = 5
    assert f.stranded_by(7)  # node is at 7: a delta 5 -> 9 will be ignored
    assert not f.stranded_by(5)  # still applicable
    assert not f.stranded_by(9)  # acked
    f.base = None
    assert not f.stranded_by(7)  # a snapshot always applies


def test_rtt_estimator() -> None:
    r = push.RttEstimator()
    assert r.rto() == 0.0
    r.sample(0.1)
    assert r.rto() == pytest.approx(0.1 + 4 * 0.05)
    for _ in range(50):
        r.sample(0.1)
    assert r.rto() == pytest.approx(0.1, abs=0.01)
    assert Backoff(0.25, 30).delay(0, r.rto()) == 0.25
    assert Backoff(0.25, 30).delay(1, 1.0) == 2.0
