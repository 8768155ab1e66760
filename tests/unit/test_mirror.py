"""The kernel mirror is pure: fed dumps, notifications and vxrd's own writes, no kernel."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from vxflood.schema.validate import Address
from vxrd.mirror import FloodMirror, drifted
from vxrd.model import FloodChange, FloodDiff
from vxrd.reconcile import reconcile

A = ipaddress.ip_address
P1, P2, P3 = A("10.0.0.1"), A("10.0.0.2"), A("10.0.0.3")


def test_starts_incomplete_and_a_dump_makes_it_complete() -> None:
    m = FloodMirror()
    assert not m.complete and m.get(5) == set()
    m.mark_stale(5)
    m.load({5: {P1, P2}, 6: set()})
    assert m.complete and m.stale() == frozenset()
    assert m.get(5) == {P1, P2} and m.get(6) == set()
    m.invalidate()
    assert not m.complete and m.get(5) == {P1, P2}  # kept until the next dump


def test_events_follow_the_kernel_and_report_only_news() -> None:
    m = FloodMirror()
    m.load({5: {P1}})
    news = m.apply(
        [
            FloodChange(5, P1, True),  # known already
            FloodChange(5, P2, True),
            FloodChange(7, P3, True),  # a device not seen before
            FloodChange(5, P3, False),  # absent already
        ]
    )
    assert news == [FloodChange(5, P2, True), FloodChange(7, P3, True)]
    assert m.get(5) == {P1, P2} and m.get(7) == {P3}
    assert m.apply([FloodChange(7, P3, False), FloodChange(5, P1, False)]) == [
        FloodChange(7, P3, False),
        FloodChange(5, P1, False),
    ]
    assert m.get(7) == set() and m.get(5) == {P2}


def test_own_writes_make_their_echoes_no_news() -> None:
    m = FloodMirror()
    m.load({})
    m.written({5: FloodDiff(add=frozenset({P1, P2}))})
    assert m.get(5) == {P1, P2}
    assert m.apply([FloodChange(5, P1, True), FloodChange(5, P2, True)]) == []
    m.written({5: FloodDiff(remove=frozenset({P1}))})
    assert m.apply([FloodChange(5, P1, False)]) == []
    assert m.get(5) == {P2} and m.stale() == frozenset()


def test_failed_writes_leave_the_device_stale_until_read() -> None:
    m = FloodMirror()
    m.load({5: {P1}})
    diff = FloodDiff(add=frozenset({P2, P3}), remove=frozenset({P1}))
    m.written({5: diff, 6: FloodDiff(add=frozenset({P1}))}, failed=[(5, P3)])
    assert m.get(5) == {P2}  # P3's outcome is unknown: not recorded
    assert m.get(6) == {P1}
    assert m.stale() == {5}
    m.load_device(5, [P2, P3])
    assert m.stale() == frozenset() and m.get(5) == {P2, P3}
    m.load_device(5, [])
    assert m.get(5) == set()


def test_forget_drops_a_deleted_device() -> None:
    m = FloodMirror()
    m.load({5: {P1}})
    m.mark_stale(5)
    m.forget(5)
    assert m.get(5) == set() and m.stale() == frozenset()


def test_drifted_only_when_a_change_leaves_what_is_wanted() -> None:
    wanted = {5: frozenset({P1, P2}), 6: frozenset({P1})}
    assert drifted(wanted, [FloodChange(5, P1, True), FloodChange(6, P2, False)]) == set()
    assert drifted(wanted, [FloodChange(5, P1, False)]) == {5}  # ours deleted by hand
    assert drifted(wanted, [FloodChange(6, P3, True)]) == {6}  # an extra one
    assert drifted(wanted, [FloodChange(9, P3, True)]) == set()  # not programmed


# ------------------------------------------------------------ model: kernel + events

DEVICES = st.sampled_from([5, 6])
PEERS = st.builds(ipaddress.IPv4Address, st.integers(0x0A000001, 0x0A000008))
# someone else's change: (device, peer, present)
FOREIGN = st.tuples(DEVICES, PEERS, st.booleans())
# vxrd's own: (device, wanted set)
OWN = st.tuples(DEVICES, st.frozensets(PEERS, max_size=6))
STEPS = st.lists(
    st.one_of(FOREIGN, st.just("drain"), st.just("dump"), st.just("load"), OWN),
    min_size=4,
    max_size=40,
)


@settings(max_examples=300)
@given(STEPS)
def test_after_every_queued_event_the_mirror_equals_the_kernel(steps: list[object]) -> None:
    """Whatever mix of foreign changes, own writes (mirror updated at once),
    late-delivered events and full dumps (answered later, with events read in
    between): once the queue is drained, mirror == kernel, and a reconcile
    from the mirror reaches what is wanted."""
    kernel: dict[int, set[Address]] = {5: set(), 6: set()}
    queue: list[FloodChange] = []  # notifications not yet read
    m = FloodMirror()
    m.load(kernel)

    def change(ifindex: int, peer: Address, present: bool) -> None:
        have = kernel[ifindex]
        if (peer in have) != present:  # the kernel notifies only real changes
            (have.add if present else have.discard)(peer)
            queue.append(FloodChange(ifindex, peer, present))

    snapshot: dict[int, set[Address]] | None = None
    for step in steps:
        if step == "drain":
            m.apply(queue)
            queue.clear()
        elif step == "dump":  # the kernel answers now; the answer is loaded later
            m.begin_read()
            snapshot = {i: set(a) for i, a in kernel.items()}
        elif step == "load":
            if snapshot is not None:
                m.load(snapshot)
                snapshot = None
        elif isinstance(step, tuple) and len(step) == 3:
            ifindex, peer, present = step
            change(ifindex, peer, present)
        else:
            assert isinstance(step, tuple) and len(step) == 2
            if snapshot is not None:  # vxrd reconciles (writes) only after its dump
                m.load(snapshot)
                snapshot = None
            ifindex, wanted = step
            diff = reconcile(wanted, m.get(ifindex))
            for p in diff.remove:
                change(ifindex, p, False)
            for p in diff.add:
                change(ifindex, p, True)
            m.written({ifindex: diff})
    if snapshot is not None:
        m.load(snapshot)
    m.apply(queue)
    assert {i: set(m.get(i)) for i in kernel} == kernel
    for ifindex in kernel:
        target = frozenset({A("10.0.0.1")})
        diff = reconcile(target, m.get(ifindex))
        assert (kernel[ifindex] - diff.remove) | diff.add == target


@given(st.lists(st.one_of(OWN, st.just("drain")), max_size=40))
def test_own_writes_keep_the_mirror_exact_and_their_echoes_are_no_news(
    steps: list[object],
) -> None:
    kernel: dict[int, set[Address]] = {5: set(), 6: set()}
    queue: list[FloodChange] = []
    m = FloodMirror()
    m.load(kernel)
    for step in steps:
        if step == "drain":
            m.apply(queue)
            queue.clear()
            continue
        assert isinstance(step, tuple)
        ifindex, wanted = step
        exact = not queue
        diff = reconcile(wanted, m.get(ifindex))
        for p in diff.remove | diff.add:
            present = p in diff.add
            if (p in kernel[ifindex]) != present:
                (kernel[ifindex].add if present else kernel[ifindex].discard)(p)
                queue.append(FloodChange(ifindex, p, present))
        m.written({ifindex: diff})
        if exact:  # no dump, no event needed to know what the kernel holds
            assert {i: set(m.get(i)) for i in kernel} == kernel
            assert kernel[ifindex] == wanted
            assert m.apply(queue) == []  # the echo asks for nothing
            queue.clear()


def test_events_read_during_a_dump_are_applied_on_top_of_it() -> None:
    m = FloodMirror()
    m.load({5: {P1, P2}})
    m.invalidate()
    m.begin_read()
    # the kernel snapshots {P1, P2}; then P2 is deleted by hand and P3 added, and
    # those events are read before the dump's answer is loaded
    m.apply([FloodChange(5, P2, False), FloodChange(6, P3, True)])
    m.load({5: {P1, P2}})
    assert m.get(5) == {P1} and m.get(6) == {P3}
    # a device dump: only that device's events are replayed; the keeping stops
    m.begin_read()
    m.apply([FloodChange(5, P3, True), FloodChange(6, P3, False)])
    m.load_device(5, [P1])
    assert m.get(5) == {P1, P3} and m.get(6) == set()
    m.apply([FloodChange(5, P2, True)])
    m.load_device(5, [P1])  # no read begun: nothing replayed
    assert m.get(5) == {P1}
    m.begin_read()
    m.abort_read()
    m.apply([FloodChange(5, P2, True)])
    m.load({5: {P1}})
    assert m.get(5) == {P1}
