"""`vxrdctl`: talk to the local vxrd over its status socket.

    vxrdctl [--socket PATH] [--json] status | devices | peers [VNI] | leave

Tables for people, the API's JSON with --json; the global flags go before or
after the command. Any failure is one line on stderr and the exit codes
vxsndctl uses too (vxflood.commands): 1 vxrd refused or failed the request,
2 usage error, 3 vxrd cannot be reached; and `status` exits 4 when a service
node refuses this agent's node id (another agent holds it), so scripts notice.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from vxflood.commands import (
    CTL_CONFLICT,
    CTL_EXIT_CODES,
    CTL_REFUSED,
    CTL_UNREACHABLE,
    CTL_USAGE,
    GlobalFlags,
    add_version,
)
from vxflood.schema.validate import InvalidValue, parse_vni
from vxflood.tables import duration, since, table
from vxrd.config import DEFAULT_STATUS_SOCKET

EXIT_CODES = (
    CTL_EXIT_CODES[:-1] + ", 4 (status) a service node refuses this agent's node id: "
    "another agent holds it."
)


class CtlError(Exception):
    """One line explaining why vxrdctl failed; `code` is the exit status."""

    def __init__(self, message: str, code: int = CTL_REFUSED) -> None:
        super().__init__(message)
        self.code = code


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("vxrd", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def request(path: str, method: str, url: str, timeout: float = 30.0) -> Any:
    conn = _UnixConnection(path, timeout)
    try:
        try:
            conn.request(method, url)
            resp = conn.getresponse()
            body = resp.read()
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise CtlError(
                f"cannot reach vxrd at {path}: {reason} (is vxrd running?)", CTL_UNREACHABLE
            ) from None
        except http.client.HTTPException as exc:
            raise CtlError(f"bad answer from vxrd at {path}: {exc!r}", CTL_UNREACHABLE) from None
    finally:
        conn.close()
    try:
        data = json.loads(body)
    except ValueError:
        raise CtlError(f"vxrd answered {resp.status} with non-JSON data") from None
    if resp.status >= 400:
        msg = data.get("error") if isinstance(data, dict) else None
        raise CtlError(f"vxrd refused: {msg or resp.reason} (HTTP {resp.status})")
    return data


def show_status(data: dict[str, Any]) -> str:
    dev = data.get("devices", {})
    head = (
        f"node {data['node_id']}  up {duration(data['uptime'])}  "
        f"devices {dev.get('managed', 0)} managed of {dev.get('total', 0)}"
        + ("  LEAVING" if data.get("leaving") else "")
    )
    rows = [
        (
            s["server"],
            s.get("registry"),
            since(s.get("seconds_since_contact")),
            s.get("vnis", 0),
            sum(s.get("dropped", {}).values()),
        )
        for s in data.get("servers", [])
    ]
    out = head + "\n\n" + table(("SERVER", "REGISTRY", "LAST CONTACT", "VNIS", "DROPPED"), rows)
    for s in data.get("servers", []):
        c = s.get("conflict")
        if c:
            out += (
                f"\nCONFLICT: {s['server']} refuses node id {data['node_id']} "
                f"({c['reason']}): registered by the agent at {c['holder']}; "
                f"{c['refusals']} refusal(s), first {since(time.time() - c['since'])}"
            )
    return out


def conflicted(data: dict[str, Any]) -> bool:
    return any(s.get("conflict") for s in data.get("servers", []))


def show_devices(data: list[dict[str, Any]]) -> str:
    rows = [
        (
            d["name"],
            d["vni"],
            d["local"],
            d["port"],
            "up" if d["up"] else "down",
            d["entries"],
            d["state"] if d["reason"] is None else f"{d['state']}: {d['reason']}",
        )
        for d in data
    ]
    return table(("DEVICE", "VNI", "LOCAL", "PORT", "LINK", "FLOOD", "STATE"), rows)


def show_peers(data: list[dict[str, Any]]) -> str:
    rows = []
    for v in data:
        gens = ", ".join(f"{s}@{i['generation']}" for s, i in v["servers"].items()) or "-"
        devices = ", ".join(d["name"] for d in v["devices"]) or "-"
        flood = sorted({a for d in v["devices"] for a in d["flood"]})
        members = v["members"]
        rows.append(
            (
                v["vni"],
                devices,
                "(no answer)" if members is None else " ".join(members) or "(none)",
                " ".join(flood) or "(none)",
                gens,
            )
        )
    return table(("VNI", "DEVICES", "MEMBERS", "FLOOD LIST", "SERVER@GENERATION"), rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vxrdctl",
        description="Query and control the local vxrd. Global options may come before "
        "or after the command.",
        epilog=EXIT_CODES,
    )
    add_version(p)
    flags = GlobalFlags()
    flags.add(
        p,
        "--socket",
        default=DEFAULT_STATUS_SOCKET,
        help=f"vxrd status socket (default: {DEFAULT_STATUS_SOCKET})",
    )
    flags.add(p, "--json", action="store_true", help="print the API's JSON (default: tables)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return flags.copy_to(sub.add_parser(name, help=help, epilog=EXIT_CODES))

    command("status", "node id, uptime, servers and last contact")
    command("devices", "VXLAN devices and what vxrd does with each")
    peers = command("peers", "members and flood list per VNI")
    peers.add_argument("vni", nargs="?", help="only this VNI")
    command("leave", "withdraw from every server, flush the flood lists, stop vxrd")
    return p


def run(args: argparse.Namespace) -> tuple[str, int]:
    """What to print, and the exit status."""
    sock = args.socket
    if args.command == "status":
        data = request(sock, "GET", "/v1/status")
        code = CTL_CONFLICT if conflicted(data) else 0
        return (json.dumps(data, indent=2) if args.json else show_status(data)), code
    return _run(args), 0


def _run(args: argparse.Namespace) -> str:
    sock = args.socket
    if args.command == "devices":
        data = request(sock, "GET", "/v1/devices")
        return json.dumps(data, indent=2) if args.json else show_devices(data)
    if args.command == "peers":
        url = "/v1/peers"
        if args.vni is not None:
            try:
                url += f"?vni={parse_vni(args.vni)}"
            except InvalidValue as exc:
                raise CtlError(str(exc), CTL_USAGE) from None
        data = request(sock, "GET", url)
        return json.dumps(data, indent=2) if args.json else show_peers(data)
    started = time.monotonic()
    data = request(sock, "POST", "/v1/leave", timeout=60.0)
    if args.json:
        return json.dumps(data, indent=2)
    return (
        f"left: withdrew from {len(data['servers'])} server(s), flushed {data['flushed']} "
        f"flood entries on {len(data['devices'])} device(s) in "
        f"{time.monotonic() - started:.2f}s; vxrd is stopping"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out, code = run(args)
    except CtlError as exc:
        print(f"vxrdctl: {exc}", file=sys.stderr)
        return exc.code
    print(out)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
