"""vxsnd under a registration storm: `python -m tests.benchmarks.bench_vxsnd`.

Each scenario starts a fresh `python -m vxsnd` process on 127.0.0.1 with a new
SQLite registry in a temporary directory. The simulated agents
(tests/integration/agent_sim.py, one UDP socket each) live in this process and
all register at once; the clock stops when every agent holds the full member
set of every VNI it serves (it has applied and acked the final generation).

Printed per scenario: time to convergence, datagrams each way (as counted by
the agents), vxsnd's membership datagrams (all it sent but the one register
reply per agent) against the floor (every member learning every member's
address, 1400-byte datagrams), vxsnd CPU seconds used during the
scenario (/proc/PID/stat utime+stime), the simulator's own CPU seconds (this
process: when it is near the wall time, the simulator is what is measured) and
vxsnd's peak RSS (/proc/PID/status VmHWM).

The agents decode with agent_sim.fast_decode (see there) so that thousands of
simulated agents in one Python process measure vxsnd rather than the simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import multiprocessing
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from tests.integration.agent_sim import Agent
from vxflood.schema.wire import COMPACT_SINCE, VERSION


@dataclass(frozen=True)
class Goal:
    """What a row must stay under (None: not asked)."""

    seconds: float | None = None
    cpu: float | None = None  # vxsnd CPU s
    rss_mb: float | None = None
    floor_ratio: float | None = None  # datagrams from vxsnd / the floor

    def verdict(self, r: Result) -> str:
        checks: list[tuple[str, bool]] = []
        if self.seconds is not None:
            checks.append((f"<{self.seconds:g} s", r.converged and r.seconds < self.seconds))
        if self.cpu is not None:
            checks.append((f"vxsnd <{self.cpu:g} CPU s", r.cpu < self.cpu))
        if self.rss_mb is not None:
            checks.append((f"<{self.rss_mb:g} MB", r.rss_mb < self.rss_mb))
        if self.floor_ratio is not None:
            checks.append((f"<={self.floor_ratio:g}x floor", r.ratio <= self.floor_ratio))
        missed = [text for text, ok in checks if not ok]
        verdict = f"MISSED {'; '.join(missed)}" if missed else "met"
        return f"{', '.join(text for text, _ in checks)}: {verdict}"


# issue 11's goals on a 2-core machine for the default sizes (4,000 agents in one VNI,
# 2,000 agents in the same 10 VNIs, one join into a 2,000-member VNI); the 10-of-100 row
# keeps its earlier goal
GOALS = {
    "a": Goal(seconds=3.0, rss_mb=300),
    "b": Goal(seconds=10.0, rss_mb=300),
    "shared": Goal(seconds=5.0, cpu=2.0, rss_mb=200, floor_ratio=1.3),
    "join": Goal(floor_ratio=1.2),
}


@dataclass(frozen=True)
class Scenario:
    """`agents` agents, each in `per_agent` VNIs out of a pool of `pool` VNIs:
    agent i serves VNIs (i + 7k) mod pool for k < per_agent, so with pool 100
    and 10 VNIs each, every VNI has agents * 10 / 100 members."""

    key: str
    agents: int
    per_agent: int
    pool: int
    reads: int = VERSION  # what the agents' registers say they read (0: a version-2 vxrd)

    @property
    def label(self) -> str:
        form = "" if self.reads >= COMPACT_SINCE else " lists"
        if self.key == "join":
            return f"join {self.agents}-member VNI{form}"
        if self.pool == self.per_agent:
            return f"{self.agents} x {self.per_agent} shared{form}"
        return f"{self.agents} x {self.per_agent} of {self.pool}{form}"

    def vnis_of(self, i: int) -> list[int]:
        if self.pool == self.per_agent:
            return [1000 + k for k in range(self.pool)]
        return sorted({1000 + (i + 7 * k) % self.pool for k in range(self.per_agent)})


@dataclass
class Result:
    scenario: Scenario
    seconds: float
    to_vxsnd: int
    from_vxsnd: int
    cpu: float
    rss_mb: float
    converged: bool
    sim_cpu: float = 0.0  # this process (the simulated agents) during the scenario
    floor: int = 0  # datagrams the membership payload needs at least (see `floor`)
    replies: int = 0  # register replies among from_vxsnd (not membership datagrams)

    @property
    def ratio(self) -> float:
        """Membership datagrams sent against the floor (0 where there is none)."""
        return (self.from_vxsnd - self.replies) / self.floor if self.floor else 0.0


def floor(members: dict[int, int], budget: int = 1400, addr: int = 4) -> int:
    """Datagrams every member of every VNI needs to learn all members' addresses:
    sum over VNIs of m * ceil(m * addr / budget) (issue 11's floor; IPv4 here)."""
    return sum(m * -(-(m * addr) // budget) for m in members.values())


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of the line)
    return ticks / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def vtep(i: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(0x0A000000 + i + 1)  # 10.0.0.1, 10.0.0.2, ...


async def start_vxsnd(workdir: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    log = workdir / "vxsnd.log"
    profile = os.environ.get("BENCH_VXSND_PROFILE")  # a cProfile output file per scenario
    cmd = [
        sys.executable,
        *(["-m", "cProfile", "-o", f"{profile}.{port}"] if profile else []),
        "-m",
        "vxsnd",
        "--listen",
        f"127.0.0.1:{port}",
        "--db",
        f"sqlite:///{workdir / 'registry.db'}",
        "--server-id",
        "bench",
        "--log-level",
        os.environ.get("BENCH_VXSND_LOG", "INFO"),
    ]
    with log.open("wb") as fh:  # started once per scenario, before the clock runs
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh)  # noqa: ASYNC220
    deadline = time.monotonic() + 30
    while b"vxsnd ready" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"vxsnd did not start:\n{log.read_text()}")
        await asyncio.sleep(0.02)
    return proc, log


async def run_scenario(sc: Scenario, limit: float, procs: int = 1) -> Result:
    with tempfile.TemporaryDirectory(prefix="vxsnd-bench-") as tmp:
        port = free_port()
        proc, log = await start_vxsnd(Path(tmp), port)
        try:
            if procs > 1:
                return await _drive_spread(sc, proc, port, limit, procs)
            return await _drive(sc, proc, port, limit)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.returncode not in (0, None):
                print(f"vxsnd exited {proc.returncode}:\n{log.read_text()[-2000:]}")


def _expected(sc: Scenario) -> tuple[list[list[int]], dict[int, set[bytes]]]:
    serves = [sc.vnis_of(i) for i in range(sc.agents)]
    expect: dict[int, set[bytes]] = {}
    for i, vs in enumerate(serves):
        for v in vs:
            expect.setdefault(v, set()).add(vtep(i).packed)  # fast agents keep packed bytes
    return serves, expect


async def _drive(sc: Scenario, proc: subprocess.Popen[bytes], port: int, limit: float) -> Result:
    serves, expect = _expected(sc)
    want = {v: len(m) for v, m in expect.items()}
    pending = set(range(sc.agents))
    done = asyncio.Event()
    agents: list[Agent] = []

    def checker(i: int) -> None:
        a = agents[i]
        if i in pending and all(len(a.members.get(v, ())) == want[v] for v in serves[i]):
            pending.discard(i)
            if not pending:
                done.set()

    for i in range(sc.agents):
        agents.append(
            await Agent.create(
                f"bench-{i}",
                ("127.0.0.1", port),
                fast=True,
                hold_time=600,
                on_change=lambda i=i: checker(i),
                reads=sc.reads,
            )
        )
    cpu0, sim0 = cpu_seconds(proc.pid), self_cpu()
    start = time.perf_counter()
    for i, a in enumerate(agents):
        a.register(dict.fromkeys(serves[i], vtep(i)))
    converged = True
    try:
        await asyncio.wait_for(done.wait(), limit)
    except TimeoutError:
        converged = False
    seconds = time.perf_counter() - start
    cpu = cpu_seconds(proc.pid) - cpu0
    if converged:
        assert all(a.members[v] == expect[v] for i, a in enumerate(agents) for v in serves[i])
    result = Result(
        sc,
        seconds,
        sum(a.stats.sent for a in agents),
        sum(a.stats.received for a in agents),
        cpu,
        peak_rss_mb(proc.pid),
        converged,
        self_cpu() - sim0,
        floor(want),
        sc.agents,
    )
    for a in agents:
        a.close()
    return result


def _worker(
    sc: Scenario,
    indexes: range,
    port: int,
    limit: float,
    ready: Connection,
    go: Connection,
) -> None:
    """One simulator process: its share of the agents. It registers them when told
    "go", and on ("grow", vni, packed) expects that one more member in `vni`; after
    each it sends back (converged, monotonic time the last of its agents converged,
    sent, received, CPU) for that phase. "stop" ends it."""
    asyncio.run(_work(sc, indexes, port, limit, ready, go))


async def _work(
    sc: Scenario, indexes: range, port: int, limit: float, ready: Connection, go: Connection
) -> None:
    serves, expect = _expected(sc)
    want = {v: len(m) for v, m in expect.items()}
    pending: set[int] = set()
    done = asyncio.Event()
    agents: dict[int, Agent] = {}
    finished = [0.0]

    def checker(i: int) -> None:
        a = agents[i]
        if i in pending and all(len(a.members.get(v, ())) == want[v] for v in serves[i]):
            pending.discard(i)
            if not pending:
                finished[0] = time.monotonic()
                done.set()

    for i in indexes:
        agents[i] = await Agent.create(
            f"bench-{i}",
            ("127.0.0.1", port),
            fast=True,
            hold_time=600,
            on_change=lambda i=i: checker(i),
            reads=sc.reads,
        )
    ready.send("ready")
    loop = asyncio.get_running_loop()
    while (command := await loop.run_in_executor(None, go.recv)) != "stop":
        cpu0 = self_cpu()
        sent0 = sum(a.stats.sent for a in agents.values())
        received0 = sum(a.stats.received for a in agents.values())
        done.clear()
        if command == "go":
            pending.update(indexes)
            for i, a in agents.items():
                a.register(dict.fromkeys(serves[i], vtep(i)))
        else:
            _, vni, packed = command
            want[vni] += 1
            expect[vni].add(packed)
            pending.update(i for i in indexes if vni in serves[i])
        if not pending:
            finished[0] = time.monotonic()
            done.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), limit)
        ok = not pending and all(
            a.members[v] == expect[v] for i, a in agents.items() for v in serves[i]
        )
        sent = sum(a.stats.sent for a in agents.values()) - sent0
        received = sum(a.stats.received for a in agents.values()) - received0
        ready.send((ok, finished[0], sent, received, self_cpu() - cpu0))
    for a in agents.values():
        a.close()


