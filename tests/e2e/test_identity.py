"""vxrd's default node id in the namespace lab: hosts that share one host name (all
namespaces here share the machine's) still register as distinct nodes.

Real vxsnd and vxrd processes; each vxrd is started WITHOUT --node-id and with its
own state directory under tmp_path, as a fresh install on a cloned image would be.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from contrib.lab.topology import Host
from tests.e2e.conftest import RunInNs
from tests.e2e.test_flood import MakeLab, Overlay, assert_floods, wait_mesh
from vxrd.identity import NODE_ID_FILE, host_prefix

pytestmark = [pytest.mark.e2e, pytest.mark.root]


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
