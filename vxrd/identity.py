"""vxrd's default node id: unique per agent out of the box, stable across restarts.

The host name alone is not unique: network namespaces share it, and so do VM
and container images cloned from one template (which share /etc/machine-id
too). Two agents under one node id overwrite each other's registration and
never get a flood list. So, unless ``node_id`` is configured:

1. the id kept in ``<state_dir>/node-id`` is used, if the file holds a valid id;
2. otherwise a new one is made, ``<hostname>-<8 random hex digits>``, and
   written there atomically (temporary file, fsync, rename), so the next start
   finds it; the host name is only a readable prefix;
3. if the state directory cannot be read or written, the id is derived from
   the host name and the addresses this agent speaks from (``local`` and the
   source address toward each service node), ``<hostname>-<8 hex of a hash>``:
   stable while those addresses are, different between hosts that share a host
   name, and logged at WARNING because it changes when the addresses do.

`choose` is the pure decision; `resolve` does the file and socket work around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import re
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from vxflood.schema.validate import NODE_ID_MAX, Address, InvalidValue, check_node_id
from vxrd.config import Config

log = logging.getLogger("vxrd.identity")

NODE_ID_FILE = "node-id"
SUFFIX_BYTES = 4  # 8 hex digits: 2**32 ids per host name
PREFIX_MAX = NODE_ID_MAX - 1 - 2 * SUFFIX_BYTES
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9._:@-]+")

__all__ = [
    "NODE_ID_FILE",
    "Choice",
    "choose",
    "derived_id",
    "host_prefix",
    "local_addresses",
    "random_id",
    "read_stored",
    "resolve",
    "store",
]


@dataclass(frozen=True, slots=True)
class Choice:
    """The node id and where it came from: configured, stored, new (to be stored) or
    derived (the state directory was unusable)."""

    node_id: str
    source: str


def host_prefix(hostname: str) -> str:
    """The host name made fit for a node id prefix (characters outside the node id
    rule become '-', at most PREFIX_MAX characters); 'vxrd' if nothing is left."""
    cleaned = _NOT_ALLOWED.sub("-", hostname.strip()).strip("-")[:PREFIX_MAX].rstrip("-")
    return cleaned or "vxrd"


def random_id(hostname: str, token: bytes) -> str:
    """``<hostname>-<token as hex>``: a new id, token from secrets.token_bytes."""
    return check_node_id(f"{host_prefix(hostname)}-{token.hex()}")


def derived_id(hostname: str, addresses: Iterable[Address]) -> str:
    """``<hostname>-<8 hex>`` from a hash of the host name and the sorted addresses:
    the same for the same host, different for hosts that only share a name."""
    text = "\n".join([hostname, *sorted({str(a) for a in addresses})])
    digest = hashlib.sha256(text.encode()).digest()[:SUFFIX_BYTES]
    return check_node_id(f"{host_prefix(hostname)}-{digest.hex()}")


def choose(
    hostname: str,
    stored: str | None,
    addresses: Iterable[Address],
    token: bytes,
    *,
    configured: str | None = None,
    can_store: bool = True,
) -> Choice:
    """The node id to use, from what the caller found (no I/O here).

    `stored` is the state file's content (None: absent or unreadable), `can_store`
    says whether the state directory can be read and written, `token` the random
    bytes for a new id."""
    if configured is not None:
        return Choice(check_node_id(configured), "configured")
    if stored is not None:
        with contextlib.suppress(InvalidValue):
            return Choice(check_node_id(stored.strip()), "stored")
    if can_store:
        return Choice(random_id(hostname, token), "new")
    return Choice(derived_id(hostname, addresses), "derived")


# ---------------------------------------------------------------- I/O around choose


def read_stored(state_dir: Path) -> tuple[str | None, bool]:
    """(the state file's content or None, whether the directory looks usable)."""
    try:
        return (state_dir / NODE_ID_FILE).read_text(encoding="ascii", errors="replace"), True
    except FileNotFoundError:
        return None, True
    except (OSError, ValueError) as exc:
        log.debug("cannot read %s: %s", state_dir / NODE_ID_FILE, exc)
        return None, False


def store(state_dir: Path, node_id: str) -> None:
    """Write the id atomically: a crash leaves the old file or the new one, never half."""
    state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = state_dir / NODE_ID_FILE
    tmp = state_dir / f".{NODE_ID_FILE}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, f"{node_id}\n".encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dirfd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


async def local_addresses(config: Config) -> list[Address]:
    """The addresses this agent speaks from: `local`, and the source address the
    routing table picks toward each service node (a connected UDP socket; nothing is
    sent). Loopback sources say nothing about the host and are left out."""
    found: list[Address] = [] if config.local is None else [config.local]
    loop = asyncio.get_running_loop()
    for server in config.servers:
        try:
            infos = await loop.getaddrinfo(server.host, server.port, type=socket.SOCK_DGRAM)
            family, _, _, _, sockaddr = infos[0]
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect(sockaddr)
                source = ipaddress.ip_address(sock.getsockname()[0])
        except (OSError, IndexError, ValueError) as exc:
            log.debug("no source address toward %s: %s", server, exc)
            continue
        if not source.is_loopback and source not in found:
            found.append(source)
    return found


async def resolve(config: Config, hostname: str | None = None) -> Config:
    """`config` with its node id decided (see the module docstring); logs the choice."""
    if config.node_id is not None:
        return config
    name = socket.gethostname() if hostname is None else hostname
    stored, usable = read_stored(config.state_dir)
    reason = "cannot read it"
    choice = choose(name, stored, (), secrets.token_bytes(SUFFIX_BYTES), can_store=usable)
    if stored is not None and choice.source != "stored":
        log.warning("%s holds no valid node id: replacing it", config.state_dir / NODE_ID_FILE)
    if choice.source == "new":
        try:
            store(config.state_dir, choice.node_id)
        except OSError as exc:
            log.debug("cannot write the node id", exc_info=True)
            usable, reason = False, exc.strerror or str(exc)
        else:
            log.info("node id %s: new, kept in %s", choice.node_id, config.state_dir)
    if not usable:
        addresses = await local_addresses(config)
        choice = choose(name, None, addresses, b"", can_store=False)
        log.warning(
            "node id %s: derived from the host name and %s, because the state directory "
            "%s is unusable (%s); it changes if those addresses do: give --node-id or a "
            "writable --state-dir",
            choice.node_id,
            ", ".join(map(str, addresses)) or "no address (not unique!)",
            config.state_dir,
            reason,
        )
    elif choice.source == "stored":
        log.info("node id %s (from %s)", choice.node_id, config.state_dir / NODE_ID_FILE)
    return replace(config, node_id=choice.node_id)
