"""vxrd's default node id in the namespace lab: hosts that share one host name (all
namespaces here share the machine's) still register as distinct nodes.

Real vxsnd and vxrd processes; each vxrd is started WITHOUT --node-id and with its
own state directory under tmp_path, as a fresh install on a cloned image would be.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from contrib.lab.topology import Host
from tests.e2e.conftest import RunInNs, wait_until
from tests.e2e.test_flood import (
    API_PORT,
    PORT,
    START,
    FdbWatch,
    MakeLab,
    Overlay,
    assert_floods,
    flood_lists,
    wait_mesh,
)
from vxrd.identity import NODE_ID_FILE, host_prefix

pytestmark = [pytest.mark.e2e, pytest.mark.root]

HOLD = 9  # seconds: refreshes every 3 s, so the takeover is quick to watch


class DefaultIdOverlay(Overlay):
    """The lab's overlay with vxrd left to choose its own node id."""

    def state_dir(self, host: Host) -> Path:
        return self.tmp_path / "state" / host.name

    def identity_args(self, host: Host) -> list[str]:
        return ["--state-dir", str(self.state_dir(host))]


def test_five_hosts_sharing_a_host_name_without_node_id_reach_a_full_mesh(
    lab_factory: MakeLab, run_in_ns: RunInNs, tmp_path: Path
) -> None:
    lab = lab_factory(hosts=5, vnis=[100])
    hostnames = {h.exec(["hostname"]).stdout.strip() for h in lab.hosts}
    assert hostnames == {socket.gethostname()}  # the premise: one host name for all
    ov = DefaultIdOverlay(lab, run_in_ns, tmp_path)
    ov.start()
    wait_mesh(lab, 100, lab.hosts)
    assert_floods(lab, 100, lab.hosts)

    ids = {h.name: ov.status(h)["node_id"] for h in lab.hosts}
    assert len(set(ids.values())) == len(lab.hosts), ids
    prefix = next(iter(hostnames))
    for h in lab.hosts:
        assert (ov.state_dir(h) / NODE_ID_FILE).read_text() == f"{ids[h.name]}\n"
        assert ids[h.name].startswith(host_prefix(prefix) + "-")

    # a restart keeps the id it stored, and the mesh
    h1 = lab.hosts[0]
    assert ov.vxrd[h1].stop() == 0
    ov.start_vxrd(h1)
    assert ov.status(h1)["node_id"] == ids[h1.name]
    wait_mesh(lab, 100, lab.hosts)


class SharedIdOverlay(Overlay):
    """Every host but the last forced to one `--node-id` (a copied config)."""

    def identity_args(self, host: Host) -> list[str]:
        shared = host is not self.lab.hosts[-1]
        return ["--node-id", f"{self.lab.prefix}-shared" if shared else host.name]

    def conflicts(self) -> list[dict[str, Any]]:
        """`vxsndctl conflicts --json`, run where the API listens."""
        out = self.lab.service.exec(
            [
                *(sys.executable, "-m", "vxsnd.ctl"),
                *("--api", f"http://127.0.0.1:{API_PORT}", "--json", "conflicts"),
            ],
            timeout=30.0,
        )
        data: list[dict[str, Any]] = json.loads(out.stdout)["conflicts"]
        return data

    def conflict_count(self) -> float:
        """`vxsnd_node_id_conflicts_total` from vxsnd's /metrics."""
        url = f"http://127.0.0.1:{API_PORT}/metrics"
        code = f"import urllib.request; print(urllib.request.urlopen({url!r}).read().decode())"
        text = self.lab.service.exec([sys.executable, "-c", code], timeout=30.0).stdout
        (line,) = [x for x in text.splitlines() if x.startswith("vxsnd_node_id_conflicts_total")]
        return float(line.split()[1])

    def conflict(self, host: Host) -> dict[str, Any] | None:
        """`vxrdctl status`: the host's conflict, and its exit status agrees (4 or 0)."""
        proc = self.ctl(host, "status", check=False)
        data = json.loads(proc.stdout)
        (server,) = data["servers"]
        conflict: dict[str, Any] | None = server["conflict"]
        assert proc.returncode == (4 if conflict else 0), (proc.returncode, conflict)
        return conflict


