"""The parts of pyroute2 vxrd uses (rtnetlink, netns), without the rest of it.

`import pyroute2` runs a package __init__ that imports every netlink family
pyroute2 supports (conntrack, nftables, IPDB, NDB, devlink, nl80211, WireGuard,
plan9...): 163 modules and about 60 ms of CPU here (asyncio, msgpack and
pyroute2: 205 -> 143 ms), nearly a third of what a vxrd cost to start, paid by
every host of a rack that powers up at once. vxrd needs rtnetlink only (99
modules). So, unless pyroute2 is already imported, its
package is registered without running that __init__ and the submodules below
are imported from it as usual.

Nothing else in the process loses anything: an attribute of the package that is
not loaded (`pyroute2.IPRoute`, `from pyroute2 import NDB`) imports the
submodule of that name if there is one, and otherwise runs pyroute2's real
__init__ into the same module object first (PEP 562 module __getattr__).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any


def _register_package_without_init() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    loader = spec.loader if spec is not None else None
    if spec is None or loader is None or spec.submodule_search_locations is None:
        return  # the imports below raise pyroute2's own ImportError
    package = importlib.util.module_from_spec(spec)

    def complete(name: str) -> Any:
        if not name.startswith("__"):
            try:
                return importlib.import_module(f"pyroute2.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"pyroute2.{name}":
                    raise
        if "__getattr__" in package.__dict__:
            del package.__dict__["__getattr__"]
            loader.exec_module(package)
        try:
            return package.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 'pyroute2' has no attribute {name!r}") from None

    package.__dict__["__getattr__"] = complete
    sys.modules["pyroute2"] = package


_register_package_without_init()

from pyroute2 import netns  # noqa: E402
from pyroute2.iproute.linux import AsyncIPRoute  # noqa: E402
from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402
from pyroute2.netlink.rtnl import RTM_GETLINK, RTMGRP_LINK  # noqa: E402
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # noqa: E402

__all__ = [
    "NLM_F_DUMP",
    "NLM_F_REQUEST",
    "RTMGRP_LINK",
    "RTM_GETLINK",
    "AsyncIPRoute",
    "NetlinkError",
    "ifinfmsg",
    "netns",
]
