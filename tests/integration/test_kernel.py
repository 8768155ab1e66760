"""vxrd.kernel against the real kernel, one fresh network namespace per test.

Test code builds the topology with `ip`/`bridge` (the daemon never does) and
checks the kernel's state both through `bridge -j fdb show` and through
Kernel.flood_entries(). Waits poll under a deadline; nothing sleeps to
synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import json
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from tests.conftest import require_root
from vxrd import floodnl
from vxrd import kernel as kernel_mod
from vxrd.kernel import (
    Address,
    FdbChanged,
    FloodChange,
    Kernel,
    KernelEvent,
    LinkChanged,
    LinkRemoved,
    Resync,
    VxlanDevice,
)
from vxrd.mirror import FloodMirror
from vxrd.model import FloodDiff

pytestmark = pytest.mark.root

A = ipaddress.ip_address
ZERO = "00:00:00:00:00:00"
_counter = itertools.count()


class Lab:
    """A named network namespace and shell helpers that run inside it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, *cmd: str) -> str:
        """Run `ip`/`bridge` inside the namespace; fail the test on error."""
        tool, *args = cmd
        proc = subprocess.run(
            [tool, "-n", self.name, *args], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
        return proc.stdout

    def batch(self, commands: str) -> None:
        """Run `ip -batch` inside the namespace (one process, many changes)."""
        subprocess.run(
            ["ip", "-n", self.name, "-batch", "-"], input=commands, text=True, check=True
        )

    def vxlan(self, name: str, *args: str) -> int:
        self.run("ip", "link", "add", name, "type", "vxlan", *args)
        return self.ifindex(name)

    def ifindex(self, name: str) -> int:
        return int(json.loads(self.run("ip", "-j", "link", "show", "dev", name))[0]["ifindex"])

    def fdb(self) -> list[dict[str, Any]]:
        out = self.run("bridge", "-j", "fdb", "show")
        return list(json.loads(out)) if out.strip() else []

    def flood(self) -> dict[str, set[Address]]:
        """Flood entries as `bridge fdb show` reports them, keyed by device name."""
        out: dict[str, set[Address]] = {}
        for e in self.fdb():
            ours = e["mac"] == ZERO and "dst" in e and "self" in e.get("flags", [])
            if ours and not {"port", "vni", "via"} & set(e):
                out.setdefault(e["ifname"], set()).add(A(e["dst"]))
        return out


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_root()
    name = f"vxk-{os.getpid()}-{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield Lab(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
async def kern(lab: Lab) -> AsyncIterator[Kernel]:
    async with Kernel(lab.name) as k:
        yield k


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    """Poll check() until it holds; fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.005)


def addrs(prefix: str, n: int) -> frozenset[Address]:
    base = ipaddress.ip_address(prefix)
    return frozenset(base + i for i in range(n))


# --- discovery -----------------------------------------------------------------


async def test_discovery(lab: Lab, kern: Kernel) -> None:
    lab.run("ip", "link", "add", "ve0", "type", "veth", "peer", "name", "ve1")
    lab.run("ip", "link", "add", "br0", "type", "bridge")
    i4 = lab.vxlan("vx4", "id", "100", "local", "10.0.0.1", "dstport", "4789", "nolearning")
    i6 = lab.vxlan("vx6", "id", "200", "local", "2001:db8::1", "dstport", "4790", "nolearning")
    ig = lab.vxlan("vxg", "id", "300", "group", "239.1.1.1", "dev", "ve0", "dstport", "4789")
    ie = lab.vxlan("vxe", "external", "dstport", "4791")
    iff = lab.vxlan("vxf", "external", "vnifilter", "dstport", "4792")
    lab.run("ip", "link", "set", "vx4", "up")

    devices = {d.name: d for d in await kern.list_vxlan()}
    assert set(devices) == {"vx4", "vx6", "vxg", "vxe", "vxf"}

    vx4 = devices["vx4"]
    assert (vx4.ifindex, vx4.vni, vx4.local, vx4.port) == (i4, 100, A("10.0.0.1"), 4789)
    assert vx4.group is None and vx4.up and not vx4.external and not vx4.vnifilter

    vx6 = devices["vx6"]
    assert (vx6.ifindex, vx6.vni, vx6.local, vx6.port) == (i6, 200, A("2001:db8::1"), 4790)
    assert not vx6.up

    vxg = devices["vxg"]
    assert (vxg.ifindex, vxg.vni, vxg.group, vxg.local) == (ig, 300, A("239.1.1.1"), None)

    vxe = devices["vxe"]
    assert (vxe.ifindex, vxe.vni, vxe.external, vxe.vnifilter) == (ie, None, True, False)
    vxf = devices["vxf"]
    assert (vxf.ifindex, vxf.vni, vxf.external, vxf.vnifilter) == (iff, None, True, True)

    assert await kern.get_vxlan(i4) == vx4
    assert await kern.get_vxlan(lab.ifindex("ve0")) is None
    assert await kern.get_vxlan(lab.ifindex("br0")) is None
    assert await kern.get_vxlan(99999) is None


async def test_up_down_state(lab: Lab, kern: Kernel) -> None:
    idx = lab.vxlan("vx4", "id", "100", "local", "10.0.0.1", "dstport", "4789")
    dev = await kern.get_vxlan(idx)
    assert dev is not None and not dev.up
    lab.run("ip", "link", "set", "vx4", "up")
    dev = await kern.get_vxlan(idx)
    assert dev is not None and dev.up
    lab.run("ip", "link", "set", "vx4", "down")
    dev = await kern.get_vxlan(idx)
    assert dev is not None and not dev.up


async def test_missing_namespace_is_an_error_not_created() -> None:
    require_root()
    name = f"vxk-{os.getpid()}-missing"
    with pytest.raises(FileNotFoundError):
        await Kernel(name).open()
    assert not await asyncio.to_thread(os.path.exists, f"/run/netns/{name}")


# --- writing and reading the flood list ---------------------------------------


async def test_apply_add_and_remove(lab: Lab, kern: Kernel) -> None:
    i4 = lab.vxlan("vx4", "id", "100", "local", "10.0.0.1", "dstport", "4789", "nolearning")
    i6 = lab.vxlan("vx6", "id", "200", "local", "2001:db8::1", "dstport", "4789", "nolearning")
    p4 = {A("10.0.0.2"), A("10.0.0.3"), A("10.0.0.4")}
    p6 = {A("2001:db8::2"), A("2001:db8::3")}

    result = await kern.apply({i4: FloodDiff(add=frozenset(p4)), i6: FloodDiff(add=frozenset(p6))})
    assert (result.added, result.removed, result.errors) == (5, 0, [])
    assert lab.flood() == {"vx4": p4, "vx6": p6}
    assert await kern.flood_entries() == {i4: p4, i6: p6}
    for e in lab.fdb():  # written exactly as `bridge fdb append` would
        assert e["state"] == "permanent" and e["flags"] == ["self"]

    result = await kern.apply(
        {
            i4: FloodDiff(add=frozenset({A("10.0.0.5")}), remove=frozenset({A("10.0.0.2")})),
            i6: FloodDiff(remove=frozenset(p6)),
        }
    )
    assert (result.added, result.removed, result.errors) == (1, 3, [])
    expected4 = {A("10.0.0.3"), A("10.0.0.4"), A("10.0.0.5")}
    assert lab.flood() == {"vx4": expected4}
    assert await kern.flood_entries() == {i4: expected4}


async def test_apply_is_idempotent(lab: Lab, kern: Kernel) -> None:
    i4 = lab.vxlan("vx4", "id", "100", "local", "10.0.0.1", "dstport", "4789", "nolearning")
    i5 = lab.vxlan("vx5", "id", "101", "local", "10.0.0.1", "dstport", "4790", "nolearning")
    peers = frozenset({A("10.0.0.2"), A("10.0.0.3")})
    for _ in range(2):
        result = await kern.apply({i4: FloodDiff(add=peers)})
        assert (result.added, result.errors) == (2, [])
        assert await kern.flood_entries() == {i4: set(peers)}
    assert len(lab.fdb()) == 2

    absent = frozenset({A("10.0.0.9")})
    # An absent dst next to present ones, and on a device with no flood entry at all.
    result = await kern.apply({i4: FloodDiff(remove=absent), i5: FloodDiff(remove=absent)})
    assert (result.removed, result.errors) == (2, [])
    assert await kern.flood_entries() == {i4: set(peers)}
    assert await kern.apply({}) == kernel_mod.ApplyResult()


async def test_apply_now_writes_before_returning(lab: Lab, kern: Kernel) -> None:
    """The synchronous write: rtnetlink answers inside send(), so apply_now()
    returns with every ACK read; no await, the kernel already holds the entries."""
    i4 = lab.vxlan("vx4", "id", "100", "local", "10.0.0.1", "dstport", "4789", "nolearning")
    await kern.list_vxlan()  # known as VXLAN: nothing to ask the kernel
    peers = frozenset({A("10.0.0.2"), A("10.0.0.3")})
    result = kern.apply_now({i4: FloodDiff(add=peers)})
    assert result is not None and (result.added, result.removed, result.errors) == (2, 0, [])
    assert lab.flood() == {"vx4": set(peers)}
    result = kern.apply_now(
        {i4: FloodDiff(add=frozenset({A("10.0.0.4")}), remove=frozenset({A("10.0.0.2")}))}
    )
    assert result is not None and (result.added, result.removed, result.errors) == (1, 1, [])
    assert await kern.flood_entries() == {i4: {A("10.0.0.3"), A("10.0.0.4")}}
    # per-entry failures are reported as apply() reports them, the rest is written
    result = kern.apply_now({i4: FloodDiff(add=frozenset({A("2001:db8::7"), A("10.0.0.5")}))})
    assert result is not None and result.added == 1
    assert [(e.ifindex, e.address) for e in result.errors] == [(i4, A("2001:db8::7"))]
    assert result.errors[0].errno > 0 and result.errors[0].message
    assert await kern.flood_entries() == {i4: {A("10.0.0.3"), A("10.0.0.4"), A("10.0.0.5")}}


async def test_apply_now_declines_what_needs_a_wait(lab: Lab, kern: Kernel) -> None:
    """None, and nothing written, where apply() would have to wait: a device not
    yet known to be VXLAN, or the request socket busy with another request. A
    later apply() does the job."""
    i4 = lab.vxlan("vx4", "id", "100", "local", "10.0.0.1", "dstport", "4789", "nolearning")
    change = {i4: FloodDiff(add=frozenset({A("10.0.0.2")}))}
    assert kern.apply_now(change) is None  # never listed
    await kern.list_vxlan()
    async with kern._nl._lock:  # a dump or windowed write waiting for its answers
        assert kern.apply_now(change) is None
    assert lab.flood() == {}
    assert kern.apply_now({i4: FloodDiff(add=addrs("10.1.0.0", floodnl.WINDOW + 1))}) is None
    assert lab.flood() == {}
    result = await kern.apply(change)
    assert (result.added, result.errors) == (1, [])
    assert kern.apply_now(change) is not None


async def test_flood_entries_of_one_device(lab: Lab, kern: Kernel) -> None:
    i4 = lab.vxlan("vx4", "id", "100", "local", "10.0.0.1", "dstport", "4789", "nolearning")
    i5 = lab.vxlan("vx5", "id", "101", "local", "10.0.0.1", "dstport", "4790", "nolearning")
    p4, p5 = addrs("10.4.0.1", 3), addrs("10.5.0.1", 300)
    await kern.apply({i4: FloodDiff(add=p4), i5: FloodDiff(add=p5)})
    assert await kern.flood_entries(i4) == {i4: set(p4)}
    assert await kern.flood_entries(i5) == {i5: set(p5)}
    assert await kern.flood_entries() == {i4: set(p4), i5: set(p5)}
    assert await kern.flood_entries(424242) == {}


async def test_bad_entries_are_reported_and_do_not_stop_others(lab: Lab, kern: Kernel) -> None:
    lab.run("ip", "link", "add", "ve0", "type", "veth", "peer", "name", "ve1")
    veth = lab.ifindex("ve0")
    i4 = lab.vxlan("vx4", "id", "100", "local", "10.0.0.1", "dstport", "4789", "nolearning")
    good = addrs("10.1.0.0", 600)  # more than one window
    changes = {
        veth: FloodDiff(add=frozenset({A("10.0.0.7")})),
        424242: FloodDiff(add=frozenset({A("10.0.0.8")}), remove=frozenset({A("10.0.0.9")})),
        i4: FloodDiff(add=good | {A("2001:db8::7")}),  # an IPv6 peer on an IPv4 device
    }
    result = await kern.apply(changes)
    assert result.added == len(good)
    bad = {(e.ifindex, e.address) for e in result.errors}
    assert bad == {
        (veth, A("10.0.0.7")),
        (424242, A("10.0.0.8")),
        (424242, A("10.0.0.9")),
        (i4, A("2001:db8::7")),
    }
    assert all(e.errno > 0 and e.message for e in result.errors)
    assert await kern.flood_entries() == {i4: set(good)}
    # The veth got nothing: no all-zero address was installed on it.
    assert [e for e in lab.fdb() if e["ifname"] == "ve0" and e["mac"] == ZERO] == []


async def test_other_entries_are_not_flood_entries(lab: Lab, kern: Kernel) -> None:
    lab.run("ip", "link", "add", "br0", "type", "bridge")
    lab.run("ip", "link", "add", "ve0", "type", "veth", "peer", "name", "ve1")
    lab.run("ip", "link", "set", "ve0", "master", "br0")
    i4 = lab.vxlan("vx4", "id", "100", "local", "10.0.0.1", "dstport", "4789", "nolearning")
    lab.run("ip", "link", "add", "vxg", "type", "vxlan", "id", "300", "group", "239.1.1.1",
            "dev", "ve1", "dstport", "4789")  # fmt: skip
    lab.run("ip", "link", "set", "vx4", "master", "br0")
    lab.run("bridge", "fdb", "append", ZERO, "dev", "vx4", "dst", "10.0.0.7")
    lab.run("bridge", "fdb", "add", "00:11:22:33:44:55", "dev", "vx4", "dst", "10.0.0.8")
    lab.run("bridge", "fdb", "append", ZERO, "dev", "vx4", "dst", "10.0.0.9", "port", "5000")
    lab.run("bridge", "fdb", "append", ZERO, "dev", "vx4", "dst", "10.0.0.10", "vni", "77")
    lab.run("bridge", "fdb", "add", "00:11:22:33:44:66", "dev", "ve0", "master", "static")
    lab.run("bridge", "fdb", "add", "00:11:22:33:44:77", "dev", "ve1", "self", "permanent")
    assert len(lab.fdb()) > 6
    assert await kern.flood_entries() == {i4: {A("10.0.0.7")}}


async def test_ten_thousand_entries_on_one_device(lab: Lab, kern: Kernel) -> None:
    idx = lab.vxlan("vx4", "id", "100", "local", "10.0.0.1", "dstport", "4789", "nolearning")
    peers = addrs("11.0.0.0", 10_000)
    result = await kern.apply({idx: FloodDiff(add=peers)})
    assert (result.added, result.errors) == (10_000, [])
    assert await kern.flood_entries() == {idx: set(peers)}
    assert lab.flood() == {"vx4": set(peers)}
    result = await kern.apply({idx: FloodDiff(remove=peers)})
    assert (result.removed, result.errors) == (10_000, [])
    assert await kern.flood_entries() == {}
    assert lab.fdb() == []


async def test_hundred_devices_by_hundred_peers(lab: Lab, kern: Kernel) -> None:
    devices = [
        lab.vxlan(f"vx{n}", "id", str(1000 + n), "local", "10.0.0.1", "dstport", "4789")
        for n in range(100)
    ]
    v6 = lab.vxlan("vxv6", "id", "999", "local", "2001:db8::1", "dstport", "4790")
    want = {idx: set(addrs(f"12.0.{n}.0", 100)) for n, idx in enumerate(devices)}
    want[v6] = set(addrs("2001:db8:1::", 100))
    result = await kern.apply({i: FloodDiff(add=frozenset(s)) for i, s in want.items()})
    assert (result.added, result.errors) == (10_100, [])
    assert await kern.flood_entries() == want
    assert len(lab.fdb()) == 10_100
    result = await kern.apply({i: FloodDiff(remove=frozenset(s)) for i, s in want.items()})
    assert (result.removed, result.errors) == (10_100, [])
    assert await kern.flood_entries() == {}


# --- events -----------------------------------------------------------------------


class Recorder:
    """Collects events from Kernel.events() in a background task."""

    def __init__(self, kern: Kernel) -> None:
        self.seen: list[KernelEvent] = []
        self._task = asyncio.create_task(self._run(kern))

    async def _run(self, kern: Kernel) -> None:
        async for event in kern.events():
            self.seen.append(event)

    @property
    def changes(self) -> list[FloodChange]:
        """Every flood-entry change seen, in order."""
        return [c for e in self.seen if isinstance(e, FdbChanged) for c in e.changes]

    async def wait_for(self, event: KernelEvent) -> int:
        """Wait until event was seen; return its position."""
        await eventually(lambda: event in self.seen)
        return self.seen.index(event)

    async def wait_change(self, change: FloodChange) -> None:
        await eventually(lambda: change in self.changes)

    async def wait_link(
        self, ifindex: int, check: Callable[[VxlanDevice], bool] = lambda d: True
    ) -> VxlanDevice:
        """Wait for a LinkChanged of ifindex whose device passes check; return it."""
        found: list[VxlanDevice] = []

        def seen() -> bool:
            found[:] = [
                e.device
                for e in self.seen
                if isinstance(e, LinkChanged)
                and e.ifindex == ifindex
                and e.device is not None
                and check(e.device)
            ]
            return bool(found)

        await eventually(seen)
        return found[-1]

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def test_link_and_fdb_events(lab: Lab, kern: Kernel) -> None:
    rec = Recorder(kern)
    try:
        idx = lab.vxlan("vx4", "id", "100", "local", "10.0.0.1", "dstport", "4789")
        other = lab.vxlan("vx5", "id", "101", "local", "10.0.0.1", "dstport", "4790")
        # the event carries the device, parsed from the notification itself
        assert await rec.wait_link(idx) == await kern.get_vxlan(idx)
        lab.run("ip", "link", "add", "ve0", "type", "veth", "peer", "name", "ve1")
        veth = lab.ifindex("ve0")

        rec.seen.clear()
        lab.run("ip", "link", "set", "vx4", "up")
        dev = await rec.wait_link(idx, lambda d: d.up)
        assert dev == await kern.get_vxlan(idx)

        rec.seen.clear()
        lab.run("ip", "link", "set", "vx4", "down")
        dev = await rec.wait_link(idx, lambda d: not d.up)
        assert dev == await kern.get_vxlan(idx)

        # Non-flood fdb changes and non-VXLAN links first, then a flood entry as
        # a marker: notifications arrive in order, so once the marker is seen
        # anything the earlier changes produced has been seen too.
        rec.seen.clear()
        lab.run("bridge", "fdb", "add", "00:11:22:33:44:55", "dev", "vx5", "dst", "10.0.0.8")
        lab.run("bridge", "fdb", "append", ZERO, "dev", "vx5", "dst", "10.0.0.9", "port", "5000")
        lab.run("bridge", "fdb", "add", "00:11:22:33:44:77", "dev", "ve0", "self", "permanent")
        lab.run("ip", "link", "set", "ve0", "up")
        lab.run("bridge", "fdb", "append", ZERO, "dev", "vx4", "dst", "10.0.0.7")
        await rec.wait_change(FloodChange(idx, A("10.0.0.7"), True))
        assert rec.changes == [FloodChange(idx, A("10.0.0.7"), True)]
        assert not any(getattr(e, "ifindex", None) == veth for e in rec.seen)

        rec.seen.clear()
        lab.run("bridge", "fdb", "del", ZERO, "dev", "vx4", "dst", "10.0.0.7")
        await rec.wait_change(FloodChange(idx, A("10.0.0.7"), False))

        rec.seen.clear()
        await kern.apply({other: FloodDiff(add=frozenset({A("10.0.0.6")}))})
        await rec.wait_change(FloodChange(other, A("10.0.0.6"), True))

        rec.seen.clear()
        lab.run("ip", "link", "del", "vx4")
        await rec.wait_for(LinkRemoved(idx))
        assert not any(isinstance(e, Resync) for e in rec.seen)
    finally:
        await rec.stop()


async def test_a_bridged_device_changes_with_whole_notifications(lab: Lab, kern: Kernel) -> None:
    """A VXLAN device on a bridge (every Proxmox/libvirt host): the kernel adds an
    AF_BRIDGE notification to each change of the port. Every LinkChanged carries the
    device (no re-read of the kernel), and leaving the bridge is no LinkRemoved."""
    lab.run("ip", "link", "add", "br0", "type", "bridge")
    lab.run("ip", "link", "set", "br0", "up")
    idx = lab.vxlan("vx6", "id", "106", "local", "10.0.0.1", "dstport", "4789", "nolearning")
    lab.run("ip", "link", "set", "vx6", "master", "br0")
    rec = Recorder(kern)
    try:
        await asyncio.sleep(0.05)  # the stream is bound; what came before is not asked about
        rec.seen.clear()
        lab.run("ip", "link", "set", "vx6", "up")
        await rec.wait_link(idx, lambda d: d.up)
        lab.run("ip", "link", "set", "vx6", "down")
        await rec.wait_link(idx, lambda d: not d.up)
        lab.run("ip", "link", "set", "vx6", "nomaster")
        # a marker after the port left: notifications arrive in order, so once the
        # rename is seen, whatever leaving the bridge produced has been seen too
        lab.run("ip", "link", "set", "vx6", "name", "vx6b")
        await rec.wait_link(idx, lambda d: d.name == "vx6b")
        mine = [e for e in rec.seen if getattr(e, "ifindex", None) == idx]
        assert mine and all(isinstance(e, LinkChanged) and e.device is not None for e in mine)
        assert LinkRemoved(idx) not in rec.seen
        # positive control: deleting it is a LinkRemoved
        lab.run("ip", "link", "del", "vx6b")
        await rec.wait_for(LinkRemoved(idx))
    finally:
        await rec.stop()


async def test_events_keep_a_mirror_equal_to_the_kernel(lab: Lab, kern: Kernel) -> None:
    """Filled by one dump, then fed only events: hand-made changes with `bridge` and
    our own writes, mixed; the mirror ends equal to a fresh dump."""
    i4 = lab.vxlan("vx4", "id", "100", "local", "10.0.0.1", "dstport", "4789", "nolearning")
    i5 = lab.vxlan("vx5", "id", "101", "local", "10.0.0.1", "dstport", "4790", "nolearning")
    await kern.apply({i4: FloodDiff(add=addrs("10.4.0.1", 5))})
    mirror = FloodMirror()
    mirror.load(await kern.flood_entries())
    rec = Recorder(kern)
    try:
        lab.run("bridge", "fdb", "del", ZERO, "dev", "vx4", "dst", "10.4.0.1")
        lab.run("bridge", "fdb", "append", ZERO, "dev", "vx4", "dst", "10.4.0.99")
        lab.run("bridge", "fdb", "append", ZERO, "dev", "vx5", "dst", "10.5.0.1")
        diff = FloodDiff(add=frozenset({A("10.4.0.50")}), remove=frozenset({A("10.4.0.2")}))
        await kern.apply({i4: diff})
        mirror.written({i4: diff})
        await kern.apply({i5: FloodDiff(add=frozenset({A("10.5.0.2")}))})  # not recorded
        lab.run("bridge", "fdb", "del", ZERO, "dev", "vx4", "dst", "10.4.0.50")
        marker = FloodChange(i5, A("10.5.0.3"), True)
        lab.run("bridge", "fdb", "append", ZERO, "dev", "vx5", "dst", "10.5.0.3")
        await rec.wait_change(marker)
        mirror.apply(rec.changes)
        truth = await kern.flood_entries()
        assert {i: set(mirror.get(i)) for i in (i4, i5)} == truth
        assert truth == {
            i4: {A("10.4.0.3"), A("10.4.0.4"), A("10.4.0.5"), A("10.4.0.99")},
            i5: {A("10.5.0.1"), A("10.5.0.2"), A("10.5.0.3")},
        }
    finally:
        await rec.stop()


async def test_fdb_listener_gets_changes_and_the_echo_of_a_write_at_once(
    lab: Lab, kern: Kernel
) -> None:
    """events(on_fdb): flood-entry events go to the listener, not the stream; the
    echo of a synchronous write is returned by read_fdb() (not handed to the
    listener) before the caller yields to the loop, and the watcher then finds
    nothing left to report."""
    idx = lab.vxlan("vx4", "id", "100", "local", "10.0.0.1", "dstport", "4789", "nolearning")
    await kern.list_vxlan()
    heard: list[FdbChanged | Resync] = []
    seen: list[KernelEvent] = []

    async def run() -> None:
        async for event in kern.events(heard.append):
            seen.append(event)

    task = asyncio.create_task(run())
    try:
        await asyncio.sleep(0.05)  # the watcher is waiting for notifications
        lab.run("bridge", "fdb", "append", ZERO, "dev", "vx4", "dst", "10.0.0.7")
        await eventually(lambda: bool(heard))  # found by the watcher
        assert heard == [FdbChanged((FloodChange(idx, A("10.0.0.7"), True),))]
        heard.clear()
        result = kern.apply_now({idx: FloodDiff(add=frozenset({A("10.0.0.8")}))})
        assert result is not None and result.added == 1
        echo = kern.read_fdb()  # no await since the write
        assert echo == [FdbChanged((FloodChange(idx, A("10.0.0.8"), True),))]
        assert heard == []  # returned, not called back
        await asyncio.sleep(0.05)
        assert heard == []  # read once, not again by the watcher
        marker = lab.vxlan("vxm", "id", "7", "local", "10.0.0.1", "dstport", "4790")
        await eventually(lambda: any(getattr(e, "ifindex", None) == marker for e in seen))
        assert not any(isinstance(e, FdbChanged) for e in seen)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert kern.read_fdb() == []  # nothing queued
    assert heard == []


async def test_fdb_listener_hears_of_lost_notifications(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernel_mod, "EVENT_RCVBUF", 4096)
    idx = lab.vxlan("vx4", "id", "100", "local", "10.0.0.1", "dstport", "4789")
    async with Kernel(lab.name) as kern:
        await kern.apply({idx: FloodDiff(add=addrs("11.0.0.0", 2000))})
        heard: list[FdbChanged | Resync] = []

        async def run() -> None:
            async for _event in kern.events(heard.append):
                pass

        task = asyncio.create_task(run())
        try:
            await eventually(lambda: any(isinstance(e, Resync) for e in heard))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_bulk_writes_arrive_in_few_batches(lab: Lab, kern: Kernel) -> None:
    idx = lab.vxlan("vx4", "id", "100", "local", "10.0.0.1", "dstport", "4789")
    peers = addrs("11.0.0.0", 5000)
    await kern.apply({idx: FloodDiff(add=peers)})
    # queued before anyone reads: an entry added and deleted again is reported once,
    # as its last state
    gone = A("10.9.9.9")
    await kern.apply({idx: FloodDiff(add=frozenset({gone}))})
    await kern.apply({idx: FloodDiff(remove=frozenset({gone}))})
    rec = Recorder(kern)
    try:
        await eventually(lambda: len(rec.changes) >= len(peers) + 1)
        marker = lab.vxlan("vxm", "id", "7", "local", "10.0.0.1", "dstport", "4790")
        await rec.wait_link(marker)
        assert set(rec.changes) == {FloodChange(idx, p, True) for p in peers} | {
            FloodChange(idx, gone, False)
        }
        assert len(rec.changes) == len(peers) + 1
        assert 1 <= sum(isinstance(e, FdbChanged) for e in rec.seen) <= 5
    finally:
        await rec.stop()


async def test_overflow_yields_resync(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel_mod, "EVENT_RCVBUF", 4096)
    idx = lab.vxlan("vx4", "id", "100", "local", "10.0.0.1", "dstport", "4789")
    async with Kernel(lab.name) as kern:
        await kern.apply({idx: FloodDiff(add=addrs("11.0.0.0", 2000))})
        rec = Recorder(kern)
        try:
            await eventually(lambda: any(isinstance(e, Resync) for e in rec.seen))
            # and it carries on after the overflow
            lab.run("bridge", "fdb", "append", ZERO, "dev", "vx4", "dst", "10.9.9.9")
            after = FloodChange(idx, A("10.9.9.9"), True)
            await eventually(
                lambda: any(
                    isinstance(e, FdbChanged) and after in e.changes
                    for e in rec.seen[[type(e) for e in rec.seen].index(Resync) :]
                )
            )
        finally:
            await rec.stop()


async def test_close_ends_event_stream(lab: Lab) -> None:
    kern = Kernel(lab.name)
    await kern.open()
    seen: list[KernelEvent] = []

    async def consume() -> None:
        async for e in kern.events():
            seen.append(e)

    task = asyncio.create_task(consume())
    idx = lab.vxlan("vx4", "id", "100", "local", "10.0.0.1", "dstport", "4789")
    await eventually(lambda: any(isinstance(e, LinkChanged) and e.ifindex == idx for e in seen))
    await kern.close()
    await asyncio.wait_for(task, 5)


async def test_link_overflow_yields_resync_and_rebinds(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The link socket is pyroute2's: after ENOBUFS it is replaced, then Resync.
    monkeypatch.setattr(kernel_mod, "LINK_RCVBUF", 4096)
    async with Kernel(lab.name) as kern:
        rec = Recorder(kern)
        try:
            await asyncio.sleep(0)  # the recorder is reading
            batch = "".join(
                f"link add vxo{n} type vxlan id {500 + n} local 10.0.0.1 dstport {5000 + n}\n"
                for n in range(60)
            )
            # `ip -batch` runs while the event loop is blocked: the socket overflows.
            lab.batch(batch)
            await eventually(lambda: any(isinstance(e, Resync) for e in rec.seen))
            idx = lab.vxlan("vxafter", "id", "9", "local", "10.0.0.1", "dstport", "4999")
            await rec.wait_link(idx)
            assert len(await kern.list_vxlan()) == 61
        finally:
            await rec.stop()


async def test_deleted_vxlan_index_reused_by_other_device_is_not_written(
    lab: Lab, kern: Kernel
) -> None:
    # apply() trusts ifindexes already seen as VXLAN until their deletion is
    # notified; an index reused (explicitly) by a veth must not get flood entries.
    idx = lab.vxlan("vx4", "id", "100", "local", "10.0.0.1", "dstport", "4789")
    assert [d.ifindex for d in await kern.list_vxlan()] == [idx]
    rec = Recorder(kern)
    try:
        lab.run("ip", "link", "del", "vx4")
        await rec.wait_for(LinkRemoved(idx))
    finally:
        await rec.stop()
    lab.run("ip", "link", "add", "ve0", "index", str(idx), "type", "veth", "peer", "name", "ve1")
    result = await kern.apply({idx: FloodDiff(add=frozenset({A("10.0.0.7")}))})
    assert (result.added, [(e.ifindex, e.errno) for e in result.errors]) == (0, [(idx, 19)])
    assert [e for e in lab.fdb() if e["mac"] == ZERO] == []
