"""Encode a membership part once, send it to many nodes.

Every datagram carries its own envelope (sequence number and time, checked by
the receiver's replay guard) and, with a key file, its own tag, so a datagram
cannot be sent twice. What can be shared is everything else: the body of a
snapshot of (VNI, generation) is the same for every node. `Stamped` keeps the
bytes `Codec.encode` produced for one part and re-stamps them with a fresh
envelope: a small msgpack splice plus the HMAC. The result is byte-for-byte what
`Codec.encode` returns for the same message with that envelope (the unit tests
check this), so receivers decode it with the one decode path in schema.wire.
"""

from __future__ import annotations

from dataclasses import replace

import msgpack

from vxflood.schema.keys import TAG_BYTES, Keyring
from vxflood.schema.wire import HEADER, Codec, Envelope, Membership

_PROBE = Envelope("x", 0, 0, 0)


def _env_pairs(env: Envelope) -> bytes:
    """The msgpack bytes of the envelope's key/value pairs (without the map header)."""
    packed: bytes = msgpack.packb(
        {"s": env.sender, "i": env.incarnation, "q": env.seq, "t": env.time_ms},
        use_bin_type=True,
    )
    return packed[1:]  # a 4-entry map always has a one-byte fixmap header


def sender_prefix(sender: str, incarnation: int) -> bytes:
    """The envelope pairs that stay the same for every datagram of one sender
    incarnation (s, i, and the key of q): `Stamped.stamp_at` adds the rest."""
    pairs: bytes = b"".join(
        msgpack.packb(x, use_bin_type=True) for x in ("s", sender, "i", incarnation)
    )
    return pairs + b"\xa1q"


# one Packer for the loop's lifetime: msgpack.packb builds a Packer per call, which
# was most of the cost of the two integers stamped into every datagram
_PACKER = msgpack.Packer()


def _uint(value: int) -> bytes:
    packed: bytes = _PACKER.pack(value)
    return packed


class Stamped:
    """One encoded membership part whose envelope can be replaced cheaply."""

    __slots__ = ("_head", "_keyring", "_map_header", "_tail", "message")

    def __init__(self, codec: Codec, message: Membership) -> None:
        self.message = message
        self._keyring: Keyring | None = codec.keyring
        data = codec.encode(replace(message, env=_PROBE))
        end = len(data) - (TAG_BYTES if codec.keyring is not None else 0)
        klen = data[HEADER.size - 1]
        body_start = HEADER.size + klen
        self._head = data[:body_start]
        body = data[body_start:end]
        probe = _env_pairs(_PROBE)
        if not 0x80 <= body[0] <= 0x8F or body[1 : 1 + len(probe)] != probe:
            raise ValueError("unexpected body layout: cannot re-stamp")
        self._map_header = body[:1]
        self._tail = body[1 + len(probe) :]

    def stamp(self, env: Envelope) -> bytes:
        data = self._head + self._map_header + _env_pairs(env) + self._tail
        if self._keyring is not None:
            data += Keyring.tag(self._keyring.signing, data)
        return data

    def stamp_at(self, prefix: bytes, seq: int, time_ms: int) -> bytes:
        """`stamp` for the sender of `prefix` (sender_prefix) at (seq, time_ms): the
        same bytes, without an Envelope and a map packed for every datagram (the two
        were most of what planning a storm's pushes cost)."""
        data = b"".join(
            (
                self._head,
                self._map_header,
                prefix,
                _uint(seq),
                b"\xa1t",
                _uint(time_ms),
                self._tail,
            )
        )
        if self._keyring is not None:
            data += Keyring.tag(self._keyring.signing, data)
        return data
