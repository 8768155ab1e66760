"""vxsnd and vxrd as real processes in the namespace lab, on the real kernel.

vxsnd runs in the lab's underlay namespace with a SQLite registry in tmp_path (two
vxsnd share it in the tests of two service nodes); one vxrd runs in every host
namespace (``--node-id`` = the namespace name), enrolled on every vxsnd. The flood
lists are read back from the kernel (``bridge -j fdb show``), the data plane is proven
with the lab's probes, and "nothing changed" claims are checked by an independent
observer: ``bridge monitor fdb`` in each host, captured to a file.

Every wait polls under a deadline (``wait_until``); the only timed waits are
observation windows in which something must *not* happen.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from contrib.lab import Lab
from contrib.lab.probe import broadcast_reaches, broadcast_receipts, unicast_works
from contrib.lab.topology import VXLAN_PORT, Host
from tests.e2e.conftest import Proc, RunInNs, wait_until
from vxflood.schema.wire import Codec, Envelope, Register, VniEntry

pytestmark = [pytest.mark.e2e, pytest.mark.root]

MakeLab = Callable[..., Lab]

PORT = 10001  # of the first vxsnd; the next ones listen on the ports after it
API_PORT = 10080
ZERO = "00:00:00:00:00:00"
START = 20.0  # seconds: daemons started on a busy 2-core box until the lists are complete
CONVERGE = 3.0  # seconds: a change in a running system until every host has it
NEGATIVE = 0.5  # seconds to wait for a datagram that must not arrive
SHORT_HOLD = 3  # --hold-time where ageing matters: a refresh every second
LONG_HOLD = 60  # elsewhere: nothing may expire on a slow machine by accident


# -- daemons ------------------------------------------------------------------------------


class Overlay:
    """``servers`` vxsnd in the lab's service namespace, all on one registry (an SQLite
    file in WAL mode), and a vxrd per host listing every one of them: real processes.

    Server ``i`` listens on the service address, port ``PORT + i``; its REST API on
    the namespace's loopback, port ``API_PORT + i``.
    """

    def __init__(
        self,
        lab: Lab,
        run_in_ns: RunInNs,
        tmp_path: Path,
        hold_time: int = LONG_HOLD,
        vxsnd_args: Sequence[str] = (),
        servers: int = 1,
    ) -> None:
        self.lab = lab
        self.run_in_ns = run_in_ns
        self.tmp_path = tmp_path
        self.hold_time = hold_time
        self.vxsnd_args = list(vxsnd_args)
        self.db = tmp_path / "registry.db"
        self.db_url = f"sqlite:///{self.db}"  # tests/e2e/test_pg_ha.py: PostgreSQL instead
        self.vxsnds: list[Proc | None] = [None] * servers  # None: not started, or killed
        self.vxrd: dict[Host, Proc] = {}

    def endpoint(self, server: int = 0) -> str:
        addr = self.lab.service_addr
        port = PORT + server
        return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"

    def start_vxsnd(self, server: int = 0) -> Proc:
        argv = [
            sys.executable,
            *("-m", "vxsnd"),
            *("--listen", self.endpoint(server)),
            *("--db", self.db_url),
            *("--server-id", f"{self.lab.prefix}-sn{server + 1}"),
            *("--api", f"127.0.0.1:{API_PORT + server}"),
            *self.vxsnd_args,
        ]
        proc = self.run_in_ns(self.lab.service_ns, argv, name=f"vxsnd-sn{server + 1}")
        self.vxsnds[server] = proc
        wait_until(
            lambda: self._vxsnd_listening(proc, PORT + server),
            timeout=START,
            what=f"vxsnd-sn{server + 1} listening on UDP",
        )
        return proc

    def _vxsnd_listening(self, proc: Proc, port: int) -> bool:
        if not proc.alive:
            raise AssertionError(f"{proc.name} exited {proc.returncode}:\n{proc.log()}")
        out = self.lab.service.exec(["ss", "-Hlun", "sport", f"= :{port}"]).stdout
        return bool(out.strip())

    def kill_vxsnd(self, server: int = 0) -> None:
        """SIGKILL a service node: no goodbye to anyone, nothing flushed."""
        proc = self.vxsnds[server]
        assert proc is not None, f"vxsnd-sn{server + 1} is not running"
        proc.kill(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        self.vxsnds[server] = None

    def socket_path(self, host: Host) -> Path:
        return self.tmp_path / f"{host.name}.sock"

    def identity_args(self, host: Host) -> list[str]:
        """How vxrd on ``host`` gets its node id (tests/e2e/test_identity.py: none given)."""
        return ["--node-id", host.name]

    def start_vxrd(self, host: Host, wait: bool = True) -> Proc:
        argv = [
            sys.executable,
            *("-m", "vxrd"),
            *(arg for i in range(len(self.vxsnds)) for arg in ("--server", self.endpoint(i))),
            *self.identity_args(host),
            *("--status-socket", str(self.socket_path(host))),
            *("--hold-time", str(self.hold_time)),
        ]
        proc = self.run_in_ns(host.name, argv, name=f"vxrd-{host.name}")
        self.vxrd[host] = proc
        if wait:
            self.wait_answers(host)
        return proc

    def _answers(self, host: Host) -> bool:
        proc = self.vxrd[host]
        if not proc.alive:
            raise AssertionError(f"vxrd on {host.name} exited {proc.returncode}:\n{proc.log()}")
        return self.ctl(host, "status", check=False).returncode == 0

    def start(self, hosts: Iterable[Host] | None = None) -> None:
        for server in range(len(self.vxsnds)):
            self.start_vxsnd(server)
        hosts = list(self.lab.hosts if hosts is None else hosts)
        for h in hosts:
            self.start_vxrd(h, wait=False)
        for h in hosts:
            self.wait_answers(h)

    def wait_answers(self, host: Host) -> None:
        wait_until(lambda: self._answers(host), timeout=START, what=f"vxrd on {host.name}")

    def ctl(self, host: Host, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``vxrdctl --socket <host's socket> --json ARGS`` from the root namespace."""
        argv = [
            sys.executable,
            *("-m", "vxrd.ctl"),
            *("--socket", str(self.socket_path(host))),
            "--json",
            *args,
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"vxrdctl {' '.join(args)} on {host.name}: {proc.stderr}")
        return proc

    def status(self, host: Host) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.ctl(host, "status").stdout)
        return data

    def peers(self, host: Host, vni: int) -> dict[str, Any]:
        """``vxrdctl peers VNI``: the host's view of one VNI."""
        views: list[dict[str, Any]] = json.loads(self.ctl(host, "peers", str(vni)).stdout)
        assert [v["vni"] for v in views] == [vni], views
        return views[0]

    def heard(self, host: Host, vni: int) -> list[list[str]]:
        """The members of ``vni`` as each server that answered told ``host``, in the
        order of its ``--server`` flags."""
        return [s["members"] for s in self.peers(host, vni)["servers"].values()]

    def mesh_kept(self, hosts: Sequence[Host], vni: int) -> Callable[[], None]:
        """For ``observe``: every daemon that should run runs, and ``hosts`` keep the
        full mesh of ``vni`` they have now."""
        mesh = full_mesh(vni, hosts)

        def still() -> None:
            for proc in (*self.vxsnds, *self.vxrd.values()):
                assert proc is None or proc.alive, f"{proc} died"
            assert flood_lists(self.lab, vni, hosts) == mesh

        return still


