"""The host-namespace capture that the full-suite runs are watched with (tests/test_cli_lab.py:
no packet with a lab address crosses the host namespace) flags what it should."""

from __future__ import annotations

import ipaddress
import socket
import time

import pytest

from host_capture import MARK, HostCapture

pytestmark = [pytest.mark.root]


def test_the_capture_flags_packets_of_a_watched_range() -> None:
    """The detector itself: watching loopback's range, its own datagram is a 'leak'."""
    capture = HostCapture([ipaddress.IPv4Network("127.0.0.0/8")])
    capture.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.sendto(MARK, ("127.0.0.1", 9))
            time.sleep(0.5)
    finally:
        capture.stop()
    assert capture.saw_mark and "lo: 127.0.0.1 -> 127.0.0.1" in capture.leaks
