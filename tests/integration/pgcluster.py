"""A throwaway PostgreSQL cluster of the test's own, that a test may stop and start.

The machine's shared server must never be stopped by a test; this one lives in
a temporary directory of its own (initdb + pg_ctl from Debian's postgresql package, run
as the `postgres` user since initdb refuses root), listens on 127.0.0.1 on a
free port with trust auth, and is stopped and removed at the end, also when the
test fails.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.conftest import missing


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        missing(f"PostgreSQL server binaries ({name}) are not installed")
    return found[-1]


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Cluster:
    """``netns``: run the server inside that network namespace (the e2e lab's service
    namespace), listening on its loopback."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        # not under pytest's tmp_path: pytest makes its root 0700 again whenever a
        # session starts, which would lock the postgres user out mid-test
        self.data = Path(tempfile.mkdtemp(prefix="vxflood-pg-"))
        self.port = _free_port()
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"
        try:
            self._user = pwd.getpwnam("postgres")
        except KeyError:
            missing("no postgres user to run a private PostgreSQL cluster")

    def _run(self, *argv: str, timeout: float = 60) -> None:
        def demote() -> None:
            os.setgid(self._user.pw_gid)
            os.setuid(self._user.pw_uid)

        preexec: Callable[[], None] | None = demote if os.geteuid() == 0 else None
        if self.netns is not None:  # `ip netns exec` needs root: drop to postgres inside it
            argv = ("ip", "netns", "exec", self.netns, "runuser", "-u", "postgres", "--", *argv)
            preexec = None
        done = subprocess.run(
            argv,
            preexec_fn=preexec,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr.strip()[-500:]}")

    def init(self) -> None:
        os.chown(self.data, self._user.pw_uid, self._user.pw_gid)
        self._run(_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-N")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} -c fsync=off"
        log = str(self.data / "server.log")
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """`mode` "immediate": a crash (no checkpoint, no goodbye to clients)."""
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def clone_standby(self, primary: Cluster) -> None:
        """Make this cluster a streaming replica of `primary` (pg_basebackup -R: a
        base backup that starts as a hot standby following it)."""
        os.chown(self.data, self._user.pw_uid, self._user.pw_gid)
        self._run(
            _bin("pg_basebackup"),
            *("-D", str(self.data), "-h", "127.0.0.1", "-p", str(primary.port)),
            *("-U", "postgres", "-R", "-X", "stream"),
        )

    def promote(self) -> None:
        """Make a standby the primary (what a failover manager such as Patroni does)."""
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-w", "promote")


@contextlib.contextmanager
def replicated_pair() -> Iterator[tuple[Cluster, Cluster]]:
    """A private primary and a hot standby streaming from it, both on loopback."""
    with private_cluster() as primary:
        standby = Cluster()
        try:
            standby.clone_standby(primary)
            standby.start()
            yield primary, standby
        finally:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                standby.stop()
            shutil.rmtree(standby.data, ignore_errors=True)


@contextlib.contextmanager
def private_cluster(netns: str | None = None) -> Iterator[Cluster]:
    cluster = Cluster(netns)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            cluster.stop()
        shutil.rmtree(cluster.data, ignore_errors=True)
