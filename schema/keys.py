"""Shared keys for signing control-plane datagrams (HMAC-SHA256).

Key file format, one key a line: ``KEY_ID HEX_SECRET [nodes=ID,...] [vteps=PREFIX,...]``;
``#`` starts a comment. The first key signs; every listed key verifies, so a key can
be rotated by adding the new one second everywhere, then moving it first, then
dropping the old.

``nodes=`` and ``vteps=`` bind a key to the identities it may speak for (in the
spirit of WireGuard's allowed IPs): a datagram verified by a bound key must name a
sender in ``nodes`` (an exact node id, or a prefix ending in ``*``) and register
only VTEP addresses inside ``vteps`` (addresses or prefixes, v4 or v6). A key
without bindings speaks for anyone, as one fleet key always has.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from vxflood.schema.validate import is_node_id

MIN_SECRET_BYTES = 32
TAG_BYTES = 32
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,32}$")


class KeyFileError(ValueError):
    """The key file cannot be used; the message names the file and line."""


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Key:
    key_id: str
    secret: bytes = b""
    nodes: tuple[str, ...] = ()  # node ids it may speak for ("" = any); "p*" = prefix p
    vteps: tuple[Network, ...] = ()  # VTEP prefixes it may register (() = any)

    def __repr__(self) -> str:  # never print secrets
        return f"Key({self.key_id!r})"

    @property
    def bound(self) -> bool:
        return bool(self.nodes or self.vteps)

    def allows_node(self, node_id: str) -> bool:
        if not self.nodes:
            return True
        return any(
            node_id.startswith(p[:-1]) if p.endswith("*") else node_id == p for p in self.nodes
        )

    def allows_vtep(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if not self.vteps:
            return True
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self.vteps if net.version == address.version)


def _parse_binding(fields: list[str], where: str) -> tuple[tuple[str, ...], tuple[Network, ...]]:
    """The ``nodes=`` / ``vteps=`` options after the secret (KeyFileError naming the line)."""
    nodes: tuple[str, ...] = ()
    vteps: tuple[Network, ...] = ()
    for option in fields:
        name, eq, value = option.partition("=")
        items = [v for v in value.split(",") if v]
        if not eq or not items:
            raise KeyFileError(
                f"{where}: expected nodes=ID,... or vteps=PREFIX,..., got {option!r}"
            )
        if name == "nodes" and not nodes:
            bad = [i for i in items if not is_node_id(i.removesuffix("*") or "?")]
            if bad:
                raise KeyFileError(f"{where}: {bad[0]!r} is not a node id (or prefix*)")
            nodes = tuple(items)
        elif name == "vteps" and not vteps:
            try:
                vteps = tuple(ipaddress.ip_network(i, strict=True) for i in items)
            except ValueError as exc:
                raise KeyFileError(f"{where}: vteps: {exc}") from None
        else:
            raise KeyFileError(f"{where}: unknown or repeated option {name!r} (nodes=, vteps=)")
    return nodes, vteps


class Keyring:
    """The keys a daemon signs and verifies with."""

    def __init__(self, keys: list[Key]) -> None:
        if not keys:
            raise KeyFileError("a keyring needs at least one key")
        ids = [k.key_id for k in keys]
        if len(set(ids)) != len(ids):
            raise KeyFileError("duplicate key id in keyring")
        self.signing = keys[0]
        self._by_id = {k.key_id.encode("ascii"): k for k in keys}

    def __len__(self) -> int:
        return len(self._by_id)

    @classmethod
    def parse(cls, text: str, source: str = "<keys>") -> Keyring:
        keys: list[Key] = []
        seen: set[str] = set()
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            fields = line.split()
            where = f"{source}:{number}"
            if len(fields) < 2:
                raise KeyFileError(f"{where}: expected 'KEY_ID HEX_SECRET [nodes=..] [vteps=..]'")
            key_id, hex_secret = fields[:2]
            if not _KEY_ID.match(key_id):
                raise KeyFileError(f"{where}: key id must be 1-32 of A-Z a-z 0-9 . _ -")
            if key_id in seen:
                raise KeyFileError(f"{where}: duplicate key id {key_id!r}")
            try:
                secret = bytes.fromhex(hex_secret)
            except ValueError:
                raise KeyFileError(f"{where}: secret is not hexadecimal") from None
            if len(secret) < MIN_SECRET_BYTES:
                raise KeyFileError(
                    f"{where}: secret has {len(secret)} bytes, at least {MIN_SECRET_BYTES} needed"
                )
            nodes, vteps = _parse_binding(fields[2:], where)
            seen.add(key_id)
            keys.append(Key(key_id, secret, nodes, vteps))
        if not keys:
            raise KeyFileError(f"{source}: no keys found")
        return cls(keys)

    @classmethod
    def load(cls, path: str | Path) -> Keyring:
        p = Path(path)
        try:
            text = p.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"{p}: cannot read key file: {exc}") from None
        return cls.parse(text, str(p))

    def lookup(self, key_id: bytes) -> Key | None:
        return self._by_id.get(key_id)

    @staticmethod
    def tag(key: Key, data: bytes) -> bytes:
        return hmac.new(key.secret, data, hashlib.sha256).digest()

    def verify(self, key_id: bytes, data: bytes, tag: bytes) -> bool | None:
        """True/False for a known key; None when the key id is unknown."""
        key = self.lookup(key_id)
        if key is None:
            return None
        return hmac.compare_digest(self.tag(key, data), tag)


def readable_by_others(path: str | Path) -> bool:
    """Key files should be private to their daemon; callers warn otherwise."""
    mode = Path(path).stat().st_mode
    return bool(mode & (stat.S_IRGRP | stat.S_IROTH))


def load_key_file(path: str | Path, log: logging.Logger) -> Keyring:
    """`Keyring.load`, warning on `log` when others can read the file: what both daemons
    do at start and on SIGHUP (raises KeyFileError)."""
    keyring = Keyring.load(path)
    if readable_by_others(path):
        log.warning("key file %s is readable by group or others: chmod 600", path)
    return keyring
