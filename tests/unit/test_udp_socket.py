"""vxsnd's UDP socket: the `[::]` default on a host booted without IPv6."""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest

from vxsnd import server
from vxsnd.config import ListenAddr


def test_ipv4_address_binds() -> None:
    sock = server.make_socket(ListenAddr("127.0.0.1", 0))
    try:
        assert sock.family == socket.AF_INET and sock.getsockname()[1] > 0
    finally:
        sock.close()


@pytest.fixture
def no_ipv6(monkeypatch: pytest.MonkeyPatch) -> None:
    """socket(AF_INET6) fails as it does under ipv6.disable=1 (the one thing faked)."""
    real = socket.socket

    def fake(family: int = socket.AF_INET, *args: Any, **kw: Any) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args, **kw)

    monkeypatch.setattr(server.socket, "socket", fake)


@pytest.mark.usefixtures("no_ipv6")
def test_default_wildcard_falls_back_to_ipv4(caplog: pytest.LogCaptureFixture) -> None:
    sock = server.make_socket(ListenAddr("::", 0))
    try:
        assert sock.family == socket.AF_INET and sock.getsockname()[0] == "0.0.0.0"
    finally:
        sock.close()
    assert "IPv6 is not available" in caplog.text


@pytest.mark.usefixtures("no_ipv6")
def test_a_named_ipv6_address_still_fails() -> None:
    with pytest.raises(OSError) as info:
        server.make_socket(ListenAddr("::1", 0))
    assert info.value.errno == errno.EAFNOSUPPORT
