"""Pure push planning: who is behind, delta or snapshot, when to retransmit.

No I/O and no clock: every function takes `now` (float seconds) and the facts it
decides on, so the rules can be tested exhaustively. The engine owns the state
objects and calls these.

The rules:

- A node is *behind* on a VNI when the generation it has applied is below the
  registry's. A node whose registry id differs from ours counts as having
  applied nothing (generation 0).
- A node that has applied nothing gets a snapshot (it is the same for every
  such node, so it is encoded once per generation). Otherwise it gets a delta
  from its applied generation when the change log reaches back that far and the
  delta is smaller than the snapshot; else a snapshot.
- At most one push per (node, VNI) is in flight. When its ack arrives and the
  VNI has moved on, the next push goes at once; when no ack arrives, the push is
  re-planned at the current generation after an exponential back-off
  (initial, doubling, capped). The first retransmit repeats a delta (the usual
  cause is a lost datagram); later ones send a snapshot, which the agent can
  always apply whatever it holds.
- A registered node expires `hold_time` after its last refresh.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_RETRANSMIT_INITIAL = 0.25
DEFAULT_RETRANSMIT_MAX = 30.0


@dataclass(frozen=True, slots=True)
class Plan:
    """Send `kind` for `vni` at `generation`; `base` is the delta base (None: snapshot)."""

    vni: int
    generation: int
    base: int | None


def plan(
    vni: int,
    applied: int,
    generation: int,
    log_floor: int | None,
    attempt: int = 0,
) -> Plan | None:
    """What to push to a node that has applied `applied` of a VNI now at `generation`.

    `log_floor` is the oldest base the change log can build a delta from (None: no
    log at all). `attempt` counts earlier unacked pushes of this (node, VNI).
    """
    if applied >= generation:
        return None
    if applied == 0 or attempt >= 2 or log_floor is None or applied < log_floor:
        return Plan(vni, generation, None)
    return Plan(vni, generation, applied)


def delta_worth_it(delta_entries: int, members: int) -> bool:
    """A delta is only worth sending when it is smaller than the snapshot."""
    return delta_entries < max(members, 1)


# ---------------------------------------------------------------- retransmit


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential back-off: initial, doubling per attempt, capped at maximum."""

    initial: float = DEFAULT_RETRANSMIT_INITIAL
    maximum: float = DEFAULT_RETRANSMIT_MAX

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("retransmit back-off needs 0 < initial <= maximum")

    def delay(self, attempt: int, rto: float = 0.0) -> float:
        """Seconds to wait for an ack of the push numbered `attempt` (0 = first send);
        `rto` (a measured round-trip timeout) raises the start when above `initial`."""
        if attempt >= 64:
            return self.maximum
        return float(min(max(self.initial, rto) * (2**attempt), self.maximum))


@dataclass(slots=True)
class RttEstimator:
    """Smoothed push-to-ack round trip (RFC 6298 style) so that a loaded daemon does
    not retransmit pushes whose acks are merely queued. Feed only samples from
    pushes that were not retransmitted (Karn)."""

    srtt: float | None = None
    rttvar: float = 0.0

    def sample(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    def rto(self) -> float:
        """0 until a sample arrives (the configured initial value then rules)."""
        return 0.0 if self.srtt is None else self.srtt + 4 * self.rttvar


@dataclass(slots=True)
class InFlight:
    """One unacked push of one VNI to one node."""

    generation: int
    first_sent: float  # when this (node, VNI) first fell behind and was pushed
    sent: float  # the latest send
    attempt: int  # sends so far minus one
    due: float  # when to retransmit if still unacked
    base: int | None = None  # the delta base of the latest send (None: a snapshot)

    @classmethod
    def start(cls, generation: int, now: float, backoff: Backoff, rto: float = 0.0) -> InFlight:
        return cls(generation, now, now, 0, now + backoff.delay(0, rto))

    def resent(self, generation: int, now: float, backoff: Backoff, rto: float = 0.0) -> None:
        """Record a retransmit (re-planned at `generation`)."""
        self.attempt += 1
        self.generation = generation
        self.sent = now
        self.due = now + backoff.delay(self.attempt, rto)

    def acked_by(self, generation: int) -> bool:
        return generation >= self.generation

    def stranded_by(self, acked: int) -> bool:
        """The node acked `acked` without reaching this push, and this push is a delta
        from another base: the agent ignores it, so waiting for its ack is pointless."""
        return not self.acked_by(acked) and self.base is not None and self.base != acked


def follow_up(inflight: InFlight | None, acked: int, current: int) -> bool:
    """After an ack of `acked`, does the node need another push right away?

    Yes when the VNI moved on past what was acked and the in-flight push (if any)
    is covered by the ack: the window of one push per (node, VNI) is free again.
    """
    if acked >= current:
        return False
    return inflight is None or inflight.acked_by(acked)


def may_push(inflight: InFlight | None, now: float) -> bool:
    """A new push may go now unless one is in flight and not yet due for retransmit."""
    return inflight is None or inflight.due <= now


def check_hold_time(requested: int, maximum: int) -> str | None:
    """None when a register's hold time is acceptable, else the rejection reason."""
    if requested > maximum:
        return "hold-time"
    return None
