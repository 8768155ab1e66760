"""Join and leave convergence of vxsnd + vxrd in the namespace lab, seen from the kernel.

Run as root: ``python -m tests.benchmarks.bench_convergence [--hosts 10 30] [--joins 20]``.

For each N: a lab of N hosts with VNI 100 (host N is the one that joins and leaves),
vxsnd in the underlay namespace (SQLite registry in a temp dir), vxrd on every host.

- join: ``ip link set vx100 up`` on the joiner (its device exists, down); the sample
  runs from the kernel's RTM_NEWLINK with IFF_UP for vx100 in the joiner's namespace
  to the last RTM_NEWNEIGH (AF_BRIDGE, all-zero MAC, dst = joiner) among the N-1 other
  hosts.
- leave: ``ip link del vx100`` on the joiner; from its RTM_DELLINK to the last
  RTM_DELNEIGH of that entry among the others. The device is then recreated down.

The observer is this process: one NETLINK_ROUTE socket per namespace (RTMGRP_LINK |
RTMGRP_NEIGH), all read by one thread at SCHED_FIFO priority (netlink has no kernel
timestamps, so the thread stamps each message as it reads it; the real-time priority
keeps 30 busy daemons on 2 cores from delaying the stamp). Link and fdb events are
stamped by the same thread with the same clock.

Where the time goes: an AF_PACKET socket on the underlay bridge (kernel timestamps)
sees the control-plane datagrams: the joiner's register arriving at vxsnd, and each
membership push leaving it. The stages are medians over the samples:
``register`` (link event -> register on the wire: vxrd on the joiner), ``vxsnd``
(register -> first push: batch window + registry transaction), ``fan-out`` (first ->
last push), ``apply`` (push to a host -> its fdb event, median over hosts and samples:
vxrd receive + reconcile + netlink write), ``tail`` (last push -> last fdb event).

Baseline (``--baseline``, on by default): before the daemons start, this process plays
controller itself: on the joiner's link event it writes (or deletes) the entry in the
N-1 namespaces with pre-opened netlink sockets. Same observer, no control plane: the
floor of "notice a kernel event in Python and program N-1 kernels", for ratios.

Floor (``--floor``, on by default): the same, but through the smallest possible
Python agent: on the joiner's link event this process sends one UDP datagram from
the underlay namespace to a minimal asyncio process on each other host, which writes
the netlink message the datagram carries. The floor of any design that wakes one
Python process per host, on this machine: vxrd's real work is what lies above it.

Goal at 30 hosts: p50 under 10 ms, p99 under 50 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from contrib.lab import Lab, new_prefix
from contrib.lab.topology import VXLAN_PORT, Host, Node, socket_in_netns

VNI = 100
PORT = 10001
DEADLINE = 5.0  # seconds for one sample to converge
GOAL_P50_MS, GOAL_P99_MS = 10.0, 50.0

# netlink / rtnetlink constants
NETLINK_ROUTE = 0
RTMGRP_LINK, RTMGRP_NEIGH = 0x1, 0x4
RTM_NEWLINK, RTM_DELLINK, RTM_NEWNEIGH, RTM_DELNEIGH = 16, 17, 28, 29
NLM_F_REQUEST, NLM_F_CREATE, NLM_F_APPEND = 0x1, 0x400, 0x800
IFLA_IFNAME = 3
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT, NTF_SELF = 0x80, 0x02
IFF_UP = 0x1
_NLMSG = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_NDMSG = struct.Struct("=BxxxiHBB")
_RTA = struct.Struct("=HH")
ZERO_MAC = bytes(6)

# capture
ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35
MSG_REGISTER, MSG_MEMBERSHIP = 1, 2


# -- netlink ------------------------------------------------------------------------------


def _attrs(data: bytes, offset: int) -> dict[int, bytes]:
    out = {}
    while offset + 4 <= len(data):
        length, kind = _RTA.unpack_from(data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return out


@dataclass(frozen=True)
class Event:
    ns: str
    kind: str  # "up", "dellink", "newneigh", "delneigh"
    detail: str  # ifname, or the fdb entry's dst address
    t: int  # time.time_ns() when read


def parse(ns: str, data: bytes, t: int) -> list[Event]:
    events = []
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _, _, _ = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size:
            break
        body = offset + _NLMSG.size
        if kind in (RTM_NEWLINK, RTM_DELLINK):
            _, _, _, flags, _ = _IFINFO.unpack_from(data, body)
            name = _attrs(data[: offset + length], body + _IFINFO.size).get(IFLA_IFNAME, b"")
            ifname = name.rstrip(b"\0").decode()
            if kind == RTM_DELLINK:
                events.append(Event(ns, "dellink", ifname, t))
            elif flags & IFF_UP:
                events.append(Event(ns, "up", ifname, t))
        elif kind in (RTM_NEWNEIGH, RTM_DELNEIGH):
            family = data[body]
            if family == socket.AF_BRIDGE:
                attrs = _attrs(data[: offset + length], body + _NDMSG.size)
                dst = attrs.get(NDA_DST)
                if attrs.get(NDA_LLADDR) == ZERO_MAC and dst is not None:
                    what = "newneigh" if kind == RTM_NEWNEIGH else "delneigh"
                    events.append(Event(ns, what, str(ipaddress.ip_address(dst)), t))
        offset += (length + 3) & ~3
    return events


def neigh_request(kind: int, ifindex: int, dst: str) -> bytes:
    """RTM_NEWNEIGH (append) / RTM_DELNEIGH of the all-zero entry ``dst`` on ``ifindex``."""
    addr = ipaddress.ip_address(dst).packed
    attrs = b""
    for attr, value in ((NDA_LLADDR, ZERO_MAC), (NDA_DST, addr)):
        rta = _RTA.pack(4 + len(value), attr) + value
        attrs += rta + b"\0" * (-len(rta) % 4)
    body = _NDMSG.pack(socket.AF_BRIDGE, ifindex, NUD_PERMANENT, NTF_SELF, 0) + attrs
    flags = NLM_F_REQUEST | (NLM_F_CREATE | NLM_F_APPEND if kind == RTM_NEWNEIGH else 0)
    return _NLMSG.pack(_NLMSG.size + len(body), kind, flags, 0, 0) + body


class Observer:
    """One netlink listener per namespace, read by a single real-time thread.

    ``react`` (optional) runs in the reader thread on every event: the baseline's
    controller.
    """

    def __init__(self, namespaces: Sequence[str]) -> None:
        self.events: list[Event] = []
        self.cond = threading.Condition()
        self.react: Callable[[Event], None] | None = None
        self.socks: dict[int, tuple[str, socket.socket]] = {}
        for ns in namespaces:
            sock = socket_in_netns(ns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind((0, RTMGRP_LINK | RTMGRP_NEIGH))
            sock.setblocking(False)
            self.socks[sock.fileno()] = (ns, sock)
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False
        self.realtime = False
        self._thread = threading.Thread(target=self._run, name="observer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))  # this thread only
            self.realtime = True
        poller = select.epoll()
        poller.register(self._wake_r, select.EPOLLIN)
        for fd in self.socks:
            poller.register(fd, select.EPOLLIN)
        while not self._stop:
            for fd, _ in poller.poll():
                if fd == self._wake_r:
                    continue
                ns, sock = self.socks[fd]
                while True:
                    try:
                        data = sock.recv(1 << 16)
                    except BlockingIOError:
                        break
                    except OSError:  # ENOBUFS: note it, keep going
                        self.events.append(Event(ns, "overflow", "", time.time_ns()))
                        continue
                    got = parse(ns, data, time.time_ns())
                    if got:
                        if self.react is not None:
                            for ev in got:
                                self.react(ev)
                        with self.cond:
                            self.events.extend(got)
                            self.cond.notify_all()
        poller.close()

    def wait_for(
        self, check: Callable[[list[Event]], bool], timeout: float = DEADLINE
    ) -> list[Event] | None:
        """Wait until ``check(events)``; return the events seen, or None on timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not check(self.events):
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return list(self.events)

    def clear(self) -> None:
        with self.cond:
            self.events.clear()

    def close(self) -> None:
        self._stop = True
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        for _, sock in self.socks.values():
            sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


