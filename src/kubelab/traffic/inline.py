"""Small request loops run inside a lab member (a pod, a node, the client) through its
Runner, for checks that need traffic from a particular place rather than from Locust:
from a pod on each node, from a node itself, to a UDP port. Bounded in count and timeout.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

from kubelab.errors import LabError
from kubelab.hosts import Runner
from kubelab.traffic.outcomes import CLASSIFY

MAX_COUNT = 5000

_HTTP = (
    CLASSIFY
    + """
import json, time, urllib.request
out = []
for _ in range({count}):
    t0 = time.monotonic()
    try:
        body = urllib.request.urlopen({url!r}, timeout={timeout}).read().decode()
        out.append({{"ok": True, "body": body, "outcome": "ok", "s": time.monotonic() - t0}})
    except Exception as exc:
        reason = getattr(exc, "reason", exc)
        code = getattr(exc, "code", "")
        out.append({{"ok": False, "error": f"{{type(reason).__name__}}: {{code}} {{reason}}",
                     "outcome": outcome(exc), "status": code or None,
                     "s": time.monotonic() - t0}})
print(json.dumps(out))
"""
)

_PROBE = (
    CLASSIFY
    + """
import http.client, json
out = []
for _ in range({count}):
    try:
        c = http.client.HTTPConnection({host!r}, {port}, timeout={timeout})
        c.request("GET", "/hostname")
        pod = c.getresponse().read().decode()
        c.request("GET", "/clientip", headers={{"Connection": "close"}})
        seen = c.getresponse().read().decode()
        c.close()
        out.append({{"ok": True, "pod": pod, "client_ip": seen.rsplit(":", 1)[0],
                     "outcome": "ok"}})
    except Exception as exc:
        out.append({{"ok": False, "error": type(exc).__name__ + ": " + str(exc),
                     "outcome": outcome(exc)}})
print(json.dumps(out))
"""
)

_UDP = """
import json, socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", {sport}))
s.settimeout({timeout})
out = []
for _ in range({count}):
    s.sendto({message!r}.encode(), ({host!r}, {port}))
    try:
        out.append(s.recvfrom(2048)[0].decode())
    except socket.timeout:
        out.append(None)
    time.sleep({pause})
print(json.dumps(out))
"""


def _run(runner: Runner, script: str, budget: float) -> Any:
    result = runner.run(
        [runner.python, "-c", textwrap.dedent(script)], check=False, timeout=budget + 30
    )
    if not result.ok:
        raise LabError(f"{runner.name}: request loop failed: {result.stderr.strip()[-300:]}")
    return json.loads(result.stdout)


def http_get(
    runner: Runner, url: str, count: int = 1, timeout: float = 2.0
) -> list[dict[str, Any]]:
    """`count` GETs from inside the member, a new connection each: ok, body or error, s."""
    if not 0 < count <= MAX_COUNT:
        raise LabError(f"request count {count} out of bounds (1..{MAX_COUNT})")
    return list(_run(runner, _HTTP.format(url=url, count=count, timeout=timeout), count * timeout))


def probe(
    runner: Runner, host: str, port: int, count: int = 1, timeout: float = 2.0
) -> list[dict[str, Any]]:
    """Like a Locust probe, from inside a member: one connection carrying GET /hostname then
    GET /clientip, so both answers come from the same pod."""
    if not 0 < count <= MAX_COUNT:
        raise LabError(f"probe count {count} out of bounds (1..{MAX_COUNT})")
    return list(
        _run(
            runner,
            _PROBE.format(host=host, port=port, count=count, timeout=timeout),
            count * timeout,
        )
    )


def udp_ask(
    runner: Runner,
    host: str,
    port: int,
    message: str,
    count: int = 1,
    sport: int = 40000,
    timeout: float = 1.0,
    pause: float = 0.0,
) -> list[str | None]:
    """Datagrams from one fixed source port; each answer, or None when none came back."""
    if not 0 < count <= MAX_COUNT:
        raise LabError(f"datagram count {count} out of bounds (1..{MAX_COUNT})")
    script = _UDP.format(
        host=host,
        port=port,
        message=message,
        count=count,
        sport=sport,
        timeout=timeout,
        pause=pause,
    )
    return list(_run(runner, script, count * (timeout + pause)))
