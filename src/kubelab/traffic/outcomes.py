"""Named traffic outcomes: what became of one request, as a value rather than an error
string to match (Cilium's connectivity checks name them the same way)."""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    OK = "ok"
    REFUSED = "refused"  # RST to the SYN: nothing listens, or a REJECT rule
    TIMEOUT = "timeout"  # no answer in time: a DROP rule, a dead node, a lost route
    RESET = "reset"  # an open connection was reset
    HTTP_ERROR = "http_error"  # an answer, with a status other than 2xx (see "status")
    ERROR = "error"  # anything else (see "error")


# The same classification, as source for the request loops shipped to a member (they run
# with the member's interpreter and import nothing of kubelab's).
CLASSIFY = """
import socket, urllib.error
def outcome(exc):
    reason = getattr(exc, "reason", exc)
    if isinstance(exc, urllib.error.HTTPError):
        return "http_error"
    if isinstance(reason, ConnectionRefusedError):
        return "refused"
    if isinstance(reason, (socket.timeout, TimeoutError)) or "timed out" in str(reason):
        return "timeout"
    if isinstance(reason, (ConnectionResetError, ConnectionAbortedError)):
        return "reset"
    return "error"
"""
