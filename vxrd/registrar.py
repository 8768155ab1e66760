"""Register rounds to every service node: refresh, retry, at once, and silence.

Part of the agent's driver (vxrd.agent): it owns when rounds go out, the agent
owns what they say (`serving`, the hold time). Every loop here runs in the
agent's TaskGroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from vxflood.schema.validate import Address
from vxrd.client import ServerClient
from vxrd.metrics import Metrics

log = logging.getLogger("vxrd")

RETRY_FIRST = 0.5  # seconds before repeating a register round a server has not answered


async def every(interval: float, action: Callable[[], Awaitable[None]]) -> None:
    """Run `action` every `interval` seconds; a failure is logged, the timer goes on."""
    while True:
        await asyncio.sleep(interval)
        try:
            await action()
        except Exception:
            log.exception("periodic %s failed", getattr(action, "__name__", "task"))


class Registrar:
    def __init__(
        self,
        clients: Sequence[ServerClient],
        metrics: Metrics,
        hold_time: int,
        refresh_interval: float,
        round_args: Callable[[], tuple[Mapping[int, Address], int]],
    ) -> None:
        self.clients = clients
        self.metrics = metrics
        self.hold_time = hold_time
        self.refresh_interval = refresh_interval
        self.round_args = round_args  # (serving, hold) of the next round
        self.paused = False  # leaving: no retries
        self._now: set[int] = set()  # client indexes to register at once
        self._wake = asyncio.Event()
        self._silent_since = time.monotonic()  # start: silence counts from here
        self._warned = False

    async def send(self, client: ServerClient) -> None:
        serve, hold = self.round_args()
        if await client.send_register(serve, hold):
            self.metrics.incarnations.inc()

    async def all(self) -> None:
        """One round to every server."""
        for c in self.clients:
            await self.send(c)
        self.metrics.registers.inc()
        self.check_silence(time.monotonic())

    def soon(self, idx: int) -> None:
        """A round to one server at once (a new registry id: report so it answers
        for every VNI), from a datagram callback: sent by run()."""
        self._now.add(idx)
        self._wake.set()

    def check_silence(self, now: float) -> None:
        """WARNING once when no server has answered for a hold time (a mistyped
        --server, a firewall); INFO is logged by the client when one answers."""
        heard = [c.state.heard for c in self.clients if c.state.heard is not None]
        if any(now - t < self.hold_time for t in heard):
            self._warned = False
            return
        since = max(heard, default=self._silent_since)
        if not self._warned and self.clients and now - since >= self.hold_time:
            self._warned = True
            log.warning(
                "no service node has answered for %d s (servers: %s)",
                int(now - since),
                ", ".join(c.name for c in self.clients),
            )

    async def run(self) -> None:
        """Send the rounds asked for with soon()."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            todo, self._now = self._now, set()
            for idx in sorted(todo):
                try:
                    await self.send(self.clients[idx])
                except OSError as exc:
                    log.warning("server %s: register failed: %s", self.clients[idx].name, exc)

    async def retry(self, client: ServerClient) -> None:
        """Repeat the register round to a server that has not answered it (not
        listening yet, restarting, unreachable): after 0.5 s, then 1 s, 2 s, ...
        capped at the refresh interval. An answer resets the back-off; a round sent
        for any other reason (refresh, local change) restarts the wait."""
        delay = RETRY_FIRST
        cap = max(RETRY_FIRST, self.refresh_interval)
        while True:
            client.poke.clear()
            refused = client.refused
            if refused is not None and client.answered and not self.paused:
                # refused (node-id conflict): the refresh retries; try sooner only when
                # the holder runs out before it, to take the id over at once
                wait = refused.retry_at - time.monotonic()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await client.poke.wait()
                    continue
                refused.retry_at = float("inf")  # once per refusal
                await self._try(client)
                continue
            if client.answered or client.round_sent is None or self.paused:
                delay = RETRY_FIRST
                await client.poke.wait()
                continue
            wait = client.round_sent + delay - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await client.poke.wait()
                continue  # look again: answered, or a newer round
            log.debug("server %s: no answer after %.1f s, registering again", client.name, delay)
            await self._try(client)
            delay = min(delay * 2, cap)

    async def _try(self, client: ServerClient) -> None:
        try:
            await self.send(client)
        except Exception:
            log.exception("server %s: register retry failed", client.name)
