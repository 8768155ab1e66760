"""Which VXLAN devices vxrd manages (pure: no kernel)."""

from __future__ import annotations

import time

from schema.validate import Address
from schema.wire import Envelope, Membership, address
from vxrd.agent import DOWN, MANAGED, Agent, classify
from vxrd.config import Config, ServerAddr
from vxrd.kernel import Kernel, VxlanDevice

CFG = Config(exclude=("mgmt*",))


def dev(name: str = "vx100", **kw: object) -> VxlanDevice:
    base: dict[str, object] = dict(
        ifindex=5,
        name=name,
        vni=100,
        local=address("10.0.0.1"),
        port=4789,
        group=None,
        up=True,
        external=False,
        vnifilter=False,
    )
    base.update(kw)
    return VxlanDevice(**base)  # type: ignore[arg-type]


def test_managed_and_down() -> None:
    assert classify(dev(), CFG).status == MANAGED
    view = classify(dev(up=False), CFG)
    assert view.status == DOWN and view.eligible


def test_left_alone_with_a_reason() -> None:
    cases = {
        "excluded by configuration": dev("mgmt0"),
        "has multicast group 239.1.1.1": dev(group=address("239.1.1.1")),
        "has remote 10.0.0.9": dev(group=address("10.0.0.9")),
        "external (collect-metadata) mode is not supported yet": dev(vni=None, external=True),
        "vnifilter mode is not supported yet": dev(vni=None, external=True, vnifilter=True),
        "no local address (set --local to manage it)": dev(local=None),
    }
    for reason, d in cases.items():
        view = classify(d, CFG)
        assert view.status == reason and not view.eligible


def test_local_option_fills_in() -> None:
    cfg = Config(local=address("10.9.9.9"))
    view = classify(dev(local=None), cfg)
    assert view.status == MANAGED and view.local == address("10.9.9.9")
    assert classify(dev(), cfg).local == address("10.0.0.1")  # the device's own wins


def test_include_globs() -> None:
    cfg = Config(include=("vx1*",))
    assert classify(dev("vx100"), cfg).status == MANAGED
    assert classify(dev("vx200"), cfg).status == "excluded by configuration"


def test_a_silent_server_does_not_hold_back_a_leave() -> None:
    """Two service nodes with registries of their own: one goes silent (down) holding
    an old answer; once it has not been heard for a hold time, what the live one says
    is the flood list. With no server heard, every last answer counts (fail-static)."""
    servers = (ServerAddr("192.0.2.1", 10001), ServerAddr("192.0.2.2", 10001))
    cfg = Config(servers=servers, hold_time=90)
    agent = Agent(cfg, Kernel())
    down, up = agent.clients
    a, b, c = (address(f"10.0.0.{i}") for i in (2, 3, 4))
    down.state.handle(snapshot(100, 3, (a, b, c), "r-down"), 0.0)
    up.state.handle(snapshot(100, 9, (a, b), "r-up"), 0.0)
    view = classify(dev(), cfg)
    now = time.time()
    down.last_contact = up.last_contact = now
    assert agent._desired(5, view, agent._heard_states()) == {a, b, c}  # both live: union
    down.last_contact = now - 91
    assert agent._desired(5, view, agent._heard_states()) == {a, b}  # c left, say the live
    up.last_contact = now - 91
    assert agent._desired(5, view, agent._heard_states()) == {a, b, c}  # nobody: keep all


def snapshot(vni: int, gen: int, members: tuple[Address, ...], registry: str) -> Membership:
    return Membership(Envelope("snd", 1, 1, 0), registry, vni, gen, None, members, ())
