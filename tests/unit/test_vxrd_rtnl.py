"""vxrd.rtnl: vxrd imports pyroute2's rtnetlink without the package's __init__
(issue 11: about 60 ms of every vxrd start), and the rest of the process still
sees the whole of pyroute2. Each check runs in a fresh interpreter, since the
test session itself has imported pyroute2 long before."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNUSED = ("pyroute2.ndb", "pyroute2.ipdb", "pyroute2.conntrack", "pyroute2.netlink.nfnetlink")


def fresh(code: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return report


def test_vxrd_loads_no_netlink_family_it_does_not_use() -> None:
    show = f"print(json.dumps({{m: m in sys.modules for m in {UNUSED!r}}}))"
    report = fresh(f"import json, sys, vxrd.cli\n{show}")
    assert report == dict.fromkeys(UNUSED, False)
    # positive control: the full package does load them
    report = fresh(f"import json, sys, pyroute2\n{show}")
    assert report == dict.fromkeys(UNUSED, True)


def test_the_rest_of_the_process_still_gets_all_of_pyroute2() -> None:
    report = fresh(
        "import json, vxrd.rtnl, pyroute2\n"
        "from pyroute2 import NDB, IPRoute, config\n"
        "from pyroute2.iproute.linux import AsyncIPRoute\n"
        "try:\n"
        "    pyroute2.no_such_name\n"
        "    missing = 'no error'\n"
        "except AttributeError as e:\n"
        "    missing = str(e)\n"
        "print(json.dumps({\n"
        "    'ndb': NDB.__module__, 'iproute': IPRoute.__name__, 'config': config.__name__,\n"
        "    'version': pyroute2.__version__ != 'unknown',\n"
        "    'same': pyroute2.AsyncIPRoute is AsyncIPRoute is vxrd.rtnl.AsyncIPRoute,\n"
        "    'missing': missing,\n"
        "}))"
    )
    assert report == {
        "ndb": "pyroute2.ndb.main",
        "iproute": "IPRoute",
        "config": "pyroute2.config",
        "version": True,
        "same": True,
        "missing": "module 'pyroute2' has no attribute 'no_such_name'",
    }


def test_a_process_that_imported_pyroute2_first_keeps_it() -> None:
    report = fresh(
        "import json, pyroute2\n"
        "first = pyroute2\n"
        "import vxrd.rtnl, sys\n"
        "print(json.dumps({'same': sys.modules['pyroute2'] is first,"
        " 'init': hasattr(first, 'NDB')}))"
    )
    assert report == {"same": True, "init": True}
