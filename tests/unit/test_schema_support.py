"""Keys, replay protection and validation: the checks every datagram passes."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from vxflood.schema.keys import KeyFileError, Keyring, load_key_file, readable_by_others
from vxflood.schema.replay import ReplayGuard
from vxflood.schema.validate import (
    NODE_ID_PATTERN,
    VTEP_TEXT_PATTERN,
    InvalidValue,
    check_node_id,
    check_vni,
    parse_vni,
    parse_vtep,
    vtep_from_packed,
)


def test_key_file_parsing(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# rotation\nnew " + "ab" * 32 + "  # signs\n\nold " + "cd" * 40 + "\n")
    os.chmod(path, 0o600)
    ring = Keyring.load(path)
    assert ring.signing.key_id == "new"
    assert ring.lookup(b"old") is not None
    assert "cd" not in repr(ring.signing)
    assert not readable_by_others(path)
    os.chmod(path, 0o644)
    assert readable_by_others(path)


def test_load_key_file_warns_when_others_can_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys"
    path.write_text("k1 " + "ab" * 32 + "\n")
    log = logging.getLogger("test.keys")
    os.chmod(path, 0o600)
    assert load_key_file(path, log).signing.key_id == "k1"
    assert "readable by group or others" not in caplog.text
    os.chmod(path, 0o640)
    load_key_file(path, log)
    assert "readable by group or others" in caplog.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no keys"),
        ("k1 " + "ab" * 31, "at least 32"),
        ("k1 zz" + "ab" * 32, "not hexadecimal"),
        ("k1", "expected 'KEY_ID HEX_SECRET \\[nodes="),
        ("bad/id " + "ab" * 32, "key id"),
        ("k1 " + "ab" * 32 + "\nk1 " + "cd" * 32, "duplicate"),
    ],
)
def test_broken_key_files_name_the_line(text: str, message: str) -> None:
    with pytest.raises(KeyFileError, match=message):
        Keyring.parse(text, "keys.txt")


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        Keyring.load(tmp_path / "absent")


def test_replay_guard_window() -> None:
    guard = ReplayGuard(window_seconds=30)
    now = 1000.0
    ms = int(now * 1000)
    assert guard.check("a", 1, 10, ms, now) is None
    assert guard.check("a", 1, 10, ms, now) == "replay"
    assert guard.check("a", 1, 12, ms, now) is None
    assert guard.check("a", 1, 11, ms, now) is None  # reordered, still fresh
    assert guard.check("a", 1, 11, ms, now) == "replay"
    assert guard.check("a", 2, 1, ms, now) is None  # new incarnation starts over
    assert guard.check("b", 1, 10, ms, now) is None  # senders are independent
    assert guard.check("a", 1, 12 + 64, ms, now) is None
    assert guard.check("a", 1, 12, ms, now) == "replay"  # fell out of the window
    assert guard.check("a", 1, 500, ms - 31_000, now) == "stale"
    assert guard.check("a", 1, 501, ms + 31_000, now) == "stale"


def test_replay_guard_remembers_what_an_earlier_process_accepted() -> None:
    """Seeded from the registry after a restart: nothing up to the stored sequence
    number of that incarnation passes again; what the sender sends next does."""
    now = 1_000_000.0
    ms = int(now * 1000)
    g = ReplayGuard(window_seconds=60)
    g.remember("hv-1", 7, 500, ms - 1000, now)
    for seq in (500, 499, 437, 1, 300):  # inside and far behind the window
        assert g.check("hv-1", 7, seq, ms - 2000, now) == "replay", seq
    assert g.check("hv-1", 7, 501, ms, now) is None
    assert g.check("hv-1", 8, 3, ms, now) is None  # a new incarnation starts afresh
    g.remember("hv-2", 1, 0, 0, now)  # nothing stored (an old registry row): no window
    assert g.check("hv-2", 1, 1, ms, now) is None
    g.remember("hv-1", 7, 10_000, ms, now)  # a window already live is not moved back
    assert g.check("hv-1", 7, 502, ms, now) is None


def test_replay_guard_forgets_old_and_bounds_memory() -> None:
    guard = ReplayGuard(window_seconds=10, max_senders=100)
    for i in range(1000):
        assert guard.check(f"s{i}", 1, 1, 0, 0.0) is None
    assert len(guard) <= 100
    assert guard.check("late", 1, 1, 20_000, 20.0) is None
    assert len(guard) == 1  # everything older than the window was forgotten


def test_replay_guard_far_jump_costs_constant_time_and_memory() -> None:
    """Finding 1 of the hostile-input issue: a jump of 2**36 took 40 s and 17.5 GB."""
    guard = ReplayGuard()
    now = 1000.0
    ms = int(now * 1000)
    assert guard.check("a", 1, 1, ms, now) is None
    started = time.perf_counter()
    tracemalloc.start()
    for jump in (2**33, 2**36, 2**62, 2**64 - 2):
        assert guard.check("a", 1, jump, ms, now) == "ahead"
    # after a long silence a large (but countable) jump is accepted, still in O(1)
    assert guard.check("a", 1, 2**31, ms + 3_000_000, now + 3000) is None
    assert guard.check("a", 1, 2**31 - 1, ms + 3_000_000, now + 3000) is None
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 64 * 1024
    assert time.perf_counter() - started < 1.0


def test_replay_guard_cannot_lock_its_sender_out() -> None:
    """Finding 2: one datagram far ahead made every later one of that node a replay."""
    guard = ReplayGuard(window_seconds=60)
    now, ms = 1000.0, 1_000_000
    assert guard.check("n", 7, 10, ms, now) is None
    # a forged datagram that jumps further than the sender could count: refused, no effect
    assert guard.check("n", 7, 10 + 2**30, ms, now) == "ahead"
    assert guard.check("n", 7, 11, ms + 1, now) is None
    # a forged jump within reach, stamped now: the sender's next datagram (stamped
    # later, lower sequence) proves the top was not its own, and the window restarts
    assert guard.check("n", 7, 11 + 500_000, ms + 2, now) is None
    assert guard.check("n", 7, 12, ms + 3, now + 0.001) is None
    assert guard.check("n", 7, 13, ms + 4, now + 0.002) is None
    # a true replay (stamped before the top) stays refused
    assert guard.check("n", 7, 12, ms + 3, now + 0.003) == "replay"
    assert guard.check("n", 7, 11, ms + 1, now + 0.003) == "replay"


def test_replay_guard_bounds_incarnations_per_sender() -> None:
    guard = ReplayGuard()
    for inc in range(1000):
        assert guard.check("n", inc, 1, 0, 0.0) is None
    assert len(guard) == 4


@pytest.mark.parametrize("text", ["0", "16777216", "-1", "abc", "1.5", ""])
def test_invalid_vnis(text: str) -> None:
    with pytest.raises(InvalidValue):
        parse_vni(text)


def test_valid_vnis_and_types() -> None:
    assert parse_vni("1") == 1
    assert parse_vni("16777215") == 16_777_215
    with pytest.raises(InvalidValue):
        check_vni(True)
    with pytest.raises(InvalidValue):
        check_vni("5")


@pytest.mark.parametrize(
    "text",
    [
        "224.0.0.1",
        "127.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "240.0.0.1",
        "::",
        "::1",
        "ff02::1",
        "fe80::1",
        "::ffff:198.18.0.1",
        "300.1.1.1",
        # issue 9 finding 7: these were accepted while fe80::/10 was refused
        "169.254.10.1",
        "0.1.2.3",
        "::1.2.3.4",
        "::192.0.2.1",
        # IPv6 outside global unicast and unique local
        "4000::1",
        "100::1",
        "fec0::1",
        "2001:db8::1%eth0",
        "host",
        "",
    ],
)
def test_non_unicast_vteps_refused(text: str) -> None:
    with pytest.raises(InvalidValue):
        parse_vtep(text)


@pytest.mark.parametrize("text", ["198.18.0.1", "10.0.0.7", "2001:db8::1", "fd00::7"])
def test_unicast_vteps_accepted(text: str) -> None:
    assert parse_vtep(text) == ipaddress.ip_address(text)
    assert vtep_from_packed(ipaddress.ip_address(text).packed) == ipaddress.ip_address(text)


@pytest.mark.parametrize(
    "text", ["100.64.0.1", "172.16.0.1", "192.168.1.1", "223.255.255.254", "169.253.0.1"]
)
def test_private_and_shared_v4_accepted(text: str) -> None:
    assert parse_vtep(text) == ipaddress.ip_address(text)


def test_one_vtep_rule_for_text_and_wire() -> None:
    """Every packed address is accepted on the wire exactly when its text is."""
    samples = [
        "169.254.1.1",
        "0.0.0.1",
        "::1.2.3.4",
        "::ffff:1.2.3.4",
        "fe80::1",
        "ff05::2",
        "2001:db8::1",
        "fd12::1",
        "192.0.2.1",
        "255.255.255.255",
    ]
    for text in samples:
        packed = ipaddress.ip_address(text).packed
        try:
            parse_vtep(text)
            text_ok = True
        except InvalidValue:
            text_ok = False
        try:
            vtep_from_packed(packed)
            wire_ok = True
        except InvalidValue:
            wire_ok = False
        assert text_ok == wire_ok, text


def _accepted(text: str) -> bool:
    try:
        parse_vtep(text)
    except InvalidValue:
        return False
    return True


_VTEP_RX = re.compile(VTEP_TEXT_PATTERN, re.ASCII)


@settings(max_examples=300, deadline=None, database=None)
@given(hst.from_regex(_VTEP_RX, fullmatch=True))
def test_every_text_the_openapi_pattern_allows_is_accepted(text: str) -> None:
    assert _accepted(text), text


_ADDR_INTS = hst.one_of(
    hst.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
    hst.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
    hst.sampled_from([0x2000, 0x3FFF, 0xFC00, 0xFDFF, 0xFE80, 0xFF00, 0, 0x1FFF, 0x4000]).flatmap(
        lambda top: hst.integers(0, 2**112 - 1).map(
            lambda low: ipaddress.IPv6Address(top << 112 | low)
        )
    ),
)


@settings(max_examples=1500, deadline=None, database=None)
@given(_ADDR_INTS)
def test_the_openapi_pattern_is_exactly_the_vtep_rule(address: ipaddress._BaseAddress) -> None:
    forms = {str(address)}
    if isinstance(address, ipaddress.IPv6Address):
        forms |= {address.exploded, address.exploded.upper()}
    for text in forms:
        assert (_VTEP_RX.fullmatch(text) is not None) == _accepted(text), text


@pytest.mark.parametrize(
    "text", ["hv-1", "hv01.example.org", "node_7", "a", "rack:4@dc-2", "x" * 64]
)
def test_node_ids_accepted(text: str) -> None:
    assert check_node_id(text) == text
    assert re.fullmatch(NODE_ID_PATTERN, text)


@pytest.mark.parametrize(
    "text",
    ["", "x" * 65, "hv 1", " hv", "hv\x00", "hv\n", "hv\x1b[31m", "é", "a/b", "a%b", "a\u200b"],
)
def test_node_ids_refused(text: str) -> None:
    rule = re.escape("must be 1..64 characters of A-Z a-z 0-9 . _ - : @")
    with pytest.raises(InvalidValue, match=rule):
        check_node_id(text)
    assert not re.fullmatch(NODE_ID_PATTERN, text)
