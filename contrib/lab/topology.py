"""Network-namespace lab: an underlay bridge, N hosts with VXLAN devices, one service node.

Lab and test code only: it drives ``ip``/``bridge`` (iproute2) through subprocesses.
Daemon code never does that.

Layout for a lab with prefix ``P`` (see contrib/lab/README.md)::

    P-ul   underlay namespace: bridge "ulbr" (198.18.0.254/24 or fd00:198:18::fe/64),
           one veth "h<i>" per host enslaved to it; vxsnd runs here (``lab.service``)
    P-h<i> host i: veth "ul0" (198.18.0.<i>/24 or fd00:198:18::<i hex>/64, nodad), lo up,
           per VNI: vxlan "vx<vni>" (id, local, dstport 4789, nolearning) enslaved to
           bridge "br<vni>" carrying the overlay address 100.<64+s//256>.<s%256>.<i>/24
           with s = vni % 16384 (VNI 100 -> 100.64.100.<i>/24)

Creation is batched: one ``ip -batch`` for all namespaces, one for the underlay
namespace, then one per host, the host batches running in parallel.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

NETNS_DIR = Path("/run/netns")
UNDERLAY_V4 = ipaddress.IPv4Network("198.18.0.0/24")
UNDERLAY_V6 = ipaddress.IPv6Network("fd00:198:18::/64")
OVERLAY_SPACE = ipaddress.IPv4Network("100.64.0.0/10")
OVERLAY_SUBNETS = 1 << 14  # /24 subnets in 100.64.0.0/10
SERVICE_INDEX = 254  # 198.18.0.254, fd00:198:18::fe
MAX_HOST_INDEX = 253
VXLAN_PORT = 4789
UNDERLAY_MTU = 9000  # jumbo underlay, so overlay frames of 1500 bytes fit after encapsulation
UNDERLAY_BRIDGE = "ulbr"
HOST_UPLINK = "ul0"
IFNAMSIZ = 15
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{2,9}$")
_ZERO_MAC = "00:00:00:00:00:00"
_MAC_BASE = "02:76:78:6c:00"  # locally administered, "vxl"; last byte = host index
_CLONE_NEWNET = 0x40000000
_CMD_TIMEOUT = 30.0


class LabError(RuntimeError):
    """An ip/bridge command the lab relies on failed."""


def new_prefix(base: str = "vxt") -> str:
    """A fresh prefix: ``<base><pid, last digits><3 random hex>``, 10 chars at most (as
    many pid digits as the base leaves room for), not used by any namespace that
    exists now."""
    digits = 10 - 3 - len(base)
    if digits < 1:
        raise ValueError(f"lab prefix base {base!r} is longer than 6 chars")
    for _ in range(100):
        prefix = f"{base}{os.getpid() % 10**digits}{secrets.token_hex(2)[:3]}"
        _check_prefix(prefix)
        if not list_namespaces(prefix):
            return prefix
    raise LabError(f"no free lab prefix for base {base!r}")


def _check_prefix(prefix: str) -> None:
    if not _PREFIX_RE.match(prefix):
        raise ValueError(
            f"lab prefix {prefix!r} must be 3-10 chars of [a-z0-9] starting with a letter"
        )


def overlay_network(vni: int) -> ipaddress.IPv4Network:
    """The /24 overlay subnet used on ``br<vni>``: 100.64.0.0/10 indexed by vni % 16384."""
    _check_vni(vni)
    slot = vni % OVERLAY_SUBNETS
    base = int(OVERLAY_SPACE.network_address) + (slot << 8)
    return ipaddress.IPv4Network((base, 24))


def overlay_address(vni: int, index: int) -> str:
    return str(overlay_network(vni).network_address + index)


def overlay_broadcast(vni: int) -> str:
    return str(overlay_network(vni).broadcast_address)


def _check_vni(vni: int) -> None:
    if not 1 <= vni <= 0xFFFFFF:
        raise ValueError(f"VNI {vni} out of range 1..16777215")


def underlay_mac(index: int) -> str:
    """Fixed MAC of a node's underlay interface (``ul0`` of host i, ``ulbr`` of the service)."""
    return f"{_MAC_BASE}:{index:02x}"


