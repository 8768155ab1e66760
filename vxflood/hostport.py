"""host:port as both daemons write and read it, and addresses as sockets give them.

`[V6ADDR]:PORT` for IPv6 everywhere (flags, config files, logs, ctl tables), so
one spelling is printed and parsed. A dual-stack socket reports IPv4 peers as
IPv4-mapped IPv6 (`::ffff:192.0.2.1`); `unmap` turns them back into the IPv4
address the peer registered and the operator knows.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from vxflood.schema.options import split_host_port


@dataclass(frozen=True, slots=True)
class HostPort:
    """A host (IP literal, or a name where the option allows it) and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(
    text: str, default_port: int | None, what: str, *, names: bool = False, min_port: int = 0
) -> tuple[str, int]:
    """ADDR, ADDR:PORT, [V6ADDR], [V6ADDR]:PORT or a bare IPv6 literal -> (host, port).

    `names`: a host name is accepted too (else only IP literals, returned in their
    canonical spelling). Without a default port the port must be given."""
    text = text.strip()
    if not text:
        raise ValueError(f"{what} must not be empty")
    host, port = split_host_port(text, default_port, min_port)
    if not host:
        raise ValueError(f"{text!r}: missing address")
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        if ":" in host:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
        if not names:
            raise ValueError(f"{text!r}: {host!r} is not an IPv4 or IPv6 address") from None
    if port is None:
        raise ValueError(f"{text!r}: {what} needs ADDR:PORT")
    return host, port


def unmap(host: str) -> str:
    """`::ffff:192.0.2.1` -> `192.0.2.1`; any other address (or name) unchanged."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return host