# The floor's agent: an asyncio process that writes every datagram it receives to
# rtnetlink as it is (the controller sends ready-made RTM_NEWNEIGH/RTM_DELNEIGH).
FLOOR_AGENT = """
import asyncio, socket, sys
nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
nl.bind((0, 0))
class Agent(asyncio.DatagramProtocol):
    def datagram_received(self, data, addr):
        nl.send(data)
        try:
            while True:
                nl.recv(65536, socket.MSG_DONTWAIT)  # acks of earlier requests, if any
        except BlockingIOError:
            pass
async def main():
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Agent, local_addr=(sys.argv[1], int(sys.argv[2])))
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""
FLOOR_PORT = 10002


# -- control-plane capture ------------------------------------------------------------------


@dataclass(frozen=True)
class Datagram:
    t: int  # kernel timestamp, ns (CLOCK_REALTIME)
    src: str
    dst: str
    kind: int


class Capture:
    """AF_PACKET on the underlay bridge: vxflood datagrams to and from vxsnd."""

    def __init__(self, lab: Lab) -> None:
        # ETH_P_ALL: a socket bound to one protocol sees received packets only
        self.sock = lab.service.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("ulbr", ETH_P_ALL))
        self.sock.setblocking(False)

    def drain(self) -> list[Datagram]:
        out: list[Datagram] = []
        while True:
            try:
                data, anc, _, addr = self.sock.recvmsg(2048, 64)
            except BlockingIOError:
                return out
            if addr[1] != ETH_P_IP:
                continue
            t = 0
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("=qq", value[:16])
                    t = sec * 1_000_000_000 + nsec
            dgram = self._parse(data, t)
            if dgram is not None:
                out.append(dgram)

    @staticmethod
    def _parse(pkt: bytes, t: int) -> Datagram | None:
        if len(pkt) < 28 or pkt[9] != socket.IPPROTO_UDP:
            return None
        ihl = (pkt[0] & 0x0F) * 4
        sport, dport = struct.unpack_from("!HH", pkt, ihl)
        if PORT not in (sport, dport):
            return None
        payload = pkt[ihl + 8 :]
        if len(payload) < 4 or payload[:2] != b"VF":
            return None
        src, dst = socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20])
        return Datagram(t, src, dst, payload[3])

    def close(self) -> None:
        self.sock.close()


# -- samples --------------------------------------------------------------------------------


@dataclass
class Sample:
    start: int  # ns, the joiner's link event
    done: int  # ns, the last fdb event among the others
    stages: dict[str, float] = field(default_factory=dict)  # ms

    @property
    def ms(self) -> float:
        return (self.done - self.start) / 1e6


@dataclass
class Result:
    n: int
    op: str
    samples: list[Sample] = field(default_factory=list)
    timeouts: int = 0
    apply_ms: list[float] = field(default_factory=list)  # push -> fdb event, per host
    cpu_ms: dict[str, float] = field(default_factory=dict)  # daemon CPU per op (ms)
    agent_cpu_ms: float | None = None  # floor rows: one floor agent's CPU per op (ms)


def schedstat_ns(pid: int) -> int:
    """CPU time so far of a process (ns, /proc/PID/schedstat); 0 once it is gone."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except OSError:
        return 0


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


