"""vxrd's metrics: plain values, exposed in the Prometheus text format when scraped."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from vxrd.metrics import Metrics


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = m.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_values_are_exposed_as_prometheus_counters_gauges_and_histograms() -> None:
    m = Metrics()
    m.watch_contacts(lambda: [("10.0.0.1:10001", None)])
    m.fdb_adds.inc(3)
    m.fdb_adds.inc()
    m.drops.labels("bad-tag").inc()
    m.drops.labels("bad-tag").inc(2)
    m.drops.labels("stale").inc()
    m.managed_devices.set(2)
    for seconds in (0.0005, 0.003, 7.0):  # on a bound, between bounds, above them all
        m.apply_seconds.observe(seconds)
    got = samples(m)
    assert got[("vxrd_fdb_adds_total", ())] == 4
    assert got[("vxrd_fdb_adds_created", ())] == m.created
    assert got[("vxrd_fdb_removes_total", ())] == 0
    assert got[("vxrd_datagrams_dropped_total", (("reason", "bad-tag"),))] == 3
    assert got[("vxrd_datagrams_dropped_total", (("reason", "stale"),))] == 1
    assert got[("vxrd_managed_devices", ())] == 2
    assert got[("vxrd_apply_seconds_bucket", (("le", "0.0005"),))] == 1  # le is inclusive
    assert got[("vxrd_apply_seconds_bucket", (("le", "0.001"),))] == 1
    assert got[("vxrd_apply_seconds_bucket", (("le", "0.005"),))] == 2  # cumulative
    assert got[("vxrd_apply_seconds_bucket", (("le", "5.0"),))] == 2
    assert got[("vxrd_apply_seconds_bucket", (("le", "+Inf"),))] == 3
    assert got[("vxrd_apply_seconds_count", ())] == 3
    assert abs(got[("vxrd_apply_seconds_sum", ())] - 7.0035) < 1e-9
    contact = ("vxrd_server_last_contact_seconds", (("server", "10.0.0.1:10001"),))
    assert got[contact] == -1
