"""One fuzz target per decoder, and the exceptions each one documents.

A target takes arbitrary bytes, feeds them to the decoder the way the daemon or
tool does, and lets through only the decoder's documented rejection. Anything
else escaping (ValueError, KeyError, RecursionError, MemoryError...) is a bug
the engine reports with the input. Seeds are valid inputs the mutations start
from. Pure functions: the drivers (tests/fuzz/run.py) add the engine, timing
and memory accounting.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.unit import wire_vectors
from vxflood.schema import rest
from vxflood.schema.keys import KeyFileError, Keyring
from vxflood.schema.options import ConfigError
from vxflood.schema.rest import PayloadError
from vxflood.schema.validate import InvalidValue, check_node_id
from vxflood.schema.wire import (
    Ack,
    Codec,
    Envelope,
    Membership,
    Register,
    Rejected,
    VniEntry,
    split_membership,
    split_register,
)
from vxflood.schema.wire import address as ip
from vxrd import config as vxrd_config
from vxsnd import config as vxsnd_config
from vxsnd.tokens import TokenFileError, Tokens

Target = Callable[[bytes], None]


@dataclass(frozen=True)
class FuzzTarget:
    name: str
    run: Target
    seeds: tuple[bytes, ...]
    documented: str  # what the target may raise, for the report


UNSIGNED = Codec()
SIGNED = wire_vectors.codec(True)


def _decode_unsigned(data: bytes) -> None:
    with contextlib.suppress(Rejected):
        UNSIGNED.decode(data)


def _decode_signed(data: bytes) -> None:
    with contextlib.suppress(Rejected):
        SIGNED.decode(data)


class _Bytes:
    """Reads typed values off fuzz bytes (zeros past the end), to build messages."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def int(self, size: int) -> int:
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return int.from_bytes(chunk.ljust(size, b"\0"), "big")

    def below(self, n: int) -> int:
        return self.int(4) % n


_ADDRS = tuple(ip(a) for a in ("192.0.2.1", "198.18.0.9", "10.1.2.3", "2001:db8::7", "fd00::1"))


def _round_trip(data: bytes) -> None:
    """Encode direction: a message built from the bytes, split into parts for a random
    budget, each part encoded, decoded and compared. Encoding never fails on a valid
    message and decoding returns exactly what was encoded."""
    b = _Bytes(data)
    sender = "hv-" + str(b.int(2))
    env = Envelope(sender, b.int(8), b.int(7), b.int(7))
    budget = 200 + b.below(1300)
    codec = SIGNED if b.int(1) & 1 else UNSIGNED
    envs = iter(
        Envelope(sender, env.incarnation, env.seq + i, env.time_ms) for i in range(1, 10**6)
    )
    if b.int(1) & 1:
        count = b.below(40)
        entries = [
            VniEntry(1 + i * 7919 % 16_777_215, _ADDRS[b.below(5)], b.int(8)) for i in range(count)
        ]
        template = Register(env, b.int(2), "reg-" + str(b.int(1)), b.int(8), 0, 1, ())
        parts: list[Register | Membership] = list(
            split_register(codec, template, entries, envs, budget)
        )
        got = [e for p in parts for e in _same(codec, p).vnis]  # type: ignore[union-attr]
        assert got == entries, "register parts lost or reordered entries"
        return
    gen = 1 + b.int(4)
    addrs = [ip(f"10.{i // 250 % 250}.{i % 250}.{1 + i // 62500}") for i in range(b.below(100))]
    base = None if b.int(1) & 1 else b.below(gen)
    cut = b.below(len(addrs) + 1)
    add, remove = (addrs, []) if base is None else (addrs[:cut], addrs[cut:])
    msg = Membership(env, "reg", 1 + b.below(16_777_215), gen, base, tuple(add), tuple(remove))
    parts = list(split_membership(codec, msg, envs, budget))
    got_add = [a for p in parts for a in _same(codec, p).add]  # type: ignore[union-attr]
    got_remove = [a for p in parts for a in _same(codec, p).remove]  # type: ignore[union-attr]
    assert got_add == add and got_remove == remove, "membership parts lost addresses"


def _same(codec: Codec, msg: Register | Membership) -> Register | Membership:
    data = codec.encode(msg)
    assert len(data) <= 1500, f"a part of {len(data)} bytes"
    back = codec.decode(data)
    assert back == msg, "decode(encode(msg)) != msg"
    return back  # type: ignore[return-value]


def _rest_body(data: bytes) -> None:
    """A request body as the API judges it: decoded whole, then both body parsers."""
    try:
        body = rest.decode_json(data)
    except PayloadError:
        return
    for parse in (rest.parse_enrol, rest.parse_replace_all):
        with contextlib.suppress(PayloadError):
            parse(body)


