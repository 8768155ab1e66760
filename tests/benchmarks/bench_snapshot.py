"""vxrd applying a 4,000-member snapshot, then a one-member delta, beside `bridge -batch`.

Issue 11's row: vxrd applying a snapshot to the real kernel and a one-member
delta on top of it (time, syscalls, CPU), beside `bridge -batch` writing the
same entries in the same run.

Run as root: `python -m tests.benchmarks.bench_snapshot [--rounds 5] [--members 4000]`
(about 10 s with the defaults).

Setup, per run: two fresh network namespaces with unique names (removed at the
end, also on failure, Ctrl-C or SIGTERM), each with one VXLAN device vx100
(VNI 100, local 10.0.0.1, nolearning). In the first, a real `python -m vxrd`
(the flags the integration tests give it: --server, --node-id, --state-dir,
--status-socket; plus --hold-time and --reconcile-interval of an hour so that
no refresh or periodic full reconcile falls into a measured step) and, in this
process, a scripted service node on the namespace's loopback (a UDP socket
made inside it) that answers vxrd's register, then per round sends a snapshot
of N IPv4 members (schema.wire.split_membership, default budget; in the compact
form of version 3 when the register says vxrd reads it, as vxsnd would), a one-member
delta (base = the snapshot's generation) and an empty snapshot that removes
everything, so every round starts from an empty flood list. The second
namespace is the baseline's: `bridge -n NS -batch FILE` appends the same N
entries, then the one, then deletes them all; vxrd never sees its events.

Measured, per step (median of the rounds; one warm-up round first):

- our ms: from the first datagram sent until vxrd's Ack of that generation is
  received. bridge ms: the whole `bridge -batch` process, start to exit.
- vxrd CPU ms: the run time of all of vxrd's threads (/proc/PID/task/*/schedstat)
  read before the first datagram and again once vxrd has gone quiet after the
  Ack (every thread asleep, no CPU used for 30 ms), so the handling of the fdb
  notifications that echo its writes counts too (the part after the Ack is
  printed below the table). bridge CPU ms: its rusage.
- syscalls: a second pass of the same steps, traced. vxrd: `strace -f -c -p PID`
  is attached before the first datagram (it is not sent until every thread of
  vxrd shows strace as its TracerPid) and detached (SIGINT) only after vxrd has
  gone quiet, so the counts are whole; checked: at least one recv per datagram
  sent and per netlink ACK (one per entry written), and two sends (the kernel
  write and the Ack). bridge: `strace -f -c bridge ...`, every syscall of the
  process (loader and libraries included), at least one send per entry. Time
  and CPU come from the untraced pass only (ptrace slows every syscall).
- after every step, the kernel is read (`bridge -j fdb show dev vx100`): the
  all-zero entries' destinations must be exactly the N members (then N + 1,
  then none), in both namespaces.

entries = entries the step writes. ratio = ours / bridge (time; "sys ratio" for
syscalls): below 1 means vxrd is cheaper than the bridge tool.
Needs strace (`apt-get install -y strace`).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from pyroute2 import netns as pr_netns

from vxflood.schema.validate import Address
from vxflood.schema.wire import (
    COMPACT_SINCE,
    Ack,
    Codec,
    Membership,
    Register,
    Sequencer,
    split_membership,
)

REPO = Path(__file__).resolve().parents[2]
VNI = 100
DEV = "vx100"
LOCAL = "10.0.0.1"
ZERO = "00:00:00:00:00:00"
REGISTRY = "bench-registry"
NODE_ID = "bench-snap"
FIRST_MEMBER = ipaddress.IPv4Address("11.0.0.1")
EXTRA = ipaddress.IPv4Address("12.0.0.1")
QUIET = 0.03  # seconds without CPU, all threads asleep: vxrd is done with a step
TIMEOUT = 30.0  # seconds for an Ack, for vxrd to go quiet, for strace to attach
SNAP, DELTA = "snapshot", "delta +1"


def run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    return proc.stdout


@contextmanager
def namespace(name: str) -> Iterator[str]:
    """A namespace with loopback up and one VXLAN device; deleted on the way out."""
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "-n", name, "link", "add", DEV, "type", "vxlan", "id", str(VNI),
            "local", LOCAL, "dstport", "4789", "nolearning")  # fmt: skip
        run("ip", "-n", name, "link", "set", DEV, "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def flood_dsts(ns: str) -> set[str]:
    """Destinations of the all-zero fdb entries on the device, read from the kernel."""
    entries: list[dict[str, Any]] = json.loads(
        run("bridge", "-n", ns, "-j", "fdb", "show", "dev", DEV) or "[]"
    )
    return {e["dst"] for e in entries if e.get("mac") == ZERO and "dst" in e}


def check_kernel(ns: str, expect: set[str], what: str) -> None:
    got = flood_dsts(ns)
    if got != expect:
        raise RuntimeError(
            f"{what}: {len(got)} flood entries in {ns}, expected {len(expect)} "
            f"({len(expect - got)} missing, {len(got - expect)} extra)"
        )


def strace_counts(path: Path) -> Counter[str]:
    """Calls per syscall from a `strace -c` summary."""
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        cells = line.split()
        if len(cells) >= 5 and cells[0].replace(".", "").isdigit() and cells[-1] != "total":
            counts[cells[-1]] += int(cells[3])
    return counts


# ---------------------------------------------------------------- the scripted service node


class Server:
    """The service node vxrd talks to: a UDP socket on the namespace's loopback."""

    def __init__(self, ns: str) -> None:
        sock: socket.socket = pr_netns.create_socket(
            ns, socket.AF_INET, socket.SOCK_DGRAM, 0, flags=0
        )
        self.sock = sock
        sock.bind(("127.0.0.1", 0))
        self.port: int = sock.getsockname()[1]
        self.codec = Codec()
        self.seq = Sequencer("bench-sn")
        self.gen = 0
        self.peer: tuple[str, int] | None = None
        self.compact = False  # the form vxsnd would send: compact to a vxrd reading version 3

    def close(self) -> None:
        self.sock.close()

    def _reply(self, reg: Register, peer: tuple[str, int]) -> None:
        applied = tuple((e.vni, self.gen) for e in reg.vnis)
        self.sock.sendto(self.codec.encode(Ack(self.seq.next(), REGISTRY, applied)), peer)
        self.peer = peer
        self.compact = reg.max_version >= COMPACT_SINCE

    def _receive(self, deadline: float) -> Ack | None:
        """One datagram from vxrd: an Ack is returned, a register answered."""
        self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            data, peer = self.sock.recvfrom(9000)
        except TimeoutError:
            raise TimeoutError("vxrd did not answer in time") from None
        msg = self.codec.decode(data)
        if isinstance(msg, Register):
            self._reply(msg, peer)
        return msg if isinstance(msg, Ack) else None

    def answer_register(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while self.peer is None:
            self._receive(deadline)

    def membership(self, snapshot: bool, add: Sequence[Address]) -> tuple[int, list[bytes]]:
        """The next generation's datagrams: a snapshot of `add`, or a delta adding it."""
        gen = self.gen + 1
        base = None if snapshot else self.gen
        template = Membership(
            self.seq.next(), REGISTRY, VNI, gen, base, tuple(add), (), compact=self.compact
        )
        parts = split_membership(self.codec, template, self.seq.many())
        self.gen = gen
        return gen, [self.codec.encode(p) for p in parts]

    def send(self, datagrams: Sequence[bytes]) -> None:
        assert self.peer is not None
        for data in datagrams:
            self.sock.sendto(data, self.peer)

    def wait_ack(self, gen: int) -> None:
        deadline = time.monotonic() + TIMEOUT
        while True:
            ack = self._receive(deadline)
            if ack is not None and any(v == VNI and g >= gen for v, g in ack.applied):
                return


# ---------------------------------------------------------------- the vxrd process


class Vxrd:
    def __init__(self, ns: str, port: int, tmp: Path) -> None:
        state = tmp / "state"
        state.mkdir()
        self.log = tmp / "vxrd.log"
        argv = [
            *("ip", "netns", "exec", ns, sys.executable, "-m", "vxrd"),
            *("--server", f"127.0.0.1:{port}", "--node-id", NODE_ID),
            *("--state-dir", str(state), "--status-socket", str(tmp / "vxrd.sock")),
            *("--hold-time", "3600", "--reconcile-interval", "3600"),
        ]
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        self.pid = self.proc.pid  # `ip netns exec` execs the program: this is vxrd

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def report_failure(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """An exit callback: after an error (not Ctrl-C), vxrd's log tail on stderr."""
        if isinstance(exc, Exception):
            print(self.log.read_text(errors="replace")[-2000:], file=sys.stderr)

    def alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"vxrd exited with {self.proc.returncode}:\n{tail}")

    def _tasks(self) -> list[str]:
        return os.listdir(f"/proc/{self.pid}/task")

    def cpu_ns(self) -> int:
        """Run time so far of all of vxrd's threads."""
        total = 0
        for tid in self._tasks():
            with contextlib.suppress(FileNotFoundError):
                total += int(Path(f"/proc/{self.pid}/task/{tid}/schedstat").read_text().split()[0])
        return total

    def _asleep(self) -> bool:
        for tid in self._tasks():
            with contextlib.suppress(FileNotFoundError):
                stat = Path(f"/proc/{self.pid}/task/{tid}/stat").read_text()
                if stat.rpartition(")")[2].split()[0] not in ("S", "I"):
                    return False
        return True

    def settle(self) -> None:
        """Return once vxrd has gone quiet: every thread asleep, no CPU for QUIET s."""
        deadline = time.monotonic() + TIMEOUT
        last, since = self.cpu_ns(), time.monotonic()
        while True:
            time.sleep(0.005)
            cpu, now = self.cpu_ns(), time.monotonic()
            if cpu != last or not self._asleep():
                last, since = cpu, now
            elif now - since >= QUIET:
                return
            if now > deadline:
                raise RuntimeError("vxrd did not go quiet")

    def traced_by(self, tracer: int) -> bool:
        for tid in self._tasks():
            status = Path(f"/proc/{self.pid}/task/{tid}/status").read_text()
            if f"TracerPid:\t{tracer}\n" not in status:
                return False
        return True


@contextmanager
def strace_attached(vxrd: Vxrd, out: Path) -> Iterator[Counter[str]]:
    """`strace -f -c -p` on vxrd for the body; the counts fill in on the way out."""
    counts: Counter[str] = Counter()
    out.unlink(missing_ok=True)
    tracer = subprocess.Popen(
        ["strace", "-f", "-c", "-o", str(out), "-p", str(vxrd.pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not vxrd.traced_by(tracer.pid):
            if tracer.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("strace did not attach to every thread of vxrd")
            time.sleep(0.005)
        yield counts
    finally:
        if tracer.poll() is None:
            tracer.send_signal(signal.SIGINT)
        tracer.wait(TIMEOUT)
    counts.update(strace_counts(out))


# ---------------------------------------------------------------- the lab and its passes


@dataclass
class Sample:
    seconds: float = 0.0
    cpu: float = 0.0  # seconds
    cpu_after_ack: float = 0.0  # seconds of `cpu` used after the Ack was received
    syscalls: Counter[str] = field(default_factory=Counter)


class Lab:
    def __init__(self, stack: ExitStack, tmp: Path, members: int) -> None:
        tag = f"{os.getpid()}-{secrets.token_hex(3)}"
        self.ns = stack.enter_context(namespace(f"vxbench-snap-{tag}"))
        self.br_ns = stack.enter_context(namespace(f"vxbench-snapbr-{tag}"))
        self.tmp = tmp
        self.members = [FIRST_MEMBER + i for i in range(members)]
        self.expect = {SNAP: {str(a) for a in self.members}}
        self.expect[DELTA] = self.expect[SNAP] | {str(EXTRA)}
        self.files = {SNAP: tmp / "add", DELTA: tmp / "add1", "del": tmp / "del"}
        lines = {
            SNAP: [f"append {ZERO} dev {DEV} dst {a}" for a in self.members],
            DELTA: [f"append {ZERO} dev {DEV} dst {EXTRA}"],
            "del": [f"del {ZERO} dev {DEV} dst {a}" for a in [*self.members, EXTRA]],
        }
        self.requests = {key: len(lines[key]) for key in lines}
        for key, path in self.files.items():
            path.write_text("".join(f"fdb {line} self permanent\n" for line in lines[key]))
        self.server = Server(self.ns)
        stack.callback(self.server.close)
        self.vxrd = Vxrd(self.ns, self.server.port, tmp)
        stack.callback(self.vxrd.stop)  # runs before the namespaces go
        stack.push(self.vxrd.report_failure)
        self.server.answer_register()
        self.datagrams: dict[str, int] = {}

    def _ours(self, key: str, add: Sequence[Address], trace: bool) -> Sample:
        """One step: the datagrams sent, vxrd's Ack awaited, vxrd gone quiet."""
        gen, datagrams = self.server.membership(key != DELTA, add)
        out = Sample()
        with ExitStack() as stack:
            if trace:
                out.syscalls = stack.enter_context(strace_attached(self.vxrd, self.tmp / "st"))
            c0 = self.vxrd.cpu_ns()
            t0 = time.perf_counter()
            self.server.send(datagrams)
            self.server.wait_ack(gen)
            out.seconds = time.perf_counter() - t0
            c1 = self.vxrd.cpu_ns()
            self.vxrd.settle()
            c2 = self.vxrd.cpu_ns()
            out.cpu, out.cpu_after_ack = (c2 - c0) / 1e9, (c2 - c1) / 1e9
        self.vxrd.alive()
        if trace:
            # whole: every datagram and every netlink ACK (one per entry) read, the
            # kernel write and the Ack sent
            recv = out.syscalls["recvfrom"] + out.syscalls["recvmsg"]
            sent = out.syscalls["sendto"] + out.syscalls["sendmsg"]
            if recv < len(datagrams) + len(add) or sent < 2:
                raise RuntimeError(f"strace counts are not whole: {dict(out.syscalls)}")
        self.datagrams[key] = len(datagrams)
        return out

    def ours(self, trace: bool) -> dict[str, Sample]:
        """Snapshot, delta on top, then an empty snapshot; the kernel checked after each."""
        got = {SNAP: self._ours(SNAP, self.members, trace)}
        check_kernel(self.ns, self.expect[SNAP], f"vxrd {SNAP}")
        got[DELTA] = self._ours(DELTA, [EXTRA], trace)
        check_kernel(self.ns, self.expect[DELTA], f"vxrd {DELTA}")
        self._ours("empty", [], False)
        check_kernel(self.ns, set(), "vxrd empty snapshot")
        return got

    def _bridge(self, key: str, trace: bool) -> Sample:
        argv = ["bridge", "-n", self.br_ns, "-batch", str(self.files[key])]
        trace_file = self.tmp / "st"
        if trace:
            trace_file.unlink(missing_ok=True)
            argv = ["strace", "-f", "-c", "-o", str(trace_file), *argv]
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        run(*argv)
        seconds = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = Sample(seconds, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
        if trace:
            out.syscalls = strace_counts(trace_file)
            if out.syscalls["sendmsg"] + out.syscalls["sendto"] < self.requests[key]:
                raise RuntimeError(f"bridge: fewer requests than entries: {dict(out.syscalls)}")
        return out

    def bridge(self, trace: bool) -> dict[str, Sample]:
        got = {}
        for key in (SNAP, DELTA):
            got[key] = self._bridge(key, trace)
            check_kernel(self.br_ns, self.expect[key], f"bridge {key}")
        self._bridge("del", False)
        check_kernel(self.br_ns, set(), "bridge del")
        return got


@dataclass
class Row:
    operation: str
    entries: int
    ours: list[Sample] = field(default_factory=list)
    ours_traced: list[Sample] = field(default_factory=list)
    bridge: list[Sample] = field(default_factory=list)
    bridge_traced: list[Sample] = field(default_factory=list)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def cells(r: Row) -> list[str]:
    ours = median([s.seconds for s in r.ours])
    br = median([s.seconds for s in r.bridge])
    o_sys = median([sum(s.syscalls.values()) for s in r.ours_traced])
    b_sys = median([sum(s.syscalls.values()) for s in r.bridge_traced])
    return [
        r.operation,
        f"{r.entries:,}",
        f"{ours * 1e3:.2f}",
        f"{br * 1e3:.2f}",
        f"{ours / br:.2f}",
        f"{o_sys:g}",
        f"{b_sys:g}",
        f"{o_sys / b_sys:.2f}",
        f"{median([s.cpu for s in r.ours]) * 1e3:.2f}",
        f"{median([s.cpu for s in r.bridge]) * 1e3:.2f}",
    ]


def top_syscalls(samples: Sequence[Sample], n: int) -> str:
    names: Counter[str] = Counter()
    for s in samples:
        names.update(s.syscalls)
    typical = {name: median([s.syscalls[name] for s in samples]) for name in names}
    ranked = sorted((name for name in typical if typical[name]), key=lambda k: -typical[k])
    return ", ".join(f"{name} {typical[name]:g}" for name in ranked[:n])


def table(rows: Sequence[Row]) -> str:
    head = ["operation", "entries", "our ms", "bridge ms", "ratio", "our syscalls",
            "bridge syscalls", "sys ratio", "vxrd CPU ms", "bridge CPU ms"]  # fmt: skip
    grid = [head, *(cells(r) for r in rows)]
    width = [max(len(line[i]) for line in grid) for i in range(len(head))]
    grid.insert(1, ["-" * w for w in width])
    lines = []
    for line in grid:
        padded = [c.rjust(w) for c, w in zip(line, width, strict=True)]
        lines.append("  ".join([line[0].ljust(width[0]), *padded[1:]]))
    return "\n".join(lines)


def bench(members: int, rounds: int, warmup: int) -> tuple[list[Row], dict[str, int]]:
    rows = {SNAP: Row(SNAP, members), DELTA: Row(f"{DELTA} on {members:,}", 1)}
    with tempfile.TemporaryDirectory(prefix="vxbench-snap-") as tmp, ExitStack() as stack:
        lab = Lab(stack, Path(tmp), members)
        for i in range(warmup + rounds):
            passes = (
                ("ours", lab.ours(False)),
                ("bridge", lab.bridge(False)),
                ("ours_traced", lab.ours(True)),
                ("bridge_traced", lab.bridge(True)),
            )
            if i < warmup:
                continue
            for attr, got in passes:
                for key, sample in got.items():
                    getattr(rows[key], attr).append(sample)
        return list(rows.values()), lab.datagrams


def unwind_on_signals() -> None:
    """SIGTERM unwinds like Ctrl-C (vxrd stopped, namespaces deleted), in this process
    only: a forked helper (pyroute2 makes the server's socket in one) just exits."""
    main_pid = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != main_pid:
            os._exit(128 + signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        sys.exit(128 + signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `python -m tests.benchmarks.bench_snapshot` and runners."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=5, help="median of this many rounds")
    parser.add_argument("--members", type=int, default=4000, help="members in the snapshot")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.members < 1 or args.warmup < 0:
        parser.error("--rounds and --members must be at least 1, --warmup at least 0")
    if os.geteuid() != 0:
        print("bench_snapshot: needs root (network namespaces, strace -p)", file=sys.stderr)
        return 2
    if shutil.which("strace") is None:
        print("bench_snapshot: needs strace (apt-get install -y strace)", file=sys.stderr)
        return 2
    unwind_on_signals()
    rows, datagrams = bench(args.members, args.rounds, args.warmup)
    print(
        f"vxrd: snapshot of {args.members:,} members in {datagrams[SNAP]} datagrams, then a "
        f"one-member delta on top; median of {args.rounds} rounds; ratio = ours / bridge"
    )
    print(table(rows))
    print("\nvxrd CPU after its Ack (reading the fdb notifications that echo its writes):")
    for r in rows:
        print(f"  {r.operation}: {median([x.cpu_after_ack for x in r.ours]) * 1e3:.2f} ms")
    print("syscalls by name (median):")
    for r in rows:
        print(f"  vxrd   {r.operation}: {top_syscalls(r.ours_traced, 6)}")
        print(f"  bridge {r.operation}: {top_syscalls(r.bridge_traced, 4)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
