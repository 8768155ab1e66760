"""Validation of the two values every boundary checks: VNIs and VTEP addresses.

One place, so the wire decoder, the REST API and the config loaders all accept
and refuse exactly the same things with the same wording.
"""

from __future__ import annotations

import ipaddress
from typing import TypeAlias

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

VNI_MIN = 1
VNI_MAX = 16_777_215
_V4_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


class InvalidValue(ValueError):
    """A VNI or address that no part of vxflood accepts."""


def check_vni(value: object) -> int:
    """Return a valid VNI (1..16777215) or raise InvalidValue."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(f"VNI must be an integer, got {type(value).__name__}")
    if not VNI_MIN <= value <= VNI_MAX:
        raise InvalidValue(f"VNI {value} out of range {VNI_MIN}..{VNI_MAX}")
    return value


def parse_vni(text: str) -> int:
    """Parse a VNI written by a person (decimal)."""
    try:
        value = int(text, 10)
    except ValueError:
        raise InvalidValue(f"VNI must be a decimal integer, got {text!r}") from None
    return check_vni(value)


def check_vtep(address: Address) -> Address:
    """A VTEP is a unicast address a tunnel can be built to."""
    if address.is_multicast:
        raise InvalidValue(f"{address} is a multicast address, not a VTEP")
    if address.is_loopback:
        raise InvalidValue(f"{address} is a loopback address, not a VTEP")
    if address.is_unspecified:
        raise InvalidValue(f"{address} is the unspecified address, not a VTEP")
    if isinstance(address, ipaddress.IPv4Address):
        if address == _V4_BROADCAST or address.is_reserved:
            raise InvalidValue(f"{address} is a broadcast/reserved address, not a VTEP")
    else:
        if address.is_link_local:
            raise InvalidValue(f"{address} is link-local (needs a scope), not a VTEP")
        if address.ipv4_mapped is not None:
            raise InvalidValue(f"{address} is IPv4-mapped: use the IPv4 form")
    return address


def parse_vtep(text: str) -> Address:
    """Parse a VTEP address written as text (v4 dotted quad or v6)."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        raise InvalidValue(f"{text!r} is not an IPv4 or IPv6 address") from None
    return check_vtep(address)


def vtep_from_packed(data: bytes) -> Address:
    """Decode a 4- or 16-byte packed address from the wire and validate it."""
    if len(data) == 4:
        return check_vtep(ipaddress.IPv4Address(data))
    if len(data) == 16:
        return check_vtep(ipaddress.IPv6Address(data))
    raise InvalidValue(f"packed address must be 4 or 16 bytes, got {len(data)}")
