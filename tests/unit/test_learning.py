"""The `learning` flag end to end on the wire: vxsnd's core sets it, vxrd's
per-server state reads it (issue 9 item 5)."""

from __future__ import annotations

from tests.unit.test_core import T0, Agent, make, pushes, replies, step
from vxflood.schema.wire import Ack, Codec, Membership
from vxrd.answers import ServerState


def test_vxsnd_learning_answers_make_vxrd_additive_until_authority() -> None:
    core, reg = make(hold=30)
    a = Agent("a", 1001)
    a.registry = "the-lost-registry"
    a.send(core, a.register({100: "10.0.0.1"}))
    out = step(core, reg, T0)
    codec = Codec()
    (reply,) = replies(out, a)
    (snap,) = pushes(out, a)
    # what vxrd decodes from the bytes vxsnd sent
    wire_reply = codec.decode(codec.encode(reply))
    wire_snap = codec.decode(codec.encode(snap))
    assert isinstance(wire_reply, Ack) and isinstance(wire_snap, Membership)
    state = ServerState()
    assert state.handle_reply(wire_reply, 5.0).answered
    assert state.learning and state.additive(5.0, 30)
    state.handle(wire_snap, 5.1)
    assert state.learning and state.members(100) is not None
    # a hold time later vxsnd answers with authority: vxrd may remove again
    a.registry = reg.registry_id
    a.send(core, a.register({100: "10.0.0.1"}, applied={100: 1}), T0 + 30)
    (later,) = replies(step(core, reg, T0 + 30), a)
    wire_later = codec.decode(codec.encode(later))
    assert isinstance(wire_later, Ack) and not wire_later.learning
    outcome = state.handle_reply(wire_later, 35.0)
    assert outcome.authority and not state.learning and not state.additive(35.0, 30)
