"""The objects behind the golden vectors, and a writer for tests/unit/golden_wire.json.

Regenerate only on purpose (a protocol change is a new version):
    python -m tests.unit.wire_vectors > tests/unit/golden_wire.json
"""

from __future__ import annotations

import json

import msgpack

from vxflood.schema.keys import Keyring
from vxflood.schema.wire import (
    HEADER,
    Ack,
    Codec,
    Envelope,
    Membership,
    Message,
    Refusal,
    Register,
    VniEntry,
)
from vxflood.schema.wire import address as ip

KEYRING = Keyring.parse("golden-1 " + "a5" * 32)
ENV = Envelope("host-a", 0x1122334455667788, 42, 1_764_000_000_000)
SERVER_ENV = Envelope("sn-1", 0x0102030405060708, 7, 1_764_000_000_500)

VECTORS: dict[str, tuple[Message, bool]] = {
    "register-v4-unsigned": (
        Register(ENV, 90, "", 1, 0, 1, (VniEntry(100, ip("198.18.0.1"), 0),)),
        False,
    ),
    "register-v6-two-vnis-signed": (
        Register(
            ENV,
            90,
            "9f2c",
            3,
            0,
            1,
            (VniEntry(100, ip("fd00::1"), 5), VniEntry(16_777_215, ip("fd00::1"), 0)),
        ),
        True,
    ),
    "register-withdraw-signed": (Register(ENV, 0, "9f2c", 4, 0, 1, ()), True),
    "membership-snapshot-part": (
        Membership(SERVER_ENV, "9f2c", 100, 12, None, (ip("198.18.0.2"), ip("fd00::3")), (), 1, 3),
        True,
    ),
    "membership-delta": (
        Membership(SERVER_ENV, "9f2c", 100, 13, 12, (ip("198.18.0.4"),), (ip("198.18.0.2"),)),
        False,
    ),
    "ack-signed": (Ack(ENV, "9f2c", ((100, 13), (200, 1))), True),
    # the learning flag (key "l"): only present when set
    "membership-delta-learning": (
        Membership(SERVER_ENV, "9f2c", 100, 14, 13, (ip("198.18.0.5"),), (), learning=True),
        False,
    ),
    "ack-reply-learning": (Ack(SERVER_ENV, "9f2c", ((100, 14),), learning=True), False),
    # protocol version 2: a register round refused, the node id held elsewhere
    "refusal-node-id-conflict-signed": (
        Refusal(SERVER_ENV, "9f2c", "node-id-conflict", ip("192.0.2.7"), 61),
        True,
    ),
    # protocol version 3: the register says it reads version 3 ("c"); memberships to
    # such an agent carry their addresses as packed runs
    "register-reads-v3-signed": (
        Register(ENV, 90, "", 5, 0, 1, (VniEntry(100, ip("198.18.0.1"), 0),), max_version=3),
        True,
    ),
    "membership-compact-snapshot-signed": (
        Membership(
            SERVER_ENV,
            "9f2c",
            100,
            12,
            None,
            (ip("198.18.0.2"), ip("198.18.0.3"), ip("fd00::3")),
            (),
            compact=True,
        ),
        True,
    ),
    "membership-compact-delta": (
        Membership(
            SERVER_ENV, "9f2c", 100, 13, 12, (ip("198.18.0.4"),), (ip("198.18.0.2"),), compact=True
        ),
        False,
    ),
}


def codec(signed: bool) -> Codec:
    return Codec(KEYRING if signed else None)


def view(data: bytes) -> str:
    """A readable view of a datagram: header fields and the decoded body."""
    magic, version, mtype, klen = HEADER.unpack_from(data)
    start = HEADER.size + klen
    end = len(data) - (32 if klen else 0)
    body = msgpack.unpackb(data[start:end], raw=False)
    shown = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in body.items()}
    for k in ("v", "a", "d"):
        if k in shown and isinstance(body[k], list):
            shown[k] = [
                [x.hex() if isinstance(x, bytes) else x for x in item]
                if isinstance(item, list)
                else item.hex()
                for item in body[k]
            ]
    key = data[HEADER.size : start].decode()
    return f"{magic.decode()} v{version} type={mtype} key={key or '-'} body={shown}"


def render() -> str:
    out = []
    for name, (msg, signed) in VECTORS.items():
        data = codec(signed).encode(msg)
        out.append({"name": name, "object": repr(msg), "hex": data.hex(), "view": view(data)})
    return json.dumps(out, indent=1) + "\n"


if __name__ == "__main__":
    print(render(), end="")
