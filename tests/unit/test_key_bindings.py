"""Keys bound to identities: a host's key speaks only for its node ids and VTEPs."""

from __future__ import annotations

import ipaddress

import pytest

from vxflood.schema.keys import KeyFileError, Keyring
from vxflood.schema.wire import Ack, Codec, Envelope, Register, Rejected, VniEntry

A_SECRET = "a1" * 32
B_SECRET = "b2" * 32
SN_SECRET = "c3" * 32
# vxsnd's key file: its own key first (it signs pushes), then one bound key per host
SERVICE = Keyring.parse(
    f"sn {SN_SECRET}\n"
    f"hv-a {A_SECRET} nodes=hv-a vteps=10.0.0.1,fd00:a::/64\n"
    f"rack7 {B_SECRET} nodes=r7-* vteps=10.7.0.0/24  # a rack key\n"
    f"fleet {'d4' * 32}\n"
)
HOST_A = Keyring.parse(f"hv-a {A_SECRET}\nsn {SN_SECRET}")
RACK7 = Keyring.parse(f"rack7 {B_SECRET}\nsn {SN_SECRET}")
FLEET = Keyring.parse(f"fleet {'d4' * 32}")


def register(node: str, *locals_: str, hold: int = 90) -> Register:
    entries = tuple(VniEntry(100 + i, ipaddress.ip_address(a)) for i, a in enumerate(locals_))
    return Register(Envelope(node, 1, 1, 1), hold, "", 1, 0, 1, entries)


def decode(signer: Keyring, msg: Register | Ack) -> Register | Ack:
    got = Codec(SERVICE).decode(Codec(signer).encode(msg))
    assert isinstance(got, Register | Ack)
    return got


def refused(signer: Keyring, msg: Register | Ack) -> str:
    with pytest.raises(Rejected) as info:
        Codec(SERVICE).decode(Codec(signer).encode(msg))
    assert info.value.reason == "not-allowed"
    return info.value.detail


def test_a_bound_key_speaks_for_its_own_node_and_vteps() -> None:
    msg = register("hv-a", "10.0.0.1", "fd00:a::7")
    assert decode(HOST_A, msg) == msg
    assert decode(RACK7, register("r7-12", "10.7.0.12")) == register("r7-12", "10.7.0.12")


def test_a_bound_key_cannot_register_as_another_node() -> None:
    assert "hv-b" in refused(HOST_A, register("hv-b", "10.0.0.1"))
    assert "hv-a" in refused(RACK7, register("hv-a", "10.7.0.3"))


def test_a_bound_key_cannot_claim_another_vtep() -> None:
    assert "10.0.0.2" in refused(HOST_A, register("hv-a", "10.0.0.1", "10.0.0.2"))
    assert "10.8.0.1" in refused(RACK7, register("r7-1", "10.8.0.1"))


def test_a_bound_key_cannot_withdraw_or_ack_for_another_node() -> None:
    refused(HOST_A, register("hv-b", hold=0))
    refused(HOST_A, Ack(Envelope("hv-b", 1, 1, 1), "r", ((100, 3),)))
    assert decode(HOST_A, register("hv-a", hold=0)) == register("hv-a", hold=0)


def test_an_unbound_fleet_key_speaks_for_anyone_as_before() -> None:
    msg = register("anything", "192.0.2.9")
    assert decode(FLEET, msg) == msg


def test_an_ipv4_mapped_vtep_is_checked_as_ipv4() -> None:
    key = SERVICE.lookup(b"hv-a")
    assert key is not None and key.bound
    assert key.allows_vtep(ipaddress.ip_address("::ffff:10.0.0.1"))
    assert not key.allows_vtep(ipaddress.ip_address("::ffff:10.0.0.2"))


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("k " + "00" * 32 + " nodes=", "expected nodes="),
        ("k " + "00" * 32 + " color=blue", "unknown or repeated option 'color'"),
        ("k " + "00" * 32 + " nodes=a nodes=b", "unknown or repeated option 'nodes'"),
        ("k " + "00" * 32 + " nodes=bad/id", "is not a node id"),
        ("k " + "00" * 32 + " nodes=*", "is not a node id"),
        ("k " + "00" * 32 + " vteps=10.0.0.1/24", "host bits set"),
        ("k " + "00" * 32 + " vteps=nowhere", "vteps:"),
        ("k", "expected 'KEY_ID HEX_SECRET"),
    ],
)
def test_a_broken_binding_names_the_line(line: str, says: str) -> None:
    with pytest.raises(KeyFileError) as info:
        Keyring.parse("ok " + "11" * 32 + "\n" + line, "keys")
    assert "keys:2" in str(info.value)
    assert says in str(info.value)