# -- expected state -----------------------------------------------------------------------


def others(hosts: Iterable[Host], h: Host) -> list[Host]:
    return [o for o in hosts if o is not h]


def flood_lists(lab: Lab, vni: int, hosts: Sequence[Host]) -> dict[str, set[str]]:
    return {h.name: lab.fdb_flood(h, vni) for h in hosts}


def full_mesh(vni: int, hosts: Sequence[Host]) -> dict[str, set[str]]:
    """Every member lists every other member's underlay address, nothing else."""
    return {h.name: {o.underlay for o in others(hosts, h)} for h in hosts}


def wait_mesh(lab: Lab, vni: int, hosts: Sequence[Host], timeout: float = START) -> None:
    wait_until(
        lambda: flood_lists(lab, vni, hosts),
        timeout=timeout,
        what=f"a full mesh of VNI {vni} on {[h.name for h in hosts]}",
        expect=full_mesh(vni, hosts),
    )


def assert_floods(lab: Lab, vni: int, hosts: Sequence[Host]) -> None:
    """A broadcast sent on each host arrives on every other host, in ``vni``."""
    for sender in hosts:
        want = set(others(hosts, sender))
        got = broadcast_reaches(lab, vni, sender, list(want), timeout=2.0)
        assert got == want, f"VNI {vni}: broadcast from {sender.name} reached {sorted_names(got)}"


