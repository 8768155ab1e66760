"""Change notification through PostgreSQL itself (LISTEN/NOTIFY).

Every write that changes a flood list sends `NOTIFY vxflood_<registry id>`
inside its own transaction, so the notification leaves only when the change
is committed. Each vxsnd listens on that channel on a connection of its own
and wakes its registry watch at once, so a change written through one vxsnd
is pushed by every other one within milliseconds instead of at the next poll.
The payload is the writer's token: a vxsnd ignores its own notifications.

A listening connection that is lost (server restart, failover, network cut)
is reconnected with back-off, and each reconnect wakes the watch once: one
catch-up read covers whatever was notified while nobody listened. The poll
(`registry_poll`) stays as the fallback, and is all there is for SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

__all__ = ["CHANNEL_PREFIX", "channel", "follow", "notify"]

log = logging.getLogger("vxsnd.registry")

CHANNEL_PREFIX: Final = "vxflood_"
PROBE_INTERVAL: Final = 5.0  # seconds between checks that the listening connection lives
BACKOFF: Final = (0.1, 5.0)  # first and longest wait before reconnecting

_NOTIFY = text("SELECT pg_notify(:channel, :token)")


def channel(registry_id: str) -> str:
    """The channel named for the registry (a registry id is 32 hex digits)."""
    return CHANNEL_PREFIX + registry_id


def notify(conn: Connection, registry_id: str, token: str) -> None:
    """Inside the writing transaction: tell the others once it commits (PostgreSQL only)."""
    if conn.dialect.name == "postgresql":
        conn.execute(_NOTIFY, {"channel": channel(registry_id), "token": token})


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class _Link:
    """Logs the listening connection going away and coming back, once each."""

    def __init__(self) -> None:
        self.down = False

    def lost(self, exc: BaseException) -> None:
        if not self.down:
            log.warning("registry notifications lost (%s): polling until back", exc)
            self.down = True

    def up(self) -> None:
        if self.down:
            log.info("registry notifications back")
            self.down = False


async def _listen_once(
    url: str, registry_id: Callable[[], str], token: str, wake: Callable[[], None], link: _Link
) -> None:
    """Listen until the connection is lost or the registry id changes; then return."""
    import asyncpg  # only a PostgreSQL registry listens: SQLite never imports it

    conn: Any = await asyncpg.connect(
        _dsn(url), server_settings={"application_name": "vxsnd-listen"}
    )
    lost = asyncio.Event()
    current = registry_id()

    def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        if payload != token:
            wake()

    try:
        conn.add_termination_listener(lambda _c: lost.set())
        await conn.add_listener(channel(current), on_notify)
        link.up()
        wake()  # catch up on whatever changed while nobody listened
        while registry_id() == current:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), PROBE_INTERVAL)
            if lost.is_set():
                raise ConnectionResetError("the listening connection was closed")
            await conn.execute("SELECT 1")  # a silent network loss shows here
    finally:
        with contextlib.suppress(Exception):
            await conn.close(timeout=1.0)


async def follow(
    url: str, registry_id: Callable[[], str], token: str, wake: Callable[[], None]
) -> None:
    """Run until cancelled: call `wake` when another vxsnd changed the registry."""
    link = _Link()
    delay = BACKOFF[0]
    while True:
        try:
            await _listen_once(url, registry_id, token, wake, link)
            delay = BACKOFF[0]  # the registry id changed: listen on its channel now
        except Exception as exc:
            # anything connecting may raise, not only OSError and PostgresError: during a
            # failover no host takes writes for a moment (TargetServerAttributeNotMatched),
            # and this task must outlive that (the poll covers the gap; back-off, retry)
            log.debug("registry notifications: listener failed", exc_info=True)
            link.lost(exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF[1])
