"""No packet leaves the lab: while the default suite runs, a raw packet socket in the host's
own namespace sees every packet on every host interface, and none may carry an address of
the lab's ranges. Passive: nothing is added to the host namespace (no rule, no route).

The capture proves it works by seeing a datagram the test sends to itself on loopback."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

pytestmark = [pytest.mark.root, pytest.mark.lab]

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


def test_no_packet_with_a_lab_address_crosses_the_host_namespace(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "labs" / "local.yaml").read_text())
    data["name"] = "klleak"
    net = data["network"]
    ranges = [ipaddress.IPv4Network(net[k]) for k in ("node_cidr", "pod_cidr", "service_cidr")]
    clash = [a for a in _host_addresses() if any(a.network.overlaps(r) for r in ranges)]
    if clash:
        pytest.skip(f"the host's own addresses {clash} overlap the lab's ranges")
    spec = tmp_path / "klleak.yaml"
    spec.write_text(yaml.safe_dump(data))

    capture = HostCapture(ranges)
    capture.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # loopback only
            for _ in range(3):
                probe.sendto(MARK, ("127.0.0.1", 9))
                time.sleep(0.2)
        run = subprocess.run(
            [sys.executable, "-m", "kubelab.cli", "run", str(spec),
             "--scenarios", str(ROOT / "scenarios"), "--reports", str(tmp_path / "reports")],
            capture_output=True, text=True, cwd=ROOT, timeout=900, check=False,
        )  # fmt: skip
    finally:
        capture.stop()
    assert capture.saw_mark, "the capture saw not even its own loopback datagram"
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    leaks = capture.leaks
    assert leaks == [], f"{len(leaks)} lab packets on host interfaces: {leaks[:5]}"
    assert capture.seen > 0


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
