"""Which VXLAN devices vxrd manages (pure: no kernel)."""

from __future__ import annotations

from schema.wire import address
from vxrd.agent import DOWN, MANAGED, classify
from vxrd.config import Config
from vxrd.kernel import VxlanDevice

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
