"""vxrd's default node id (vxrd.identity): the pure choice, and the state file."""

from __future__ import annotations

import asyncio
import logging
from ipaddress import ip_address
from pathlib import Path

import pytest

from vxflood.schema.validate import NODE_ID_MAX, check_node_id
from vxrd.config import Config, ServerAddr, load
from vxrd.identity import NODE_ID_FILE, choose, derived_id, host_prefix, resolve

A = ip_address("192.0.2.1")
B = ip_address("192.0.2.2")
V6 = ip_address("2001:db8::1")
TOKEN = bytes.fromhex("0badc0de")


def test_configured_id_wins_over_everything() -> None:
    c = choose("vm", "vm-11111111", [A], TOKEN, configured="hv01", can_store=False)
    assert (c.node_id, c.source) == ("hv01", "configured")


def test_a_stored_id_is_kept() -> None:
    c = choose("vm", "vm-11111111\n", [A], TOKEN)
    assert (c.node_id, c.source) == ("vm-11111111", "stored")


def test_without_a_stored_id_a_new_one_has_the_hostname_as_prefix() -> None:
    c = choose("vm", None, [A], TOKEN)
    assert (c.node_id, c.source) == ("vm-0badc0de", "new")


def test_an_invalid_stored_id_is_replaced() -> None:
    c = choose("vm", "not a node id!\n", [A], TOKEN)
    assert (c.node_id, c.source) == ("vm-0badc0de", "new")


def test_same_hostname_different_tokens_differ() -> None:
    one = choose("vm", None, [], bytes(4)).node_id
    two = choose("vm", None, [], bytes.fromhex("00000001")).node_id
    assert one != two and one.startswith("vm-") and two.startswith("vm-")


def test_unusable_state_dir_derives_from_hostname_and_addresses() -> None:
    c = choose("vm", None, [A, V6], TOKEN, can_store=False)
    assert c.source == "derived"
    assert c.node_id == derived_id("vm", [V6, A])  # order does not matter
    assert c.node_id.startswith("vm-") and len(c.node_id) == len("vm-") + 8
    # stable, and different for hosts that share the host name
    assert c.node_id == choose("vm", None, [A, V6], b"", can_store=False).node_id
    assert c.node_id != choose("vm", None, [B, V6], TOKEN, can_store=False).node_id
    assert c.node_id != choose("vm2", None, [A, V6], TOKEN, can_store=False).node_id


@pytest.mark.parametrize(
    ("hostname", "prefix"),
    [
        ("hv01.example.net", "hv01.example.net"),
        ("host with spaces", "host-with-spaces"),
        ("ünïcode", "n-code"),
        ("", "vxrd"),
        ("!!!", "vxrd"),
        ("x" * 200, "x" * (NODE_ID_MAX - 9)),
    ],
)
def test_any_hostname_gives_a_valid_id(hostname: str, prefix: str) -> None:
    assert host_prefix(hostname) == prefix
    for c in (
        choose(hostname, None, [A], TOKEN),
        choose(hostname, None, [A], TOKEN, can_store=False),
    ):
        assert check_node_id(c.node_id) == c.node_id
        assert c.node_id.startswith(prefix + "-")


def test_the_config_default_is_automatic_and_the_flag_overrides() -> None:
    assert load(["--server", "10.0.0.1"]).node_id is None
    assert load(["--server", "10.0.0.1", "--node-id", "hv01"]).node_id == "hv01"
    assert load(["--server", "10.0.0.1", "--state-dir", "/x"]).state_dir == Path("/x")


def config(state_dir: Path, **kw: object) -> Config:
    return Config(servers=(ServerAddr("192.0.2.10"),), state_dir=state_dir, **kw)  # type: ignore[arg-type]


def test_the_id_file_persists_across_two_starts(tmp_path: Path) -> None:
    state = tmp_path / "state" / "vxrd"  # created on the first start
    first = asyncio.run(resolve(config(state), hostname="vm"))
    assert first.node_id is not None and first.node_id.startswith("vm-")
    assert (state / NODE_ID_FILE).read_text() == f"{first.node_id}\n"
    assert sorted(p.name for p in state.iterdir()) == [NODE_ID_FILE]  # no temporary left
    second = asyncio.run(resolve(config(state), hostname="vm"))
    assert second.node_id == first.node_id
    other = asyncio.run(resolve(config(tmp_path / "other"), hostname="vm"))
    assert other.node_id != first.node_id  # another agent, same host name


def test_a_configured_id_writes_nothing(tmp_path: Path) -> None:
    out = asyncio.run(resolve(config(tmp_path / "s", node_id="hv01"), hostname="vm"))
    assert out.node_id == "hv01" and not (tmp_path / "s").exists()


def test_unwritable_state_dir_falls_back_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")  # a directory cannot be made under a file, even by root
    cfg = config(blocker / "vxrd", local=A)
    with caplog.at_level(logging.WARNING, logger="vxrd.identity"):
        out = asyncio.run(resolve(cfg, hostname="vm"))
    assert out.node_id is not None and out.node_id.startswith("vm-")
    again = asyncio.run(resolve(cfg, hostname="vm"))
    assert again.node_id == out.node_id  # stable without the file
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and out.node_id in warnings[0] and "192.0.2.1" in warnings[0]
    moved = asyncio.run(resolve(config(blocker / "vxrd", local=B), hostname="vm"))
    assert moved.node_id != out.node_id
