"""VXLAN links from pyroute2's parsed messages (pure: parsing only, no socket).

vxrd.kernel reads link dumps and notifications with pyroute2; this module turns
those messages into vxrd.model's VxlanDevice and link events.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Container
from socket import AF_BRIDGE
from typing import Any

from vxrd.model import Address, KernelEvent, LinkChanged, LinkRemoved, VxlanDevice

__all__ = ["link_event", "parse_device"]

IFF_UP = 0x1
IFLA_VXLAN_VNIFILTER = 30  # not in pyroute2 0.9.7's vxlan attribute map
_LINK_ATTRS = frozenset(("IFLA_IFNAME", "IFLA_OPERSTATE", "IFLA_LINKINFO"))
_INFO_ATTRS = frozenset(("IFLA_INFO_KIND", "IFLA_INFO_DATA"))
_VXLAN_ATTRS = frozenset(
    f"IFLA_VXLAN_{n}"
    for n in ("ID", "LOCAL", "LOCAL6", "GROUP", "GROUP6", "PORT", "COLLECT_METADATA")
)


def _ip(value: object) -> Address | None:
    """pyroute2's address string -> address; None when absent or unspecified."""
    if not isinstance(value, str):
        return None
    a = ipaddress.ip_address(value)
    return None if a.is_unspecified else a


def _pick(msg: Any, names: frozenset[str]) -> dict[str, Any]:
    """The values of the named attributes; pyroute2 decodes only those (lazily)."""
    return {slot.name: slot.value for slot in msg["attrs"] if slot.name in names}


def parse_device(msg: Any) -> VxlanDevice | None:
    """A VxlanDevice from pyroute2's parsed ifinfmsg, None if the link is not VXLAN."""
    top = _pick(msg, _LINK_ATTRS)
    info = _pick(top["IFLA_LINKINFO"], _INFO_ATTRS) if "IFLA_LINKINFO" in top else {}
    if info.get("IFLA_INFO_KIND") != "vxlan":
        return None
    return _vxlan_device(msg, top, info.get("IFLA_INFO_DATA"))


def _vxlan_device(msg: Any, top: dict[str, Any], data: Any) -> VxlanDevice:
    """The VxlanDevice of a VXLAN link message: `top` its picked link attributes,
    `data` its IFLA_INFO_DATA (IFLA_LINKINFO -> IFLA_INFO_KIND 'vxlan' ->
    IFLA_INFO_DATA).

    pyroute2 decodes attribute values lazily, on first access: only the
    attributes used here are touched. pyroute2 0.9.7 does not know
    IFLA_VXLAN_VNIFILTER (type 30) and keeps it as an UNKNOWN attribute with
    its raw header; its one-byte value is read from the buffer pyroute2 keeps
    (data, offset). vnifilter devices are always external (collect_metadata),
    which vxrd leaves alone anyway; should a later pyroute2 stop exposing the
    raw attribute, vnifilter reads False and nothing else changes.
    """
    found: dict[str, Any] = {}
    vnifilter = False
    for slot in data["attrs"] if data is not None else ():
        name = slot.name
        if name in _VXLAN_ATTRS:
            found[name] = slot.value
        elif name == "UNKNOWN":
            nla = slot.nla
            if nla["header"]["type"] == IFLA_VXLAN_VNIFILTER and nla["header"]["length"] > 4:
                vnifilter = bool(nla.data[nla.offset + 4])
    external = bool(found.get("IFLA_VXLAN_COLLECT_METADATA"))
    operstate = top.get("IFLA_OPERSTATE")
    return VxlanDevice(
        ifindex=msg["index"],
        name=top.get("IFLA_IFNAME") or "",
        vni=None if external else found.get("IFLA_VXLAN_ID"),
        local=_ip(found.get("IFLA_VXLAN_LOCAL")) or _ip(found.get("IFLA_VXLAN_LOCAL6")),
        port=found.get("IFLA_VXLAN_PORT", 4789),
        group=_ip(found.get("IFLA_VXLAN_GROUP")) or _ip(found.get("IFLA_VXLAN_GROUP6")),
        up=bool(msg["flags"] & IFF_UP) and operstate not in ("DOWN", "LOWERLAYERDOWN"),
        external=external,
        vnifilter=vnifilter,
    )


def link_event(msg: Any, known: Container[int]) -> KernelEvent | None:
    """A link notification -> LinkChanged/LinkRemoved for VXLAN devices, else None.

    The kernel's notifications carry the whole link (name, flags, operstate,
    IFLA_LINKINFO with the VXLAN data), so LinkChanged carries the device
    parsed from the message itself and the caller does not ask the kernel
    again. A message without what the device needs (no IFLA_LINKINFO,
    IFLA_INFO_DATA or name) about an ifindex known to be VXLAN (`known`)
    still counts, with device None: the caller re-reads that one.

    The AF_BRIDGE ones are skipped: a device that is a bridge port (every VXLAN
    device on a Linux bridge, Proxmox or libvirt host) gets a second
    notification of family AF_BRIDGE for each change (port state: name,
    master, operstate, IFLA_PROTINFO, no IFLA_LINKINFO), and an AF_BRIDGE
    RTM_DELLINK when it merely leaves its bridge. The AF_UNSPEC notification
    beside it carries the whole device; read as LinkChanged(index) the bridge
    ones cost a netlink round trip each (three per up/down of a bridged
    device, about 1 ms of vxrd's CPU), and the port's DELLINK would drop a
    device that still exists.
    """
    if msg.get("family") == AF_BRIDGE:
        return None
    top = _pick(msg, _LINK_ATTRS)
    index = msg["index"]
    linkinfo = top.get("IFLA_LINKINFO")
    data = None
    if linkinfo is None:
        if index not in known:
            return None
    else:
        info = _pick(linkinfo, _INFO_ATTRS)
        if info.get("IFLA_INFO_KIND") != "vxlan":
            return None
        data = info.get("IFLA_INFO_DATA")
    event = msg.get("event")
    if event == "RTM_NEWLINK":
        if data is None or "IFLA_IFNAME" not in top:
            return LinkChanged(index)
        return LinkChanged(index, _vxlan_device(msg, top, data))
    if event == "RTM_DELLINK":
        return LinkRemoved(index)
    return None
