"""The pod server: answers HTTP like Kubernetes' e2e image agnhost `netexec`.

One process per node serves every pod on that node. It enters each pod's network namespace
just long enough to open a listening socket there (a socket keeps the namespace it was made
in), then serves all sockets from one asyncio loop. A pod costs one socket, not one process.

Answers (as agnhost netexec): GET /hostname -> pod name; GET /clientip -> "ip:port" of the
peer the pod saw; GET /echo?msg=x -> x; GET /healthz -> 200; GET / -> "NOW: <time>".

Run as: python -m kubelab.dataplanes.reference.podserver --lab ID --ready FILE
        --pod NAME=NETNS=PORT [--pod ...]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import signal
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from pyroute2 import netns

MAX_HEADER_BYTES = 16 * 1024


def open_listener(netns_name: str, port: int) -> socket.socket:
    """A TCP listening socket bound to 0.0.0.0:port inside namespace `netns_name`."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        netns.setns(netns_name, flags=0)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(1024)
        sock.setblocking(False)
        return sock
    finally:
        netns.setns(home, flags=0)
        os.close(home)


def answer(pod: str, target: str, peer: tuple[str, int]) -> tuple[int, str]:
    """Status and body for one request, as agnhost netexec answers it."""
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


REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found"}


async def handle(pod: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0") or 0)
            if length:
                await reader.readexactly(length)
            if len(parts) != 3:
                status, body = 400, "bad request"
            else:
                status, body = answer(pod, parts[1], peer)
            close = headers.get("connection", "").lower() == "close" or parts[-1] == "HTTP/1.0"
            data = body.encode()
            writer.write(
                f"HTTP/1.1 {status} {REASONS.get(status, 'OK')}\r\n"
                f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(data)}\r\n"
                f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n".encode()
                + data
            )
            await writer.drain()
            if close:
                return
    except ConnectionError:
        return
    finally:
        writer.close()


async def serve(pods: list[tuple[str, str, int]], ready: Path) -> None:
    servers = []
    for name, ns, port in pods:
        sock = open_listener(ns, port)
        servers.append(
            await asyncio.start_server(
                functools.partial(handle, name), sock=sock, limit=MAX_HEADER_BYTES
            )
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready.write_text(f"{os.getpid()}\n")
    await stop.wait()
    for srv in servers:
        srv.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubelab-podserver")
    parser.add_argument("--lab", required=True, help="lab id (names the process)")
    parser.add_argument("--ready", required=True, type=Path, help="file written when serving")
    parser.add_argument("--pod", action="append", default=[], help="NAME=NETNS=PORT")
    args = parser.parse_args(argv)
    pods = []
    for item in args.pod:
        name, ns, port = item.split("=")
        pods.append((name, ns, int(port)))
    asyncio.run(serve(pods, args.ready))
    return 0


if __name__ == "__main__":
    sys.exit(main())
