"""The reconciler is pure: check its rules exhaustively, no kernel needed."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from vxflood.schema.validate import Address
from vxrd.model import FloodDiff
from vxrd.reconcile import desired_for, reconcile

A = ipaddress.ip_address
v4 = st.builds(ipaddress.IPv4Address, st.integers(0x0A000000, 0x0A0000FF))
v6 = st.builds(ipaddress.IPv6Address, st.integers(0x20010DB8 << 96, (0x20010DB8 << 96) + 255))
addresses: st.SearchStrategy[Address] = st.one_of(v4, v6)
address_sets = st.frozensets(addresses, max_size=40)


def test_reconcile_example() -> None:
    diff = reconcile({A("10.0.0.1"), A("10.0.0.2")}, {A("10.0.0.2"), A("10.0.0.3")})
    assert diff == FloodDiff(add=frozenset({A("10.0.0.1")}), remove=frozenset({A("10.0.0.3")}))
    assert not diff.empty


def test_reconcile_nothing_to_do() -> None:
    same = {A("10.0.0.1"), A("2001:db8::1")}
    assert reconcile(same, set(same)).empty
    assert reconcile(set(), set()) == FloodDiff()


@given(address_sets, address_sets)
def test_applying_the_diff_reaches_desired(
    desired: frozenset[Address], actual: frozenset[Address]
) -> None:
    diff = reconcile(desired, actual)
    assert (actual - diff.remove) | diff.add == desired
    assert not diff.add & diff.remove
    assert diff.add <= desired and not diff.add & actual  # only what is missing
    assert diff.remove <= actual and not diff.remove & desired  # only what is extra
    assert reconcile(desired, (actual - diff.remove) | diff.add).empty  # idempotent


@given(address_sets, address_sets)
def test_inputs_are_not_modified(desired: frozenset[Address], actual: frozenset[Address]) -> None:
    d, a = set(desired), set(actual)
    reconcile(d, a)
    assert d == desired and a == actual


def test_desired_for_drops_own_address() -> None:
    members = [A("10.0.0.1"), A("10.0.0.2"), A("10.0.0.3")]
    assert desired_for(members, A("10.0.0.2")) == {A("10.0.0.1"), A("10.0.0.3")}


def test_desired_for_keeps_only_own_family() -> None:
    members = [A("10.0.0.1"), A("2001:db8::1"), A("2001:db8::2")]
    assert desired_for(members, A("2001:db8::1")) == {A("2001:db8::2")}
    assert desired_for(members, A("10.0.0.9")) == {A("10.0.0.1")}


def test_desired_for_unknown_own_keeps_everyone() -> None:
    members = [A("10.0.0.1"), A("2001:db8::1"), A("10.0.0.1")]
    assert desired_for(members, None) == {A("10.0.0.1"), A("2001:db8::1")}


@given(st.lists(addresses, max_size=40), st.one_of(st.none(), addresses))
def test_desired_for_properties(members: list[Address], own: Address | None) -> None:
    result = desired_for(members, own)
    assert isinstance(result, frozenset)
    assert result <= set(members)
    assert own not in result
    if own is not None:
        assert all(m.version == own.version for m in result)
        assert result == {m for m in members if m != own and m.version == own.version}


@given(address_sets, st.one_of(st.none(), addresses))
def test_desired_for_a_member_set_filters_without_rebuilding(
    members: frozenset[Address], own: Address | None
) -> None:
    result = desired_for(members, own)
    assert result == desired_for(list(members), own)
    if own is None or (own not in members and all(m.version == own.version for m in members)):
        assert result is members  # nothing to drop: the set itself, no copy
