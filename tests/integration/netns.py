"""A network namespace with one VXLAN device (vx100 on its loopback), for tests and
benchmarks that run a real vxrd process without a whole lab. Unique name per call,
removed on the way out, also when the body fails."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def vxlan_namespace(prefix: str) -> Iterator[str]:
    name = f"{prefix}{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (
            "link set lo up",
            "link add vx100 type vxlan id 100 local 127.0.0.1 dstport 4789 nolearning",
            "link set vx100 up",
        ):
            subprocess.run(["ip", "-n", name, *cmd.split()], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
