"""An in-memory registry for the protocol core's tests: no SQL, no file.

It implements vxsnd.engine.Registry with the same observable rules as the real
store for what the core uses: one generation bump per changed VNI and batch,
a change log for deltas, registrations that expire `hold_time` after their last
refresh (swept when a batch asks), acks and unknown nodes. Static VTEPs are
left out. Every method has a synchronous twin (`*_now`) so that tests can drive
vxsnd.protocol.Core without an event loop; `reads` records the member and delta
reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from vxsnd import registry as store


@dataclass(slots=True)
class _Reg:
    reg: store.Registration
    expires_at: float
    registered_at: float
    last_seen: float
    applied: dict[int, int] = field(default_factory=dict)
    marks: tuple[int, int] = (0, 0)  # (last_seq, last_sent_ms), as the real nodes row


class FakeRegistry:
    def __init__(self, registry_id: str = "fake-registry") -> None:
        self._id = registry_id
        self.regs: dict[str, _Reg] = {}
        self.gens: dict[int, int] = {}
        self.log: list[tuple[int, int, str, str]] = []  # (vni, generation, address, op)
        self.reads: list[str] = []
        self.fail_writes = False

    @property
    def registry_id(self) -> str:
        return self._id

    # ------------------------------------------------------------ members

    def members(self, vni: int) -> frozenset[str]:
        return frozenset(r.reg.vnis[vni] for r in self.regs.values() if vni in r.reg.vnis)

    def _all_members(self) -> dict[int, frozenset[str]]:
        vnis = {v for r in self.regs.values() for v in r.reg.vnis} | set(self.gens)
        return {v: self.members(v) for v in vnis}

    # ------------------------------------------------------------ writes

    def apply_now(self, batch: store.Batch, now: float) -> store.BatchResult:
        if self.fail_writes:
            raise OSError("disk full (fake)")
        before = self._all_members()
        registered: set[str] = set()
        withdrawn: set[str] = set()
        unknown: set[str] = set()
        not_owner: set[str] = set()
        refused: dict[str, store.Holder] = {}
        for node_id, op in batch.node_ops.items():
            if isinstance(op, store.Withdrawal):
                held = self.regs.get(node_id)
                if held is not None and op.incarnation not in (None, held.reg.incarnation):
                    not_owner.add(node_id)  # the real writer's rule: the owner's alone
                elif self.regs.pop(node_id, None) is not None:
                    withdrawn.add(node_id)
            elif isinstance(op, store.Registration):
                old = self.regs.get(node_id)
                if old is not None:
                    holder = store.Holder(old.reg.incarnation, old.reg.address, old.expires_at)
                    if store.conflicts(holder, op.incarnation, op.address, now):
                        refused[node_id] = holder  # the real writer's rule: first keeps it
                        continue
                if old is None or old.reg.incarnation != op.incarnation:
                    registered.add(node_id)
                since = now if old is None or node_id in registered else old.registered_at
                marks = (op.seq, op.sent_ms)
                self.regs[node_id] = _Reg(
                    op, now + op.hold_time, since, now, dict(op.applied), marks
                )
            elif node_id in self.regs:
                r = self.regs[node_id]
                r.expires_at, r.last_seen = now + op.hold_time, now
                r.marks = (op.seq, op.sent_ms)
            else:
                unknown.add(node_id)
        for (node_id, vni), gen in batch.acks.items():
            acked = self.regs.get(node_id)
            if acked is None:
                unknown.add(node_id)
            else:
                acked.applied[vni] = max(gen, acked.applied.get(vni, 0))
        expired: set[str] = set()
        if batch.sweep:
            expired = {n for n, r in self.regs.items() if store.is_expired(r.expires_at, now)}
            for n in expired:
                del self.regs[n]
        changed = self._bump(before)
        return store.BatchResult(
            changed,
            frozenset(registered),
            frozenset(withdrawn),
            frozenset(expired),
            frozenset(unknown),
            frozenset(),
            frozenset(not_owner),
            refused,
        )

    def _bump(self, before: dict[int, frozenset[str]]) -> dict[int, store.VniChange]:
        changed: dict[int, store.VniChange] = {}
        after = self._all_members()
        for vni in sorted(set(before) | set(after)):
            old, new = before.get(vni, frozenset()), after.get(vni, frozenset())
            if old == new:
                continue
            gen = self.gens[vni] = self.gens.get(vni, 0) + 1
            added, removed = new - old, old - new
            self.log += [(vni, gen, a, "add") for a in sorted(added)]
            self.log += [(vni, gen, a, "remove") for a in sorted(removed)]
            changed[vni] = store.VniChange(vni, gen, added, removed)
        return changed

    def register_now(self, node_id: str, vnis: dict[int, str], now: float, hold: int = 90) -> None:
        """Another writer (a second vxsnd on this registry) registers a node."""
        batch = store.Batch()
        batch.register(store.Registration(node_id, 1, "192.0.2.1", 9, hold, vnis))
        self.apply_now(batch, now)

    # ------------------------------------------------------------ reads

    def member_addresses_now(self, vni: int) -> tuple[int, frozenset[str]]:
        self.reads.append(f"members {vni}")
        return self.gens.get(vni, 0), self.members(vni)

    def delta_now(self, vni: int, base: int) -> store.Delta | None:
        self.reads.append(f"delta {vni} {base}")
        current = self.gens.get(vni, 0)
        if base < 0 or base > current:
            return None
        ops: dict[str, tuple[str, str]] = {}  # address -> (first op, last op) after base
        for v, gen, addr, op in self.log:
            if v == vni and gen > base:
                ops[addr] = (ops[addr][0] if addr in ops else op, op)
        added = frozenset(a for a, (first, last) in ops.items() if first == last == "add")
        removed = frozenset(a for a, (first, last) in ops.items() if first == last == "remove")
        return store.Delta(vni, base, current, added, removed)

    def vnis_now(self) -> list[store.VniSummary]:
        return [
            store.VniSummary(vni, gen, len(self.members(vni)), 0, 0.0)
            for vni, gen in sorted(self.gens.items())
        ]

    def nodes_now(self) -> list[store.Node]:
        return [
            store.Node(
                n,
                r.reg.incarnation,
                r.reg.address,
                r.reg.port,
                r.reg.hold_time,
                r.last_seen,
                r.expires_at,
                r.registered_at,
                *r.marks,
            )
            for n, r in sorted(self.regs.items())
        ]

    # ------------------------------------------------------------ the Registry protocol

    async def apply(self, batch: store.Batch, now: float) -> store.BatchResult:
        return self.apply_now(batch, now)

    async def member_addresses(self, vni: int) -> tuple[int, frozenset[str]]:
        return self.member_addresses_now(vni)

    async def delta(self, vni: int, base: int) -> store.Delta | None:
        return self.delta_now(vni, base)

    async def vnis(self) -> list[store.VniSummary]:
        return self.vnis_now()

    async def nodes(self) -> list[store.Node]:
        return self.nodes_now()

    async def generations(self, vnis: Iterable[int] | None = None) -> dict[int, int]:
        return {v: g for v, g in self.gens.items() if vnis is None or v in set(vnis)}
