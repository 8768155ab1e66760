"""Three service nodes on one real PostgreSQL in the namespace lab (issue 14).

PostgreSQL is a private cluster (tests/integration/pgcluster.py) running inside the
lab's service namespace, so the test may stop it. Three vxsnd are started at the
same moment on its empty database (the schema creation is serialised by an
advisory lock) and every vxrd lists all three. Each vxsnd is killed in turn
while hosts join and leave, with a broadcast every 10 ms from one host counted
on the others; then PostgreSQL itself is stopped for many hold times.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from contrib.lab import Lab
from contrib.lab.topology import Host, overlay_broadcast
from tests.e2e.conftest import RunInNs, wait_until
from tests.e2e.test_flood import (
    CONVERGE,
    SHORT_HOLD,
    FdbWatch,
    MakeLab,
    Overlay,
    assert_floods,
    observe,
    wait_heard,
    wait_mesh,
)
from tests.integration.pgcluster import Cluster, private_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.root, pytest.mark.postgres]

VNI = 100
SERVERS = 3
PG_OUTAGE = 30.0  # seconds PostgreSQL is stopped: ten hold times


class PgOverlay(Overlay):
    """The lab's overlay on PostgreSQL, its service nodes started together."""

    def __init__(self, lab: Lab, run_in_ns: RunInNs, tmp_path: Path, pg: Cluster) -> None:
        super().__init__(lab, run_in_ns, tmp_path, hold_time=SHORT_HOLD, servers=SERVERS)
        self.db_url = pg.url

    def start(self, hosts: Sequence[Host] | None = None) -> None:
        # every vxsnd launched before any is waited for: they race for the empty schema
        threads = [
            threading.Thread(target=self.start_vxsnd, args=(i,), daemon=True)
            for i in range(len(self.vxsnds))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert all(p is not None and p.alive for p in self.vxsnds), [
            p.log() if p is not None else "did not start" for p in self.vxsnds
        ]
        chosen = list(self.lab.hosts if hosts is None else hosts)
        for h in chosen:
            self.start_vxrd(h, wait=False)
        for h in chosen:
            self.wait_answers(h)


class BroadcastStream:
    """A numbered broadcast every ``interval`` from ``sender`` on ``br<vni>``, counted on
    every listener's ``br<vni>`` (a thread in the test: the sockets live in the hosts'
    namespaces, the loop in this process)."""

    def __init__(
        self, sender: Host, listeners: Sequence[Host], vni: int, interval: float = 0.01
    ) -> None:
        self.interval = interval
        self.sent = 0
        self.got: dict[Host, set[int]] = {h: set() for h in listeners}
        self._stop = threading.Event()
        self._where: dict[socket.socket, Host] = {}
        port = 0
        for h in listeners:
            sock = self._udp(h, f"br{vni}", "0.0.0.0", port)
            port = port or sock.getsockname()[1]
            self._where[sock] = h
        self._out = self._udp(sender, f"br{vni}", sender.overlay(vni), 0)
        self._dst = (overlay_broadcast(vni), port)
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _udp(host: Host, dev: str, addr: str, port: int) -> socket.socket:
        sock = host.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((addr, port))
        sock.setblocking(False)
        return sock

    def _drain(self, timeout: float) -> None:
        readable, _, _ = select.select(list(self._where), [], [], timeout)
        for sock in readable:
            with contextlib.suppress(BlockingIOError):
                while True:
                    data = sock.recv(64)
                    if data.startswith(b"vxflood-stream "):
                        self.got[self._where[sock]].add(int(data.split()[1]))

    def _run(self) -> None:
        next_send = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_send:
                self._out.sendto(b"vxflood-stream %d" % self.sent, self._dst)
                self.sent += 1
                next_send += self.interval
            self._drain(max(0.0, next_send - time.monotonic()))
        end = time.monotonic() + 0.5  # what is still in flight
        while time.monotonic() < end:
            self._drain(0.05)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict[str, int]:
        """Stop sending; return per listener how many of the broadcasts never arrived."""
        self._stop.set()
        self._thread.join(10)
        for sock in (*self._where, self._out):
            sock.close()
        return {h.name: self.sent - len(seqs) for h, seqs in self.got.items()}


@contextlib.contextmanager
def lab_on_postgres(
    lab_factory: MakeLab, run_in_ns: RunInNs, tmp_path: Path, hosts: int
) -> Iterator[tuple[Lab, PgOverlay, Cluster, Host]]:
    lab = lab_factory(hosts=hosts, vnis=[VNI])
    spare = lab.add_host(vnis=[])  # runs vxrd; joins and leaves VNI 100 during the test
    with private_cluster(netns=lab.service_ns) as pg:
        ov = PgOverlay(lab, run_in_ns, tmp_path, pg)
        started = time.monotonic()
        ov.start()
        members = [h for h in lab.hosts if VNI in h.vnis]
        wait_mesh(lab, VNI, members)
        print(
            f"{SERVERS} vxsnd on an empty PostgreSQL + {len(lab.hosts)} vxrd: "
            f"full mesh {time.monotonic() - started:.2f} s after start"
        )
        wait_heard(ov, members, VNI)
        assert_floods(lab, VNI, members)
        yield lab, ov, pg, spare


def test_each_service_node_killed_in_turn_loses_no_broadcast_and_no_change(
    lab_factory: MakeLab, run_in_ns: RunInNs, tmp_path: Path
) -> None:
    with lab_on_postgres(lab_factory, run_in_ns, tmp_path, hosts=4) as (lab, ov, _, spare):
        sender, *listeners = [h for h in lab.hosts if h is not spare]
        stream = BroadcastStream(sender, listeners, VNI)
        stream.start()
        took = []
        for server in range(SERVERS):
            ov.kill_vxsnd(server)
            started = time.monotonic()
            if VNI in spare.vnis:
                lab.del_vni(spare, VNI)
            else:
                lab.add_vni(spare, VNI)
            members = [h for h in lab.hosts if VNI in h.vnis]
            wait_mesh(lab, VNI, members, timeout=CONVERGE)
            took.append(time.monotonic() - started)
            ov.start_vxsnd(server)
        lost = stream.stop()
        print(
            f"joins/leaves with one vxsnd killed: {', '.join(f'{t:.3f}s' for t in took)}; "
            f"{stream.sent} broadcasts, lost per host {lost}"
        )
        assert stream.sent > 100
        assert lost == {h.name: 0 for h in listeners}

        # a killed and restarted vxsnd rejoins with no flood entry changed anywhere
        members = [h for h in lab.hosts if VNI in h.vnis]
        watch = FdbWatch(run_in_ns, members, VNI)
        watch.start()
        ov.kill_vxsnd(1)
        ov.start_vxsnd(1)
        observe(SHORT_HOLD, ov.mesh_kept(members, VNI))
        assert watch.zero_events() == {}


def test_postgresql_stopped_changes_no_flood_entry_and_a_join_waits_for_it(
    lab_factory: MakeLab, run_in_ns: RunInNs, tmp_path: Path
) -> None:
    with lab_on_postgres(lab_factory, run_in_ns, tmp_path, hosts=3) as (lab, ov, pg, spare):
        members = [h for h in lab.hosts if VNI in h.vnis]
        watch = FdbWatch(run_in_ns, members, VNI)
        watch.start()
        pg.stop()
        lab.add_vni(spare, VNI)  # a join while the registry is away: it must wait
        observe(PG_OUTAGE, ov.mesh_kept(members, VNI))
        assert watch.zero_events() == {}, "a flood entry changed while PostgreSQL was away"
        pg.start()
        back = time.monotonic()
        wait_mesh(lab, VNI, lab.hosts, timeout=CONVERGE)
        took = time.monotonic() - back
        print(
            f"join made during a {PG_OUTAGE:.0f} s PostgreSQL outage: "
            f"converged {took:.3f} s after it came back"
        )
        assert_floods(lab, VNI, lab.hosts)
        wait_until(
            lambda: all(p is not None and p.alive for p in ov.vxsnds),
            timeout=1.0,
            what="every vxsnd still running",
        )
