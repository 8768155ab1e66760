"""vxsndctl, as a real process, against a real API server on a real registry."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.integration.apiharness import (
    ADMIN_TOKEN,
    READ_TOKEN,
    Harness,
    register,
    serve,
    write_tokens,
)
from vxsnd import registry as st
from vxsnd.ctl import duration, table

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    code: int
    out: str
    err: str


async def ctl(*args: str, token: str | None = None, stdin: str | None = None) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VXSND_")}
    env["PYTHONPATH"] = str(ROOT)
    if token is not None:
        env["VXSND_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vxsnd.ctl",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def test_tables_json_and_changes(store: st.Store, tmp_path: Path) -> None:
    now = time.time()
    await register(store, "hv-1", {100: "192.0.2.1"}, now, 90)
    async with serve(Harness(store), write_tokens(tmp_path)) as api:
        r = await ctl(
            "--api",
            api,
            "enrol",
            "100",
            "198.51.100.7",
            "--description",
            "tor 4",
            token=ADMIN_TOKEN,
        )
        assert r.code == 0, r.err
        assert r.out.strip() == (
            "enrolled static VTEP 198.51.100.7 in VNI 100 (generation 2, expires never)"
        )

        r = await ctl("--api", api, "vnis", token=READ_TOKEN)
        assert r.code == 0, r.err
        assert r.out.splitlines() == [
            "VNI  GENERATION  MEMBERS  STATIC",
            "100  2           2        1",
        ]
        r = await ctl("--api", api, "--json", "vnis", token=READ_TOKEN)
        assert json.loads(r.out) == {
            "vnis": [{"vni": 100, "generation": 2, "members": 2, "static": 1}]
        }

        r = await ctl("--api", api, "vni", "100", token=READ_TOKEN)
        assert r.code == 0, r.err
        lines = r.out.splitlines()
        assert lines[0] == "VNI 100  generation 2  members 2"
        assert lines[1].split() == ["ADDRESS", "ORIGIN", "NODE", "EXPIRES", "DESCRIPTION"]
        assert lines[2].split()[:3] == ["192.0.2.1", "registered", "hv-1"]
        assert lines[3].split() == ["198.51.100.7", "static", "-", "never", "tor", "4"]

        r = await ctl("--api", api, "nodes", token=READ_TOKEN)
        assert r.code == 0, r.err
        assert r.out.splitlines()[0].split() == [
            "NODE",
            "ADDRESS",
            "HOLD",
            "LAST",
            "SEEN",
            "EXPIRES",
        ]
        assert r.out.splitlines()[1].split()[:3] == ["hv-1", "192.0.2.1:10002", "90s"]

        r = await ctl("--api", api, "node", "hv-1", token=READ_TOKEN)
        assert r.code == 0, r.err
        assert "node         hv-1" in r.out
        assert r.out.splitlines()[-1].split() == ["100", "192.0.2.1", "0", "2", "behind", "by", "2"]
        r = await ctl("--api", api, "--json", "node", "hv-1", token=READ_TOKEN)
        assert json.loads(r.out)["vnis"][0]["applied_generation"] == 0

        # refusals: one line, non-zero
        r = await ctl("--api", api, "remove", "100", "192.0.2.1", token=ADMIN_TOKEN)
        assert r.code == 1 and r.err.startswith("vxsndctl: 409 registered-vtep: ")
        assert len(r.err.splitlines()) == 1
        r = await ctl("--api", api, "enrol", "100", "224.0.0.1", token=ADMIN_TOKEN)
        assert r.code == 1 and "multicast" in r.err and len(r.err.splitlines()) == 1
        r = await ctl("--api", api, "enrol", "100", "192.0.2.9", token=READ_TOKEN)
        assert r.code == 1 and r.err.startswith("vxsndctl: 403 forbidden")
        r = await ctl("--api", api, "vnis")
        assert r.code == 1 and r.err.strip() == "vxsndctl: 401 unauthorized: missing bearer token"

        token_file = tmp_path / "my-token"
        token_file.write_text(f"# mine\n{ADMIN_TOKEN} admin\n")
        r = await ctl(
            "--api", api, "--token-file", str(token_file), "remove", "100", "198.51.100.7"
        )
        assert r.code == 0, r.err
        assert r.out.strip() == "removed static VTEP 198.51.100.7 from VNI 100 (generation 3)"


async def test_import(store: st.Store, tmp_path: Path) -> None:
    async with serve(Harness(store)) as api:
        good = tmp_path / "static.txt"
        good.write_text(
            "# VNI ADDRESS [description]\n"
            "100 192.0.2.10 rack 1\n"
            "100 2001:db8::10\n"
            "200 192.0.2.10   # same VTEP, other VNI\n"
        )
        r = await ctl("--api", api, "import", str(good))
        assert r.code == 0, r.err
        assert r.out.strip() == (
            f"static VTEPs replaced from {good}: 3 listed, 3 added, 0 removed, 0 kept"
        )
        _, members = await store.members(100)
        assert [(m.address, m.description) for m in members] == [
            ("192.0.2.10", "rack 1"),
            ("2001:db8::10", None),
        ]
        before = [await store.members(v) for v in (100, 200)]

        bad = tmp_path / "bad.txt"
        bad.write_text("100 192.0.2.10\n100 192.0.2.11\n300 127.0.0.1\n")
        r = await ctl("--api", api, "import", str(bad))
        assert r.code == 2
        assert r.err.strip() == (
            f"vxsndctl: {bad}:3: 127.0.0.1 is a loopback address, not a VTEP (nothing was changed)"
        )
        assert [await store.members(v) for v in (100, 200)] == before

        r = await ctl("--api", api, "--json", "import", "-", stdin="100 192.0.2.10\n")
        assert r.code == 0, r.err
        assert json.loads(r.out) == {
            "added": 0,
            "removed": 2,
            "kept": 1,
            "changed_vnis": [100, 200],
        }
        r = await ctl("--api", api, "import", str(tmp_path / "missing.txt"))
        assert r.code == 2 and "cannot read" in r.err


async def test_server_down_is_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = f"http://127.0.0.1:{port}"
    r = await ctl("--api", api, "vnis")
    assert r.code == 3
    assert r.out == ""
    assert r.err == (
        f"vxsndctl: cannot reach {api}: connection refused (is vxsnd running with --api?)\n"
    )


def test_formatting_helpers() -> None:
    """vxsndctl prints with vxflood.tables, the helpers vxrdctl uses too."""
    assert table(["A", "BB"], [(1, None), ("long", "x")]) == "A     BB\n1     -\nlong  x"
    assert [duration(s) for s in (5, 65, 3700, 90000)] == ["5s", "1m05s", "1h01m", "1d01h"]


async def test_global_flags_after_the_command(store: st.Store, tmp_path: Path) -> None:
    """Issue 13: `vxsndctl vni 100 --json` was refused (the flag had to come first)."""
    now = time.time()
    await register(store, "hv-1", {100: "192.0.2.1"}, now, 90)
    async with serve(Harness(store), write_tokens(tmp_path)) as api:
        before = await ctl("--json", "--api", api, "vni", "100", token=READ_TOKEN)
        after = await ctl("vni", "100", "--json", "--api", api, token=READ_TOKEN)
        assert (before.code, after.code) == (0, 0), (before.err, after.err)
        assert json.loads(after.out) == json.loads(before.out)
        assert json.loads(after.out)["vni"] == 100
        r = await ctl("enrol", "100", "198.51.100.9", "--api", api, "--token", ADMIN_TOKEN)
        assert r.code == 0, r.err
    r = await ctl("--version")
    assert r.code == 0 and r.out.startswith("vxsndctl (vxflood) ")


async def test_export_writes_what_import_reads(store: st.Store, tmp_path: Path) -> None:
    """Issue 9/13: a backup of the static VTEPs that `vxsndctl import` restores."""
    now = time.time()
    await register(store, "hv-1", {100: "192.0.2.1"}, now, 90)  # an agent: not exported
    async with serve(Harness(store)) as api:
        source = tmp_path / "static.txt"
        source.write_text("100 192.0.2.10 rack 1, row 2\n100 2001:db8::10\n200 192.0.2.10\n")
        assert (await ctl("--api", api, "import", str(source))).code == 0
        r = await ctl("--api", api, "enrol", "300", "192.0.2.30", "--hold-time", "600")
        assert r.code == 0, r.err
        backup = tmp_path / "backup.txt"
        r = await ctl("export", str(backup), "--api", api)
        assert r.code == 0, r.err
        assert r.out.strip() == f"exported the static VTEPs to {backup}"
        lines = [ln for ln in backup.read_text().splitlines() if not ln.startswith("#")]
        assert lines == [
            "100 192.0.2.10 rack 1, row 2",
            "100 2001:db8::10",
            "200 192.0.2.10",
            "300 192.0.2.30",
        ]
        assert "# expires in " in backup.read_text()
        stdout = await ctl("--api", api, "export")
        assert stdout.code == 0
        assert [ln for ln in stdout.out.splitlines() if not ln.startswith("#")] == lines
        before = {v: await store.members(v) for v in (100, 200)}
        # restore: wipe the statics, import the backup, the same members come back
        assert (await ctl("--api", api, "import", "-", stdin="")).code == 0
        assert (await store.members(200))[1] == []
        r = await ctl("--api", api, "import", str(backup))
        assert r.code == 0, r.err
        after = {v: await store.members(v) for v in (100, 200)}
        strip = [(m.address, m.origin, m.description) for v in before for m in before[v][1]]
        assert strip == [(m.address, m.origin, m.description) for v in after for m in after[v][1]]
        # a description the import format cannot carry is refused, nothing written
        r = await ctl("--api", api, "enrol", "100", "192.0.2.99", "--description", "a # b")
        assert r.code == 0, r.err
        refused = tmp_path / "refused.txt"
        r = await ctl("--api", api, "export", str(refused))
        assert r.code == 1 and "cannot export VNI 100 192.0.2.99" in r.err
        assert not refused.exists()


async def test_bad_api_url_is_a_usage_error() -> None:
    r = await ctl("--api", "127.0.0.1:10080", "vnis")
    assert r.code == 2
    assert r.err.strip() == (
        "vxsndctl: --api '127.0.0.1:10080': expected a URL like http://127.0.0.1:10080"
    )
