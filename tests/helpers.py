"""Real requests from inside lab members, for tests that need more than Locust probes."""

from __future__ import annotations

import json
import textwrap
from typing import Any

from kubelab.lab import Lab

_HTTP = """
import json, socket, time, urllib.request, urllib.error
out = []
for _ in range({count}):
    t0 = time.monotonic()
    try:
        body = urllib.request.urlopen({url!r}, timeout={timeout}).read().decode()
        out.append({{"ok": True, "body": body, "s": time.monotonic() - t0}})
    except Exception as exc:
        reason = getattr(exc, "reason", exc)
        code = getattr(exc, "code", "")
        out.append({{"ok": False, "error": f"{{type(reason).__name__}}: {{code}} {{reason}}",
                     "s": time.monotonic() - t0}})
print(json.dumps(out))
"""

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


def _run(lab: Lab, member: str, script: str, timeout: float = 120) -> Any:
    result = lab.exec(member, ["python3", "-c", textwrap.dedent(script)], timeout=timeout)
    assert result.ok, result.stderr[-2000:]
    return json.loads(result.stdout)


def http_get(lab: Lab, member: str, url: str, count: int = 1, timeout: float = 2.0) -> list[dict]:
    """`count` GETs from inside `member`, a new connection each: ok, body or error, seconds."""
    return list(_run(lab, member, _HTTP.format(url=url, count=count, timeout=timeout)))


def bodies(results: list[dict]) -> list[str]:
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]][:3]
    return [r["body"] for r in results]


def udp_ask(
    lab: Lab,
    member: str,
    host: str,
    port: int,
    message: str,
    count: int = 1,
    sport: int = 40000,
    timeout: float = 1.0,
    pause: float = 0.0,
) -> list[str | None]:
    """Datagrams from one fixed source port; each answer, or None when none came back."""
    script = _UDP.format(
        host=host,
        port=port,
        message=message,
        count=count,
        sport=sport,
        timeout=timeout,
        pause=pause,
    )
    return list(_run(lab, member, script))
