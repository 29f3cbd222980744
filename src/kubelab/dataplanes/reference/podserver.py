"""The pod server: answers like Kubernetes' e2e image agnhost `netexec`, for many pods.

One process per node serves every pod on that node. It enters each pod's network namespace
just long enough to open that pod's sockets there (a socket keeps the namespace it was made
in), then serves all of them from one asyncio loop: a pod costs two sockets, not a process.

HTTP (TCP `port`), as agnhost netexec: GET /hostname -> pod name; /clientip -> "ip:port" of
the peer the pod saw; /echo?msg=x -> x; /healthz -> 200; / -> "NOW: <time>".
UDP (`udp_port`), as agnhost netexec: "hostname" -> pod name; "echo x" -> x;
"clientip" -> "ip:port".

The same process answers kube-proxy's healthCheckNodePort on the node: 200 with the number
of local endpoints when there are some, 503 when there are none.

Its stdin and stdout are the control channel (JSON lines, one answer per message), so the
harness drives it through any Runner: a namespace here, or SSH to a host. It prints
{"ready": PID} once every first pod listens.
  {"op": "add", "name", "netns", "port", "udp_port"}   a new pod starts listening
  {"op": "kill", "name"}    the pod dies at once: listeners closed, connections reset
  {"op": "stop", "name"}    graceful: no new connections, open ones finish, then close
  {"op": "health", "port", "service", "local"}   local=-1 removes the responder
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import functools
import json
import os
import signal
import socket
import struct
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_HEADER_BYTES = 16 * 1024
LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER {on, 0s}: close() sends RST
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    """setns(2) into a network namespace (os.setns arrives only in Python 3.12). Plain libc
    keeps this process small: it serves hundreds of pods and imports nothing heavy."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_sockets(netns_name: str, port: int, udp_port: int) -> tuple[socket.socket, socket.socket]:
    """A TCP listener and a UDP socket on 0.0.0.0 inside namespace `netns_name`."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns_name}", os.O_RDONLY)
    try:
        setns(target)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("0.0.0.0", port))
        tcp.listen(1024)
        tcp.setblocking(False)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("0.0.0.0", udp_port))
        udp.setblocking(False)
        return tcp, udp
    finally:
        setns(home)
        os.close(home)
        os.close(target)


def answer(pod: str, target: str, peer: tuple[str, int]) -> tuple[int, str]:
    """Status and body for one HTTP request, as agnhost netexec answers it."""
    url = urlsplit(target)
    if url.path == "/hostname":
        return 200, pod
    if url.path == "/clientip":
        return 200, f"{peer[0]}:{peer[1]}"
    if url.path == "/echo":
        return 200, parse_qs(url.query).get("msg", [""])[0]
    if url.path == "/healthz":
        return 200, "ok"
    if url.path == "/":
        return 200, f"NOW: {datetime.now(UTC).isoformat()}"
    return 404, "404 page not found"


def answer_udp(pod: str, data: bytes, peer: tuple[str, int]) -> bytes | None:
    """agnhost netexec's UDP protocol: one datagram in, one out."""
    text = data.decode(errors="replace").strip()
    if text == "hostname":
        return pod.encode()
    if text == "clientip":
        return f"{peer[0]}:{peer[1]}".encode()
    if text.startswith("echo "):
        return text[5:].encode()
    return None


REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}


def http_response(status: int, body: str, close: bool, content_type: str = "text/plain") -> bytes:
    data = body.encode()
    return (
        f"HTTP/1.1 {status} {REASONS.get(status, 'OK')}\r\n"
        f"Content-Type: {content_type}; charset=utf-8\r\nContent-Length: {len(data)}\r\n"
        f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n".encode()
        + data
    )


async def read_request(reader: asyncio.StreamReader) -> tuple[list[str], dict[str, str]] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0") or 0)
    if length:
        await reader.readexactly(length)
    return lines[0].split(" "), headers


class UdpPod(asyncio.DatagramProtocol):
    def __init__(self, pod: str) -> None:
        self.pod = pod
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = answer_udp(self.pod, data, addr)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


@dataclass
class Pod:
    name: str
    server: asyncio.Server | None = None
    udp: asyncio.DatagramTransport | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    draining: bool = False


