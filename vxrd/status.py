"""Local status API of vxrd: JSON over HTTP on a UNIX socket (aiohttp UnixSite).

    GET  /v1/status           node id, uptime, servers (last contact, registry id)
    GET  /v1/devices          VXLAN devices and what vxrd does with each
    GET  /v1/peers[?vni=N]    per VNI: members per server, the union, the kernel's list
    POST /v1/leave            withdraw from every server, flush, then exit

The socket is created with mode 0660: whoever can reach it can make the host leave.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from vxflood.schema.validate import InvalidValue, parse_vni
from vxrd import views
from vxrd.agent import Agent

log = logging.getLogger("vxrd.status")

AGENT = web.AppKey("agent", Agent)
SOCKET_MODE = 0o660


class StatusSocketError(OSError):
    """The status socket cannot be created (in use, or the path is unusable)."""


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


async def _status(request: web.Request) -> web.Response:
    return _json(views.status(request.app[AGENT]))


async def _devices(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    return _json(views.devices(agent, await agent.kernel.flood_entries()))


async def _peers(request: web.Request) -> web.Response:
    text = request.query.get("vni")
    vni = None
    if text is not None:
        try:
            vni = parse_vni(text)
        except InvalidValue as exc:
            return _json({"error": str(exc)}, status=400)
    agent = request.app[AGENT]
    actual = await agent.kernel.flood_entries()
    return _json(views.peers(agent, actual, vni, time.monotonic()))


async def _leave(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    summary = await agent.leave()
    agent.stop.set()
    return _json(summary)


def build_app(agent: Agent) -> web.Application:
    app = web.Application()
    app[AGENT] = agent
    app.router.add_get("/v1/status", _status)
    app.router.add_get("/v1/devices", _devices)
    app.router.add_get("/v1/peers", _peers)
    app.router.add_post("/v1/leave", _leave)
    return app


def _prepare_path(path: Path) -> None:
    """Make the directory; remove a stale socket, refuse one another vxrd serves."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StatusSocketError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody listens: a leftover of a killed vxrd
        return
    finally:
        probe.close()
    raise StatusSocketError(errno.EADDRINUSE, f"{path} is in use (is another vxrd running?)")


async def start_status(agent: Agent, path: Path) -> web.AppRunner:
    """Serve the status API on a UNIX socket; the caller cleans the runner up."""
    _prepare_path(path)
    runner = web.AppRunner(build_app(agent), access_log=None, handle_signals=False)
    await runner.setup()
    old = os.umask(0o117)  # the socket is born 0660, never briefly wider
    try:
        await web.UnixSite(runner, str(path)).start()
    except BaseException:
        await runner.cleanup()
        raise
    finally:
        os.umask(old)
    os.chmod(path, SOCKET_MODE)
    return runner


async def stop_status(runner: web.AppRunner, path: Path) -> None:
    await runner.cleanup()
    with contextlib.suppress(OSError):
        os.unlink(path)
