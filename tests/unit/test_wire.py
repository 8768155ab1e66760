"""The wire contract: golden bytes, round trips, and clean rejection of bad input."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit import wire_vectors
from vxflood.schema.keys import Keyring
from vxflood.schema.validate import NODE_ID_PATTERN
from vxflood.schema.wire import (
    DEFAULT_BUDGET,
    HEADER,
    MAGIC,
    MAX_DATAGRAM,
    VERSION,
    Ack,
    Codec,
    Envelope,
    Membership,
    Refusal,
    Register,
    Rejected,
    Sequencer,
    VniEntry,
    split_membership,
    split_register,
)
from vxflood.schema.wire import address as ip

GOLDEN = json.loads((Path(__file__).parent / "golden_wire.json").read_text())
OTHER_KEYS = Keyring.parse("other " + "5a" * 32)


@pytest.mark.parametrize("vector", GOLDEN, ids=[v["name"] for v in GOLDEN])
def test_golden_vector_bytes_and_round_trip(vector: dict[str, str]) -> None:
    msg, signed = wire_vectors.VECTORS[vector["name"]]
    codec = wire_vectors.codec(signed)
    data = bytes.fromhex(vector["hex"])
    assert codec.encode(msg) == data
    assert codec.decode(data) == msg
    assert repr(msg) == vector["object"]
    assert wire_vectors.view(data) == vector["view"]


def test_every_message_type_has_a_golden_vector() -> None:
    kinds = {type(msg) for msg, _ in wire_vectors.VECTORS.values()}
    assert kinds == {Register, Membership, Ack, Refusal}


# ------------------------------------------------------------------ strategies

unicast_v4 = (
    st.integers(0x01000000, 0xDFFFFFFF)
    .map(ipaddress.IPv4Address)
    .filter(lambda a: not a.is_loopback and not a.is_link_local)
)
unicast_v6 = st.integers(0x20010000 << 96, (0x3FFF << 112) - 1).map(ipaddress.IPv6Address)
vteps = st.one_of(unicast_v4, unicast_v6)
vnis = st.integers(1, 16_777_215)
u64 = st.integers(0, 2**64 - 1)
node_ids = st.from_regex(NODE_ID_PATTERN, fullmatch=True)
envelopes = st.builds(Envelope, node_ids, u64, u64, st.integers(0, 2**63))


@st.composite
def registers(draw: st.DrawFn) -> Register:
    entries = draw(
        st.lists(st.builds(VniEntry, vnis, vteps, u64), max_size=20, unique_by=lambda e: e.vni)
    )
    parts = draw(st.integers(1, 50))
    return Register(
        draw(envelopes),
        draw(st.integers(0, 65535)),
        draw(st.text(max_size=64)),
        draw(u64),
        draw(st.integers(0, parts - 1)),
        parts,
        tuple(entries),
        draw(st.sampled_from([0, 3, 255])),
    )


@st.composite
def memberships(draw: st.DrawFn) -> Membership:
    gen = draw(st.integers(1, 2**64 - 1))
    # IPv4 first, as vxsnd lists them (a compact message carries the families apart)
    addrs = sorted(draw(st.lists(vteps, unique=True, max_size=40)), key=lambda a: a.version)
    cut = draw(st.integers(0, len(addrs)))
    snapshot = draw(st.booleans())
    base = None if snapshot else draw(st.integers(0, gen - 1))
    parts = draw(st.integers(1, 50))
    return Membership(
        draw(envelopes),
        draw(st.text(min_size=1, max_size=64)),
        draw(vnis),
        gen,
        base,
        tuple(addrs[:cut]) if not snapshot else tuple(addrs),
        tuple(addrs[cut:]) if not snapshot else (),
        draw(st.integers(0, parts - 1)),
        parts,
        draw(st.booleans()),
        draw(st.booleans()),
    )


acks = st.builds(
    Ack,
    envelopes,
    st.text(max_size=64),
    st.lists(st.tuples(vnis, u64), max_size=30).map(tuple),
)
messages = st.one_of(registers(), memberships(), acks)


@given(messages, st.booleans())
def test_round_trip(msg: Register | Membership | Ack, signed: bool) -> None:
    codec = wire_vectors.codec(signed)
    assert codec.decode(codec.encode(msg)) == msg


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_garbage_is_rejected_cleanly(data: bytes) -> None:
    for codec in (Codec(), wire_vectors.codec(True)):
        try:
            codec.decode(data)
        except Rejected as exc:
            assert exc.reason
        # anything else propagating is a bug the test reports


@settings(max_examples=300)
@given(messages, st.data())
def test_truncated_or_corrupted_datagrams_rejected(
    msg: Register | Membership | Ack, data: st.DataObject
) -> None:
    signed = wire_vectors.codec(True)
    good = signed.encode(msg)
    cut = data.draw(st.integers(0, len(good) - 1))
    with pytest.raises(Rejected):
        signed.decode(good[:cut])
    pos = data.draw(st.integers(0, len(good) - 1))
    flipped = bytearray(good)
    flipped[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(Rejected):
        signed.decode(bytes(flipped))


@settings(max_examples=200)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.text(max_size=8)
        | st.binary(max_size=20),
        lambda c: (
            st.lists(c, max_size=4)
            | st.dictionaries(st.sampled_from("sitqhrkpnvxgbadwoe"), c, max_size=12)
        ),
        max_leaves=30,
    ),
    st.sampled_from([1, 2, 3, 4]),
)
def test_well_formed_msgpack_with_wrong_shapes_rejected_cleanly(body: object, mtype: int) -> None:
    data = HEADER.pack(MAGIC, VERSION, mtype, 0) + msgpack.packb(body, use_bin_type=True)
    try:
        Codec().decode(data)
    except Rejected as exc:
        assert exc.reason in {"malformed", "invalid", "oversize"}


def _unsigned(body: dict[str, object], mtype: int = 1) -> bytes:
    return HEADER.pack(MAGIC, VERSION, mtype, 0) + msgpack.packb(body, use_bin_type=True)


ENV_BODY = {"s": "h", "i": 1, "q": 1, "t": 1}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (
            {
                **ENV_BODY,
                "h": 9,
                "r": "",
                "k": 1,
                "p": 0,
                "n": 1,
                "v": [[0, ip("198.18.0.1").packed, 0]],
            },
            "VNI 0 out of range",
        ),
        (
            {
                **ENV_BODY,
                "h": 9,
                "r": "",
                "k": 1,
                "p": 0,
                "n": 1,
                "v": [[16_777_216, ip("198.18.0.1").packed, 0]],
            },
            "out of range",
        ),
        (
            {
                **ENV_BODY,
                "h": 9,
                "r": "",
                "k": 1,
                "p": 0,
                "n": 1,
                "v": [[5, ip("239.1.1.1").packed, 0]],
            },
            "multicast",
        ),
        (
            {
                **ENV_BODY,
                "h": 9,
                "r": "",
                "k": 1,
                "p": 0,
                "n": 1,
                "v": [[5, ip("127.0.0.1").packed, 0]],
            },
            "loopback",
        ),
        (
            {
                **ENV_BODY,
                "h": 9,
                "r": "",
                "k": 1,
                "p": 0,
                "n": 1,
                "v": [[5, ip("0.0.0.0").packed, 0]],
            },
            "unspecified",
        ),
        (
            {
                **ENV_BODY,
                "h": 9,
                "r": "",
                "k": 1,
                "p": 0,
                "n": 1,
                "v": [[5, ip("255.255.255.255").packed, 0]],
            },
            "broadcast",
        ),
        (
            {
                **ENV_BODY,
                "h": 9,
                "r": "",
                "k": 1,
                "p": 0,
                "n": 1,
                "v": [[5, ip("ff02::1").packed, 0]],
            },
            "multicast",
        ),
        (
            {**ENV_BODY, "h": 9, "r": "", "k": 1, "p": 0, "n": 1, "v": [[5, b"\x01\x02\x03", 0]]},
            "4 or 16 bytes",
        ),
        ({**ENV_BODY, "h": 9, "r": "", "k": 1, "p": 2, "n": 2, "v": []}, "part 2 of 2"),
        ({**ENV_BODY, "h": 70000, "r": "", "k": 1, "p": 0, "n": 1, "v": []}, "'h'"),
        ({**ENV_BODY, "r": "", "k": 1, "p": 0, "n": 1, "v": []}, "missing field 'h'"),
        (
            {
                **ENV_BODY,
                "h": 9,
                "r": "",
                "k": 1,
                "p": 0,
                "n": 1,
                "v": [[5, ip("198.18.0.1").packed, 0], [5, ip("198.18.0.2").packed, 0]],
            },
            "twice",
        ),
    ],
)
def test_invalid_register_fields_rejected_with_reason(body: dict[str, object], detail: str) -> None:
    with pytest.raises(Rejected) as info:
        Codec().decode(_unsigned(body))
    assert info.value.reason == "invalid"
    assert detail in info.value.detail


def test_delta_base_must_be_below_generation() -> None:
    body = {**ENV_BODY, "r": "x", "x": 5, "g": 3, "b": 3, "a": [], "d": [], "p": 0, "n": 1}
    with pytest.raises(Rejected, match="base"):
        Codec().decode(_unsigned(body, 2))


def test_header_checks() -> None:
    good = Codec().encode(Ack(Envelope("h", 1, 1, 1), "", ()))
    cases = {
        b"": "short",
        good[:4]: "short",
        b"XY" + good[2:]: "magic",
        good[:2] + bytes([VERSION + 1]) + good[3:]: "version",
        good[:3] + b"\x63" + good[4:]: "type",
        good + b"\x00" * MAX_DATAGRAM: "oversize",
        good + b"\xc0": "malformed",
    }
    for data, reason in cases.items():
        with pytest.raises(Rejected) as info:
            Codec().decode(data)
        assert info.value.reason == reason, (data[:8], reason)


def test_versions_one_to_three_are_spoken_each_message_in_its_own() -> None:
    """Version 2 added the Refusal (type 4), version 3 the compact Membership; every
    older message still goes out as version 1, byte for byte what a version-1 peer
    reads, and is read in any."""
    ack = Codec().encode(Ack(Envelope("h", 1, 1, 1), "", ()))
    assert ack[2] == 1
    assert Codec().decode(ack[:2] + b"\x02" + ack[3:]) == Codec().decode(ack)
    refusal = Refusal(Envelope("sn", 1, 1, 1), "r", "node-id-conflict", ip("127.0.0.1"), 5)
    data = Codec().encode(refusal)
    assert data[2] == 2
    assert Codec().decode(data) == refusal
    with pytest.raises(Rejected) as info:  # a type 4 stamped version 1 is nobody's
        Codec().decode(data[:2] + b"\x01" + data[3:])
    assert info.value.reason == "version"
    for version in (0, 4, 255):
        with pytest.raises(Rejected, match=r"speaks 1\.\.3") as info:
            Codec().decode(data[:2] + bytes([version]) + data[3:])
        assert info.value.reason == "version"


def test_compact_membership_is_version_3_and_the_lists_form_is_unchanged() -> None:
    env = Envelope("sn", 1, 1, 1)
    add = (ip("198.18.0.2"), ip("2001:db8::2"))
    lists = Membership(env, "r", 5, 2, None, add, ())
    compact = Membership(env, "r", 5, 2, None, add, (), compact=True)
    data = Codec().encode(compact)
    assert data[2] == 3 and Codec().encode(lists)[2] == 1
    assert Codec().decode(data) == compact
    assert Codec().decode(data).add == Codec().decode(Codec().encode(lists)).add
    # the 2-byte list headers per address are gone: 4 bytes per IPv4 address, not 6
    many = tuple(ip(f"198.18.{i // 250}.{i % 250 + 1}") for i in range(200))
    size = {
        c: len(Codec().encode(Membership(env, "r", 5, 2, None, many, (), compact=c)))
        for c in (False, True)
    }
    assert size[False] - size[True] == 2 * len(many) - 1  # array16 vs bin8 header
    with pytest.raises(Rejected) as info:  # a compact body needs a version-3 stamp
        Codec().decode(data[:2] + b"\x01" + data[3:])
    assert info.value.reason == "version"


def _membership_body(drop: tuple[str, ...] = (), **change: object) -> bytes:
    body = {**ENV_BODY, "r": "x", "x": 5, "g": 3, "b": 2, "a": b"", "d": b"", "p": 0, "n": 1}
    body.update(change)
    for key in drop:
        del body[key]
    return HEADER.pack(MAGIC, 3, 2, 0) + msgpack.packb(body, use_bin_type=True)


V4 = ip("198.18.0.9").packed
V6 = ip("2001:db8::9").packed


@pytest.mark.parametrize(
    ("change", "drop", "detail"),
    [
        ({"a": V4 + b"\x01"}, (), "4-byte"),
        ({"A": V6[:8]}, (), "16-byte"),
        ({"A": b""}, (), "16-byte"),
        ({"D": "2001:db8::9"}, (), "16-byte"),
        ({"d": None}, (), "4-byte"),
        ({}, ("d",), "missing field 'd'"),
        ({"a": V4 + V4}, (), "duplicate"),
        ({"a": V4, "d": V4}, (), "both added and removed"),
        ({"A": V6, "D": V6}, (), "both added and removed"),
        ({"a": ip("127.0.0.1").packed}, (), "loopback"),
        ({"A": ip("::ffff:198.18.0.9").packed}, (), ""),
        ({"d": V4}, ("b",), "snapshot carries no removals"),
    ],
)
def test_bad_compact_memberships_rejected(
    change: dict[str, object], drop: tuple[str, ...], detail: str
) -> None:
    with pytest.raises(Rejected) as info:
        Codec().decode(_membership_body(drop, **change))
    assert info.value.reason == "invalid"
    assert detail in info.value.detail


def test_register_says_what_it_reads() -> None:
    env = Envelope("h", 1, 1, 1)
    plain = Register(env, 90, "", 1, 0, 1, ())
    said = Register(env, 90, "", 1, 0, 1, (), max_version=3)
    assert Codec().decode(Codec().encode(said)).max_version == 3
    assert Codec().decode(Codec().encode(plain)).max_version == 0
    assert b"\xa1c" not in Codec().encode(plain)  # absent: as a version-2 agent sent it
    raw = msgpack.unpackb(Codec().encode(plain)[HEADER.size :])
    for bad in (-1, 256, "3", True):
        data = HEADER.pack(MAGIC, 1, 1, 0) + msgpack.packb({**raw, "c": bad}, use_bin_type=True)
        with pytest.raises(Rejected, match="'c'"):
            Codec().decode(data)


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"w": "Node Id"}, "reason"),
        ({"w": ""}, "'w'"),
        ({"o": b"\x01\x02\x03"}, "holder"),
        ({"o": "127.0.0.1"}, "holder"),
        ({"e": 70_000}, "'e'"),
        ({"e": -1}, "'e'"),
    ],
)
def test_bad_refusals_rejected(change: dict[str, object], detail: str) -> None:
    body = {**ENV_BODY, "r": "x", "w": "node-id-conflict", "o": b"\x7f\0\0\1", "e": 3, **change}
    data = HEADER.pack(MAGIC, 2, 4, 0) + msgpack.packb(body, use_bin_type=True)
    with pytest.raises(Rejected) as info:
        Codec().decode(data)
    assert info.value.reason == "invalid"
    assert detail in info.value.detail


def test_signatures_and_key_rotation() -> None:
    msg = Ack(Envelope("h", 1, 1, 1), "r", ((5, 1),))
    old = Keyring.parse("k-old " + "11" * 32)
    both = Keyring.parse("k-new " + "22" * 32 + "\nk-old " + "11" * 32)
    # the rotated receiver still verifies the old signer, and vice versa once it is listed
    assert Codec(both).decode(Codec(old).encode(msg)) == msg
    with pytest.raises(Rejected) as info:
        Codec(old).decode(Codec(both).encode(msg))
    assert info.value.reason == "unknown-key"
    with pytest.raises(Rejected) as info:
        Codec(both).decode(Codec().encode(msg))
    assert info.value.reason == "unsigned"
    forged = Keyring.parse("k-old " + "33" * 32)  # right id, wrong secret
    with pytest.raises(Rejected) as info:
        Codec(both).decode(Codec(forged).encode(msg))
    assert info.value.reason == "bad-tag"
    with pytest.raises(Rejected):
        Codec(OTHER_KEYS).decode(Codec(old).encode(msg))


@given(
    st.lists(vteps, unique=True, max_size=900),
    st.booleans(),
    st.integers(200, 1400),
    st.booleans(),
)
@settings(max_examples=60, deadline=None)
def test_membership_parts_fit_budget_and_reassemble(
    members: list[ipaddress.IPv4Address], signed: bool, budget: int, compact: bool
) -> None:
    codec = wire_vectors.codec(signed)
    seq = Sequencer("sn", 9, clock=lambda: 1.0)
    members.sort(key=lambda a: (a.version, int(a)))  # as vxsnd lists them
    template = Membership(seq.next(), "reg", 77, 5, None, tuple(members), (), compact=compact)
    parts = split_membership(codec, template, seq.many(), budget)
    assert {p.parts for p in parts} == {len(parts)}
    assert [p.part for p in parts] == list(range(len(parts)))
    collected = []
    for p in parts:
        data = codec.encode(p)
        assert len(data) <= budget
        collected.extend(codec.decode(data).add)
    assert collected == members
    assert len({p.env.seq for p in parts}) == len(parts)


def test_delta_parts_keep_adds_and_removes_apart() -> None:
    codec = Codec()
    seq = Sequencer("sn", 9)
    add = tuple(ip(f"198.18.{i // 200}.{i % 200 + 1}") for i in range(300))
    rem = tuple(ip(f"2001:db8::{i + 1:x}") for i in range(300))
    parts = split_membership(codec, Membership(seq.next(), "r", 5, 9, 8, add, rem), seq.many())
    assert len(parts) > 1
    assert tuple(a for p in parts for a in p.add) == add
    assert tuple(a for p in parts for a in p.remove) == rem
    assert all(len(codec.encode(p)) <= DEFAULT_BUDGET for p in parts)
    compact = split_membership(
        codec, Membership(seq.next(), "r", 5, 9, 8, add, rem, compact=True), seq.many()
    )
    assert len(compact) < len(parts)
    assert tuple(a for p in compact for a in p.add) == add
    assert tuple(a for p in compact for a in p.remove) == rem
    assert all(len(codec.encode(p)) <= DEFAULT_BUDGET for p in compact)


def test_compact_parts_fill_the_budget() -> None:
    """At most the slack kept for growing headers is left unused in a full part."""
    codec = wire_vectors.codec(True)
    seq = Sequencer("sn-with-a-long-server-id", 9)
    add = tuple(ip(f"198.18.{i // 250}.{i % 250 + 1}") for i in range(2000))
    parts = split_membership(
        codec, Membership(seq.next(), "r" * 64, 5, 9, None, add, (), compact=True), seq.many()
    )
    sizes = [len(codec.encode(p)) for p in parts]
    assert max(sizes) <= DEFAULT_BUDGET
    assert min(sizes[:-1]) >= DEFAULT_BUDGET - 24
    assert tuple(a for p in parts for a in p.add) == add


def test_register_parts_fit_budget() -> None:
    codec = wire_vectors.codec(True)
    seq = Sequencer("host-with-a-long-name" * 3, 1)
    entries = [VniEntry(v, ip("2001:db8::1"), 2**63) for v in range(1, 2001)]
    template = Register(seq.next(), 90, "registry", 12, 0, 1, ())
    parts = split_register(codec, template, entries, seq.many())
    assert len(parts) > 10
    assert [e for p in parts for e in codec.decode(codec.encode(p)).vnis] == entries
    assert max(len(codec.encode(p)) for p in parts) <= DEFAULT_BUDGET
    assert {p.round for p in parts} == {12}


def test_empty_lists_still_make_one_part() -> None:
    seq = Sequencer("sn", 1)
    parts = split_membership(Codec(), Membership(seq.next(), "r", 5, 1, None, (), ()), seq.many())
    assert [(p.part, p.parts, p.add) for p in parts] == [(0, 1, ())]


def test_sequencer_numbers_and_validates() -> None:
    seq = Sequencer("n", clock=lambda: 12.5)
    a, b = seq.next(), seq.next()
    assert (a.seq, b.seq, a.time_ms, a.incarnation == b.incarnation) == (1, 2, 12500, True)
    assert Sequencer("n").incarnation != Sequencer("n").incarnation
    for bad in ("", "x" * 65, "hv 1", "hv\x00", "hv\n"):
        with pytest.raises(ValueError, match="sender id: node id"):
            Sequencer(bad)


@pytest.mark.parametrize(
    "sender",
    ["", "x" * 65, "hv\x00one", "hv\x1b[2J", "hv one", "hv\u202eeno", "é", 7, b"hv", None],
)
def test_sender_ids_off_the_node_id_rule_are_rejected(sender: object) -> None:
    """Issue 9 finding 7: NUL and control characters in a sender id reached the log raw."""
    body = {"s": sender, "i": 1, "q": 1, "t": 1, "r": "", "v": []}
    with pytest.raises(Rejected) as info:
        Codec().decode(_unsigned(body, 3))
    assert info.value.reason == "invalid"
    assert "sender" in info.value.detail
    assert "\x00" not in str(info.value) and "\x1b" not in str(info.value)


def test_sender_id_rule_on_the_wire_accepts_host_names() -> None:
    for sender in ("hv-1", "hv01.example.org", "rack_4:a@dc", "x" * 64):
        body = {"s": sender, "i": 1, "q": 1, "t": 1, "r": "", "v": []}
        assert Codec().decode(_unsigned(body, 3)).env.sender == sender
