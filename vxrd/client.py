"""Control-plane client: the UDP endpoint of one service node.

The protocol core is vxrd.answers.ServerState (pure). `ServerClient` wraps it:
socket, codec, sequencer, replay guard, register rounds. A datagram is handed
by the transport's `datagram_received` callback to the agent's `deliver`
function, which calls `receive()` and acts on the `Outcome` it returns (the
kernel write, the acks, a register at once): all synchronous, no queue and no
task in between, so a membership push is written inside the callback that
received it. asyncio reads one datagram per socket per loop turn, so a flood
of datagrams still lets the rest of the agent run.

Recovery from replay lockout (issue 9): when a server that answered this
incarnation leaves RENEW_AFTER register rounds in a row unanswered, the next
round goes out under a new incarnation (a new Sequencer), once per unanswered
streak: a datagram that moved the server's replay window far ahead of ours
cannot keep this agent out.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass

from vxflood.schema.replay import ReplayGuard
from vxflood.schema.validate import Address
from vxflood.schema.wire import (
    DEFAULT_BUDGET,
    VERSION,
    Ack,
    Codec,
    Membership,
    Refusal,
    Register,
    Rejected,
    Sequencer,
    split_register,
)
from vxrd.answers import ASSEMBLY_TIMEOUT, Outcome, ServerState, union_members
from vxrd.config import ServerAddr

log = logging.getLogger("vxrd.client")

RENEW_AFTER = 3  # unanswered register rounds in a row before a new incarnation
RETRY_AFTER_EXPIRY = 0.5  # seconds past a refusing holder's expiry before trying again

__all__ = [
    "ASSEMBLY_TIMEOUT",
    "RENEW_AFTER",
    "Outcome",
    "Refused",
    "ServerClient",
    "ServerState",
    "union_members",
]


@dataclass(slots=True)
class Refused:
    """The server refuses our register rounds (issue 10): another agent holds our node id."""

    reason: str  # "node-id-conflict"
    holder: str  # the address the node id is registered from
    since: float  # wall-clock time of the first refusal of this streak
    last: float  # ... of the latest
    count: int  # refusals in this streak
    retry_at: float  # monotonic: when the holder's registration runs out unless refreshed


# ---------------------------------------------------------------- asyncio endpoint

Deliver = Callable[["ServerClient", bytes, str], None]


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, owner: ServerClient) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.owner.deliver(self.owner, data, str(addr[0]))

    def error_received(self, exc: Exception) -> None:
        log.debug("server %s: socket error %s", self.owner.server, exc)


class ServerClient:
    """One configured service node: UDP socket, codec, sequencer, replay guard, state."""

    def __init__(
        self,
        server: ServerAddr,
        node_id: str,
        codec: Codec,
        deliver: Deliver | None = None,
        incarnation: int | None = None,
        budget: int = DEFAULT_BUDGET,
    ) -> None:
        self.server = server
        self.node_id = node_id
        self.codec = codec
        self.state = ServerState()
        self.seq = Sequencer(node_id, incarnation)
        self.guard = ReplayGuard()
        # where the transport hands each datagram: by default just fed to the state
        self.deliver: Deliver = deliver or _just_receive
        self.budget = budget
        self.drops: Counter[str] = Counter()
        self.last_contact: float | None = None  # wall-clock time of the last valid datagram
        self.round = 0
        # register rounds are answered with an Ack; until then the agent retries
        self.round_sent: float | None = None  # monotonic time of the last round
        self.answered = False  # the server replied since our last round
        self.ever_answered = False  # the server has answered a round since start
        self.incarnation_answered = False  # ... a round of the current incarnation
        self.unanswered = 0  # rounds sent in a row that the server has not answered
        self.renewals = 0  # new incarnations picked because the server stopped answering
        self.errors = 0  # datagrams whose handling raised (a bug): counted, logged rarely
        self.refused: Refused | None = None  # the server refuses our node id (a conflict)
        self.poke = asyncio.Event()  # set on every round sent and every reply
        self._address: tuple[str, int] | None = None  # resolved (ip, port)
        self._source = ""  # the server's ip, normalised (_norm): what replies come from
        self._transport: asyncio.DatagramTransport | None = None

    @property
    def name(self) -> str:
        return str(self.server)

    @property
    def address(self) -> tuple[str, int] | None:
        """The resolved (ip, port) datagrams go to; None until the name resolves."""
        return self._address

    @address.setter
    def address(self, value: tuple[str, int] | None) -> None:
        # normalised once here, not for every datagram received
        self._address = value
        self._source = "" if value is None else _norm(value[0])

    def from_server(self, source: str) -> bool:
        """Whether a datagram's source address (as the socket reports it) is the server.

        The socket reports the server's address in the canonical text that
        resolving gave (inet_ntop and ipaddress agree on it), so the common case
        is one string comparison. Any other text is parsed (cached per text): an
        IPv4-mapped IPv6 address counts as the IPv4 address, a scope id is
        ignored, other spellings of the same IPv6 address match.
        """
        address = self._address
        if address is None:
            return False
        return source == address[0] or _norm(source) == self._source

    def count_drop(self, reason: str) -> None:
        self.drops[reason] += 1
        total = self.drops[reason]
        if total & (total - 1) == 0:  # 1, 2, 4, 8, ...: rate-limited logging
            log.warning("server %s: dropped datagram (%s), %d so far", self.name, reason, total)

    async def _resolve(self) -> tuple[str, int] | None:
        host = self.server.host
        try:
            return (str(ipaddress.ip_address(host)), self.server.port)
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, self.server.port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            log.warning("server %s: cannot resolve: %s (retrying at next refresh)", self.name, exc)
            return None
        ip = str(infos[0][4][0])
        return (ip, self.server.port)

    async def start(self) -> None:
        await self._ensure_socket()

    async def _ensure_socket(self) -> bool:
        if self._transport is not None:
            return True
        addr = await self._resolve()
        if addr is None:
            return False
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        loop = asyncio.get_running_loop()
        wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Endpoint(self), family=family, local_addr=(wildcard, 0)
        )
        self._transport = transport
        self.address = addr
        return True

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _send(self, data: bytes) -> None:
        if self._transport is None or self.address is None:
            return
        self._transport.sendto(data, self.address)

    def _renew(self) -> bool:
        """A new incarnation when the server stopped answering this one (once per
        unanswered streak): what it refuses as replays, a new incarnation passes."""
        if not self.incarnation_answered or self.unanswered < RENEW_AFTER:
            return False
        self.seq = Sequencer(self.node_id)
        self.incarnation_answered = False
        self.renewals += 1
        log.warning(
            "server %s: %d register rounds unanswered; registering as a new incarnation %d"
            " (in case it refuses ours as replays)",
            self.name,
            self.unanswered,
            self.seq.incarnation,
        )
        return True

    async def send_register(self, serve: Mapping[int, Address], hold_time: int) -> bool:
        """One register round: every VNI served with its local VTEP and applied generation.
        Returns True when it went out under a new incarnation (see _renew)."""
        if self.round_sent is not None and not self.answered:
            self.unanswered += 1
        self.round_sent = time.monotonic()  # also when it cannot go out: retried later
        self.answered = False
        self.poke.set()
        renewed = self._renew()
        if not await self._ensure_socket():
            return renewed
        self.round += 1
        template = Register(
            self.seq.next(),
            hold_time,
            self.state.registry,
            self.round,
            0,
            1,
            (),
            max_version=VERSION,  # so the server may send memberships in the compact form
        )
        # `template.env` above consumed one sequence number; harmless (gaps are allowed)
        entries = self.state.entries(serve) if hold_time else []
        for part in split_register(self.codec, template, entries, self.seq.many(), self.budget):
            self._send(self.codec.encode(part))
        return renewed

    def send_ack(self, applied: Iterable[tuple[int, int]]) -> None:
        items = tuple(applied)
        if items:
            self._send(self.codec.encode(Ack(self.seq.next(), self.state.registry, items)))

    def _dropped(self, reason: str) -> Outcome:
        self.count_drop(reason)
        return Outcome(ignored=reason, dropped=True)

    def feed(
        self,
        data: bytes,
        source: str,
        now_wall: float,
        now_mono: float,
        wanted: Container[int] = (),
    ) -> Outcome:
        """Check and apply one datagram (no I/O: the caller sends what the Outcome
        says): a membership for a VNI in `wanted`, or an Ack answering our round."""
        if not self.from_server(source):
            return self._dropped("unexpected-source")
        try:
            msg = self.codec.decode(data)
        except Rejected as exc:
            return self._dropped(exc.reason)
        if not isinstance(msg, Membership | Ack | Refusal):
            return self._dropped("type")
        env = msg.env
        reason = self.guard.check(env.sender, env.incarnation, env.seq, env.time_ms, now_wall)
        if reason is not None:
            return self._dropped(reason)
        self.last_contact = now_wall
        if isinstance(msg, Refusal):
            self.state.heard = now_mono  # alive: it answered, with a no
            self._refusal(msg, now_wall, now_mono)
            return Outcome(ignored=msg.reason)
        if isinstance(msg, Ack):
            out = self.state.handle_reply(msg, now_mono)
            self._accepted()
            self._answer()
            return out
        if msg.vni not in wanted:
            self.state.heard = now_mono  # alive, but nothing to apply
            return self._dropped("not-for-us")
        return self.state.handle(msg, now_mono)

    def _refusal(self, msg: Refusal, now_wall: float, now_mono: float) -> None:
        """Our round was refused: the round counts as answered (the server is alive, a
        new incarnation would not help); the next try is the next refresh, or sooner
        when the holder's registration runs out before it (vxrd.registrar.retry)."""
        holder = str(msg.holder)
        retry_at = now_mono + msg.expires_in + RETRY_AFTER_EXPIRY
        r = self.refused
        if r is None or r.holder != holder or r.reason != msg.reason:
            r = self.refused = Refused(msg.reason, holder, now_wall, now_wall, 0, retry_at)
        r.last, r.retry_at = now_wall, retry_at
        r.count += 1
        if r.count & (r.count - 1) == 0:  # 1, 2, 4, 8, ...: rate-limited
            log.error(
                "server %s refuses node id %s (%s): another agent at %s holds it; give "
                "each host its own node id (--node-id, node_id in the config, or leave it "
                "unset for the default); retrying, %d refusal(s) so far",
                self.name,
                self.node_id,
                msg.reason,
                holder,
                r.count,
            )
        self.answered = self.ever_answered = self.incarnation_answered = True
        self.unanswered = 0
        self.poke.set()

    def _accepted(self) -> None:
        if self.refused is not None:
            log.info(
                "server %s: node id %s registered (the conflict with %s is over)",
                self.name,
                self.node_id,
                self.refused.holder,
            )
            self.refused = None

    def _answer(self) -> None:
        if not self.ever_answered:
            log.info("server %s answered (registry %s)", self.name, self.state.registry)
        self.answered = self.ever_answered = self.incarnation_answered = True
        self.unanswered = 0
        self.poke.set()

    def receive(self, data: bytes, source: str, wanted: Container[int] = ()) -> Outcome:
        """feed() at the current time. Never raises: an unexpected error (a bug) is
        counted (reason "error") and logged rate-limited, never a traceback per
        datagram; one bad datagram must not stop the client."""
        try:
            return self.feed(data, source, time.time(), time.monotonic(), wanted)
        except Exception as exc:
            self.errors += 1
            if self.errors & (self.errors - 1) == 0:  # 1, 2, 4, 8, ...
                log.error(
                    "server %s: error handling a datagram (%d so far): %r",
                    self.name,
                    self.errors,
                    exc,
                    exc_info=self.errors == 1,
                )
            self.drops["error"] += 1
            return Outcome(ignored="error", dropped=True)


def _just_receive(client: ServerClient, data: bytes, source: str) -> None:
    client.receive(data, source)


@functools.lru_cache(maxsize=256)
def _norm(ip: str) -> str:
    """An address text in one canonical form: scope id dropped, IPv4-mapped IPv6
    as IPv4, compressed IPv6. Not an address: the text itself."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)