def test_two_hosts_forced_to_one_node_id_the_first_keeps_it_the_second_takes_over(
    lab_factory: MakeLab, run_in_ns: RunInNs, tmp_path: Path
) -> None:
    """Issue 10: h1 holds the node id with no fdb flap anywhere; h2 is refused and says
    so in `vxrdctl status` (exit 4), vxsnd counts and lists it; h1 stops and h2 takes
    the id over within one hold time. And `vxrdctl leave` (a withdrawal) hands it over
    at h2's next refresh."""
    lab = lab_factory(hosts=3, vnis=[100])
    h1, h2, h3 = lab.hosts
    ov = SharedIdOverlay(lab, run_in_ns, tmp_path, hold_time=HOLD)
    ov.start([h1, h3])
    wait_mesh(lab, 100, [h1, h3])
    watch = FdbWatch(run_in_ns, [h1, h3], 100)
    watch.start()

    ov.start_vxrd(h2, wait=False)  # its status exits 4 (the conflict), not 0
    conflict = wait_until(lambda: ov.conflict(h2), timeout=START, what="h2 refused")
    assert conflict["holder"] == h1.underlay and conflict["reason"] == "node-id-conflict"
    time.sleep(HOLD / 3 + 1)  # a refresh of each: h2 is refused again, h1 stays
    (listed,) = ov.conflicts()
    assert (listed["node_id"], listed["holder"], listed["claimant"]) == (
        f"{lab.prefix}-shared",
        h1.underlay,
        h2.underlay,
    )
    assert listed["refused"] >= 2
    assert ov.conflict_count() >= listed["refused"]
    assert watch.zero_events() == {}  # no flood entry changed on h1 or h3
    assert flood_lists(lab, 100, [h1, h2, h3]) == {
        h1.name: {h3.underlay},
        h2.name: set(),
        h3.name: {h1.underlay},
    }
    assert ov.conflict(h1) is None
    assert "node-id-conflict" in ov.vxrd[h2].log() or "refuses node id" in ov.vxrd[h2].log()

    # h1 stops (SIGTERM keeps its registration, fail-static, until its hold time runs
    # out): h2, told when that is, takes the id over then
    stopped = time.monotonic()
    assert ov.vxrd[h1].stop() == 0
    wait_mesh(lab, 100, [h2, h3], timeout=HOLD)
    took = time.monotonic() - stopped
    assert ov.conflict(h2) is None
    assert_floods(lab, 100, [h2, h3])
    print(f"h2 took the node id over {took:.2f} s after h1 stopped (hold time {HOLD} s)")

    ov.start_vxrd(h1, wait=False)  # h1 again, now the refused one
    wait_until(lambda: ov.conflict(h1), timeout=START, what="h1 refused")
    left = time.monotonic()
    ov.ctl(h2, "leave")
    wait_mesh(lab, 100, [h1, h3], timeout=HOLD)
    print(f"h1 took it back {time.monotonic() - left:.2f} s after h2 left")


FORGE = """
import socket, sys
from vxflood.schema.keys import Keyring
from vxflood.schema.wire import Codec, Register, Sequencer, VniEntry, address
key_file, server, port, me, other, other_vtep = sys.argv[1:]
codec = Codec(Keyring.load(key_file))
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
tries = [
    (other, 90, [VniEntry(100, address(other_vtep))]),  # my key, the other's node id
    (me, 90, [VniEntry(100, address(other_vtep))]),  # my node id, the other's VTEP
    (other, 0, []),  # my key withdrawing the other
]
for node_id, hold, entries in tries:
    msg = Register(Sequencer(node_id).next(), hold, "", 1, 0, 1, tuple(entries))
    sock.sendto(codec.encode(msg), (server, int(port)))
"""


class KeyedOverlay(Overlay):
    """Per-host keys, each bound to its host's node id and VTEP (nodes=, vteps=)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        secrets_ = {h.name: os.urandom(32).hex() for h in self.lab.hosts}
        server = os.urandom(32).hex()
        lines = [f"sn {server}"] + [
            f"{h.name[-2:]} {secrets_[h.name]} nodes={h.name} vteps={h.underlay}/32"
            for h in self.lab.hosts
        ]
        self.vxsnd_args = ["--key-file", str(self._write("sn.keys", lines))]
        self.key_files = {
            h: self._write(f"{h.name}.keys", [f"{h.name[-2:]} {secrets_[h.name]}", f"sn {server}"])
            for h in self.lab.hosts
        }

    def _write(self, name: str, lines: list[str]) -> Path:
        path = self.tmp_path / name
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        return path

    def identity_args(self, host: Host) -> list[str]:
        return ["--node-id", host.name, "--key-file", str(self.key_files[host])]

    def rejected(self, reason: str) -> float:
        url = f"http://127.0.0.1:{API_PORT}/metrics"
        code = f"import urllib.request; print(urllib.request.urlopen({url!r}).read().decode())"
        text = self.lab.service.exec([sys.executable, "-c", code], timeout=30.0).stdout
        want = f'vxsnd_rejected_datagrams_total{{reason="{reason}"}}'
        return sum(float(x.split()[1]) for x in text.splitlines() if x.startswith(want))


def test_a_bound_host_key_cannot_speak_for_another_host(
    lab_factory: MakeLab, run_in_ns: RunInNs, tmp_path: Path
) -> None:
    """Issue 10: with per-host keys, h1's key (a stolen one, or a host gone rogue)
    cannot register as h2, claim h2's VTEP or withdraw h2: each is dropped and
    counted as not-allowed, and no flood entry changes on any host."""
    lab = lab_factory(hosts=3, vnis=[100])
    h1, h2, _ = lab.hosts
    ov = KeyedOverlay(lab, run_in_ns, tmp_path)
    ov.start()
    wait_mesh(lab, 100, lab.hosts)
    watch = FdbWatch(run_in_ns, lab.hosts, 100)
    watch.start()
    h1.exec(
        [
            *(sys.executable, "-c", FORGE, str(ov.key_files[h1]), lab.service_addr),
            *(str(PORT), h1.name, h2.name, h2.underlay),
        ]
    )
    wait_until(lambda: ov.rejected("not-allowed"), timeout=5.0, what="drops", expect=3.0)
    time.sleep(0.5)  # anything the forgeries would have pushed has arrived by now
    assert watch.zero_events() == {}
    wait_mesh(lab, 100, lab.hosts, timeout=1.0)
    assert_floods(lab, 100, lab.hosts)