class Bench:
    def __init__(
        self,
        n: int,
        workdir: Path,
        quiet: bool,
        vxsnd_args: Sequence[str] = (),
        db_dir: Path | None = None,
    ) -> None:
        self.n = n
        self.vxsnd_args = list(vxsnd_args)
        self.db = (db_dir or workdir) / f"vxflood-conv-{os.getpid()}-{n}.db"
        self.workdir = workdir
        self.quiet = quiet
        self.lab = Lab(new_prefix("vxc"), hosts=n, vnis=[VNI])
        self.procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    @property
    def joiner(self) -> Host:
        return self.lab.hosts[-1]

    @property
    def others(self) -> list[Host]:
        return self.lab.hosts[:-1]

    def log(self, text: str) -> None:
        if not self.quiet:
            print(f"  [N={self.n}] {text}", file=sys.stderr, flush=True)

    # lab and daemons

    def ifindex(self, host: Host, dev: str) -> int:
        out = host.exec(["ip", "-j", "link", "show", "dev", dev]).stdout
        return int(json.loads(out)[0]["ifindex"])

    def recreate_down(self) -> None:
        j = self.joiner
        j.exec(
            ["ip", "-batch", "-"],
            input=(
                f"link add vx{VNI} type vxlan id {VNI} local {j.underlay} dstport {VXLAN_PORT}"
                " nolearning\n"
                f"link set vx{VNI} addrgenmode none\n"
                f"link set vx{VNI} master br{VNI}\n"
            ),
        )

    def start_daemons(self) -> None:
        lab = self.lab
        self._popen(
            lab.service,
            "vxsnd",
            [
                *("-m", "vxsnd"),
                *("--listen", f"{lab.service_addr}:{PORT}"),
                *("--db", f"sqlite:///{self.db}"),
                *("--log-level", "WARNING"),
                *self.vxsnd_args,
            ],
        )
        deadline = time.monotonic() + 30
        while not lab.service.exec(["ss", "-Hlun", "sport", f"= :{PORT}"]).stdout.strip():
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("vxsnd did not start listening within 30 s")
            time.sleep(0.05)
        for h in lab.hosts:
            self._popen(
                h,
                f"vxrd-h{h.index}",
                [
                    *("-m", "vxrd"),
                    *("--server", f"{lab.service_addr}:{PORT}"),
                    *("--node-id", f"h{h.index}"),
                    *("--status-socket", str(self.workdir / f"h{h.index}.sock")),
                    *("--log-level", "WARNING"),
                ],
            )

    def _popen(self, node: Node, label: str, args: list[str]) -> None:
        log = open(self.workdir / f"{label}.log", "ab")  # noqa: SIM115 (closed in stop)
        proc = node.popen(
            [sys.executable, *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.procs.append((label, proc, log))

    def cpu_ns(self) -> dict[str, int]:
        """CPU time so far (ns, from /proc/PID/schedstat) of vxsnd, of all vxrds together,
        and of the joiner's vxrd alone (it applies a whole snapshot on a join, where every
        other vxrd applies one change)."""
        out = {"vxsnd": 0, "vxrd": 0, "joiner": 0}
        joiner = f"vxrd-h{self.joiner.index}"
        for label, proc, _ in self.procs:
            ns = schedstat_ns(proc.pid)
            out["vxsnd" if label == "vxsnd" else "vxrd"] += ns
            if label == joiner:
                out["joiner"] += ns
        return out

    def _check_alive(self) -> None:
        for label, proc, log in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{label} exited {proc.returncode}; log {log.name}")

    def stop(self) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc, log in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            log.close()
        self.procs.clear()

    def wait_mesh(self, timeout: float = 120.0) -> float:
        """Wait until the N-1 others have full lists (the joiner is down) and return s."""
        started = time.monotonic()
        want = {h: {o.underlay for o in self.others if o is not h} for h in self.others}
        while True:
            self._check_alive()
            if all(self.lab.fdb_flood(h, VNI) == want[h] for h in self.others):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"N={self.n}: flood lists incomplete after {timeout:.0f}s")
            time.sleep(0.2)

    # one sample

    def measure(
        self, obs: Observer, cap: Capture | None, op: str, result: Result, action: list[str]
    ) -> None:
        j, others = self.joiner, {h.name for h in self.others}
        start_kind = "up" if op == "join" else "dellink"
        fdb_kind = "newneigh" if op == "join" else "delneigh"
        if cap is not None:
            cap.drain()
        obs.clear()

        def is_start(e: Event) -> bool:
            return e.ns == j.name and e.kind == start_kind and e.detail == f"vx{VNI}"

        def complete(events: list[Event]) -> bool:
            if not any(is_start(e) for e in events):
                return False
            hit = {e.ns for e in events if e.kind == fdb_kind and e.detail == j.underlay}
            return others <= hit

        j.exec(action)
        events = obs.wait_for(complete)
        if events is None:
            result.timeouts += 1
            self.log(f"{op}: timed out after {DEADLINE}s")
            return
        start = next(e.t for e in events if is_start(e))
        first: dict[str, int] = {}
        for e in events:
            if e.kind == fdb_kind and e.detail == j.underlay and e.ns in others:
                first.setdefault(e.ns, e.t)
        sample = Sample(start, max(first.values()))
        if cap is not None:
            self._stages(sample, result, cap.drain(), first)
        result.samples.append(sample)

    def _stages(
        self, sample: Sample, result: Result, dgrams: list[Datagram], fdb: dict[str, int]
    ) -> None:
        j = self.joiner
        reg = [d for d in dgrams if d.kind == MSG_REGISTER and d.src == j.underlay]
        if not reg:
            return
        t_reg = min(d.t for d in reg)
        by_addr = {h.underlay: h.name for h in self.others}
        push: dict[str, int] = {}
        for d in dgrams:
            if d.kind == MSG_MEMBERSHIP and d.t >= t_reg and d.dst in by_addr:
                push.setdefault(by_addr[d.dst], d.t)
        st = sample.stages
        st["register"] = (t_reg - sample.start) / 1e6
        if push:
            st["vxsnd"] = (min(push.values()) - t_reg) / 1e6
            st["fan-out"] = (max(push.values()) - min(push.values())) / 1e6
            st["tail"] = (sample.done - max(push.values())) / 1e6
            result.apply_ms += [(fdb[ns] - t) / 1e6 for ns, t in push.items() if ns in fdb]

    def run_ops(self, obs: Observer, cap: Capture | None, joins: int, label: str) -> list[Result]:
        join, leave = Result(self.n, f"join{label}"), Result(self.n, f"leave{label}")
        cpu = {
            "join": dict.fromkeys(("vxsnd", "vxrd", "joiner"), 0),
            "leave": dict.fromkeys(("vxsnd", "vxrd", "joiner"), 0),
        }
        for i in range(joins):
            for op, result, action in (
                ("join", join, ["ip", "link", "set", f"vx{VNI}", "up"]),
                ("leave", leave, ["ip", "link", "del", f"vx{VNI}"]),
            ):
                before = self.cpu_ns()
                self.measure(obs, cap, op, result, action)
                time.sleep(0.05 + 0.01 * (i % 5))  # let acks settle; vary the phase
                after = self.cpu_ns()
                for k in after:
                    cpu[op][k] += after[k] - before[k]
            self.recreate_down()
        if self.procs:
            for op, result in (("join", join), ("leave", leave)):
                result.cpu_ms = {k: v / 1e6 / joins for k, v in cpu[op].items()}
        return [join, leave]

    # the reference controllers: this process reacts to the joiner's link event

    def controlled(
        self, joins: int, label: str, deliver: Callable[[Host, bytes], object]
    ) -> list[Result]:
        """Run the ops with this process as the controller: on the joiner's link event,
        `deliver` gets each other host's ready-made RTM_NEWNEIGH (up) or RTM_DELNEIGH
        (deleted) for the joiner's entry."""
        dst = self.joiner.underlay
        index = {h: self.ifindex(h, f"vx{VNI}") for h in self.others}
        add = {h: neigh_request(RTM_NEWNEIGH, i, dst) for h, i in index.items()}
        delete = {h: neigh_request(RTM_DELNEIGH, i, dst) for h, i in index.items()}
        obs = Observer(self.lab.namespaces())
        joiner = self.joiner.name

        def react(ev: Event) -> None:
            if ev.ns != joiner or ev.detail != f"vx{VNI}":
                return
            msgs = add if ev.kind == "up" else delete if ev.kind == "dellink" else None
            for h, msg in (msgs or {}).items():
                deliver(h, msg)

        obs.react = react
        try:
            return self.run_ops(obs, None, joins, f" ({label})")
        finally:
            obs.close()

    def baseline(self, joins: int) -> list[Result]:
        """This process writes every kernel itself, on pre-opened netlink sockets."""
        socks = {
            h: socket_in_netns(h.name, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            for h in self.others
        }
        try:
            return self.controlled(joins, "baseline", lambda h, msg: socks[h].send(msg))
        finally:
            for sock in socks.values():
                sock.close()

    def floor(self, joins: int) -> list[Result]:
        """Each host's write made by a minimal Python agent woken by a UDP datagram from
        the underlay namespace."""
        agents = []
        sender = self.lab.service.socket()
        try:
            for h in self.others:
                proc = h.popen(
                    [sys.executable, "-c", FLOOR_AGENT, h.underlay, str(FLOOR_PORT)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                agents.append(proc)
            for proc in agents:
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ready":
                    raise RuntimeError("a floor agent did not start")
            before = sum(schedstat_ns(proc.pid) for proc in agents)
            results = self.controlled(
                joins, "floor", lambda h, msg: sender.sendto(msg, (h.underlay, FLOOR_PORT))
            )
            spent = sum(schedstat_ns(proc.pid) for proc in agents) - before
            for r in results:  # joins and leaves alike: one datagram, one netlink write
                r.agent_cpu_ms = spent / 1e6 / (2 * joins * len(agents))
            return results
        finally:
            sender.close()
            for proc in agents:
                proc.kill()
                proc.wait(5)
                if proc.stdout is not None:
                    proc.stdout.close()


def run_n(
    n: int,
    joins: int,
    baseline: bool,
    floor: bool,
    quiet: bool,
    vxsnd_args: Sequence[str] = (),
    db_dir: Path | None = None,
    keep_logs: bool = False,
) -> tuple[list[Result], bool]:
    workdir = Path(tempfile.mkdtemp(prefix=f"vxflood-conv{n}-"))
    bench = Bench(n, workdir, quiet, vxsnd_args, db_dir)
    results: list[Result] = []
    realtime = False
    try:
        bench.lab.build()
        bench.joiner.exec(["ip", "link", "set", f"vx{VNI}", "down"])
        if baseline:
            bench.log(f"baseline: {joins} joins and leaves, this process as the controller")
            results += bench.baseline(joins)
            bench.joiner.exec(["ip", "link", "set", f"vx{VNI}", "down"])
            gone = ["bridge", "fdb", "del", "00:00:00:00:00:00", "dev", f"vx{VNI}"]
            for h in bench.others:  # the baseline's entries go; the daemons start from empty
                h.exec([*gone, "dst", bench.joiner.underlay], check=False)
        if floor:
            bench.log(f"floor: {joins} joins and leaves through minimal Python agents")
            results += bench.floor(joins)
            bench.joiner.exec(["ip", "link", "set", f"vx{VNI}", "down"])
            gone = ["bridge", "fdb", "del", "00:00:00:00:00:00", "dev", f"vx{VNI}"]
            for h in bench.others:
                h.exec([*gone, "dst", bench.joiner.underlay], check=False)
        bench.log("starting vxsnd and vxrd")
        bench.start_daemons()
        took = bench.wait_mesh()
        bench.log(f"converged {took:.1f}s after start; measuring {joins} joins and leaves")
        obs = Observer(bench.lab.namespaces())
        cap = Capture(bench.lab)
        try:
            results += bench.run_ops(obs, cap, joins, "")
            realtime = obs.realtime
        finally:
            obs.close()
            cap.close()
    finally:
        bench.stop()
        bench.lab.destroy()
        if keep_logs:
            print(f"N={n}: daemon logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{bench.db}{suffix}").unlink(missing_ok=True)
    return results, realtime


# -- report ---------------------------------------------------------------------------------


def _ms(values: Sequence[float]) -> tuple[str, str, str]:
    if not values:
        return ("-", "-", "-")
    return (f"{percentile(values, 50):.2f}", f"{percentile(values, 99):.2f}", f"{max(values):.2f}")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    return "\n".join(
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [headers, *rows]
    )


def report(results: Sequence[Result]) -> str:
    rows = []
    for r in results:
        ms = [s.ms for s in r.samples]
        rows.append(
            [
                str(r.n),
                r.op,
                f"{len(ms)}" + (f" ({r.timeouts} t/o)" if r.timeouts else ""),
                *_ms(ms),
            ]
        )
    out = [table(["N", "op", "samples", "p50 ms", "p99 ms", "max ms"], rows)]
    stage_names = ["register", "vxsnd", "fan-out", "tail"]
    rows = []
    for r in results:
        if " (" in r.op or not r.samples:  # baseline and floor rows have no stages
            continue
        cells = [str(r.n), r.op]
        for name in stage_names:
            vals = [s.stages[name] for s in r.samples if name in s.stages]
            cells.append(f"{percentile(vals, 50):.2f}" if vals else "-")
        cells.append(f"{percentile(r.apply_ms, 50):.2f}" if r.apply_ms else "-")
        cells.append(f"{percentile(r.apply_ms, 99):.2f}" if r.apply_ms else "-")
        rows.append(cells)
    if rows:
        out.append("")
        out.append("where the time goes (medians, ms; see the module docstring):")
        out.append(table(["N", "op", *stage_names, "apply p50", "apply p99"], rows))
    cpu_rows = [
        [
            str(r.n),
            r.op,
            f"{r.cpu_ms['vxsnd']:.2f}",
            f"{r.cpu_ms['vxrd']:.2f}",
            f"{r.cpu_ms['vxrd'] / r.n:.2f}",
            f"{r.cpu_ms['joiner']:.2f}",
            f"{(r.cpu_ms['vxrd'] - r.cpu_ms['joiner']) / (r.n - 1):.2f}",
        ]
        for r in results
        if r.cpu_ms
    ]
    if cpu_rows:
        out.append("")
        out.append("CPU per operation (ms, from /proc/PID/schedstat; includes the settle pause;")
        out.append("'per other vxrd': each host other than the joiner, which applies one change):")
        out.append(
            table(
                ["N", "op", "vxsnd", "all vxrd", "per vxrd", "joiner", "per other vxrd"], cpu_rows
            )
        )
    agent_cpu = [r.agent_cpu_ms for r in results if r.agent_cpu_ms is not None]
    if agent_cpu:
        out.append(
            f"floor agent: {agent_cpu[0]:.2f} ms CPU per change per host "
            "(one datagram in, one netlink write; same pauses)"
        )
    ratios = []
    for ref in ("baseline", "floor"):
        base = {(r.n, r.op.split()[0]): r for r in results if f"({ref})" in r.op and r.samples}
        for r in results:
            b = base.get((r.n, r.op))
            if b is not None and r.samples:
                p50 = percentile([s.ms for s in r.samples], 50)
                b50 = percentile([s.ms for s in b.samples], 50)
                ratios.append(
                    f"N={r.n} {r.op}: p50 {p50:.2f} ms = {p50 / b50:.1f}x the {ref}'s {b50:.2f} ms"
                )
    if ratios:
        out.append("")
        out.extend(ratios)
    return "\n".join(out)


def goal(results: Sequence[Result], n: int = 30) -> list[str]:
    """Lines saying whether the goal at ``n`` hosts is met."""
    out = []
    for r in results:
        if r.n != n or " (" in r.op:
            continue
        ms = [s.ms for s in r.samples]
        if not ms or r.timeouts:
            out.append(f"N={n} {r.op}: {r.timeouts} samples timed out: goal MISSED")
            continue
        p50, p99 = percentile(ms, 50), percentile(ms, 99)
        ok = p50 < GOAL_P50_MS and p99 < GOAL_P99_MS
        verdict = "met" if ok else "MISSED"
        out.append(
            f"N={n} {r.op}: p50 {p50:.2f} ms (goal < {GOAL_P50_MS:g}), "
            f"p99 {p99:.2f} ms (goal < {GOAL_P99_MS:g}): goal {verdict}"
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.bench_convergence",
        description="Join/leave convergence of vxsnd + vxrd in a namespace lab (root).",
    )
    parser.add_argument("--hosts", type=int, nargs="+", default=[10, 30], help="lab sizes N")
    parser.add_argument("--joins", type=int, default=20, help="joins (and leaves) per N")
    parser.add_argument(
        "--no-baseline", dest="baseline", action="store_false", help="skip the baseline rows"
    )
    parser.add_argument(
        "--no-floor", dest="floor", action="store_false", help="skip the floor rows"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--keep-logs", action="store_true", help="keep the daemons' logs")
    parser.add_argument(
        "--db-dir",
        type=Path,
        help="directory of vxsnd's SQLite registry (default: a temp dir under $TMPDIR); "
        "e.g. /dev/shm to take the disk out of the picture",
    )
    parser.add_argument(
        "--vxsnd-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra vxsnd argument, repeatable (e.g. --vxsnd-arg=--batch-window=1)",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_convergence builds network namespaces and needs root", file=sys.stderr)
        return 1
    if any(n < 3 for n in args.hosts) or args.joins < 1:
        parser.error("--hosts needs N >= 3 and --joins at least 1")
    results: list[Result] = []
    realtime = True
    for n in args.hosts:
        got, rt = run_n(
            n,
            args.joins,
            args.baseline,
            args.floor,
            args.quiet,
            args.vxsnd_arg,
            args.db_dir,
            args.keep_logs,
        )
        results += got
        realtime = realtime and rt
    if args.vxsnd_arg or args.db_dir:
        print(f"vxsnd extra arguments: {args.vxsnd_arg}; registry in {args.db_dir or 'TMPDIR'}")
    print(report(results))
    if not realtime:
        print("note: the observer thread could not get SCHED_FIFO; stamps may be late")
    verdicts = goal(results)
    if verdicts:
        print()
        print("\n".join(verdicts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
