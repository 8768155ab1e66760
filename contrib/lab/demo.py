"""`make demo`: vxflood in a throw-away network-namespace lab, start to finish.

Builds three hosts on one underlay (VNI 100 on all three, VNI 200 on two), runs
vxsnd in the underlay namespace and vxrd on every host, waits until the flood lists
are complete, shows the registry and each host's flood list, sends a broadcast and
names who received it, then stops the daemons and removes the lab, also on Ctrl-C or
failure. Needs root (network namespaces); everything stays inside the lab.

    sudo .venv/bin/python contrib/lab/demo.py [--keep-logs]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `contrib` importable
    sys.path.insert(0, str(REPO_ROOT))

from contrib.lab.probe import broadcast_receipts  # noqa: E402
from contrib.lab.topology import Host, Lab, LabError, new_prefix, overlay_broadcast  # noqa: E402

PORT = 10001
API_PORT = 10080
CONVERGE_TIMEOUT = 30.0  # seconds, daemons' start included
ZERO_MAC = "00:00:00:00:00:00"


class DemoError(Exception):
    """One line saying what went wrong."""


class Interrupted(Exception):
    """SIGTERM/SIGHUP: clean up like on Ctrl-C."""


def say(text: str = "") -> None:
    print(text, flush=True)


def step(text: str) -> None:
    say()
    say(f"== {text}")


def short(host: Host) -> str:
    """``h1`` for ``vxd1234abc-h1``."""
    return f"h{host.index}"


class Daemons:
    """vxsnd and the vxrds of the demo, their logs in ``workdir``."""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.api: str | None = None

    def _start(self, node: Any, label: str, argv: Sequence[str]) -> None:
        log_path = self.workdir / f"{label}.log"
        with open(log_path, "ab") as log:
            proc = node.popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.procs.append((label, proc, log_path))

    def start(self) -> None:
        addr = self.lab.service_addr
        argv = [
            sys.executable,
            *("-m", "vxsnd"),
            *("--listen", f"{addr}:{PORT}"),
            *("--db", f"sqlite:///{self.workdir / 'registry.db'}"),
            *("--server-id", "demo-vxsnd"),
        ]
        if vxsnd_has_api():  # read-only and unauthenticated: loopback of the service namespace
            self.api = f"http://127.0.0.1:{API_PORT}"
            argv += ["--api", f"127.0.0.1:{API_PORT}"]
        self._start(self.lab.service, "vxsnd", argv)
        # An agent registers at start and then every hold time / 3 (30 s by default):
        # start the agents once vxsnd listens, so their first register is heard.
        self.wait_listening(PORT)
        for h in self.lab.hosts:
            self._start(
                h,
                f"vxrd-{short(h)}",
                [
                    sys.executable,
                    *("-m", "vxrd"),
                    *("--server", f"{addr}:{PORT}"),
                    *("--node-id", short(h)),
                    *("--status-socket", str(self.socket(h))),
                ],
            )

    def wait_listening(self, port: int, timeout: float = CONVERGE_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            out = self.lab.service.exec(["ss", "-Hlun", "sport", f"= :{port}"]).stdout
            if out.strip():
                return
            if time.monotonic() > deadline:
                raise DemoError(f"vxsnd did not listen on UDP port {port} within {timeout:.0f}s")
            time.sleep(0.05)

    def socket(self, host: Host) -> Path:
        return self.workdir / f"vxrd-{short(host)}.sock"

    def check_alive(self) -> None:
        for label, proc, log_path in self.procs:
            if proc.poll() is not None:
                raise DemoError(f"{label} exited with status {proc.returncode}", log_path)

    def stop(self) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc, _ in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def logs(self) -> list[tuple[str, Path]]:
        return [(label, path) for label, _, path in self.procs]


def vxsnd_has_api() -> bool:
    """Does this vxsnd serve the REST API (``--api``)?"""
    out = subprocess.run(
        [sys.executable, "-m", "vxsnd", "--help"], capture_output=True, text=True, check=False
    )
    return "--api" in out.stdout


def vxrdctl(daemons: Daemons, host: Host, *args: str) -> Any:
    proc = subprocess.run(
        [sys.executable, "-m", "vxrd.ctl", "--socket", str(daemons.socket(host)), "--json", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        raise DemoError(f"vxrdctl {' '.join(args)} on {short(host)}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def members_of(lab: Lab, vni: int) -> list[Host]:
    return [h for h in lab.hosts if vni in h.vnis]


def converged(lab: Lab) -> bool:
    for vni in lab.vnis:
        members = members_of(lab, vni)
        for h in members:
            if lab.fdb_flood(h, vni) != {o.underlay for o in members if o is not h}:
                return False
    return True


def wait_converged(lab: Lab, daemons: Daemons) -> float:
    started = time.monotonic()
    deadline = started + CONVERGE_TIMEOUT
    while True:
        daemons.check_alive()
        if converged(lab):
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise DemoError(f"the flood lists were not complete after {CONVERGE_TIMEOUT:.0f}s")
        time.sleep(0.05)


def show_registry(lab: Lab, daemons: Daemons) -> None:
    if daemons.api is not None and show_vxsndctl(lab, daemons.api):
        return
    by_addr = {h.underlay: short(h) for h in lab.hosts}
    say("What vxsnd pushed to the agents ($ vxrdctl peers, on every host):")
    views: dict[int, dict[tuple[tuple[str, ...], str], list[str]]] = {}
    for h in lab.hosts:
        for entry in vxrdctl(daemons, h, "peers"):
            members = tuple(entry["members"] or ())
            gens = "/".join(str(s["generation"]) for s in entry["servers"].values()) or "-"
            views.setdefault(entry["vni"], {}).setdefault((members, gens), []).append(short(h))
    for vni in sorted(views):
        for (members, gen), seen_by in views[vni].items():
            names = ", ".join(f"{by_addr.get(a, '?')} {a}" for a in members) or "(none)"
            seen = ", ".join(seen_by)
            say(f"  VNI {vni}  generation {gen}  members: {names}  (as seen by {seen})")


def show_vxsndctl(lab: Lab, api: str, timeout: float = 10.0) -> bool:
    """``vxsndctl vnis`` and ``vxsndctl vni V`` in the service namespace; False (with a
    note) when the API does not answer."""
    commands = [["vnis"], *(["vni", str(v)] for v in lab.vnis)]
    outputs = []
    deadline = time.monotonic() + timeout
    for args in commands:
        argv = [sys.executable, "-m", "vxsnd.ctl", "--api", api, *args]
        while True:
            out = lab.service.exec(argv, check=False)
            if out.returncode == 0:
                break
            if out.returncode != 3 or time.monotonic() > deadline:  # 3: not reachable (yet)
                say(f"(vxsndctl {' '.join(args)} failed: {out.stderr.strip()})")
                say("(showing what the agents were told instead)")
                return False
            time.sleep(0.1)
        outputs.append((args, out.stdout.rstrip()))
    for args, text in outputs:
        say(f"$ vxsndctl {' '.join(args)}")
        for line in text.splitlines():
            say(f"    {line}")
    return True


def show_flood_lists(lab: Lab) -> None:
    by_addr = {h.underlay: short(h) for h in lab.hosts}
    for h in lab.hosts:
        for vni in sorted(h.vnis):
            dev = h.vxlan_dev(vni)
            say(f"{short(h)} ({h.underlay})  $ bridge fdb show dev {dev} | grep {ZERO_MAC}")
            out = h.exec(["bridge", "fdb", "show", "dev", dev]).stdout
            lines = sorted(line for line in out.splitlines() if line.startswith(ZERO_MAC))
            for line in lines:
                dst = line.split(" dst ")[1].split()[0] if " dst " in line else "?"
                say(f"    {line.strip():<58} <- {by_addr.get(dst, '?')}")
            if not lines:
                say("    (empty)")


def show_broadcast(lab: Lab, vni: int, sender: Host) -> list[Host]:
    members = members_of(lab, vni)
    listeners = [h for h in lab.hosts if h is not sender]
    got = broadcast_receipts(lab, vni, sender, listeners, timeout=1.0, count=1)
    heard = [h for h in listeners if f"br{vni}" in got[h]]
    say(
        f"{short(sender)} sends one UDP datagram to {overlay_broadcast(vni)} "
        f"(the broadcast address of VNI {vni}):"
    )
    for h in listeners:
        where = ", ".join(sorted(got[h]))
        if h in heard:
            say(f"    {short(h)} ({h.overlay(vni)}): received it on br{vni}")
        elif vni not in h.vnis:
            extra = f" (but arrived on {where}!)" if where else ""
            say(f"    {short(h)}: not in VNI {vni}, did not receive it{extra}")
        else:
            say(f"    {short(h)} ({h.overlay(vni)}): did NOT receive it")
    want = [h for h in members if h is not sender]
    leaks = [h for h in listeners if got[h] - {f"br{vni}"}]
    if heard != want or leaks:
        raise DemoError(
            f"the broadcast in VNI {vni} reached {[short(h) for h in heard]}, "
            f"expected {[short(h) for h in want]}"
            + (f"; it leaked into another VNI on {[short(h) for h in leaks]}" if leaks else "")
        )
    return heard


def run_demo(workdir: Path) -> None:
    started = time.monotonic()
    step("Building the lab")
    lab = Lab(new_prefix("vxd"), hosts=2, vnis=[100, 200])
    daemons: Daemons | None = None
    try:
        lab.build()
        lab.add_host(vnis=[100])
        say(
            f"namespaces {lab.prefix}-*: underlay {lab.service_ns} ({lab.service_addr}), "
            + ", ".join(
                f"{short(h)} {h.underlay} (VNI {', '.join(map(str, sorted(h.vnis)))})"
                for h in lab.hosts
            )
        )
        say("every vxlan device starts with an empty flood list")

        step("Starting vxsnd (service node) and vxrd (one agent per host)")
        daemons = Daemons(lab, workdir)
        daemons.start()
        say(f"vxsnd on {lab.service_addr}:{PORT} (SQLite registry), vxrd on h1, h2, h3")
        took = wait_converged(lab, daemons)
        say(f"flood lists complete {took:.2f}s after the agents started (Python start-up included)")

        step("The registry")
        show_registry(lab, daemons)

        step("Each host's flood list: one all-zero entry per remote VTEP")
        show_flood_lists(lab)

        step("A broadcast, replicated by the sender to every other member")
        h1, h2, _ = lab.hosts
        show_broadcast(lab, 100, h1)
        show_broadcast(lab, 200, h2)
    except BaseException:
        _cleanup(lab, daemons)
        raise
    step("Cleaning up")
    _cleanup(lab, daemons)
    say(f"daemons stopped, lab {lab.prefix} removed. Demo took {time.monotonic() - started:.1f}s.")


def _cleanup(lab: Lab, daemons: Daemons | None) -> None:
    """Stop the daemons and remove the lab; a second Ctrl-C must not cut this short."""
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _SIGNALS}
    try:
        if daemons is not None:
            daemons.stop()
    finally:
        lab.destroy()
        for sig, handler in old.items():
            signal.signal(sig, handler)


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the daemons' logs (printed at the end)"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        say("The demo builds network namespaces and needs root: run it as root (sudo make demo).")
        return 1
    for tool in ("ip", "bridge"):
        if shutil.which(tool) is None:
            say(f"The demo needs iproute2 ('{tool}' not found): apt-get install iproute2")
            return 1
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="vxflood-demo-"))
    failed = False
    try:
        run_demo(workdir)
        say()
        say("Demo OK.")
        return 0
    except (KeyboardInterrupt, Interrupted):
        say()
        say("Interrupted: daemons stopped and lab removed.")
        return 130
    except DemoError as exc:
        failed = True
        say()
        say(f"DEMO FAILED: {exc.args[0]}")
        _print_logs(workdir)
        return 1
    except (LabError, OSError, subprocess.SubprocessError) as exc:
        failed = True
        say()
        say(f"DEMO FAILED: {exc}")
        _print_logs(workdir)
        return 1
    except Exception:
        failed = True
        traceback.print_exc()
        say("DEMO FAILED: unexpected error (traceback above); the lab was removed")
        _print_logs(workdir)
        return 1
    finally:
        if args.keep_logs or failed:
            say(f"daemon logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _print_logs(workdir: Path, tail: int = 15) -> None:
    for path in sorted(workdir.glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()[-tail:]
        say(f"--- last lines of {path.name}:")
        for line in lines:
            say(f"    {line}")


if __name__ == "__main__":
    raise SystemExit(main())
