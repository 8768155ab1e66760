"""The input rules every boundary applies: VNIs, VTEP addresses and node ids.

One place, so the wire decoder, the REST API and the config loaders all accept
and refuse exactly the same things with the same wording (README "Input rules"
and docs/protocol.md quote these rules).

- VNI: an integer 1..16777215.
- VTEP address: a unicast address a tunnel can be built to. IPv4: anything but
  0.0.0.0/8 ("this network", with 0.0.0.0), 127.0.0.0/8 (loopback),
  169.254.0.0/16 (link-local), 224.0.0.0/4 (multicast) and 240.0.0.0/4
  (reserved, with 255.255.255.255). IPv6: global unicast 2000::/3 or unique
  local fc00::/7 only, so ::, ::1, fe80::/10, ff00::/8, IPv4-mapped
  ::ffff:0:0/96 (use the IPv4 form) and IPv4-compatible ::/96 are refused.
- Node id (vxrd's node_id, vxsnd's server_id, the wire's sender id): 1..64
  characters, each an ASCII letter, digit, or one of ``. _ - : @``; so host
  names and FQDNs fit, and no id can carry a space or control character into
  a log line.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final, TypeAlias

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

VNI_MIN: Final = 1
VNI_MAX: Final = 16_777_215
VNI_DIGITS_MAX: Final = 8  # decimal digits of VNI_MAX

NODE_ID_MAX: Final = 64
NODE_ID_CHARS: Final = "A-Z a-z 0-9 . _ - : @"
NODE_ID_PATTERN: Final = r"^[A-Za-z0-9._:@-]{1,64}$"
_NODE_ID: Final = re.compile(r"[A-Za-z0-9._:@-]{1,64}")

_V4_REFUSED: Final = (
    (ipaddress.IPv4Network("0.0.0.0/32"), "the unspecified address"),
    (ipaddress.IPv4Network("0.0.0.0/8"), "in 0.0.0.0/8 (this network)"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "a loopback address"),
    (ipaddress.IPv4Network("169.254.0.0/16"), "link-local"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "a multicast address"),
    (ipaddress.IPv4Network("255.255.255.255/32"), "the broadcast address"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "in reserved 240.0.0.0/4"),
)
_V6_REFUSED: Final = (
    (ipaddress.IPv6Network("::/128"), "the unspecified address"),
    (ipaddress.IPv6Network("::1/128"), "a loopback address"),
    (ipaddress.IPv6Network("::ffff:0:0/96"), "IPv4-mapped: use the IPv4 form"),
    (ipaddress.IPv6Network("::/96"), "IPv4-compatible (deprecated): use the IPv4 form"),
    (ipaddress.IPv6Network("fe80::/10"), "link-local"),
    (ipaddress.IPv6Network("ff00::/8"), "a multicast address"),
)
_V6_ALLOWED: Final = (ipaddress.IPv6Network("2000::/3"), ipaddress.IPv6Network("fc00::/7"))

ADDRESS_TEXT_MAX: Final = 45  # longest textual IPv6 address (with embedded IPv4)


def _vtep_text_pattern() -> str:
    """The VTEP rule as one regular expression over the text forms parse_vtep accepts.

    The OpenAPI document gives it as the `pattern` of every address, so a client
    (or schemathesis) that satisfies the schema is never refused for the address;
    tests/unit/test_schema_support.py checks that both agree. Only constructs that
    read the same in ECMA-262 and Python are used.
    """
    octet = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
    not_254 = r"(25[0-35]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
    # first octet 1..126 or 128..223 but 169 (not 0/8, 127/8, 224/3; 169 below)
    first = (
        r"([1-9]|[1-9][0-9]|1[01][0-9]|12[0-689]|1[3-5][0-9]|16[0-8]|1[7-9][0-9]"
        r"|2[01][0-9]|22[0-3])"
    )
    v4 = rf"({first}\.{octet}\.{octet}\.{octet}|169\.{not_254}\.{octet}\.{octet})"
    h = r"[0-9A-Fa-f]{1,4}"
    lead = r"([23][0-9A-Fa-f]{3}|[Ff][CcDd][0-9A-Fa-f]{2})"  # 2000::/3, fc00::/7
    any_v4 = rf"{octet}\.{octet}\.{octet}\.{octet}"
    forms = [rf"{lead}(:{h}){{7}}", rf"{lead}(:{h}){{5}}:{any_v4}"]
    # `::` stands for at least one group: explicit groups after the lead <= 6
    # (<= 4 when the last two are an embedded IPv4 address)
    for before in range(7):
        after = 6 - before
        rest = rf"({h}(:{h}){{0,{after - 1}}})?" if after else ""
        forms.append(rf"{lead}(:{h}){{{before}}}::{rest}")
    for before in range(5):
        after = 4 - before
        rest = rf"({h}:){{0,{after}}}" if after else ""
        forms.append(rf"{lead}(:{h}){{{before}}}::{rest}{any_v4}")
    return "^(" + "|".join([v4, *forms]) + ")$"


VTEP_TEXT_PATTERN: Final = _vtep_text_pattern()


class InvalidValue(ValueError):
    """A VNI, address or node id that no part of vxflood accepts."""


def check_vni(value: object) -> int:
    """Return a valid VNI (1..16777215) or raise InvalidValue."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(f"VNI must be an integer, got {type(value).__name__}")
    if not VNI_MIN <= value <= VNI_MAX:
        raise InvalidValue(f"VNI {_short(value)} out of range {VNI_MIN}..{VNI_MAX}")
    return value


