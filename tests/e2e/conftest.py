"""End-to-end fixtures: namespace labs, daemons inside them, and a deadline poller.

- ``lab_factory``: builds ``contrib.lab.Lab`` objects with fresh prefixes and always
  destroys them (processes inside included), even when the test fails.
  ``VXFLOOD_E2E_KEEP=1`` keeps every lab; ``VXFLOOD_E2E_KEEP=failed`` keeps the labs
  of failed tests only. Kept labs are listed on the terminal with a cleanup command.
- ``run_in_ns``: starts a program (vxsnd, vxrd...) in a namespace with stdout+stderr
  in a log file; the logs are attached to the report of a failing test, and the
  processes are stopped (SIGTERM, then SIGKILL) at teardown.
- ``wait_until``: poll a predicate under a deadline (FRR topotests ``run_and_expect``):
  never a fixed sleep; on timeout an AssertionError that says what was awaited and the
  last value seen.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest

from contrib.lab import Lab, new_prefix
from tests.conftest import require_root

REPO_ROOT = Path(__file__).resolve().parents[2]
KEEP = os.environ.get("VXFLOOD_E2E_KEEP", "").strip().lower()
LOG_TAIL_CHARS = 20_000

T = TypeVar("T")
_UNSET: Any = object()

_reports_key = pytest.StashKey[dict[str, pytest.TestReport]]()
_procs_key = pytest.StashKey[list["Proc"]]()


# -- polling ------------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    interval: float = 0.05,
    what: str = "condition",
    expect: Any = _UNSET,
) -> T:
    """Call ``predicate`` until its result is truthy (or ``== expect`` when given) and
    return that result. Exceptions from ``predicate`` count as "not yet" and are
    reported if the deadline passes. Raises AssertionError after ``timeout`` seconds."""
    __tracebackhide__ = True
    deadline = time.monotonic() + timeout
    attempts = 0
    last: Any = _UNSET
    while True:
        attempts += 1
        try:
            last = predicate()
        except Exception as exc:
            last = exc
        else:
            if (last == expect) if expect is not _UNSET else bool(last):
                return last  # type: ignore[no-any-return]
        if time.monotonic() >= deadline:
            break
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
    wanted = f" == {expect!r}" if expect is not _UNSET else ""
    raise AssertionError(
        f"timed out after {timeout:.2f}s ({attempts} attempts) waiting for {what}{wanted}; "
        f"last value: {last!r}"
    )


# -- processes in namespaces --------------------------------------------------------------


def default_name(argv: Sequence[str]) -> str:
    """``vxsnd`` for ``[python, -m, vxsnd, ...]``, else the program's base name."""
    if len(argv) >= 3 and argv[1] == "-m":
        return argv[2]
    return Path(argv[0]).name if argv else "proc"


class Proc:
    """A program running in a network namespace, its output in ``log_path``.

    ``ip netns exec`` execs the program, so ``pid`` is the program's own pid and
    signals reach it directly.
    """

    def __init__(
        self,
        ns: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        self.ns = ns
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.name = name or default_name(self.argv)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        try:
            self.popen = subprocess.Popen(
                ["ip", "netns", "exec", ns, *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=REPO_ROOT,
            )
        except BaseException:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` (default SIGTERM) if the process still runs."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for exit; raises subprocess.TimeoutExpired after ``timeout`` seconds."""
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        try:
            self.kill(signal.SIGTERM)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                return self.popen.wait(timeout)
        finally:
            self._log.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited {self.returncode}"
        return f"<Proc {self.name} pid={self.pid} ns={self.ns} {state}>"


RunInNs = Callable[..., Proc]


@pytest.fixture
def run_in_ns(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunInNs]:
    """``run_in_ns(ns, argv, log_path=None, env=None, name=None) -> Proc``.

    The log defaults to ``tmp_path/<name>.log``. Logs go into the report of a failing
    test; every process is stopped at teardown.
    """
    procs = request.node.stash.setdefault(_procs_key, [])

    def start(
        ns: str,
        argv: Sequence[str],
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
        name: str | None = None,
    ) -> Proc:
        label = name or default_name(argv)
        if log_path is None:
            log_path = tmp_path / f"{label}.log"
            if log_path.exists() or any(p.log_path == log_path for p in procs):
                log_path = tmp_path / f"{label}-{len(procs) + 1}.log"
        proc = Proc(ns, argv, log_path, env=env, name=label)
        procs.append(proc)
        return proc

    yield start
    for proc in reversed(procs):
        proc.stop()


# -- labs ---------------------------------------------------------------------------------


def _failed(item: pytest.Item) -> bool:
    reports = item.stash.get(_reports_key, {})
    return any(r.failed for r in reports.values())


@pytest.fixture
def lab_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., Lab]]:
    """``lab_factory(hosts=3, vnis=(100,), ipv6_underlay=False, **kw) -> Lab`` (built)."""
    require_root()
    labs: list[Lab] = []

    def make(
        hosts: int = 3,
        vnis: Sequence[int] = (100,),
        ipv6_underlay: bool = False,
        **kw: Any,
    ) -> Lab:
        lab = Lab(new_prefix(), hosts, vnis, ipv6_underlay=ipv6_underlay, **kw)
        labs.append(lab)
        return lab.build()

    yield make
    keep = KEEP in ("1", "yes", "true", "all") or (KEEP == "failed" and _failed(request.node))
    if keep:
        _announce_kept(request.config, request.node.nodeid, labs)
        return
    errors = []
    for lab in labs:
        try:
            lab.destroy()
        except Exception as exc:
            errors.append(f"{lab.prefix}: {exc!r}")
    assert not errors, f"lab teardown failed: {errors}"


def _announce_kept(config: pytest.Config, nodeid: str, labs: Sequence[Lab]) -> None:
    lines = [f"VXFLOOD_E2E_KEEP: kept labs of {nodeid}:"]
    for lab in labs:
        lines.append(
            f"  {lab.prefix}: service {lab.service_ns} ({lab.service_addr}), hosts "
            + ", ".join(f"{h.name} ({h.underlay})" for h in lab.hosts)
        )
        lines.append(
            f"  remove: cd {REPO_ROOT} && .venv/bin/python -c "
            f"'from contrib.lab import sweep; sweep(\"{lab.prefix}\")'"
        )
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capman is None:
        print("\n".join(lines), file=sys.__stderr__)
        return
    with capman.global_and_fixture_disabled():  # straight to the terminal, even on success
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)


# -- reports ------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report (for VXFLOOD_E2E_KEEP=failed); on failure attach
    the logs of the processes the test started."""
    report = yield
    item.stash.setdefault(_reports_key, {})[report.when] = report
    if report.failed:
        for proc in item.stash.get(_procs_key, []):
            text = proc.log()
            if len(text) > LOG_TAIL_CHARS:
                text = "[...]\n" + text[-LOG_TAIL_CHARS:]
            report.sections.append(
                (f"log of {proc.name} in {proc.ns} ({proc.log_path})", text or "(empty)")
            )
    return report
