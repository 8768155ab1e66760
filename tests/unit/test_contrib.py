"""contrib/ stays in step with the daemons.

- The example configs list every option exactly once, as ``# key = value``
  lines; uncommented they load with the daemons' own loaders, and each value
  is the default the daemon uses (options without a fixed default, such as the
  host name, show an example value instead, and the test checks that they
  really have no fixed default).
- The systemd units parse as INI, keep their hardening, are Type=notify and
  pass `systemd-analyze verify` without a warning.
- The ifupdown2 example passes `ifup --syntax-check` (ifupdown2 is installed in CI).
- Every metric the Grafana dashboard queries is one the daemons export.
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import vxrd.config
import vxrd.metrics
import vxsnd.config
import vxsnd.metrics
from tests.conftest import missing

ROOT = Path(__file__).resolve().parents[2]
CONTRIB = ROOT / "contrib"

# "# key = value": an option shown with its default (or example); one space after
# "#" exactly, so indented examples inside prose are not taken for options.
OPTION_LINE = re.compile(r"^# ([a-z][a-z0-9_]*) = (.+)$")

# Options whose default depends on the host or is "none": the example shows a
# sample value, and the daemon must indeed have no fixed default for them.
NO_FIXED_DEFAULT = {
    "vxsnd": {"db", "key_file", "server_id", "token_file"},
    "vxrd": {"servers", "key_file", "local", "node_id", "metrics"},
}
DAEMONS: dict[str, ModuleType] = {"vxsnd": vxsnd.config, "vxrd": vxrd.config}


def example_options(path: Path) -> dict[str, str]:
    """The commented-out option lines of an example config: key -> TOML line."""
    found: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        m = OPTION_LINE.match(line)
        if m is None:
            continue
        key = m.group(1)
        assert key not in found, f"{path.name}:{number}: {key} is listed twice"
        found[key] = line[2:]
    return found


def has_fixed_default(f: dataclasses.Field[Any]) -> bool:
    if f.default_factory is not dataclasses.MISSING:
        return False
    return f.default not in (None, ())


@pytest.mark.parametrize("daemon", sorted(DAEMONS))
def test_example_config_is_valid_toml_and_loads_as_is(daemon: str) -> None:
    path = CONTRIB / "config" / f"{daemon}.toml"
    with path.open("rb") as fh:
        tomllib.load(fh)
    DAEMONS[daemon].load_file(path)


@pytest.mark.parametrize("daemon", sorted(DAEMONS))
def test_example_config_lists_every_option_with_its_default(daemon: str, tmp_path: Path) -> None:
    module = DAEMONS[daemon]
    path = CONTRIB / "config" / f"{daemon}.toml"
    options = example_options(path)
    fields = {f.name: f for f in dataclasses.fields(module.Config)}

    assert set(options) == set(fields), (
        f"{path.name} and {daemon}'s Config differ: "
        f"missing {sorted(set(fields) - set(options))}, "
        f"unknown {sorted(set(options) - set(fields))}"
    )

    uncommented = tmp_path / f"{daemon}.toml"
    uncommented.write_text("\n".join(options.values()) + "\n", encoding="utf-8")
    values = module.load_file(uncommented)
    defaults = module.Config()

    for key, f in fields.items():
        if key in NO_FIXED_DEFAULT[daemon]:
            assert not has_fixed_default(f), (
                f"{daemon}: {key} now has the fixed default {f.default!r}: "
                f"show it in {path.name} and drop it from NO_FIXED_DEFAULT"
            )
            continue
        assert values[key] == getattr(defaults, key), (
            f"{path.name}: {options[key]!r} but {daemon}'s default is {getattr(defaults, key)!r}"
        )


@pytest.mark.parametrize("daemon", sorted(DAEMONS))
def test_help_names_every_option(daemon: str) -> None:
    text = DAEMONS[daemon].build_parser().format_help()
    assert "--config" in text
    for key in example_options(CONTRIB / "config" / f"{daemon}.toml"):
        flag = "--" + key.replace("_", "-")
        if daemon == "vxrd" and key == "servers":
            flag = "--server"
        assert flag in text, f"{daemon} --help does not mention {flag}"


# ---------------------------------------------------------------- systemd units


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values in order]}} (keys may repeat)."""
    # configparser must accept it too (strict=False: systemd allows repeated keys).
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path, encoding="utf-8")
    assert parser.sections(), f"{path.name}: no sections"

    unit: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and section is not None, f"{path.name}:{number}: not 'Key=value': {raw!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


COMMON_HARDENING = {
    "Type": "notify",
    "NotifyAccess": "main",
    "KillSignal": "SIGTERM",
    "Restart": "on-failure",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "MemoryDenyWriteExecute": "yes",
    "LockPersonality": "yes",
    "RestrictRealtime": "yes",
}


def last(service: dict[str, list[str]], key: str) -> str:
    assert key in service, f"[Service] has no {key}="
    return service[key][-1]


