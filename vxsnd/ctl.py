"""vxsndctl: command-line client of vxsnd's REST API.

    vxsndctl vnis                      VNIs with generation and member counts
    vxsndctl vni 100                   members of VNI 100
    vxsndctl enrol 100 192.0.2.7 [--hold-time S] [--description TEXT]
    vxsndctl remove 100 192.0.2.7
    vxsndctl import static.txt         replace every static VTEP ('-' reads stdin)
    vxsndctl export [static.txt]       write every static VTEP in the import format
    vxsndctl nodes                     registered agents
    vxsndctl node hv-12                one agent, per-VNI applied generation
    vxsndctl conflicts                 node ids claimed by two live agents (who was refused)

Tables for people, `--json` for scripts (the API's JSON, unchanged). The
global flags (--api, --token, --json ...) go before or after the command. Any
failure exits non-zero with one line on stderr; the exit codes are the ones
vxrdctl uses too (vxflood.commands): 1 refused by the API, 2 usage or local
file error, 3 the API cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final

from vxflood.commands import (
    CTL_EXIT_CODES,
    GlobalFlags,
    add_version,
)
from vxflood.hostport import format_host_port
from vxflood.schema.rest import PayloadError, parse_static_file, static_vtep_json
from vxflood.tables import ago, duration, table, until
from vxsnd.ctl_client import (
    DEFAULT_API,
    EXIT_USAGE,
    Client,
    CtlError,
)

PROG: Final = "vxsndctl"

__all__ = ["Client", "CtlError", "build_parser", "duration", "main", "run", "table"]


# ------------------------------------------------------------------ commands


async def _vnis(args: argparse.Namespace, client: Client, now: float) -> str:
    data = await client.request("GET", ["v1", "vnis"])
    if args.json:
        return _json(data)
    rows = [(v["vni"], v["generation"], v["members"], v["static"]) for v in data["vnis"]]
    return table(["VNI", "GENERATION", "MEMBERS", "STATIC"], rows) if rows else "no VNIs"


async def _vni(args: argparse.Namespace, client: Client, now: float) -> str:
    data = await client.request("GET", ["v1", "vnis", args.vni])
    if args.json:
        return _json(data)
    rows = [
        (m["address"], m["origin"], m["node"], until(m["expires_at"], now), m["description"])
        for m in data["members"]
    ]
    head = f"VNI {data['vni']}  generation {data['generation']}  members {len(rows)}"
    if not rows:
        return head
    return head + "\n" + table(["ADDRESS", "ORIGIN", "NODE", "EXPIRES", "DESCRIPTION"], rows)


async def _enrol(args: argparse.Namespace, client: Client, now: float) -> str:
    body: dict[str, object] = {}
    if args.hold_time is not None:
        body["hold_time"] = args.hold_time
    if args.description is not None:
        body["description"] = args.description
    data = await client.request("PUT", ["v1", "vnis", args.vni, "vteps", args.address], body)
    if args.json:
        return _json(data)
    verb = "enrolled" if data["created"] else "updated"
    member = data["member"]
    return (
        f"{verb} static VTEP {member['address']} in VNI {data['vni']} "
        f"(generation {data['generation']}, expires {until(member['expires_at'], now)})"
    )


async def _remove(args: argparse.Namespace, client: Client, now: float) -> str:
    data = await client.request("DELETE", ["v1", "vnis", args.vni, "vteps", args.address])
    if args.json:
        return _json(data)
    return (
        f"removed static VTEP {data['address']} from VNI {data['vni']} "
        f"(generation {data['generation']})"
    )


async def _import(args: argparse.Namespace, client: Client, now: float) -> str:
    vteps = read_import(args.file)
    payload = {"vteps": [static_vtep_json(v) for v in vteps]}
    data = await client.request("PUT", ["v1", "static"], payload)
    if args.json:
        return _json(data)
    return (
        f"static VTEPs replaced from {args.file}: {len(vteps)} listed, "
        f"{data['added']} added, {data['removed']} removed, {data['kept']} kept"
    )


async def _export(args: argparse.Namespace, client: Client, now: float) -> str:
    return await export_static(client, now)


async def _nodes(args: argparse.Namespace, client: Client, now: float) -> str:
    data = await client.request("GET", ["v1", "nodes"])
    if args.json:
        return _json(data)
    rows = [
        (
            n["id"],
            _hostport(n["address"], n["port"]),
            f"{n['hold_time']:g}s",
            ago(n["last_seen"], now),
            until(n["expires_at"], now),
        )
        for n in data["nodes"]
    ]
    if not rows:
        return "no agents registered"
    return table(["NODE", "ADDRESS", "HOLD", "LAST SEEN", "EXPIRES"], rows)


async def _node(args: argparse.Namespace, client: Client, now: float) -> str:
    data = await client.request("GET", ["v1", "nodes", args.node])
    if args.json:
        return _json(data)
    lines = [
        f"node         {data['id']}",
        f"address      {_hostport(data['address'], data['port'])}",
        f"incarnation  {data['incarnation']:#x}",
        f"hold time    {data['hold_time']:g} s",
        f"last seen    {ago(data['last_seen'], now)}",
        f"expires      {until(data['expires_at'], now)}",
    ]
    rows = [
        (
            v["vni"],
            v["local_address"],
            v["applied_generation"],
            v["generation"],
            _sync(v["applied_generation"], v["generation"]),
        )
        for v in data["vnis"]
    ]
    if rows:
        lines += ["", table(["VNI", "LOCAL ADDRESS", "APPLIED", "CURRENT", "STATE"], rows)]
    return "\n".join(lines)


async def _conflicts(args: argparse.Namespace, client: Client, now: float) -> str:
    data = await client.request("GET", ["v1", "conflicts"])
    if args.json:
        return _json(data)
    rows = [
        (
            c["node_id"],
            c["holder"],
            c["claimant"],
            c["refused"],
            ago(c["first_refused"], now),
            ago(c["last_refused"], now),
        )
        for c in data["conflicts"]
    ]
    if not rows:
        return "no node-id conflicts in the last 10 minutes"
    return table(["NODE", "HELD BY", "REFUSED", "ROUNDS", "FIRST", "LAST"], rows)


COMMANDS: Final[dict[str, Callable[[argparse.Namespace, Client, float], Awaitable[str]]]] = {
    "vnis": _vnis,
    "vni": _vni,
    "enrol": _enrol,
    "remove": _remove,
    "import": _import,
    "export": _export,
    "nodes": _nodes,
    "node": _node,
    "conflicts": _conflicts,
}


async def run(args: argparse.Namespace, client: Client) -> str:
    command = COMMANDS.get(args.command)
    if command is None:  # pragma: no cover (argparse refuses unknown commands)
        raise CtlError(f"unknown command {args.command!r}", EXIT_USAGE)
    return await command(args, client, time.time())


async def export_static(client: Client, now: float) -> str:
    """Every static VTEP as `vxsndctl import` reads it back: a backup of what the
    operator enrolled (agents' registrations are soft state and come back by themselves)."""
    listing = await client.request("GET", ["v1", "vnis"])
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    lines = [
        f"# static VTEPs of {client.api}, exported by vxsndctl at {stamp}",
        "# restore: vxsndctl import FILE (replaces every static VTEP with this list)",
    ]
    for entry in listing["vnis"]:
        if not entry["static"]:
            continue
        data = await client.request("GET", ["v1", "vnis", str(entry["vni"])])
        for m in data["members"]:
            if m["origin"] == "static":
                lines += _export_line(data["vni"], m, now)
    return "\n".join(lines)


def _export_line(vni: int, member: dict[str, Any], now: float) -> list[str]:
    address, description = member["address"], member["description"] or ""
    if "#" in description or description != description.strip():
        raise CtlError(
            f"cannot export VNI {vni} {address}: its description {description!r} has a '#' "
            "or outer spaces, which the import format cannot carry (nothing was written)"
        )
    out = []
    if member["expires_at"] is not None:
        out.append(f"# expires {until(member['expires_at'], now)}; import enrols it without expiry")
    out.append(f"{vni} {address} {description}".rstrip())
    return out


def _sync(applied: int, current: int | None) -> str:
    if current is None:
        return "-"
    return "in sync" if applied >= current else f"behind by {current - applied}"


def _hostport(host: str, port: int) -> str:
    return format_host_port(host, port)


def _json(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=True)


def read_import(name: str) -> tuple[Any, ...]:
    try:
        if name == "-":
            text, source = sys.stdin.read(), "<stdin>"
        else:
            text, source = Path(name).read_text(encoding="utf-8"), name
    except OSError as exc:
        raise CtlError(f"cannot read {name}: {exc.strerror or exc}", EXIT_USAGE) from None
    except UnicodeDecodeError:
        raise CtlError(f"{name}: not UTF-8 text", EXIT_USAGE) from None
    try:
        return parse_static_file(text, source)
    except PayloadError as exc:
        raise CtlError(f"{exc.detail} (nothing was changed)", EXIT_USAGE) from None


def resolve_token(args: argparse.Namespace) -> str | None:
    """--token, else --token-file (first field of the first non-comment line), else $VXSND_TOKEN."""
    if args.token:
        return str(args.token)
    if args.token_file:
        try:
            text = Path(args.token_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise CtlError(
                f"cannot read token file {args.token_file}: {exc.strerror or exc}", EXIT_USAGE
            ) from None
        for line in text.splitlines():
            fields = line.split("#", 1)[0].split()
            if fields:
                return fields[0]
        raise CtlError(f"token file {args.token_file} holds no token", EXIT_USAGE)
    return os.environ.get("VXSND_TOKEN") or None


# --------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Query and change the vxflood registry through vxsnd's REST API. "
        "Global options may come before or after the command.",
        epilog=CTL_EXIT_CODES,
    )
    add_version(p)
    flags = GlobalFlags()
    flags.add(
        p,
        "--api",
        metavar="URL",
        default=os.environ.get("VXSND_API", DEFAULT_API),
        help=f"vxsnd's REST API (default: $VXSND_API or {DEFAULT_API})",
    )
    flags.add(p, "--token", metavar="TOKEN", help="bearer token (default: $VXSND_TOKEN)")
    flags.add(
        p,
        "--token-file",
        metavar="FILE",
        help="file whose first field holds the bearer token (e.g. a line of vxsnd's token file)",
    )
    flags.add(p, "--json", action="store_true", help="print the API's JSON instead of tables")
    flags.add(
        p, "--timeout", type=float, default=10.0, metavar="S", help="request timeout (default: 10)"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return flags.copy_to(sub.add_parser(name, help=help, epilog=CTL_EXIT_CODES))

    command("vnis", "list VNIs")
    s = command("vni", "show one VNI's members")
    s.add_argument("vni")
    s = command("enrol", "enrol (or update) a static VTEP")
    s.add_argument("vni")
    s.add_argument("address")
    s.add_argument(
        "--hold-time", type=int, metavar="S", help="expire after S seconds (default: never)"
    )
    s.add_argument("--description", metavar="TEXT", help="free text shown in listings")
    s = command("remove", "remove a static VTEP")
    s.add_argument("vni")
    s.add_argument("address")
    s = command("import", "replace all static VTEPs with FILE (lines 'VNI ADDRESS [description]')")
    s.add_argument("file", help="file to read, '-' for stdin")
    s = command("export", "write every static VTEP in the format 'import' reads")
    s.add_argument("file", nargs="?", default="-", help="file to write (default: '-', stdout)")
    command("nodes", "list registered agents")
    s = command("node", "show one agent")
    s.add_argument("node")
    command("conflicts", "node ids two live agents claim: who holds each, who was refused")
    return p


def write_output(name: str, text: str) -> None:
    """The export file is written whole or not at all (a temporary file renamed)."""
    path = Path(name)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CtlError(f"cannot write {name}: {exc.strerror or exc}", EXIT_USAGE) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        client = Client(args.api, resolve_token(args), args.timeout)
        output = asyncio.run(run(args, client))
        if args.command == "export" and args.file != "-":
            write_output(args.file, output)
            output = f"exported the static VTEPs to {args.file}"
    except CtlError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