def sorted_names(hosts: Iterable[Host]) -> list[str]:
    return sorted(h.name for h in hosts)


# -- the independent observer -------------------------------------------------------------

SENTINEL_MAC = "02:76:78:6c:ff:fe"  # a bridge (master) entry: never one vxrd manages


class FdbWatch:
    """``bridge monitor fdb`` in each host, appending to a file per host.

    ``mark()`` adds and deletes a sentinel bridge entry on every host and waits until
    each monitor has printed it: afterwards the monitors are known to be live, and every
    event before the mark is in the files. ``zero_events()`` returns the all-zero (flood)
    entry events seen between two marks.
    """

    def __init__(self, run_in_ns: RunInNs, hosts: Sequence[Host], vni: int) -> None:
        self.hosts = list(hosts)
        self.vni = vni
        self.procs = {
            h: run_in_ns(h.name, ["bridge", "monitor", "fdb"], name=f"fdbmon-{h.name}")
            for h in self.hosts
        }
        self.marks = 0
        self._end = f"Deleted {SENTINEL_MAC} "
        self.begin: dict[Host, int] = {}
        self.mark()

    def _sentinel(self, host: Host, verb: str) -> None:
        dev = host.vxlan_dev(self.vni)
        host.exec(["bridge", "fdb", verb, SENTINEL_MAC, "dev", dev, "master", "static"])

    def mark(self) -> dict[Host, int]:
        """Put a mark into every monitor's output; return each file's line count at it."""
        self.marks += 1
        for h in self.hosts:
            self._sentinel(h, "add")
            self._sentinel(h, "del")

        def seen() -> dict[Host, int]:
            at: dict[Host, int] = {}
            for h, proc in self.procs.items():
                lines = proc.log().splitlines()
                ends = [i for i, line in enumerate(lines) if line.startswith(self._end)]
                if len(ends) < self.marks:
                    return {}
                at[h] = ends[self.marks - 1] + 1
            return at

        return wait_until(seen, timeout=5.0, what="fdb monitors printing the mark")

    def start(self) -> None:
        self.begin = self.mark()

    def zero_events(self) -> dict[str, list[str]]:
        """Flood-entry events since start(), up to a fresh mark, per host with any."""
        end = self.mark()
        out = {}
        for h, proc in self.procs.items():
            lines = proc.log().splitlines()[self.begin[h] : end[h]]
            hits = [line for line in lines if ZERO in line]
            if hits:
                out[h.name] = hits
        return out


ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def vxlan_arrivals(host: Host, action: Callable[[], object], settle: float = 0.2) -> list[str]:
    """Run ``action`` while capturing on ``host``'s underlay port (AF_PACKET on ul0);
    return the source address of each VXLAN datagram (UDP to 4789) that arrived there.

    Seen below the vxlan driver, so it works whether or not the host has a vxlan device.
    """
    sock = host.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sources: list[str] = []
    try:
        sock.bind(("ul0", ETH_P_ALL))
        action()
        end = time.monotonic() + settle
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                continue
            packet, addr = sock.recvfrom(65535)
            if addr[2] == PACKET_OUTGOING:
                continue
            src = _vxlan_source(packet, addr[1])
            if src is not None:
                sources.append(src)
    finally:
        sock.close()
    return sources


def _vxlan_source(packet: bytes, ethertype: int) -> str | None:
    if ethertype == 0x0800 and len(packet) >= 20:
        ihl = (packet[0] & 0x0F) * 4
        proto, src, udp = packet[9], packet[12:16], packet[ihl:]
        family = socket.AF_INET
    elif ethertype == 0x86DD and len(packet) >= 40:
        proto, src, udp = packet[6], packet[8:24], packet[40:]  # no extension headers here
        family = socket.AF_INET6
    else:
        return None
    if proto != socket.IPPROTO_UDP or len(udp) < 8:
        return None
    if int.from_bytes(udp[2:4], "big") != VXLAN_PORT:
        return None
    return socket.inet_ntop(family, src)