@pytest.mark.parametrize(
    ("daemon", "families", "caps"),
    [
        ("vxsnd", {"AF_INET", "AF_INET6", "AF_UNIX"}, ""),
        ("vxrd", {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}, "CAP_NET_ADMIN"),
    ],
)
def test_systemd_unit_is_hardened(daemon: str, families: set[str], caps: str) -> None:
    unit = read_unit(CONTRIB / "systemd" / f"{daemon}.service")
    assert {"Unit", "Service", "Install"} <= set(unit)
    service = unit["Service"]
    for key, value in COMMON_HARDENING.items():
        assert last(service, key) == value, f"{daemon}.service: {key}={last(service, key)}"
    assert float(last(service, "RestartSec").removesuffix("s")) > 0

    exec_start = last(service, "ExecStart").split()
    assert Path(exec_start[0]).name == daemon
    assert exec_start[1:] == ["--config", f"/etc/vxflood/{daemon}.toml"]

    assert set(last(service, "RestrictAddressFamilies").split()) == families
    assert "@system-service" in service["SystemCallFilter"][0].split()
    assert service["CapabilityBoundingSet"] == [caps]
    assert service.get("AmbientCapabilities", [""]) == [caps]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_vxsnd_unit_runs_as_its_own_user_with_a_state_directory() -> None:
    service = read_unit(CONTRIB / "systemd" / "vxsnd.service")["Service"]
    assert last(service, "User") == "vxsnd"
    assert last(service, "StateDirectory") == "vxsnd"
    sysusers = (CONTRIB / "systemd" / "vxsnd.sysusers").read_text(encoding="utf-8")
    assert re.search(r"^u vxsnd ", sysusers, re.M)


def test_vxrd_unit_runtime_directory_holds_the_status_socket() -> None:
    service = read_unit(CONTRIB / "systemd" / "vxrd.service")["Service"]
    socket_dir = Path(vxrd.config.DEFAULT_STATUS_SOCKET).parent
    assert socket_dir == Path("/run") / last(service, "RuntimeDirectory")
    assert "User" not in service  # root, bounded to CAP_NET_ADMIN


# ---------------------------------------------------------------- Grafana


def exported_metric_names() -> set[str]:
    """Every sample name the daemons can expose, labelled series included."""
    snd = vxsnd.metrics.Metrics()
    rd = vxrd.metrics.Metrics()
    rd.watch_contacts(lambda: [])
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    names: set[str] = set()
    for registry in (snd.registry, rd.registry):
        for family in registry.collect():
            names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def walk(node: object) -> Iterator[tuple[str, object]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def test_grafana_dashboard_uses_only_exported_metrics() -> None:
    dashboard = json.loads((CONTRIB / "grafana" / "vxflood.json").read_text(encoding="utf-8"))
    exported = exported_metric_names()

    queries = [
        value
        for key, value in walk(dashboard)
        if key in {"expr", "query", "definition"} and isinstance(value, str)
    ]
    used = {name for q in queries for name in re.findall(r"\b(?:vxsnd|vxrd)_[a-z0-9_]+", q)}
    assert used, "the dashboard queries no vxflood metric"
    assert used <= exported, f"not exported by vxsnd/vxrd: {sorted(used - exported)}"

    ids = [
        panel["id"]
        for key, value in walk(dashboard)
        if key == "panels" and isinstance(value, list)
        for panel in value
    ]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


# ---------------------------------------------------------------- README


@pytest.mark.parametrize("daemon", sorted(DAEMONS))
def test_readme_option_table_names_every_option(daemon: str) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    after = readme.split(f"\n**{daemon}**\n", 1)[1].lstrip("\n")
    table = after.split("\n\n", 1)[0]  # the table: up to the first blank line
    listed = set(re.findall(r"^\| `([a-z_]+)`", table, re.M))
    fields = {f.name for f in dataclasses.fields(DAEMONS[daemon].Config)}
    assert listed == fields, (
        f"README's {daemon} table: missing {sorted(fields - listed)}, "
        f"unknown {sorted(listed - fields)}"
    )


# ---------------------------------------------------------------- the operators' own tools


@pytest.mark.parametrize("daemon", ["vxsnd", "vxrd"])
def test_systemd_analyze_verify_passes(daemon: str, tmp_path: Path) -> None:
    """`systemd-analyze verify`, with ExecStart pointed at the installed command (the
    unit names /opt/vxflood, which verify checks exists). Warnings count as failures:
    verify exits 0 on a key it ignores."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        missing("needs systemd-analyze (apt-get install systemd)")
        return
    command = Path(sys.executable).parent / daemon
    assert command.exists(), f"{command}: install vxflood into this venv first"
    text = (CONTRIB / "systemd" / f"{daemon}.service").read_text(encoding="utf-8")
    assert f"/opt/vxflood/bin/{daemon} " in text
    unit = tmp_path / f"{daemon}.service"
    unit.write_text(text.replace(f"/opt/vxflood/bin/{daemon} ", f"{command} "))
    done = subprocess.run(
        [tool, "verify", str(unit)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


def test_ifupdown2_example_passes_the_syntax_check() -> None:
    """ifupdown2's own check of contrib/ifupdown2/interfaces.example (it said
    `br100: bridge inherits mtu from its ports` and exit 1)."""
    tool = shutil.which("ifup")
    if tool is None or not Path("/usr/share/ifupdown2").is_dir():
        missing("needs ifupdown2 (apt-get install ifupdown2)")
        return
    if os.geteuid() != 0:
        missing("ifupdown2's ifup runs as root only, even for --syntax-check")
        return
    # its lock lives in /run/network, which the networking unit creates at boot
    Path("/run/network").mkdir(parents=True, exist_ok=True)
    example = CONTRIB / "ifupdown2" / "interfaces.example"
    done = subprocess.run(
        [tool, "--syntax-check", "-a", "-i", str(example)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warning" not in (done.stdout + done.stderr).lower(), done.stdout + done.stderr


def test_license_is_an_spdx_expression_with_its_text_shipped() -> None:
    """PEP 639: a `license` table is deprecated (setuptools warned on every build)."""
    with (ROOT / "pyproject.toml").open("rb") as fh:
        project = tomllib.load(fh)["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
