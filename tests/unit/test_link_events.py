"""Link notifications -> kernel events, from pyroute2 messages built here (no kernel)."""

from __future__ import annotations

from socket import AF_BRIDGE
from typing import Any

from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from vxflood.schema.wire import address
from vxrd.links import link_event
from vxrd.model import LinkChanged, LinkRemoved, VxlanDevice

VXLAN_DATA = (
    "IFLA_INFO_DATA",
    {"attrs": [("IFLA_VXLAN_ID", 100), ("IFLA_VXLAN_LOCAL", "10.0.0.1")]},
)


def message(
    index: int, attrs: list[Any], event: str = "RTM_NEWLINK", flags: int = 1, family: int = 0
) -> Any:
    """An ifinfmsg as pyroute2 hands it over from the socket: encoded, then parsed."""
    m = ifinfmsg()
    m["family"] = family
    m["index"] = index
    m["flags"] = flags
    m["attrs"] = attrs
    m.encode()
    parsed = ifinfmsg(m.data)
    parsed.decode()
    parsed["event"] = event
    return parsed


def vxlan(index: int, *info: tuple[str, Any], operstate: str = "UNKNOWN", **kw: Any) -> Any:
    linkinfo = ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "vxlan"), *info]})
    return message(index, [("IFLA_IFNAME", "vx100"), ("IFLA_OPERSTATE", operstate), linkinfo], **kw)


def test_a_complete_notification_carries_the_device() -> None:
    ev = link_event(vxlan(7, VXLAN_DATA), known=())
    assert ev == LinkChanged(
        7,
        VxlanDevice(7, "vx100", 100, address("10.0.0.1"), 4789, None, True, False, False),
    )
    down = link_event(vxlan(7, VXLAN_DATA, operstate="DOWN", flags=0), known=())
    assert isinstance(down, LinkChanged) and down.device is not None and not down.device.up


def test_missing_attributes_ask_the_caller_to_read_the_device() -> None:
    # IFLA_INFO_DATA missing: a VXLAN device, but not enough to describe it
    assert link_event(vxlan(7), known=()) == LinkChanged(7, None)
    # no IFLA_LINKINFO at all: only an ifindex already known as VXLAN counts
    bare = message(7, [("IFLA_IFNAME", "vx100")])
    assert link_event(bare, known={7}) == LinkChanged(7, None)
    assert link_event(bare, known={8}) is None


def test_deletion_and_other_kinds() -> None:
    assert link_event(vxlan(7, VXLAN_DATA, event="RTM_DELLINK"), known=()) == LinkRemoved(7)
    assert link_event(message(7, [], event="RTM_DELLINK"), known={7}) == LinkRemoved(7)
    bridge = ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge")]})
    assert link_event(message(9, [("IFLA_IFNAME", "br0"), bridge]), known={9}) is None


def test_bridge_port_notifications_are_not_device_changes() -> None:
    # what the kernel sends beside the AF_UNSPEC one when a bridged vx100 changes
    port = [("IFLA_IFNAME", "vx100"), ("IFLA_MASTER", 3), ("IFLA_OPERSTATE", "UP")]
    assert link_event(message(7, port, family=AF_BRIDGE), known={7}) is None
    # leaving the bridge: the device is still there
    gone = message(7, port, event="RTM_DELLINK", family=AF_BRIDGE)
    assert link_event(gone, known={7}) is None
    # the same message as AF_UNSPEC still counts (positive control)
    assert link_event(message(7, port), known={7}) == LinkChanged(7, None)