def _setns_net(path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def socket_in_netns(
    ns: str,
    family: int = socket.AF_INET,
    kind: int = socket.SOCK_DGRAM,
    proto: int = 0,
) -> socket.socket:
    """A socket that lives in namespace ``ns``, created from this process.

    A short-lived thread enters the namespace, creates the socket and exits; the socket
    keeps its namespace for life (bind, SO_BINDTODEVICE and routing all happen there),
    while the calling thread never leaves its own namespace.
    """
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def enter_and_create() -> None:
        try:
            _setns_net(NETNS_DIR / ns)
            made.append(socket.socket(family, kind, proto))
        except BaseException as exc:
            failed.append(exc)

    worker = threading.Thread(target=enter_and_create, name=f"netns-{ns}", daemon=True)
    worker.start()
    worker.join()
    if failed:
        raise failed[0]
    return made[0]


def list_namespaces(prefix: str) -> list[str]:
    """Namespaces named ``<prefix>-*`` (as ``ip netns`` stores them under /run/netns)."""
    _check_prefix(prefix)
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(f"{prefix}-"))


def _ns_inode(name: str) -> tuple[int, int] | None:
    try:
        st = os.stat(NETNS_DIR / name)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _entering(pid: str, names: set[str]) -> bool:
    """Is ``pid`` an ``ip netns exec <one of names> ...`` that has not exec'd yet?"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return (
        len(argv) > 4
        and os.path.basename(argv[0]) == b"ip"
        and argv[1:3] == [b"netns", b"exec"]
        and argv[3].decode(errors="replace") in names
    )


def kill_ns_processes(names: Iterable[str], sig: int = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to every process living in one of the named namespaces.

    A namespace with a live process survives ``ip netns del`` (with its interfaces
    and sockets), so teardown kills what still runs there first, including an
    ``ip netns exec`` that has not entered its namespace yet (a program started just
    before the teardown).
    """
    names = set(names)
    wanted = {ino for ino in (_ns_inode(n) for n in names) if ino is not None}
    if not names:
        return []
    killed: list[int] = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in wanted or _entering(entry, names):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), sig)
                killed.append(int(entry))
    return killed


def _delete_namespaces(names: Sequence[str]) -> None:
    if not names:
        return
    kill_ns_processes(names)
    # -force: keep going past namespaces that are already gone.
    subprocess.run(
        ["ip", "-force", "-batch", "-"],
        input="".join(f"netns del {n}\n" for n in names),
        capture_output=True,
        text=True,
        timeout=_CMD_TIMEOUT,
        check=False,
    )


def sweep(prefix: str) -> list[str]:
    """Remove leftover namespaces ``<prefix>-*`` (and kill their processes)."""
    names = list_namespaces(prefix)
    _delete_namespaces(names)
    return names


def _batch_argv(ns: str | None, force: bool = False) -> list[str]:
    argv = ["ip"]
    if ns is not None:
        argv += ["-n", ns]
    if force:
        argv.append("-force")
    return [*argv, "-batch", "-"]


