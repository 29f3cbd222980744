"""A program in a pod, joined to this process through the API server's exec endpoint.

    python -m kubelab.dataplanes.kubernetes.exec_bridge --kubeconfig FILE [--context C] \\
        --namespace NS --pod POD -- ARGV...

runs ARGV in the pod's container (the official client's websocket stream, channel
protocol v5.channel.k8s.io, or v4 from API servers before 1.30) and pipes this process's
stdin to it, its stdout and stderr back, bytes as they are, and exits with its exit code
(the Status on the error channel). It is what an ssh_config's ProxyCommand runs to reach a
node's sshd (`sshd -i`) through that node's access pod (`node_access.py`); one line on
stderr and exit 255, as ssh itself, when the pod cannot be reached.

End of stdin closes the program's stdin only under v5: v4 has no way to say it, and the
program then reads on until it ends by itself (an SSH session does).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from typing import Any

import yaml

STDIN, STDOUT, STDERR, ERROR = 0, 1, 2, 3
V5 = "v5.channel.k8s.io"
UNREACHABLE = 255  # ssh's own exit code for a connection that failed
READ_SIZE = 65536


def exit_code(status_text: str) -> int:
    """The exit code a Status on the error channel reports: 0 for Success, the ExitCode
    cause for NonZeroExitCode, UNREACHABLE (with the message on stderr) otherwise."""
    try:
        status = yaml.safe_load(status_text) if status_text else None
    except yaml.YAMLError:
        status = None
    if not isinstance(status, dict):
        print("exec: the stream ended without a status from the kubelet", file=sys.stderr)
        return UNREACHABLE
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message", UNREACHABLE))
    print(f"exec: {status.get('message') or status}", file=sys.stderr)
    return UNREACHABLE


def _pump_stdin(ws: Any) -> None:
    """This process's stdin to the program's, until it ends (or the stream does)."""
    try:
        while True:
            data = os.read(sys.stdin.fileno(), READ_SIZE)
            if not data:
                break
            ws.write_channel(STDIN, data)
        ws.close_channel(STDIN)  # v5 only; a no-op under v4
    except (OSError, ValueError, AttributeError):
        pass  # the stream closed under us: the main loop ends too


def bridge(ws: Any) -> int:
    """Pipe the open stream to this process's stdin, stdout and stderr; its exit code."""
    threading.Thread(target=_pump_stdin, args=(ws,), daemon=True).start()
    status = b""
    while ws.is_open():
        ws.update(timeout=1)
        for channel, fd in ((STDOUT, 1), (STDERR, 2)):
            data = ws.read_channel(channel)
            if data:
                os.write(fd, data)
        status += ws.read_channel(ERROR) or b""
    for channel, fd in ((STDOUT, 1), (STDERR, 2)):  # what came with the closing frames
        data = ws.read_channel(channel)
        if data:
            os.write(fd, data)
    status += ws.read_channel(ERROR) or b""
    return exit_code(status.decode("utf-8", "replace"))


def open_stream(
    kubeconfig: str, context: str | None, namespace: str, pod: str, argv: list[str]
) -> Any:
    from kubernetes import client, config
    from kubernetes.stream import stream

    api_client = config.new_client_from_config(kubeconfig, context=context)  # type: ignore[no-untyped-call]
    return stream(
        client.CoreV1Api(api_client).connect_get_namespaced_pod_exec,
        pod, namespace, command=argv,
        stdin=True, stdout=True, stderr=True, tty=False,
        _preload_content=False, binary=True,
    )  # fmt: skip


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="exec_bridge", description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--context")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--pod", required=True)
    parser.add_argument("argv", nargs="+")
    opts = parser.parse_args(args)
    try:
        ws = open_stream(opts.kubeconfig, opts.context, opts.namespace, opts.pod, opts.argv)
    except Exception as exc:
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        print(f"exec into pod {opts.namespace}/{opts.pod}: {reason}", file=sys.stderr)
        return UNREACHABLE
    try:
        return bridge(ws)
    finally:
        ws.close()


if __name__ == "__main__":
    sys.exit(main())
