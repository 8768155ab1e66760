"""What the status API shows of a running agent (vxrd.status serves these).

Plain functions of the agent's state and the flood entries read from the
kernel (passed in: the agent reads them), so they do no I/O themselves.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping, Set
from typing import TYPE_CHECKING, Any

from vxflood.schema.validate import Address
from vxrd.planner import MANAGED, DeviceView

if TYPE_CHECKING:
    from vxrd.agent import Agent

Entries = Mapping[int, Set[Address]]


def status(agent: Agent) -> dict[str, Any]:
    now = time.time()
    return {
        "node_id": agent.config.node_id,
        "hostname": socket.gethostname(),
        "uptime": round(now - agent.started, 3),
        "leaving": agent._leaving,
        "last_reconcile": agent.last_reconcile,
        "servers": [
            {
                "server": c.name,
                "address": None if c.address is None else c.address[0],
                "registry": c.state.registry or None,
                "last_contact": c.last_contact,
                "answered": c.answered,
                "learning": c.state.learning,
                "incarnation": c.seq.incarnation,
                "incarnation_renewals": c.renewals,
                "seconds_since_contact": None
                if c.last_contact is None
                else round(now - c.last_contact, 3),
                "vnis": len(c.state.vnis),
                "dropped": dict(c.drops),
                "conflict": None
                if c.refused is None
                else {
                    "reason": c.refused.reason,
                    "holder": c.refused.holder,
                    "since": c.refused.since,
                    "last": c.refused.last,
                    "refusals": c.refused.count,
                },
            }
            for c in agent.clients
        ],
        "devices": {
            "managed": agent.planner.managed_count(),
            "total": len(agent.devices),
        },
    }


def devices(agent: Agent, actual: Entries) -> list[dict[str, Any]]:
    out = []
    for ifindex in sorted(agent.devices):
        v = agent.devices[ifindex]
        d = v.dev
        out.append(
            {
                "ifindex": ifindex,
                "name": d.name,
                "vni": d.vni,
                "local": None if v.local is None else str(v.local),
                "port": d.port,
                "up": d.up,
                "state": v.status if v.eligible else "ignored",
                "reason": None if v.eligible else v.status,
                "entries": len(actual.get(ifindex, ())),
            }
        )
    return out


def peers(agent: Agent, actual: Entries, vni: int | None, now: float) -> list[dict[str, Any]]:
    """Per VNI: what each server said, the members that count, each device's list."""
    by_vni: dict[int, list[DeviceView]] = {}
    for v in agent.devices.values():
        if v.eligible and v.dev.vni is not None:
            by_vni.setdefault(v.dev.vni, []).append(v)
    vnis = set(by_vni) | {n for c in agent.clients for n in c.state.vnis}
    if vni is not None:
        vnis &= {vni}
    out = []
    for n in sorted(vnis):
        servers = {}
        for c in agent.clients:
            st = c.state.vnis.get(n)
            if st is not None:
                servers[c.name] = {
                    "generation": st.applied,
                    "stale": st.stale,
                    "members": sorted(str(a) for a in st.members),
                }
        members = agent.planner.members(agent.states, n, now)
        out.append(
            {
                "vni": n,
                "devices": [
                    {
                        "name": v.dev.name,
                        "local": None if v.local is None else str(v.local),
                        "state": v.status,
                        "flood": sorted(str(a) for a in actual.get(v.dev.ifindex, ())),
                    }
                    for v in by_vni.get(n, [])
                ],
                "members": None if members is None else sorted(str(a) for a in members),
                "servers": servers,
            }
        )
    return out


__all__ = ["MANAGED", "devices", "peers", "status"]