def ip_batch(lines: Sequence[str], ns: str | None = None, *, force: bool = False) -> None:
    """Run ``ip [-n ns] -batch -`` over ``lines``; raise LabError on failure."""
    if not lines:
        return
    proc = subprocess.run(
        _batch_argv(ns, force),
        input="".join(f"{line}\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=_CMD_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0 and not force:
        raise LabError(_batch_failure(ns, lines, proc.stderr))


def _batch_failure(ns: str | None, lines: Sequence[str], stderr: str) -> str:
    where = f"in namespace {ns}" if ns else "in the root namespace"
    return f"ip -batch {where} failed: {stderr.strip()}\n  " + "\n  ".join(lines)


def _parallel_batches(jobs: Sequence[tuple[str, Sequence[str]]], *, force: bool = False) -> None:
    """Run one ``ip -n NS -batch`` per (ns, lines) concurrently; raise on any failure
    (with ``force``: keep going past errors, raise nothing)."""
    running: list[tuple[str, Sequence[str], subprocess.Popen[str]]] = []
    try:
        for ns, lines in jobs:
            popen = subprocess.Popen(
                _batch_argv(ns, force),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            running.append((ns, lines, popen))
        errors: list[str] = []
        for ns, lines, popen in running:
            _, err = popen.communicate("".join(f"{line}\n" for line in lines), _CMD_TIMEOUT)
            if popen.returncode != 0 and not force:
                errors.append(_batch_failure(ns, lines, err))
        if errors:
            raise LabError("\n".join(errors))
    finally:
        for _, _, popen in running:
            if popen.poll() is None:
                popen.kill()
                popen.wait()


class Node:
    """A namespace of the lab that commands can be run in."""

    def __init__(self, name: str, index: int, underlay: str) -> None:
        self.name = name  # netns name
        self.index = index  # last byte of the underlay address and MAC (service: 254)
        self.underlay = underlay  # underlay address (no prefix length)

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside this namespace (``ip netns exec`` execs it)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def exec(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 10.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the namespace and capture its output (text)."""
        proc = subprocess.run(
            self.argv(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise LabError(
                f"{' '.join(argv)} in {self.name} exited {proc.returncode}: "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in the namespace; the Popen's pid is the program's own pid."""
        return subprocess.Popen(self.argv(argv), **kw)

    def socket(
        self, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM, proto: int = 0
    ) -> socket.socket:
        """A socket in this namespace, owned by the calling process (close it)."""
        return socket_in_netns(self.name, family, kind, proto)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.underlay}>"


class Host(Node):
    """One hypervisor: namespace ``<prefix>-h<index>``."""

    def __init__(self, name: str, index: int, underlay: str) -> None:
        super().__init__(name, index, underlay)
        self._vnis: set[int] = set()

    @property
    def vnis(self) -> frozenset[int]:
        return frozenset(self._vnis)

    def overlay(self, vni: int) -> str:
        """This host's address on ``br<vni>``."""
        return overlay_address(vni, self.index)

    @staticmethod
    def vxlan_dev(vni: int) -> str:
        return f"vx{vni}"

    @staticmethod
    def bridge_dev(vni: int) -> str:
        return f"br{vni}"


class Lab:
    """The namespace lab. Use as a context manager, or call build() and destroy()."""

    def __init__(
        self,
        prefix: str,
        hosts: int,
        vnis: Sequence[int],
        ipv6_underlay: bool = False,
        static_neighbours: bool = True,
    ) -> None:
        _check_prefix(prefix)
        if not 0 <= hosts <= MAX_HOST_INDEX:
            raise ValueError(f"hosts must be 0..{MAX_HOST_INDEX}")
        for vni in vnis:
            self._check_overlay_slot(vni, set(vnis) - {vni})
        self.prefix = prefix
        self.ipv6_underlay = ipv6_underlay
        self.static_neighbours = static_neighbours
        self.vnis: tuple[int, ...] = tuple(vnis)
        self.hosts: list[Host] = []
        self.service = Node(f"{prefix}-ul", SERVICE_INDEX, self._underlay_addr(SERVICE_INDEX))
        self._initial_hosts = hosts
        self._next_index = 1
        self._known_vnis: set[int] = set(vnis)
        self._built = False
        self._underlay_ready = False

    # -- names and addresses -------------------------------------------------------------

    @property
    def service_ns(self) -> str:
        """The underlay namespace: vxsnd runs here, reachable from every host."""
        return self.service.name

    @property
    def service_addr(self) -> str:
        return self.service.underlay

    @property
    def underlay_plen(self) -> int:
        return UNDERLAY_V6.prefixlen if self.ipv6_underlay else UNDERLAY_V4.prefixlen

    def _underlay_addr(self, index: int) -> str:
        net: ipaddress.IPv4Network | ipaddress.IPv6Network
        net = UNDERLAY_V6 if self.ipv6_underlay else UNDERLAY_V4
        return str(net.network_address + index)

    def namespaces(self) -> list[str]:
        """Every namespace this lab owns (whether or not it exists right now)."""
        return [self.service_ns, *(h.name for h in self.hosts)]

    def host(self, index: int) -> Host:
        for h in self.hosts:
            if h.index == index:
                return h
        raise KeyError(f"no host h{index} in lab {self.prefix}")

    def _check_overlay_slot(self, vni: int, others: Iterable[int]) -> None:
        net = overlay_network(vni)
        for other in others:
            if other != vni and overlay_network(other) == net:
                raise ValueError(f"VNIs {vni} and {other} would share overlay subnet {net}")

    # -- build / destroy -----------------------------------------------------------------

    def build(self) -> Lab:
        if self._built:
            raise LabError(f"lab {self.prefix} is already built")
        leftovers = list_namespaces(self.prefix)
        if leftovers:
            raise LabError(
                f"namespaces with prefix {self.prefix!r} exist ({', '.join(leftovers)}): "
                f"in use by another lab, or stale (remove with sweep({self.prefix!r}))"
            )
        self._built = True
        try:
            new = [self._new_host() for _ in range(self._initial_hosts)]
            ip_batch([f"netns add {n}" for n in (self.service_ns, *(h.name for h in new))])
            ip_batch(self._underlay_lines(new), self.service_ns)
            self._underlay_ready = True
            _parallel_batches([(h.name, self._host_lines(h, self.vnis)) for h in new])
            for h in new:
                h._vnis.update(self.vnis)
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        """Remove every namespace of the lab; tolerant of anything already gone."""
        _delete_namespaces([*self.namespaces(), *list_namespaces(self.prefix)])
        self._built = False
        self._underlay_ready = False

    def __enter__(self) -> Lab:
        return self.build()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    def _new_host(self) -> Host:
        index = self._next_index
        if index > MAX_HOST_INDEX:
            raise LabError(f"lab {self.prefix} ran out of host indexes (max {MAX_HOST_INDEX})")
        self._next_index += 1
        name = f"{self.prefix}-h{index}"
        assert len(name) <= IFNAMSIZ, name
        host = Host(name, index, self._underlay_addr(index))
        self.hosts.append(host)
        return host

    def _underlay_lines(self, new_hosts: Sequence[Host]) -> list[str]:
        lines = []
        if not self._underlay_ready:
            lines += [
                "link set lo up",
                f"link add {UNDERLAY_BRIDGE} mtu {UNDERLAY_MTU}"
                f" address {underlay_mac(SERVICE_INDEX)} type bridge mcast_snooping 0",
                f"address add {self.service_addr}/{self.underlay_plen} dev {UNDERLAY_BRIDGE}"
                + (" nodad" if self.ipv6_underlay else ""),
                f"link set {UNDERLAY_BRIDGE} up",
            ]
        for h in new_hosts:
            port = f"h{h.index}"
            lines += [
                f"link add {port} mtu {UNDERLAY_MTU} type veth"
                f" peer name {HOST_UPLINK} mtu {UNDERLAY_MTU}"
                f" address {underlay_mac(h.index)} netns {h.name}",
                f"link set {port} addrgenmode none",
                f"link set {port} master {UNDERLAY_BRIDGE}",
                f"link set {port} up",
            ]
        lines += self._neigh_lines(UNDERLAY_BRIDGE, new_hosts)
        return lines

    def _neigh_lines(self, dev: str, nodes: Iterable[Node], verb: str = "replace") -> list[str]:
        """Permanent underlay neighbour entries: with N hosts on one broadcast domain, N
        simultaneous ARP/ND storms overflow the veth backlog (netdev_max_backlog) and leave
        FAILED entries, so the lab resolves the underlay statically (fixed MACs)."""
        if not self.static_neighbours:
            return []
        if verb == "del":
            return [f"neigh del {n.underlay} dev {dev}" for n in nodes]
        return [
            f"neigh {verb} {n.underlay} lladdr {underlay_mac(n.index)} dev {dev} nud permanent"
            for n in nodes
        ]

    def _host_lines(self, h: Host, vnis: Iterable[int]) -> list[str]:
        nodad = " nodad" if self.ipv6_underlay else ""
        lines = [
            "link set lo up",
            f"address add {h.underlay}/{self.underlay_plen} dev {HOST_UPLINK}{nodad}",
            f"link set {HOST_UPLINK} up",
            *self._neigh_lines(HOST_UPLINK, [self.service, *(o for o in self.hosts if o is not h)]),
        ]
        for vni in vnis:
            lines += self._vni_lines(h, vni)
        return lines

    def _vni_lines(self, h: Host, vni: int) -> list[str]:
        vx, br = h.vxlan_dev(vni), h.bridge_dev(vni)
        return [
            f"link add {br} type bridge mcast_snooping 0",
            f"link set {br} addrgenmode none",  # keep IPv6 chatter out of the overlay
            f"link add {vx} type vxlan id {vni} local {h.underlay} dstport {VXLAN_PORT} nolearning",
            f"link set {vx} addrgenmode none",
            f"link set {vx} master {br}",
            f"address add {h.overlay(vni)}/24 dev {br}",
            f"link set {vx} up",
            f"link set {br} up",
        ]

    # -- changes to a running lab ----------------------------------------------------------

    def _require_built(self) -> None:
        if not self._built:
            raise LabError(f"lab {self.prefix} is not built")

    def _require_host(self, host: Host) -> None:
        if host not in self.hosts:
            raise LabError(f"{host!r} is not a host of lab {self.prefix}")

    def add_host(self, vnis: Sequence[int] | None = None) -> Host:
        """Add a host (next unused index; indexes are never reused) with ``vnis``
        (default: the lab's VNIs)."""
        self._require_built()
        vnis = self.vnis if vnis is None else tuple(vnis)
        for vni in vnis:
            self._check_overlay_slot(vni, self._known_vnis)
        host = self._new_host()
        try:
            ip_batch([f"netns add {host.name}"])
            ip_batch(self._underlay_lines([host]), self.service_ns)
            ip_batch(self._host_lines(host, vnis), host.name)
            _parallel_batches(
                [
                    (o.name, self._neigh_lines(HOST_UPLINK, [host]))
                    for o in self.hosts
                    if o is not host
                ]
                if self.static_neighbours
                else []
            )
        except BaseException:
            self.hosts.remove(host)
            _delete_namespaces([host.name])
            raise
        host._vnis.update(vnis)
        self._known_vnis.update(vnis)
        return host

    def remove_host(self, host: Host) -> None:
        """Unplug the host from the underlay and delete its namespace (and processes)."""
        self._require_host(host)
        # Delete the underlay end first: synchronous, unlike namespace teardown.
        ip_batch(
            [f"link del h{host.index}", *self._neigh_lines(UNDERLAY_BRIDGE, [host], "del")],
            self.service_ns,
            force=True,
        )
        _delete_namespaces([host.name])
        self.hosts.remove(host)
        if self.static_neighbours:
            _parallel_batches(
                [(o.name, self._neigh_lines(HOST_UPLINK, [host], "del")) for o in self.hosts],
                force=True,
            )

    def add_vni(self, host: Host, vni: int) -> None:
        """Create ``br<vni>`` and ``vx<vni>`` on the host, both up."""
        self._require_host(host)
        if vni in host._vnis:
            raise LabError(f"{host.name} already has VNI {vni}")
        self._check_overlay_slot(vni, self._known_vnis)
        ip_batch(self._vni_lines(host, vni), host.name)
        host._vnis.add(vni)
        self._known_vnis.add(vni)

    def del_vni(self, host: Host, vni: int) -> None:
        """Delete ``vx<vni>`` (then ``br<vni>``) from the host; tolerant if missing."""
        self._require_host(host)
        ip_batch(
            [f"link del {host.vxlan_dev(vni)}", f"link del {host.bridge_dev(vni)}"],
            host.name,
            force=True,
        )
        host._vnis.discard(vni)

    def set_vni_up(self, host: Host, vni: int, up: bool) -> None:
        """Set the vxlan device ``vx<vni>`` administratively up or down."""
        self._require_host(host)
        ip_batch([f"link set {host.vxlan_dev(vni)} {'up' if up else 'down'}"], host.name)

    # -- reading the kernel ---------------------------------------------------------------

    def fdb_flood(self, host: Host, vni: int) -> set[str]:
        """The flood list of ``vx<vni>``: destinations of its all-zero-MAC fdb entries."""
        proc = subprocess.run(
            ["bridge", "-n", host.name, "-j", "fdb", "show", "dev", host.vxlan_dev(vni)],
            capture_output=True,
            text=True,
            timeout=_CMD_TIMEOUT,
            check=False,
        )
        if proc.returncode != 0:
            raise LabError(f"bridge fdb show in {host.name} failed: {proc.stderr.strip()}")
        entries: list[dict[str, Any]] = json.loads(proc.stdout or "[]")
        return {
            str(ipaddress.ip_address(e["dst"]))
            for e in entries
            if e.get("mac") == _ZERO_MAC and "dst" in e
        }

    def link_state(self, host: Host, dev: str) -> dict[str, Any] | None:
        """``ip -j -d link show dev`` in the host as a dict, or None when it doesn't exist."""
        proc = subprocess.run(
            ["ip", "-n", host.name, "-j", "-d", "link", "show", "dev", dev],
            capture_output=True,
            text=True,
            timeout=_CMD_TIMEOUT,
            check=False,
        )
        if proc.returncode != 0:
            return None
        links: list[dict[str, Any]] = json.loads(proc.stdout or "[]")
        return links[0] if links else None
