"""The pod exec endpoint of the recording API server (api_recorder.py): the websocket
protocol an API server speaks when it relays a kubelet's exec, for tests of the exec
bridge and of nodes reached through access pods on a machine with no cluster.

`serve` answers one upgraded `GET .../pods/POD/exec?command=...` request: the handshake
with the subprotocol it picks from the client's offer (v5.channel.k8s.io, or
v4.channel.k8s.io as API servers before 1.30), then one frame per chunk prefixed by its
channel (0 stdin, 1 stdout, 2 stderr, 3 the Status, 255 a v5 close), and the Status the
kubelet writes at the end (k8s.io/apimachinery remotecommand: `Success`, or `Failure` with
reason NonZeroExitCode and an ExitCode cause). The command runs for real on this machine,
behind the `prefix` argv that stands for the pod's namespaces (`nsenter --net=...` of a
test's node namespace); an argument naming the pod's hostPath mount of the node's root
(`/rootfs/...`, node_access.py) names this machine's root, which that mount would be, and
the node's init there (`/rootfs/proc/1/`) is the program itself: the mount namespace a
node's init holds is, here, the one every process of this machine shares (PID 1 of a
container running the tests may not be open to them).
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import subprocess
import threading
from collections.abc import Sequence
from typing import IO, Any

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455's
CLOSE_CHANNEL = 255
ROOTFS = "/rootfs/"


def status(rc: int, argv: Sequence[str]) -> bytes:
    if rc == 0:
        return json.dumps({"metadata": {}, "status": "Success"}).encode()
    return json.dumps({
        "metadata": {}, "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command "
                   f"[{' '.join(argv)}], exit code {rc}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(rc)}]},
    }).encode()  # fmt: skip


def on_this_machine(argv: Sequence[str]) -> list[str]:
    """The command with the pod's /rootfs/ (the node's root) read as this machine's /."""
    init = f"{ROOTFS}proc/1/"
    return [
        a.replace(init, "/proc/self/", 1).replace(ROOTFS, "/", 1) if ROOTFS in a else a
        for a in argv
    ]


def serve(handler: Any, argv: list[str], prefix: Sequence[str], protocol: str) -> None:
    """Upgrade the handler's connection and run `argv` behind `prefix` until it ends."""
    offered = [p.strip() for p in handler.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    chosen = protocol if protocol in offered else offered[-1]
    accept = base64.b64encode(
        hashlib.sha1((handler.headers["Sec-WebSocket-Key"] + GUID).encode()).digest()
    ).decode()
    conn = handler.connection
    conn.sendall(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {chosen}\r\n\r\n".encode()
    )
    proc = subprocess.Popen([*prefix, *on_this_machine(argv)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    lock = threading.Lock()

    def send(payload: bytes, opcode: int = 2) -> None:
        n = len(payload)
        if n < 126:
            size = bytes([n])
        elif n < 65536:
            size = bytes([126]) + struct.pack("!H", n)
        else:
            size = bytes([127]) + struct.pack("!Q", n)
        with lock:
            conn.sendall(bytes([0x80 | opcode]) + size + payload)

    def forward(channel: int, pipe: IO[bytes]) -> None:
        for chunk in iter(lambda: pipe.read1(65536), b""):  # type: ignore[attr-defined]
            send(bytes([channel]) + chunk)

    pumps = [threading.Thread(target=forward, args=(c, p), daemon=True)
             for c, p in ((1, proc.stdout), (2, proc.stderr))]  # fmt: skip
    for pump in pumps:
        pump.start()
    threading.Thread(target=_client_frames, args=(handler.rfile, proc, chosen), daemon=True).start()
    rc = proc.wait()
    for pump in pumps:
        pump.join()
    send(bytes([3]) + status(rc, argv))
    send(struct.pack("!H", 1000), opcode=8)


def _client_frames(rfile: IO[bytes], proc: subprocess.Popen[bytes], protocol: str) -> None:
    """The client's frames (masked, RFC 6455): stdin to the program; a v5 close of
    channel 0 closes its stdin; the client's close frame or its going ends the program,
    as a kubelet ends an exec whose client went."""
    assert proc.stdin is not None

    def exact(n: int) -> bytes:
        data = rfile.read(n)
        if len(data) < n:
            raise EOFError
        return data

    try:
        while True:
            first, second = exact(2)
            opcode, n = first & 0x0F, second & 0x7F
            if n == 126:
                n = struct.unpack("!H", exact(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", exact(8))[0]
            mask = exact(4) if second & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(exact(n)))
            if opcode == 8:
                raise EOFError
            if opcode not in (1, 2) or not data:
                continue
            if data[:2] == bytes([CLOSE_CHANNEL, 0]) and protocol.startswith("v5"):
                proc.stdin.close()
            elif data[0] == 0 and not proc.stdin.closed:
                proc.stdin.write(data[1:])
                proc.stdin.flush()
    except (EOFError, OSError, ValueError):
        if proc.poll() is None:
            proc.kill()
