"""REST payload parsing agrees with the published JSON Schemas."""

from __future__ import annotations

import ipaddress

import pytest

from vxflood.schema import rest
from vxflood.schema.rest import PayloadError


def test_enrol_defaults_and_values() -> None:
    assert rest.parse_enrol(rest.ABSENT) == rest.EnrolRequest()
    assert rest.parse_enrol({}) == rest.EnrolRequest()
    assert rest.parse_enrol({"hold_time": 30, "description": "tor-1"}) == rest.EnrolRequest(
        30, "tor-1"
    )
    assert rest.parse_enrol({"hold_time": None, "description": None}) == rest.EnrolRequest()


@pytest.mark.parametrize(
    "body",
    [
        None,  # issue 13: a JSON null body enrolled like an absent one
        [],
        "x",
        7,
        True,
        {"hold_time": 0},
        {"hold_time": -1},
        {"hold_time": 1.5},
        {"hold_time": float("inf")},
        {"hold_time": 0.0},
        {"hold_time": True},
        {"hold_time": "10"},
        {"hold_time": 2**31},
        {"description": 5},
        {"description": "x" * 201},
        {"description": "bell\x07"},
        {"description": "c1\x85"},
        {"description": "lone \ud800 surrogate"},
        {"colour": "red"},
    ],
)
def test_enrol_refused(body: object) -> None:
    with pytest.raises(PayloadError):
        rest.parse_enrol(body)


@pytest.mark.parametrize(
    "text",
    ["0", "16777216", "abc", "-1", "1e3", " 5", "٣", "²", "+5", "1" * 5000, "0" * 20 + "1" * 9],
)
def test_vni_from_path_refused(text: str) -> None:
    with pytest.raises(PayloadError) as info:
        rest.vni_from_path(text)
    assert info.value.error == "invalid-vni"


@pytest.mark.parametrize(
    "text",
    [
        "224.0.0.1",
        "127.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "::",
        "::1",
        "ff02::1",
        "garbage",
        "",
        " 10.0.0.1",
        "10.0.0.1/24",
        "fe80::1%eth0",
        "::ffff:10.0.0.1",
        "::1.2.3.4",  # IPv4-compatible
        "169.254.0.1",
        "0.1.2.3",
        "240.0.0.1",
        "fe80::1",
        "4000::1",
        "1" * 5000,
    ],
)
def test_address_refused(text: str) -> None:
    with pytest.raises(PayloadError) as info:
        rest.address_from_text(text)
    assert info.value.error == "invalid-address"


def test_vni_from_path_leading_zeros() -> None:
    assert rest.vni_from_path("0" * 30 + "7") == 7


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"hold_time": ' + b"9" * 5000 + b"}", "a number of 5000 digits"),
        (b'{"hold_time": 1.' + b"5" * 5000 + b"}", "a number of 5002 characters"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"a": 1, "a": 2}', "field 'a' appears twice"),
        (b'{"a": NaN}', "NaN is not valid JSON"),
        (b"\xff", "not UTF-8"),
        (b'{"vteps": []}garbage', "not valid JSON"),
    ],
)
def test_decode_json_refusals(raw: bytes, message: str) -> None:
    """Issue 9 finding 4: over 4,300 digits int() raised ValueError (a 500)."""
    with pytest.raises(PayloadError, match=message):
        rest.decode_json(raw)


def test_decode_json_values() -> None:
    assert rest.decode_json(b' {"hold_time": 30, "x": [1.5, null]} ') == {
        "hold_time": 30,
        "x": [1.5, None],
    }


@pytest.mark.parametrize("text", ["", "hv 1", "hv\x00", "é", "x" * 65, "a/b", "a%b"])
def test_node_from_path_refused(text: str) -> None:
    with pytest.raises(PayloadError) as info:
        rest.node_from_path(text)
    assert info.value.error == "invalid-node-id"


