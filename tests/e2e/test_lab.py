"""The lab itself, proven with the kernel alone (no daemons).

Flood entries are written here by hand with ``bridge fdb append`` (test code only):
what vxrd will do through netlink. If these tests pass, an e2e failure with the
daemons is about the daemons, not the lab.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence

import pytest

from contrib.lab import Lab, LabError, new_prefix, overlay_network
from contrib.lab.probe import broadcast_reaches, broadcast_receipts, unicast_works
from contrib.lab.topology import Host, list_namespaces, underlay_mac
from tests.conftest import require_root
from tests.e2e.conftest import RunInNs, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.root]

MakeLab = Callable[..., Lab]
NEGATIVE = 0.5  # seconds to wait for a datagram that must not arrive


def flood(host: Host, vni: int, peers: Iterable[Host]) -> None:
    """Hand-written flood list: one all-zero entry per peer (what vxrd will program)."""
    lines = "".join(f"fdb append 00:00:00:00:00:00 dev vx{vni} dst {p.underlay}\n" for p in peers)
    if lines:
        host.exec(["bridge", "-batch", "-"], input=lines)


def mesh(lab: Lab, vni: int, hosts: Sequence[Host] | None = None) -> None:
    members = list(lab.hosts if hosts is None else hosts)
    for h in members:
        flood(h, vni, [p for p in members if p is not h])


def others(lab: Lab, h: Host) -> list[Host]:
    return [o for o in lab.hosts if o is not h]


# -- layout -------------------------------------------------------------------------------


def test_layout_names_addresses_devices(lab_factory: MakeLab) -> None:
    lab = lab_factory(hosts=3, vnis=[100, 200])
    assert list_namespaces(lab.prefix) == sorted(lab.namespaces())
    assert lab.service_ns == f"{lab.prefix}-ul"
    assert lab.service_addr == "198.18.0.254"
    assert [h.name for h in lab.hosts] == [f"{lab.prefix}-h{i}" for i in (1, 2, 3)]
    assert all(len(n) <= 15 for n in lab.namespaces())
    h1 = lab.hosts[0]
    assert h1.underlay == "198.18.0.1"
    assert h1.overlay(100) == "100.64.100.1"
    assert h1.overlay(200) == "100.64.200.1"
    assert h1.vnis == {100, 200}
    for h in lab.hosts:
        for vni in (100, 200):
            link = lab.link_state(h, f"vx{vni}")
            assert link is not None
            data = link["linkinfo"]["info_data"]
            assert link["linkinfo"]["info_kind"] == "vxlan"
            assert (data["id"], data["local"], data["port"]) == (vni, h.underlay, 4789)
            assert data["learning"] is False
            assert "UP" in link["flags"]
            assert link["master"] == f"br{vni}"
            assert lab.fdb_flood(h, vni) == set()
        neigh = json.loads(h.exec(["ip", "-j", "neigh", "show", "dev", "ul0"]).stdout)
        assert {n["dst"]: n["lladdr"] for n in neigh} == {
            o.underlay: underlay_mac(o.index) for o in [lab.service, *others(lab, h)]
        }


def test_service_namespace_reachable_from_every_host(lab_factory: MakeLab) -> None:
    """vxsnd will listen in the underlay namespace: every host must reach it over UDP."""
    lab = lab_factory(hosts=3)
    with lab.service.socket() as server:
        server.bind((lab.service_addr, 0))
        server.settimeout(2.0)
        port = server.getsockname()[1]
        for h in lab.hosts:
            with h.socket() as client:
                client.bind((h.underlay, 0))
                client.sendto(h.name.encode(), (lab.service_addr, port))
                data, addr = server.recvfrom(100)
                assert (data.decode(), addr[0]) == (h.name, h.underlay)


def test_overlay_subnets_are_distinct_per_vni() -> None:
    assert str(overlay_network(100)) == "100.64.100.0/24"
    assert str(overlay_network(1000)) == "100.67.232.0/24"
    assert overlay_network(100) != overlay_network(356)
    with pytest.raises(ValueError, match="share overlay subnet"):
        Lab("vxtcheck", 1, [100, 100 + (1 << 14)])


# -- flooding -----------------------------------------------------------------------------


def test_flood_entries_carry_broadcast_to_every_peer(lab_factory: MakeLab) -> None:
    lab = lab_factory(hosts=3, vnis=[100])
    mesh(lab, 100)
    for h in lab.hosts:
        assert lab.fdb_flood(h, 100) == {o.underlay for o in others(lab, h)}
    for sender in lab.hosts:
        assert broadcast_reaches(lab, 100, sender, others(lab, sender)) == set(others(lab, sender))


def test_without_flood_entries_broadcast_reaches_nobody(lab_factory: MakeLab) -> None:
    lab = lab_factory(hosts=3, vnis=[100])
    for sender in lab.hosts:
        assert broadcast_reaches(lab, 100, sender, others(lab, sender), NEGATIVE) == set()


def test_flooding_follows_the_list_exactly(lab_factory: MakeLab) -> None:
    """Head-end replication goes to the listed VTEPs only, one copy each."""
    lab = lab_factory(hosts=3, vnis=[100])
    h1, h2, h3 = lab.hosts
    flood(h1, 100, [h2])
    assert broadcast_reaches(lab, 100, h1, [h2, h3], NEGATIVE) == {h2}
    h1.exec(["bridge", "fdb", "del", "00:00:00:00:00:00", "dev", "vx100", "dst", h2.underlay])
    assert lab.fdb_flood(h1, 100) == set()
    assert broadcast_reaches(lab, 100, h1, [h2, h3], NEGATIVE) == set()


def test_two_vnis_stay_apart(lab_factory: MakeLab) -> None:
    lab = lab_factory(hosts=3, vnis=[100, 200])
    h1, h2, h3 = lab.hosts
    mesh(lab, 100)
    mesh(lab, 200)
    for vni in (100, 200):
        got = broadcast_receipts(lab, vni, h1, [h2, h3], timeout=NEGATIVE)
        assert got == {h2: {f"br{vni}"}, h3: {f"br{vni}"}}, f"VNI {vni}"
    # A host without VNI 100 drops VNI 100 frames even when h1 floods them to it: the
    # VNI in the VXLAN header, not the underlay, keeps the segments apart.
    h4 = lab.add_host(vnis=[200])
    flood(h1, 100, [h4])
    flood(h1, 200, [h4])
    assert broadcast_receipts(lab, 100, h1, [h4], timeout=NEGATIVE) == {h4: set()}
    assert broadcast_receipts(lab, 200, h1, [h4], timeout=NEGATIVE) == {h4: {"br200"}}


def test_ipv6_underlay(lab_factory: MakeLab) -> None:
    lab = lab_factory(hosts=3, vnis=[100, 200], ipv6_underlay=True)
    h1, h2, h3 = lab.hosts
    assert (lab.service_addr, h1.underlay, h3.underlay) == (
        "fd00:198:18::fe",
        "fd00:198:18::1",
        "fd00:198:18::3",
    )
    assert lab.link_state(h1, "vx100")["linkinfo"]["info_data"]["local6"] == h1.underlay  # type: ignore[index]
    mesh(lab, 100)
    assert lab.fdb_flood(h1, 100) == {h2.underlay, h3.underlay}
    for sender in lab.hosts:
        got = broadcast_receipts(lab, 100, sender, others(lab, sender), timeout=NEGATIVE)
        assert got == {o: {"br100"} for o in others(lab, sender)}
    assert broadcast_reaches(lab, 200, h1, [h2, h3], NEGATIVE) == set()
    assert unicast_works(lab, 100, h1, h3)


# -- unicast ------------------------------------------------------------------------------


def test_unicast_after_arp(lab_factory: MakeLab) -> None:
    lab = lab_factory(hosts=3, vnis=[100])
    h1, h2, _ = lab.hosts
    assert not unicast_works(lab, 100, h1, h2, timeout=NEGATIVE)  # ARP cannot resolve
    mesh(lab, 100)
    assert unicast_works(lab, 100, h1, h2)
    neigh = json.loads(h1.exec(["ip", "-j", "neigh", "show", "dev", "br100"]).stdout)
    assert h2.overlay(100) in {n["dst"] for n in neigh if "lladdr" in n}


# -- changes to a running lab -------------------------------------------------------------


def test_add_and_remove_host(lab_factory: MakeLab) -> None:
    lab = lab_factory(hosts=2, vnis=[100])
    h3 = lab.add_host()
    assert (h3.index, h3.underlay, h3.vnis) == (3, "198.18.0.3", frozenset({100}))
    mesh(lab, 100)
    assert broadcast_reaches(lab, 100, h3, lab.hosts[:2]) == set(lab.hosts[:2])
    lab.remove_host(h3)
    assert h3 not in lab.hosts
    assert h3.name not in list_namespaces(lab.prefix)
    assert lab.service.exec(["ip", "link", "show", "h3"], check=False).returncode != 0
    h4 = lab.add_host()
    assert h4.index == 4  # indexes are never reused within a lab


def test_add_del_vni_and_admin_state(lab_factory: MakeLab) -> None:
    lab = lab_factory(hosts=2, vnis=[100])
    h1, h2 = lab.hosts
    lab.add_vni(h1, 300)
    lab.add_vni(h2, 300)
    assert h1.vnis == {100, 300}
    mesh(lab, 300)
    assert broadcast_reaches(lab, 300, h1, [h2]) == {h2}
    lab.set_vni_up(h2, 300, False)
    link = lab.link_state(h2, "vx300")
    assert link is not None and "UP" not in link["flags"]
    assert broadcast_reaches(lab, 300, h1, [h2], NEGATIVE) == set()
    lab.set_vni_up(h2, 300, True)
    assert broadcast_reaches(lab, 300, h1, [h2]) == {h2}
    lab.del_vni(h2, 300)
    assert lab.link_state(h2, "vx300") is None
    assert lab.link_state(h2, "br300") is None
    assert h2.vnis == {100}
    lab.del_vni(h2, 300)  # tolerant
    with pytest.raises(LabError):
        lab.fdb_flood(h2, 300)


# -- teardown -----------------------------------------------------------------------------


def test_destroy_after_exception_leaves_nothing() -> None:
    require_root()
    prefix = new_prefix()
    sleeper = None
    with pytest.raises(RuntimeError, match="boom"), Lab(prefix, 2, [100]) as lab:
        assert len(list_namespaces(prefix)) == 3
        sleeper = lab.hosts[0].popen(["sleep", "60"])
        raise RuntimeError("boom")
    assert list_namespaces(prefix) == []
    assert sleeper is not None
    assert sleeper.wait(timeout=5) == -signal.SIGKILL  # processes inside are killed too
    lab.destroy()  # tolerant of what is already gone


def test_build_failure_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    require_root()
    prefix = new_prefix()
    lab = Lab(prefix, 3, [100])
    monkeypatch.setattr(lab, "_vni_lines", lambda h, vni: ["link add bogus type nosuchkind"])
    with pytest.raises(LabError, match="nosuchkind"):
        lab.build()
    assert list_namespaces(prefix) == []


def test_build_refuses_a_prefix_in_use(lab_factory: MakeLab) -> None:
    lab = lab_factory(hosts=1)
    with pytest.raises(LabError, match="exist"):
        Lab(lab.prefix, 1, [100]).build()
    assert len(list_namespaces(lab.prefix)) == 2  # the refused build touched nothing


# -- scale --------------------------------------------------------------------------------


def test_thirty_hosts_build_fast_and_flood(lab_factory: MakeLab) -> None:
    start = time.monotonic()
    lab = lab_factory(hosts=30, vnis=[100, 200])
    built = time.monotonic() - start
    # A cold build takes ~0.2 s; right after other labs were destroyed the kernel's
    # asynchronous namespace cleanup can slow it to ~2 s.
    assert built < 10.0, f"30-host lab took {built:.2f}s"
    h1 = lab.hosts[0]
    flood(h1, 100, others(lab, h1))
    start = time.monotonic()
    assert broadcast_reaches(lab, 100, h1, others(lab, h1)) == set(others(lab, h1))
    assert time.monotonic() - start < 1.0


# -- the conftest helpers the daemon tests rely on ------------------------------------------


def test_run_in_ns_runs_inside_the_namespace(lab_factory: MakeLab, run_in_ns: RunInNs) -> None:
    lab = lab_factory(hosts=1)
    script = "import os, sys, time; print('up', os.readlink('/proc/self/ns/net')); time.sleep(60)"
    proc = run_in_ns(lab.service_ns, [sys.executable, "-c", script], name="sleeper")
    assert proc.name == "sleeper" and proc.log_path.name == "sleeper.log"
    wait_until(lambda: "up net:[" in proc.log(), timeout=5, what="sleeper started")
    ns_inode = os.stat(f"/run/netns/{lab.service_ns}").st_ino
    assert os.stat(f"/proc/{proc.pid}/ns/net").st_ino == ns_inode  # pid is the program
    assert proc.alive
    proc.kill(signal.SIGTERM)
    assert proc.wait(timeout=5) == -signal.SIGTERM
    assert not proc.alive


def test_wait_until_returns_the_value_or_says_what_it_saw() -> None:
    values = iter(range(100))
    assert wait_until(lambda: next(values) >= 3, timeout=2, what="count") is True
    counter = iter(range(1000))
    assert wait_until(lambda: next(counter), timeout=2, expect=5) == 5
    with pytest.raises(AssertionError, match=r"waiting for the flood list == \{'x'\}.*set\(\)"):
        wait_until(set, timeout=0.2, what="the flood list", expect={"x"})
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        wait_until(lambda: 1 / 0, timeout=0.1, what="no error")


def test_probe_refuses_foreign_hosts(lab_factory: MakeLab) -> None:
    a = lab_factory(hosts=1)
    b = lab_factory(hosts=1)
    with pytest.raises(LabError, match="not a host"):
        broadcast_reaches(a, 100, a.hosts[0], b.hosts)


def test_new_prefixes_fit_the_name_rule_for_every_base_length() -> None:
    for base in ("vxt", "vxcs", "vxbase"):  # the bench bases included: "vxcs" + 4 pid digits
        prefix = new_prefix(base)  # was 11 chars and refused
        assert prefix.startswith(base) and len(prefix) <= 10
    with pytest.raises(ValueError, match="longer than 6"):
        new_prefix("toolong")