async def _drive_spread(
    sc: Scenario, proc: subprocess.Popen[bytes], port: int, limit: float, procs: int
) -> Result:
    """`_drive` with the agents spread over `procs` simulator processes (started and
    set up before the clock runs), so that one simulator process is not the bottleneck.
    A "join" scenario then measures one more agent joining the storm's VNI instead."""
    ctx = multiprocessing.get_context("fork")
    share = -(-sc.agents // procs)
    workers = []
    for k in range(procs):
        indexes = range(k * share, min(sc.agents, (k + 1) * share))
        mine, theirs = ctx.Pipe()
        go_r, go_w = ctx.Pipe(duplex=False)
        w = ctx.Process(target=_worker, args=(sc, indexes, port, limit, theirs, go_r))
        w.start()
        workers.append((w, mine, go_w))
    loop = asyncio.get_running_loop()
    try:
        for _, mine, _ in workers:
            assert await loop.run_in_executor(None, mine.recv) == "ready"
        result = await _phase(sc, proc, workers, "go", sc.agents)
        _, expect = _expected(sc)
        result.floor = floor({v: len(m) for v, m in expect.items()})
        if sc.key == "join" and result.converged:
            result = await _join(sc, proc, port, limit, workers)
        return result
    finally:
        for _, _, go_w in workers:
            go_w.send("stop")
        for w, _, _ in workers:
            w.join(30)


Workers = Sequence[tuple[multiprocessing.process.BaseProcess, Connection, Connection]]


async def _phase(
    sc: Scenario,
    proc: subprocess.Popen[bytes],
    workers: Workers,
    command: object,
    replies: int,
    joiner: Agent | None = None,
) -> Result:
    """One phase in every simulator process at once (and `joiner` registering here)."""
    loop = asyncio.get_running_loop()
    cpu0, sim0 = cpu_seconds(proc.pid), self_cpu()
    start = time.monotonic()
    for _, _, go_w in workers:
        go_w.send(command)
    if joiner is not None:
        joiner.register({JOIN_VNI: vtep(sc.agents)})
    answers = [await loop.run_in_executor(None, mine.recv) for _, mine, _ in workers]
    cpu = cpu_seconds(proc.pid) - cpu0
    converged = all(a[0] for a in answers)
    seconds = (max(a[1] for a in answers) if converged else time.monotonic()) - start
    return Result(
        sc,
        seconds,
        sum(a[2] for a in answers),
        sum(a[3] for a in answers),
        cpu,
        peak_rss_mb(proc.pid),
        converged,
        sum(a[4] for a in answers) + self_cpu() - sim0,
        replies=replies,
    )


JOIN_VNI = 1000  # the one VNI of a join scenario's storm (Scenario.vnis_of)


async def _join(
    sc: Scenario, proc: subprocess.Popen[bytes], port: int, limit: float, workers: Workers
) -> Result:
    """One agent joins the converged VNI: datagrams vxsnd sends for it (its reply,
    its snapshot, one delta to each member) and the time until every member has it."""
    got = asyncio.Event()
    joiner: Agent | None = None

    def full() -> None:
        if joiner is not None and len(joiner.members.get(JOIN_VNI, ())) == sc.agents + 1:
            got.set()

    joiner = await Agent.create(
        "bench-joiner",
        ("127.0.0.1", port),
        fast=True,
        hold_time=600,
        on_change=full,
        reads=sc.reads,
    )
    try:
        result = await _phase(
            sc, proc, workers, ("grow", JOIN_VNI, vtep(sc.agents).packed), 1, joiner
        )
        try:
            await asyncio.wait_for(got.wait(), limit)
        except TimeoutError:
            result.converged = False
        result.to_vxsnd += joiner.stats.sent
        result.from_vxsnd += joiner.stats.received
        result.floor = sc.agents + 1  # one datagram to each member, the joiner included
        return result
    finally:
        joiner.close()


def table(results: list[Result], baseline: Result | None) -> str:
    head = (
        f"{'scenario':<24} {'converged':>10} {'vs base':>8} {'to vxsnd':>9} "
        f"{'from vxsnd':>10} {'x floor':>7} {'cpu s':>7} {'sim cpu':>7} {'peak RSS':>9}  goal"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        t = f"{r.seconds:.2f} s" if r.converged else f">{r.seconds:.0f} s"
        ratio = f"{r.seconds / baseline.seconds:.1f}x" if baseline and baseline.seconds else "-"
        goal = GOALS.get(r.scenario.key)
        verdict = goal.verdict(r) if goal is not None else "-"
        lines.append(
            f"{r.scenario.label:<24} {t:>10} {ratio:>8} {r.to_vxsnd:>9} {r.from_vxsnd:>10} "
            f"{r.ratio:>6.2f}x "
            f"{r.cpu:>7.2f} {r.sim_cpu:>7.2f} {r.rss_mb:>6.0f} MB  {verdict}"
        )
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> list[Result]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.agents_b + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(need, soft), hard), hard))
    scenarios = []
    for reads in args.reads:
        scenarios += [
            Scenario("base", args.baseline, 1, 1, reads),
            Scenario("a", args.agents_a, 1, 1, reads),
            Scenario("b", args.agents_b, 10, args.pool, reads),
        ]
        if args.shared:
            scenarios.append(Scenario("shared", args.shared, 10, 10, reads))
        if args.join:
            scenarios.append(Scenario("join", args.join, 1, 1, reads))
    results = []
    for sc in scenarios:
        procs = max(args.procs, 2) if sc.key == "join" else args.procs
        r = await run_scenario(sc, args.timeout, procs)
        print(f"  {sc.label}: {r.seconds:.2f} s", file=sys.stderr)
        results.append(r)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_vxsnd", description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", type=int, default=100, help="agents in the baseline row")
    p.add_argument("--agents-a", type=int, default=1000, help="agents in one VNI")
    p.add_argument("--agents-b", type=int, default=2000, help="agents in 10 VNIs each")
    p.add_argument("--pool", type=int, default=100, help="VNIs the 10 per agent come from")
    p.add_argument(
        "--shared",
        type=int,
        default=0,
        help="also run N agents all in the same 10 VNIs (default: off)",
    )
    p.add_argument(
        "--join",
        type=int,
        default=2000,
        help="also time one agent joining a VNI of N converged members (0: off; default 2000)",
    )
    p.add_argument(
        "--reads",
        type=int,
        nargs="+",
        default=[VERSION],
        help=f"the protocol version the agents say they read: {VERSION} (compact memberships, "
        f"as vxrd) or 0 (lists, as a version-2 vxrd); several run every row in each "
        f"(default: {VERSION})",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="give up after (s)")
    p.add_argument(
        "--procs",
        type=int,
        default=1,
        help="simulator processes the agents are spread over (default: 1, this one)",
    )
    args = p.parse_args(argv)
    results = asyncio.run(amain(args))
    print(table(results, results[0]))
    return 0 if all(r.converged for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