def test_integral_numbers_are_json_schema_integers() -> None:
    """Found by schemathesis' positive-data check: 275.0 is an integer to JSON Schema."""
    assert rest.parse_enrol({"hold_time": 60.0}) == rest.EnrolRequest(60)
    [vtep] = rest.parse_replace_all({"vteps": [{"vni": 1e2, "address": "192.0.2.1"}]})
    assert vtep.vni == 100 and type(vtep.vni) is int


def test_address_canonical() -> None:
    assert rest.address_from_text("2001:DB8:0::7") == ipaddress.ip_address("2001:db8::7")


def test_replace_all() -> None:
    vteps = rest.parse_replace_all(
        {
            "vteps": [
                {"vni": 10, "address": "192.0.2.1"},
                {"vni": 10, "address": "192.0.2.2", "hold_time": 60, "description": "d"},
            ]
        }
    )
    assert [str(v.address) for v in vteps] == ["192.0.2.1", "192.0.2.2"]
    assert vteps[1].hold_time == 60
    # the same VTEP twice, saying the same: kept once (schemathesis found the 400)
    twice = [{"vni": 10, "address": "2001:db8::1"}, {"vni": 10, "address": "2001:DB8::1"}]
    assert len(rest.parse_replace_all({"vteps": twice})) == 1
    with pytest.raises(
        PayloadError, match=r"vteps\[1\]: VNI 10 address 192.0.2.1 is listed twice with other"
    ) as info:
        rest.parse_replace_all(
            {
                "vteps": [
                    {"vni": 10, "address": "192.0.2.1"},
                    {"vni": 10, "address": "192.0.2.1", "hold_time": 5},
                ]
            }
        )
    assert (info.value.status, info.value.error) == (409, "conflicting-duplicate")
    for bad in (
        {},
        {"vteps": {}},
        {"vteps": [{"vni": 10}]},
        {"vteps": [], "x": 1},
        {"vteps": [{"vni": "10", "address": "192.0.2.1"}]},
    ):
        with pytest.raises(PayloadError):
            rest.parse_replace_all(bad)


def test_static_file() -> None:
    text = "# static\n100 192.0.2.1 rack 4 tor\n\n100 2001:db8::1\n200 192.0.2.1  # x\n"
    vteps = rest.parse_static_file(text, "f")
    assert [(v.vni, str(v.address), v.description) for v in vteps] == [
        (100, "192.0.2.1", "rack 4 tor"),
        (100, "2001:db8::1", None),
        (200, "192.0.2.1", None),
    ]
    with pytest.raises(PayloadError, match=r"f:2: 224\.0\.0\.1 is a multicast"):
        rest.parse_static_file("100 192.0.2.1\n100 224.0.0.1\n", "f")
    with pytest.raises(PayloadError, match="f:1: VNI must be a decimal"):
        rest.parse_static_file("x 192.0.2.1\n", "f")
    with pytest.raises(PayloadError, match="f:1: VNI 0 out of range"):
        rest.parse_static_file("0 192.0.2.1\n", "f")
    # str.isdigit() is true for "²", which int() refuses with a bare ValueError
    with pytest.raises(PayloadError, match="f:1: VNI must be a decimal"):
        rest.parse_static_file("² 192.0.2.1\n", "f")
    with pytest.raises(PayloadError, match="f:1: VNI 1111111111111111111111111111111111111"):
        rest.parse_static_file("1" * 5000 + " 192.0.2.1\n", "f")
    with pytest.raises(PayloadError, match="f:1: expected"):
        rest.parse_static_file("100\n", "f")
    with pytest.raises(PayloadError, match=r"f:2: VNI 100 address 192\.0\.2\.1 is listed twice"):
        rest.parse_static_file("100 192.0.2.1\n100 192.0.2.1\n", "f")


def test_static_vtep_json_round_trip() -> None:
    vtep = rest.StaticVtep(7, ipaddress.ip_address("192.0.2.9"), 30, "x")
    assert rest.parse_static_vtep(rest.static_vtep_json(vtep), "v") == vtep
