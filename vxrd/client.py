"""Control-plane client: what one service node told this agent, and how to talk to it.

`ServerState` is the protocol core for one server, with no I/O: it is fed decoded
memberships and returns which VNIs changed and which acks to send; the agent
reconciles the kernel and then sends those acks. `ServerClient` is the thin
asyncio UDP endpoint around it: each datagram is handled in the transport's
`datagram_received` callback itself (check the source, decode, verify the tag,
run the replay guard, feed the state, tell the agent), with no queue and no
task in between: all of that is synchronous, so a queue bought nothing but a
task switch per datagram. asyncio reads one datagram per socket per loop turn,
so a flood of datagrams still lets the rest of the agent run.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from schema.replay import ReplayGuard
from schema.validate import Address
from schema.wire import (
    DEFAULT_BUDGET,
    Ack,
    Codec,
    Membership,
    Register,
    Rejected,
    Sequencer,
    VniEntry,
    split_register,
)
from vxrd.config import ServerAddr

log = logging.getLogger("vxrd.client")

ASSEMBLY_TIMEOUT = 10.0  # seconds a partial snapshot/delta waits for its other parts
MAX_ASSEMBLIES = 1024


@dataclass(slots=True)
class VniState:
    """What one server said about one VNI.

    `applied` is the generation the members correspond to. `stale` is set when the
    server's registry id changed: the members are kept (fail-static) until the new
    registry answers, but count as generation 0 (the empty set) for deltas.
    """

    members: frozenset[Address] = frozenset()
    applied: int = 0
    stale: bool = False


@dataclass(slots=True)
class Outcome:
    """Result of feeding one membership datagram to a ServerState."""

    changed: set[int] = field(default_factory=set)  # VNIs whose member set may differ
    acks: list[tuple[int, int]] = field(default_factory=list)  # to send after reconcile
    reacks: list[tuple[int, int]] = field(default_factory=list)  # to send now (no change)
    reset: bool = False  # the registry id changed
    ignored: str = ""  # reason label when nothing was applied


@dataclass(slots=True)
class _Assembly:
    started: float
    parts: dict[int, Membership] = field(default_factory=dict)


class ServerState:
    """Per-server protocol state: registry id, per-VNI members and applied generations."""

    def __init__(self) -> None:
        self.registry = ""
        self.vnis: dict[int, VniState] = {}
        self._assembling: dict[tuple[int, int, int | None, int], _Assembly] = {}

    def applied(self, vni: int) -> int:
        st = self.vnis.get(vni)
        return 0 if st is None or st.stale else st.applied

    def answered(self, vni: int) -> bool:
        """True once this server has told us anything about the VNI."""
        return vni in self.vnis

    def members(self, vni: int) -> frozenset[Address] | None:
        st = self.vnis.get(vni)
        return None if st is None else st.members

    def entries(self, serve: Mapping[int, Address]) -> list[VniEntry]:
        """Register entries for the VNIs this node serves, with applied generations."""
        return [VniEntry(vni, local, self.applied(vni)) for vni, local in sorted(serve.items())]

    def _reset(self, registry: str) -> None:
        for st in self.vnis.values():
            st.applied = 0
            st.stale = True
        self._assembling.clear()
        self.registry = registry

    def _check_registry(self, registry: str, out: Outcome) -> None:
        if registry != self.registry:
            if self.registry:
                log.warning(
                    "registry id changed from %s to %s: generations start over",
                    self.registry,
                    registry,
                )
                out.reset = True
            self._reset(registry)

    def handle_reply(self, msg: Ack) -> Outcome:
        """The server's answer to a register round. Only its registry id matters here:
        a VNI where the server is ahead is pushed by the server on its own."""
        out = Outcome()
        self._check_registry(msg.registry, out)
        return out

    def handle(self, msg: Membership, now: float) -> Outcome:
        """Apply one membership part; `now` is a monotonic time for assembly expiry."""
        out = Outcome()
        self._check_registry(msg.registry, out)
        current = self.applied(msg.vni)
        if msg.generation <= current:
            out.reacks.append((msg.vni, current))
            out.ignored = "duplicate"
            return out
        if msg.base is not None and msg.base != current:
            # A gap: tell the server where we are so it answers with a delta from
            # there or a snapshot, instead of retransmitting this one.
            out.reacks.append((msg.vni, current))
            out.ignored = "base-mismatch"
            return out
        parts = self._assemble(msg, now)
        if parts is None:
            out.ignored = "partial"
            return out
        st = self.vnis.setdefault(msg.vni, VniState())
        add = frozenset(a for p in parts for a in p.add)
        remove = frozenset(a for p in parts for a in p.remove)
        # a snapshot, or a delta from generation 0 (the empty set) of a new registry,
        # replaces the members; any other delta edits them
        base = frozenset() if msg.base is None or st.stale else st.members
        # one copy of a member set that may hold thousands, not two; a change with
        # nothing in it keeps the very object (the agent's desired-set cache hits)
        members = base | add if add else base
        st.members = members - remove if remove else members
        st.applied = msg.generation
        st.stale = False
        out.changed.add(msg.vni)
        out.acks.append((msg.vni, msg.generation))
        return out

    def _assemble(self, msg: Membership, now: float) -> list[Membership] | None:
        if msg.parts == 1:
            return [msg]
        for key in [k for k, a in self._assembling.items() if now - a.started > ASSEMBLY_TIMEOUT]:
            del self._assembling[key]
        key = (msg.vni, msg.generation, msg.base, msg.parts)
        asm = self._assembling.get(key)
        if asm is None:
            if len(self._assembling) >= MAX_ASSEMBLIES:
                oldest = min(self._assembling, key=lambda k: self._assembling[k].started)
                del self._assembling[oldest]
            asm = self._assembling[key] = _Assembly(now)
        asm.parts[msg.part] = msg
        if len(asm.parts) < msg.parts:
            return None
        del self._assembling[key]
        # a newer complete answer makes older partial ones for the VNI useless
        for k in [k for k in self._assembling if k[0] == msg.vni and k[1] <= msg.generation]:
            del self._assembling[k]
        return [asm.parts[i] for i in range(msg.parts)]


def union_members(states: Iterable[ServerState], vni: int) -> frozenset[Address] | None:
    """Members of a VNI as the servers tell them; None when none has answered.

    Servers on one registry (same registry id) tell the same membership at
    different generations: the newest answer wins, so a server that went silent
    holding an old answer cannot keep a host that left in the flood list while
    another server of that registry reports the leave. Answers of different
    registries, and answers kept from before a registry change (stale), cannot be
    ordered: they are joined, because keeping an entry is safer than dropping one.
    """
    newest: dict[str, VniState] = {}
    joined: list[frozenset[Address]] = []
    for st in states:
        v = st.vnis.get(vni)
        if v is None:
            continue
        if v.stale or not st.registry:
            joined.append(v.members)
            continue
        best = newest.get(st.registry)
        if best is None or v.applied > best.applied:
            newest[st.registry] = v
    joined += (v.members for v in newest.values())
    if not joined:
        return None
    return joined[0] if len(joined) == 1 else frozenset().union(*joined)


# ---------------------------------------------------------------- asyncio endpoint

OnChange = Callable[["ServerClient", Outcome], None]


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, owner: ServerClient) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.owner.receive(data, str(addr[0]))

    def error_received(self, exc: Exception) -> None:
        log.debug("server %s: socket error %s", self.owner.server, exc)


class ServerClient:
    """One configured service node: UDP socket, codec, sequencer, replay guard, state."""

    def __init__(
        self,
        server: ServerAddr,
        node_id: str,
        codec: Codec,
        on_change: OnChange,
        incarnation: int | None = None,
        budget: int = DEFAULT_BUDGET,
        on_drop: Callable[[str], None] | None = None,
        wants: Callable[[int], bool] | None = None,
    ) -> None:
        self.server = server
        self.codec = codec
        self.state = ServerState()
        self.seq = Sequencer(node_id, incarnation)
        self.guard = ReplayGuard()
        self.on_change = on_change
        self.budget = budget
        self.on_drop = on_drop
        self.wants = wants  # VNIs this node has a device for; others are "not-for-us"
        self.drops: Counter[str] = Counter()
        self.last_contact: float | None = None  # wall-clock time of the last valid datagram
        self.round = 0
        # register rounds are answered with an Ack; until then the agent retries
        self.round_sent: float | None = None  # monotonic time of the last round
        self.answered = False  # the server replied since our last round
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
        if self.on_drop is not None:
            self.on_drop(reason)
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

    async def send_register(self, serve: Mapping[int, Address], hold_time: int) -> None:
        """One register round: every VNI served with its local VTEP and applied generation."""
        self.round_sent = time.monotonic()  # also when it cannot go out: retried later
        self.answered = False
        self.poke.set()
        if not await self._ensure_socket():
            return
        self.round += 1
        template = Register(self.seq.next(), hold_time, self.state.registry, self.round, 0, 1, ())
        # `template.env` above consumed one sequence number; harmless (gaps are allowed)
        entries = self.state.entries(serve) if hold_time else []
        for part in split_register(self.codec, template, entries, self.seq.many(), self.budget):
            self._send(self.codec.encode(part))

    def send_ack(self, applied: Iterable[tuple[int, int]]) -> None:
        items = tuple(applied)
        if items:
            self._send(self.codec.encode(Ack(self.seq.next(), self.state.registry, items)))

    def feed(self, data: bytes, source: str, now_wall: float, now_mono: float) -> Outcome | None:
        """Check and apply one datagram (sans-IO apart from the ack for duplicates):
        a membership, or an Ack answering our register round."""
        if not self.from_server(source):
            self.count_drop("unexpected-source")
            return None
        try:
            msg = self.codec.decode(data)
        except Rejected as exc:
            self.count_drop(exc.reason)
            return None
        if not isinstance(msg, Membership | Ack):
            self.count_drop("type")
            return None
        env = msg.env
        reason = self.guard.check(env.sender, env.incarnation, env.seq, env.time_ms, now_wall)
        if reason is not None:
            self.count_drop(reason)
            return None
        self.last_contact = now_wall
        if isinstance(msg, Ack):
            self.answered = True
            self.poke.set()
            return self.state.handle_reply(msg)
        if self.wants is not None and not self.wants(msg.vni):
            self.count_drop("not-for-us")
            return None
        out = self.state.handle(msg, now_mono)
        self.send_ack(out.reacks)
        return out

    def receive(self, data: bytes, source: str) -> None:
        """Handle one datagram as it arrives: feed it, and tell the agent of a
        change (which may reconcile the kernel and ack right here). Never raises:
        one bad datagram must not stop the client."""
        try:
            out = self.feed(data, source, time.time(), time.monotonic())
            if out is not None and (out.changed or out.reset):
                self.on_change(self, out)
        except Exception:
            log.exception("server %s: error handling datagram", self.name)


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