def parse_vni(text: str) -> int:
    """Parse a VNI written by a person (ASCII decimal digits, no sign)."""
    digits = text.strip()
    if not digits.isascii() or not digits.isdigit():
        raise InvalidValue(f"VNI must be a decimal integer, got {_short(text)!r}")
    if len(digits.lstrip("0")) > VNI_DIGITS_MAX:
        raise InvalidValue(f"VNI {_short(digits)} out of range {VNI_MIN}..{VNI_MAX}")
    return check_vni(int(digits, 10))


def _short(value: object) -> str:
    """A value for an error message, cut so a hostile input cannot flood a log line."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > 64:
            return f"with {value.bit_length()} bits"
        return str(value)
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_vtep(address: Address) -> Address:
    """A VTEP is a unicast address a tunnel can be built to (the rule in the docstring)."""
    if isinstance(address, ipaddress.IPv4Address):
        for net, why in _V4_REFUSED:
            if address in net:
                raise InvalidValue(f"{address} is {why}, not a VTEP")
        return address
    if address.scope_id is not None:
        raise InvalidValue(f"{address} has a scope; a VTEP address has none")
    for net6, why in _V6_REFUSED:
        if address in net6:
            raise InvalidValue(f"{address} is {why}, not a VTEP")
    if not any(address in net6 for net6 in _V6_ALLOWED):
        raise InvalidValue(
            f"{address} is neither global unicast (2000::/3) nor unique local (fc00::/7)"
        )
    return address


def parse_vtep(text: str) -> Address:
    """Parse a VTEP address written as text (v4 dotted quad or v6)."""
    stripped = text.strip()
    if not stripped or len(stripped) > ADDRESS_TEXT_MAX or "%" in stripped:
        raise InvalidValue(f"{_short(text)!r} is not an IPv4 or IPv6 address")
    try:
        address = ipaddress.ip_address(stripped)
    except ValueError:
        raise InvalidValue(f"{_short(text)!r} is not an IPv4 or IPv6 address") from None
    return check_vtep(address)


def vtep_from_packed(data: bytes) -> Address:
    """Decode a 4- or 16-byte packed address from the wire and validate it."""
    if len(data) == 4:
        return check_vtep(ipaddress.IPv4Address(data))
    if len(data) == 16:
        return check_vtep(ipaddress.IPv6Address(data))
    raise InvalidValue(f"packed address must be 4 or 16 bytes, got {len(data)}")


def check_node_id(value: object) -> str:
    """A node id as the rule above says, or InvalidValue naming the rule."""
    if not isinstance(value, str):
        raise InvalidValue(f"node id must be a string, got {type(value).__name__}")
    if _NODE_ID.fullmatch(value) is None:
        raise InvalidValue(
            f"node id {_short(value)!a} must be 1..{NODE_ID_MAX} characters of {NODE_ID_CHARS}"
        )
    return value


def is_node_id(value: str) -> bool:
    """check_node_id without the message: the wire decoder's hot path."""
    return _NODE_ID.fullmatch(value) is not None
