"""A passive watch on the host's own namespace: a raw packet socket sees every packet on
every host interface and counts those carrying an address of the watched ranges. Nothing
is added to the host namespace (no rule, no route).

`watching(ranges)` proves the capture works by seeing a datagram it sends to itself on
loopback before the body runs."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
MARK = b"kubelab-capture-check"


class HostCapture(threading.Thread):
    """Counts the host namespace's IPv4 packets whose source or destination is in `ranges`
    (and keeps the first few), until stopped."""

    def __init__(self, ranges: list[ipaddress.IPv4Network]) -> None:
        super().__init__(daemon=True)
        self.ranges = ranges
        # SOCK_DGRAM: the kernel strips the link-layer header, whatever the interface
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        self.sock.settimeout(0.2)
        self.stopping = threading.Event()
        self.seen = 0
        self.leaks: list[str] = []
        self.saw_mark = False

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                frame, (ifname, proto, *_rest) = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.seen += 1
            if proto != ETH_P_IP or len(frame) < 20:
                continue
            packet = frame
            src = ipaddress.IPv4Address(packet[12:16])
            dst = ipaddress.IPv4Address(packet[16:20])
            if MARK in packet:
                self.saw_mark = True
            if any(a in r for r in self.ranges for a in (src, dst)):
                self.leaks.append(f"{ifname}: {src} -> {dst}")

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)
        self.sock.close()


def _host_addresses() -> list[ipaddress.IPv4Interface]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True)
    return [ipaddress.IPv4Interface(line.split()[3]) for line in out.stdout.splitlines()]


def overlapping_host_addresses(
    ranges: list[ipaddress.IPv4Network],
) -> list[ipaddress.IPv4Interface]:
    """The host's own addresses inside the ranges: a watch there would prove nothing."""
    return [a for a in _host_addresses() if any(a.network.overlaps(r) for r in ranges)]


@contextmanager
def watching(ranges: list[ipaddress.IPv4Network]) -> Iterator[HostCapture]:
    capture = HostCapture(ranges)
    capture.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # loopback only
            for _ in range(3):
                probe.sendto(MARK, ("127.0.0.1", 9))
                time.sleep(0.2)
        yield capture
    finally:
        capture.stop()
    assert capture.saw_mark, "the capture saw not even its own loopback datagram"
    assert capture.seen > 0