class PodServer:
    def __init__(self) -> None:
        self.pods: dict[str, Pod] = {}
        self.health: dict[int, tuple[asyncio.Server, dict[str, Any]]] = {}

    async def add(self, name: str, ns: str, port: int, udp_port: int) -> None:
        tcp, udp = open_sockets(ns, port, udp_port)
        pod = Pod(name)
        pod.server = await asyncio.start_server(
            functools.partial(self.handle, pod), sock=tcp, limit=MAX_HEADER_BYTES
        )
        loop = asyncio.get_running_loop()
        pod.udp, _ = await loop.create_datagram_endpoint(lambda: UdpPod(name), sock=udp)
        self.pods[name] = pod

    def kill(self, name: str) -> None:
        pod = self.pods.pop(name)
        if pod.server:
            pod.server.close()
        if pod.udp:
            pod.udp.close()
        for writer in list(pod.writers):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            writer.transport.abort()

    async def stop(self, name: str) -> None:
        pod = self.pods[name]
        pod.draining = True
        if pod.server:
            pod.server.close()
        if pod.udp:
            pod.udp.close()
        for _ in range(100):  # open connections get up to 10 s to finish their request
            if not pod.writers:
                break
            await asyncio.sleep(0.1)
        self.kill(name)

    async def handle(
        self, pod: Pod, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        pod.writers.add(writer)
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    return
                parts, headers = request
                if len(parts) != 3:
                    status, body = 400, "bad request"
                else:
                    status, body = answer(pod.name, parts[1], peer)
                close = (
                    pod.draining
                    or headers.get("connection", "").lower() == "close"
                    or parts[-1] == "HTTP/1.0"
                )
                writer.write(http_response(status, body, close))
                await writer.drain()
                if close:
                    return
        except ConnectionError:
            return
        finally:
            pod.writers.discard(writer)
            writer.close()

    async def set_health(self, port: int, service: str, local: int) -> None:
        """kube-proxy's healthCheckNodePort responder, on every address of the node."""
        if local < 0:
            if port in self.health:
                self.health.pop(port)[0].close()
            return
        if port in self.health:
            self.health[port][1].update(service=service, local=local)
            return
        state: dict[str, Any] = {"service": service, "local": local}

        async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                if await read_request(reader) is None:
                    return
                ns, _, name = state["service"].partition("/")
                body = json.dumps(
                    {
                        "service": {"namespace": ns, "name": name},
                        "localEndpoints": state["local"],
                        "serviceProxyHealthy": True,
                    }
                )
                status = 200 if state["local"] > 0 else 503
                writer.write(http_response(status, body, True, "application/json"))
                await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(respond, "0.0.0.0", port, reuse_address=True)
        self.health[port] = (server, state)

    async def handle_control(self, line: bytes) -> dict[str, Any]:
        try:
            msg = json.loads(line)
            op = msg["op"]
            if op == "add":
                await self.add(msg["name"], msg["netns"], msg["port"], msg["udp_port"])
            elif op == "kill":
                self.kill(msg["name"])
            elif op == "stop":
                await self.stop(msg["name"])
            elif op == "health":
                await self.set_health(msg["port"], msg["service"], msg["local"])
            else:
                raise ValueError(f"unknown op {op!r}")
            return {"ok": True}
        except Exception as exc:  # report to the caller, keep serving
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def serve(pods: list[tuple[str, str, int, int]]) -> None:
    """Serve until SIGTERM or SIGKILL; one control message per stdin line, one answer per
    stdout line. When stdin closes (`kubelab up` has exited) the pods go on serving."""
    server = PodServer()
    for name, ns, port, udp_port in pods:
        await server.add(name, ns, port, udp_port)
    loop = asyncio.get_running_loop()
    control = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(control), sys.stdin)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reply({"ready": os.getpid()})

    async def read_control() -> None:
        while line := await control.readline():
            reply(await server.handle_control(line))

    reader = asyncio.create_task(read_control())
    await stop.wait()
    reader.cancel()
    for name in list(server.pods):
        server.kill(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubelab-podserver")
    parser.add_argument("--lab", required=True, help="lab id (names the process)")
    parser.add_argument("--pod", action="append", default=[], help="NAME=NETNS=PORT=UDPPORT")
    args = parser.parse_args(argv)
    pods = []
    for item in args.pod:
        name, ns, port, udp_port = item.split("=")
        pods.append((name, ns, int(port), int(udp_port)))
    asyncio.run(serve(pods))
    return 0


if __name__ == "__main__":
    sys.exit(main())