def _rest_path(data: bytes) -> None:
    """URL path segments (aiohttp hands them over percent-decoded, as text)."""
    text = data.decode("utf-8", "surrogateescape")
    for parse in (rest.vni_from_path, rest.node_from_path, rest.address_from_text):
        with contextlib.suppress(PayloadError):
            parse(text)
    with contextlib.suppress(InvalidValue):
        check_node_id(text)


def _static_file(data: bytes) -> None:
    with contextlib.suppress(PayloadError):
        rest.parse_static_file(data.decode("utf-8", "replace"), "fuzz")


def _key_file(data: bytes) -> None:
    with contextlib.suppress(KeyFileError):
        Keyring.parse(data.decode("ascii", "replace"), "fuzz")


def _token_file(data: bytes) -> None:
    with contextlib.suppress(TokenFileError):
        Tokens.parse(data.decode("utf-8", "replace"), "fuzz")


_SCRATCH = Path(
    tempfile.mkdtemp(prefix="vxflood-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
)
_TOML = _SCRATCH / "config.toml"


def _vxsnd_config(data: bytes) -> None:
    """The real load path of `vxsnd --config FILE`: file, TOML, options, Config checks."""
    _TOML.write_bytes(data)
    with contextlib.suppress(ConfigError):
        vxsnd_config.from_values({"config": str(_TOML)})


def _vxrd_config(data: bytes) -> None:
    _TOML.write_bytes(data)
    with contextlib.suppress(ConfigError):
        vxrd_config.Config(**vxrd_config.TABLE.merge({"config": str(_TOML)}))


def _wire_seeds(kinds: tuple[type, ...], signed: bool) -> tuple[bytes, ...]:
    codec = SIGNED if signed else UNSIGNED
    return tuple(codec.encode(m) for m, _ in wire_vectors.VECTORS.values() if isinstance(m, kinds))


_HEX = "ab" * 32
TARGETS: dict[str, FuzzTarget] = {
    t.name: t
    for t in (
        FuzzTarget(
            "wire-to-vxsnd",
            _decode_unsigned,
            _wire_seeds((Register, Ack), False),
            "vxflood.schema.wire.Rejected",
        ),
        FuzzTarget(
            "wire-to-vxrd",
            _decode_unsigned,
            _wire_seeds((Membership,), False),
            "vxflood.schema.wire.Rejected",
        ),
        FuzzTarget(
            "wire-signed",
            _decode_signed,
            _wire_seeds((Register, Membership, Ack), True),
            "vxflood.schema.wire.Rejected",
        ),
        FuzzTarget(
            "wire-encode", _round_trip, (b"\x01" * 64, b"\x00" * 64, bytes(range(64))), "nothing"
        ),
        FuzzTarget(
            "rest-body",
            _rest_body,
            (
                b'{"hold_time": 30, "description": "tor-1"}',
                b'{"vteps": [{"vni": 100, "address": "192.0.2.1", "hold_time": null}]}',
                b'{"vteps": [{"vni": 7, "address": "2001:db8::1", "description": "x"}]}',
                b"null",
            ),
            "vxflood.schema.rest.PayloadError",
        ),
        FuzzTarget(
            "rest-path",
            _rest_path,
            (b"100", b"16777215", b"hv-1.example.org", b"192.0.2.1", b"2001:db8::1.2.3.4"),
            "vxflood.schema.rest.PayloadError, vxflood.schema.validate.InvalidValue",
        ),
        FuzzTarget(
            "static-file",
            _static_file,
            (b"# static\n100 192.0.2.1 rack 4\n200 2001:db8::1\n",),
            "vxflood.schema.rest.PayloadError",
        ),
        FuzzTarget(
            "key-file",
            _key_file,
            (f"# keys\nk1 {_HEX}\nk2 {'cd' * 40}  # old\n".encode(),),
            "vxflood.schema.keys.KeyFileError",
        ),
        FuzzTarget(
            "token-file",
            _token_file,
            (b"# t\n0123456789abcdef0123 admin ops\nfedcba9876543210fedc read grafana\n",),
            "vxsnd.tokens.TokenFileError",
        ),
        FuzzTarget(
            "vxsnd-config",
            _vxsnd_config,
            (
                b'listen = ["127.0.0.1:10001", "[::1]:10001"]\nmax_hold_time = 600\n'
                b'db = "sqlite:///x.db"\nlog_level = "INFO"\nserver_id = "vxsnd1"\n',
            ),
            "vxflood.schema.options.ConfigError",
        ),
        FuzzTarget(
            "vxrd-config",
            _vxrd_config,
            (
                b'servers = ["10.0.0.1", "[2001:db8::1]:10001"]\nhold_time = 90\n'
                b'node_id = "hv01"\ninclude = ["vx*"]\nlocal = "192.0.2.7"\n',
            ),
            "vxflood.schema.options.ConfigError",
        ),
    )
}