def observe(seconds: float, still: Callable[[], None]) -> None:
    """An observation window: ``seconds`` long, checking ``still()`` as it goes (a window
    in which something must not happen, not a wait for something to happen)."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        still()
        time.sleep(min(0.1, left))
    still()


# -- the tests ----------------------------------------------------------------------------


def test_broadcast_reaches_every_other_host_and_unicast_works(
    lab_factory: MakeLab, run_in_ns: RunInNs, tmp_path: Path
) -> None:
    lab = lab_factory(hosts=4, vnis=[100])
    ov = Overlay(lab, run_in_ns, tmp_path)
    ov.start()
    wait_mesh(lab, 100, lab.hosts)
    assert_floods(lab, 100, lab.hosts)
    h1, h2, h3, h4 = lab.hosts
    for a, b in ((h1, h2), (h3, h4), (h4, h1)):
        assert unicast_works(lab, 100, a, b), f"no echo reply from {b.name} to {a.name}"
    # vxrd's own view agrees with the kernel
    peers = ov.peers(h1, 100)
    assert peers["members"] == sorted(h.underlay for h in lab.hosts)
    assert peers["devices"][0]["flood"] == sorted(h.underlay for h in (h2, h3, h4))


def test_join_and_leave_reach_every_host(
    lab_factory: MakeLab, run_in_ns: RunInNs, tmp_path: Path
) -> None:
    lab = lab_factory(hosts=3, vnis=[100])
    h1, h2, h3 = lab.hosts
    h4 = lab.add_host(vnis=[])  # a host with vxrd running but no vxlan device yet
    ov = Overlay(lab, run_in_ns, tmp_path)
    ov.start()
    wait_mesh(lab, 100, [h1, h2, h3])

    # join: a new vxlan device comes up on a host whose vxrd already runs
    started = time.monotonic()
    lab.add_vni(h4, 100)
    wait_mesh(lab, 100, [h1, h2, h3, h4], timeout=CONVERGE)
    print(f"device join converged on 4 hosts in {time.monotonic() - started:.3f}s")
    assert_floods(lab, 100, [h1, h2, h3, h4])  # broadcasts now arrive at (and from) h4
    assert vxlan_arrivals(h4, lambda: broadcast_reaches(lab, 100, h1, [h2, h3])) != []

    # join: a new host whose vxlan device exists before its vxrd starts
    h5 = lab.add_host()
    ov.start_vxrd(h5)
    wait_mesh(lab, 100, [h1, h2, h3, h4, h5], timeout=CONVERGE)
    assert_floods(lab, 100, [h1, h2, h3, h4, h5])

    # leave: h4's device is deleted
    started = time.monotonic()
    lab.del_vni(h4, 100)
    wait_mesh(lab, 100, [h1, h2, h3, h5], timeout=CONVERGE)
    print(f"device leave converged on 4 hosts in {time.monotonic() - started:.3f}s")
    for sender in (h1, h2, h5):

        def send(sender: Host = sender) -> None:
            broadcast_receipts(lab, 100, sender, others([h1, h2, h3, h5], sender), timeout=NEGATIVE)

        arrived = vxlan_arrivals(h4, send)
        assert arrived == [], f"{sender.name} still floods to the leaver h4: {arrived}"
    assert_floods(lab, 100, [h1, h2, h3, h5])
    assert ov.vxrd[h4].alive


def _vxsnd_kill_restart(
    lab: Lab, run_in_ns: RunInNs, tmp_path: Path, outage: float, vxsnd_args: Sequence[str] = ()
) -> None:
    """SIGKILL vxsnd, keep it dead for ``outage`` seconds, start it again on the same
    registry; ``bridge monitor fdb`` on every host must see no flood entry change, and the
    broadcasts must reach every host throughout."""
    h1, h2, h3 = lab.hosts
    ov = Overlay(lab, run_in_ns, tmp_path, hold_time=SHORT_HOLD, vxsnd_args=vxsnd_args)
    ov.start()
    wait_mesh(lab, 100, lab.hosts)
    watch = FdbWatch(run_in_ns, lab.hosts, 100)
    watch.start()

    ov.kill_vxsnd()
    assert_floods(lab, 100, lab.hosts)  # fail-static: the data plane does not notice
    lists_kept = ov.mesh_kept(lab.hosts, 100)
    if outage:  # the agents refresh into the void and keep their lists
        observe(outage, lists_kept)
        assert_floods(lab, 100, lab.hosts)

    # Restart on the same registry; watch every host's fdb over three refreshes.
    ov.start_vxsnd()
    observe(SHORT_HOLD, lists_kept)
    assert watch.zero_events() == {}, "flood entries removed or re-added around the restart"
    assert_floods(lab, 100, lab.hosts)

    # ... and the restarted vxsnd is in charge: a withdrawal and a return get through.
    lab.set_vni_up(h3, 100, False)
    wait_until(
        lambda: flood_lists(lab, 100, [h1, h2]),
        timeout=CONVERGE,
        what="h3 withdrawn after the vxsnd restart",
        expect={h1.name: {h2.underlay}, h2.name: {h1.underlay}},
    )
    lab.set_vni_up(h3, 100, True)
    wait_mesh(lab, 100, lab.hosts, timeout=CONVERGE)


def test_vxsnd_sigkill_is_fail_static_and_its_restart_is_hitless(
    lab_factory: MakeLab, run_in_ns: RunInNs, tmp_path: Path
) -> None:
    lab = lab_factory(hosts=3, vnis=[100])
    _vxsnd_kill_restart(lab, run_in_ns, tmp_path, outage=0.0)


def test_vxsnd_restart_after_an_outage_longer_than_the_hold_time_is_hitless(
    lab_factory: MakeLab, run_in_ns: RunInNs, tmp_path: Path
) -> None:
    """The registry's records all passed their expiry while vxsnd was down, through no
    fault of the agents (they kept refreshing into the void). A restarted vxsnd must not
    expire them before they had a refresh interval to report in. The sweep runs every
    0.1 s here (default 1 s), the same ratio to the refresh interval as a 3 s sweep to
    the default 30 s refresh: otherwise whether a node is swept is a race."""
    lab = lab_factory(hosts=3, vnis=[100])
    _vxsnd_kill_restart(
        lab, run_in_ns, tmp_path, outage=SHORT_HOLD + 1.0, vxsnd_args=["--sweep-interval", "0.1"]
    )


def wait_heard(ov: Overlay, hosts: Sequence[Host], vni: int, timeout: float = CONVERGE) -> None:
    """Every server has told each of ``hosts`` that the members of ``vni`` are ``hosts``."""
    members = sorted(h.underlay for h in hosts)
    wait_until(
        lambda: {h.name: ov.heard(h, vni) for h in hosts},
        timeout=timeout,
        what=f"every server's membership of VNI {vni} on {sorted_names(hosts)}",
        expect={h.name: [members] * len(ov.vxsnds) for h in hosts},
    )


def two_service_nodes(lab: Lab, run_in_ns: RunInNs, tmp_path: Path) -> Overlay:
    """Two vxsnd on one registry (the same SQLite file, WAL) and every vxrd enrolled on
    both (``--server A --server B``), programming the union of what they say. Returns
    once the hosts with VNI 100 have their full mesh, heard from both servers."""
    ov = Overlay(lab, run_in_ns, tmp_path, hold_time=SHORT_HOLD, servers=2)
    ov.start()
    members = [h for h in lab.hosts if 100 in h.vnis]
    wait_mesh(lab, 100, members)
    wait_heard(ov, members, 100)
    assert_floods(lab, 100, members)
    return ov


def test_two_service_nodes_one_down_a_join_gets_through_and_its_return_is_hitless(
    lab_factory: MakeLab, run_in_ns: RunInNs, tmp_path: Path
) -> None:
    """Availability: SIGKILL one of two service nodes; forwarding goes on, a join reaches
    every host through the other alone; the killed one restarted takes its place again
    without a flood entry removed or re-added."""
    lab = lab_factory(hosts=3, vnis=[100])
    h1, h2, h3 = lab.hosts
    h4 = lab.add_host(vnis=[])  # vxrd runs; its vxlan device comes up while A is down
    ov = two_service_nodes(lab, run_in_ns, tmp_path)

    # A dies: for a hold time and a sweep, B alone keeps the registrations alive
    ov.kill_vxsnd(0)
    assert_floods(lab, 100, [h1, h2, h3])
    observe(SHORT_HOLD + 1.0, ov.mesh_kept([h1, h2, h3], 100))

    # with A still down, a join reaches every host through B
    started = time.monotonic()
    lab.add_vni(h4, 100)
    wait_mesh(lab, 100, lab.hosts, timeout=CONVERGE)
    print(f"join through the surviving vxsnd converged in {time.monotonic() - started:.3f}s")
    assert_floods(lab, 100, lab.hosts)

    # A comes back on the same registry: hitless, and every host hears from both again
    watch = FdbWatch(run_in_ns, lab.hosts, 100)
    watch.start()
    restarted = time.time()
    ov.start_vxsnd(0)

    def answered(host: Host) -> list[bool]:
        return [
            bool(s["answered"] and s["last_contact"] and s["last_contact"] > restarted)
            for s in ov.status(host)["servers"]
        ]

    wait_until(
        lambda: {h.name: answered(h) for h in lab.hosts},
        timeout=CONVERGE,
        what="every host answered by both servers since the restart",
        expect={h.name: [True, True] for h in lab.hosts},
    )
    observe(SHORT_HOLD, ov.mesh_kept(lab.hosts, 100))  # three refreshes to both
    assert watch.zero_events() == {}, "flood entries removed or re-added around the restart"
    wait_heard(ov, lab.hosts, 100)
    assert_floods(lab, 100, lab.hosts)


def test_two_service_nodes_one_down_a_leave_gets_through(
    lab_factory: MakeLab, run_in_ns: RunInNs, tmp_path: Path
) -> None:
    lab = lab_factory(hosts=3, vnis=[100])
    h1, h2, h3 = lab.hosts
    ov = two_service_nodes(lab, run_in_ns, tmp_path)
    ov.kill_vxsnd(0)
    # the survivor's answer is newer than the dead one's last (same registry): it counts
    lab.del_vni(h3, 100)
    wait_mesh(lab, 100, [h1, h2], timeout=CONVERGE)
    assert_floods(lab, 100, [h1, h2])


def test_vxrd_sigkill_and_restart_keep_the_flood_list(
    lab_factory: MakeLab, run_in_ns: RunInNs, tmp_path: Path
) -> None:
    lab = lab_factory(hosts=3, vnis=[100])
    h1 = lab.hosts[0]
    ov = Overlay(lab, run_in_ns, tmp_path, hold_time=SHORT_HOLD)
    ov.start()
    wait_mesh(lab, 100, lab.hosts)
    watch = FdbWatch(run_in_ns, lab.hosts, 100)
    watch.start()

    ov.vxrd[h1].kill(signal.SIGKILL)
    assert ov.vxrd[h1].wait() == -signal.SIGKILL
    assert flood_lists(lab, 100, lab.hosts) == full_mesh(100, lab.hosts)
    assert_floods(lab, 100, lab.hosts)

    restarted = time.time()
    ov.start_vxrd(h1)  # a new incarnation adopts what the kernel holds

    first_contact: list[float] = []

    def resynced() -> bool:
        # refresh replies move last_contact on their own, so compare the reconcile
        # with the first contact of the new process, not with the latest one
        st = ov.status(h1)
        contact = st["servers"][0]["last_contact"]
        reconciled = st["last_reconcile"]
        if contact and contact > restarted and not first_contact:
            first_contact.append(contact)
        return bool(first_contact and reconciled and reconciled >= first_contact[0])

    wait_until(resynced, timeout=START, what="the new vxrd heard from vxsnd and reconciled")
    observe(SHORT_HOLD / 3 * 1.5, ov.mesh_kept(lab.hosts, 100))  # and one refresh more
    assert watch.zero_events() == {}, "flood entries changed by the vxrd restart"
    assert_floods(lab, 100, lab.hosts)
    assert ov.peers(h1, 100)["members"] == sorted(h.underlay for h in lab.hosts)


def test_an_entry_deleted_by_hand_comes_back_within_a_second(
    lab_factory: MakeLab, run_in_ns: RunInNs, tmp_path: Path
) -> None:
    lab = lab_factory(hosts=3, vnis=[100])
    h1, h2, h3 = lab.hosts
    Overlay(lab, run_in_ns, tmp_path).start()
    wait_mesh(lab, 100, lab.hosts)
    mesh = full_mesh(100, lab.hosts)

    started = time.monotonic()
    h1.exec(["bridge", "fdb", "del", ZERO, "dev", "vx100", "dst", h2.underlay])
    wait_until(lambda: flood_lists(lab, 100, lab.hosts), timeout=1.0, expect=mesh, what="repair")
    print(f"one entry repaired in {time.monotonic() - started:.3f}s")

    # every entry of a host at once, in one batch
    started = time.monotonic()
    lines = "".join(f"fdb del {ZERO} dev vx100 dst {o.underlay}\n" for o in (h1, h2))
    h3.exec(["bridge", "-batch", "-"], input=lines)
    wait_until(lambda: flood_lists(lab, 100, lab.hosts), timeout=1.0, expect=mesh, what="repair")
    print(f"a whole list repaired in {time.monotonic() - started:.3f}s")
    assert_floods(lab, 100, lab.hosts)


def test_two_vnis_on_the_same_hosts_stay_apart(
    lab_factory: MakeLab, run_in_ns: RunInNs, tmp_path: Path
) -> None:
    lab = lab_factory(hosts=3, vnis=[100, 200])
    h4 = lab.add_host(vnis=[200])  # in VNI 200 only
    ov = Overlay(lab, run_in_ns, tmp_path)
    ov.start()
    in100, in200 = lab.hosts[:3], lab.hosts
    wait_mesh(lab, 100, in100)
    wait_mesh(lab, 200, in200)
    for vni, members in ((100, in100), (200, in200)):
        for sender in members:
            receivers = others(members, sender)
            got = broadcast_receipts(lab, vni, sender, receivers, timeout=NEGATIVE)
            # each receiver listens on every bridge it has: it must hear br<vni> only
            assert got == {o: {f"br{vni}"} for o in receivers}, f"VNI {vni} from {sender.name}"
    # the control plane keeps them apart too: nothing of VNI 100 is even sent to h4
    h1, h2 = lab.hosts[:2]
    arrived = vxlan_arrivals(h4, lambda: broadcast_receipts(lab, 100, h1, [h2], timeout=NEGATIVE))
    assert arrived == []


def test_flooding_over_an_ipv6_underlay(
    lab_factory: MakeLab, run_in_ns: RunInNs, tmp_path: Path
) -> None:
    lab = lab_factory(hosts=3, vnis=[100], ipv6_underlay=True)
    h1, h2, h3 = lab.hosts
    assert ":" in lab.service_addr and ":" in h1.underlay
    Overlay(lab, run_in_ns, tmp_path).start()
    wait_mesh(lab, 100, lab.hosts)
    assert_floods(lab, 100, lab.hosts)
    assert unicast_works(lab, 100, h1, h3)
    assert vxlan_arrivals(h2, lambda: broadcast_reaches(lab, 100, h1, [h2, h3])) != []


def test_vxrdctl_leave_withdraws_and_flushes(
    lab_factory: MakeLab, run_in_ns: RunInNs, tmp_path: Path
) -> None:
    lab = lab_factory(hosts=3, vnis=[100])
    h1, h2, h3 = lab.hosts
    ov = Overlay(lab, run_in_ns, tmp_path)
    ov.start()
    wait_mesh(lab, 100, lab.hosts)

    left = json.loads(ov.ctl(h3, "leave").stdout)
    assert left["flushed"] == 2 and left["devices"] == ["vx100"]
    assert lab.fdb_flood(h3, 100) == set()  # flushed before the answer
    assert ov.vxrd[h3].wait(timeout=10) == 0
    wait_mesh(lab, 100, [h1, h2], timeout=CONVERGE)  # withdrawn everywhere
    assert broadcast_reaches(lab, 100, h3, [h1, h2], timeout=NEGATIVE) == set()

    def send() -> None:
        broadcast_reaches(lab, 100, h1, [h2])
        broadcast_reaches(lab, 100, h2, [h1])

    assert vxlan_arrivals(h3, send) == []
    assert lab.fdb_flood(h3, 100) == set()  # and nobody wrote it back


REGISTRY_LOSS_HOLD = 30  # the set-up: hosts on hold 30, a refresh every 10 s


def test_vxsnd_restarted_on_an_empty_registry_removes_no_flood_entry(
    lab_factory: MakeLab, run_in_ns: RunInNs, tmp_path: Path
) -> None:
    """Issue 9, finding 5: vxsnd restarted on an EMPTY registry (the file deleted)
    while the hosts refresh on hold 30 with staggered phases. Its first answers list
    only the hosts that have refreshed so far; before the fix a host's flood list
    went to 0 entries a second after vxsnd came up. Now each vxrd treats the new
    registry id like a server restart and only adds for a hold time: `bridge monitor
    fdb` on every host sees no flood entry change at all, the new registry lists every
    host once each has refreshed, and a leave gets through after that."""
    lab = lab_factory(hosts=4, vnis=[100])
    hosts = lab.hosts
    hold = REGISTRY_LOSS_HOLD
    refresh = hold / 3
    ov = Overlay(
        lab, run_in_ns, tmp_path, hold_time=hold, vxsnd_args=["--max-hold-time", str(hold)]
    )
    ov.start_vxsnd()

    def alive() -> None:
        for proc in (*ov.vxsnds, *ov.vxrd.values()):
            assert proc is None or proc.alive, f"{proc} died"

    for i, h in enumerate(hosts):  # refresh phases spread over the refresh interval
        if i:
            observe(refresh / len(hosts), alive)  # the phase offset, not a synchronisation
        ov.start_vxrd(h)
    wait_mesh(lab, 100, hosts)
    before = {h: ov.status(h)["servers"][0]["registry"] for h in hosts}
    assert len(set(before.values())) == 1 and None not in before.values()
    watch = FdbWatch(run_in_ns, hosts, 100)
    watch.start()

    ov.kill_vxsnd()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ov.db}{suffix}").unlink(missing_ok=True)
    ov.start_vxsnd()  # a new, empty registry: a new registry id

    # every host refreshes within one interval and sees the new registry id then; its
    # additive period ends a hold time later: watch past the last of those
    observe(refresh + hold + 5.0, ov.mesh_kept(hosts, 100))
    assert watch.zero_events() == {}, "flood entries removed or re-added after registry loss"
    after = {h: ov.status(h)["servers"][0]["registry"] for h in hosts}
    assert len(set(after.values())) == 1 and set(after.values()) != set(before.values())
    for h in hosts:  # the new registry is complete: every host is listed again
        assert sorted(ov.heard(h, 100)[0]) == sorted(o.underlay for o in hosts)
    assert_floods(lab, 100, hosts)

    # ... and the new registry has authority now: a leave gets through
    leaver, rest = hosts[-1], hosts[:-1]
    lab.set_vni_up(leaver, 100, False)
    wait_until(
        lambda: flood_lists(lab, 100, rest),
        timeout=refresh + CONVERGE,
        what=f"{leaver.name} withdrawn from the new registry",
        expect=full_mesh(100, rest),
    )


LOCKOUT_HOLD = 9  # a refresh every 3 s: room for the unanswered rounds before expiry
_SEND = (
    "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    "s.sendto(bytes.fromhex(sys.argv[1]), (sys.argv[2], int(sys.argv[3])))"
)


def test_an_agent_locked_out_by_a_forged_sequence_recovers_with_a_new_incarnation(
    lab_factory: MakeLab, run_in_ns: RunInNs, tmp_path: Path
) -> None:
    """Issue 9, finding 2, on the real daemons: one unsigned datagram carrying h1's
    incarnation, a sequence number ahead (within what the replay guard allows) and a
    timestamp 45 s ahead makes vxsnd refuse h1's own registers as replays until its
    clock passes that stamp: on main h1 expired from every flood list. Now h1 notices
    its rounds go unanswered and registers as a new incarnation: it stays listed."""
    lab = lab_factory(hosts=2, vnis=[100])
    h1 = lab.hosts[0]
    ov = Overlay(lab, run_in_ns, tmp_path, hold_time=LOCKOUT_HOLD)
    ov.start()
    wait_mesh(lab, 100, lab.hosts)
    server = ov.status(h1)["servers"][0]
    incarnation = server["incarnation"]
    forged = Register(
        Envelope(h1.name, incarnation, 1 << 19, int((time.time() + 45) * 1000)),
        LOCKOUT_HOLD,
        server["registry"],
        1 << 19,
        0,
        1,
        (VniEntry(100, ip_address(h1.underlay), 0),),
    )
    data = Codec().encode(forged).hex()
    h1.exec([sys.executable, "-c", _SEND, data, lab.service_addr, str(PORT)])

    observe(LOCKOUT_HOLD * 2, ov.mesh_kept(lab.hosts, 100))
    server = ov.status(h1)["servers"][0]
    assert server["incarnation"] != incarnation and server["incarnation_renewals"] == 1
    assert "registering as a new incarnation" in ov.vxrd[h1].log()
    assert_floods(lab, 100, lab.hosts)
