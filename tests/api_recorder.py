"""A recording stand-in for a Kubernetes API server, on loopback, for the tests of the
kubernetes dataplane's API calls (no API server can be installed on this machine).

It keeps the objects it is sent, answers the REST verbs the dataplane uses the way the
API server does for them (201 on create, 409 with a Status when the name is taken, 404
for a missing object, label selectors on lists and deletecollection, the scale and status
subresources) and records every request: method, path, query, Content-Type and body. It
runs no controllers: a Deployment makes no pods, a Service no EndpointSlices; a test
seeds those itself. What it proves is the requests, not what a cluster does with them.

A pod's exec (the websocket upgrade of `.../pods/POD/exec`) runs the command for real on
this machine, behind `exec_prefix(pod)` (exec_endpoint.py): what a test's "pods" are.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

import exec_endpoint

# collection path segment -> (apiVersion, kind) of its items
KINDS = {
    "namespaces": ("v1", "Namespace"),
    "services": ("v1", "Service"),
    "pods": ("v1", "Pod"),
    "nodes": ("v1", "Node"),
    "deployments": ("apps/v1", "Deployment"),
    "statefulsets": ("apps/v1", "StatefulSet"),
    "daemonsets": ("apps/v1", "DaemonSet"),
    "configmaps": ("v1", "ConfigMap"),
    "networkpolicies": ("networking.k8s.io/v1", "NetworkPolicy"),
    "endpointslices": ("discovery.k8s.io/v1", "EndpointSlice"),
}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str | None
    body: Any


@dataclass
class ApiRecorder:
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # by object path
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    # how a pod's exec runs here (its namespaces, as an argv prefix), and the protocol
    exec_prefix: Callable[[dict[str, Any]], list[str]] = lambda pod: []
    exec_protocol: str = "v5.channel.k8s.io"

    def seed(self, collection: str, obj: dict[str, Any]) -> None:
        """Store an object as if a controller had made it (`collection` as in a path:
        `/api/v1/namespaces/default/pods`)."""
        self.objects[f"{collection}/{obj['metadata']['name']}"] = obj

    def made(self, method: str) -> list[Request]:
        return [r for r in self.requests if r.method == method]


def _matches(obj: dict[str, Any], selector: str | None) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (selector or "").split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """A merge patch; lists of conditions merge by `type`, as the strategic merge of
    status.conditions does."""
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif key == "conditions" and isinstance(value, list):
            kept = {c["type"]: c for c in out.get(key) or []}
            kept.update({c["type"]: c for c in value})
            out[key] = list(kept.values())
        else:
            out[key] = value
    return out


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "reason": reason, "message": message}  # fmt: skip


def start(recorder: ApiRecorder) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            return json.loads(raw) if raw else None

        def _send(self, code: int, doc: dict[str, Any]) -> None:
            data = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            url = urlsplit(self.path)
            if self.headers.get("Upgrade", "").lower() == "websocket":
                self._exec(url.path, parse_qs(url.query).get("command", []))
                return
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            body = self._body()
            recorder.requests.append(
                Request(self.command, url.path, query, self.headers.get("Content-Type"), body)
            )
            path = url.path.rstrip("/")
            last = path.rsplit("/", 1)[-1]
            if last in KINDS:  # a collection
                self._collection(path, last, query, body)
            else:
                self._object(path, body)

        def _collection(self, path: str, segment: str, query: dict[str, str], body: Any) -> None:
            version, kind = KINDS[segment]
            if self.command == "POST":
                key = f"{path}/{body['metadata']['name']}"
                if key in recorder.objects:
                    name = body["metadata"]["name"]
                    self._send(
                        409, _status(409, "AlreadyExists", f'{segment} "{name}" already exists')
                    )
                    return
                stored = _merge(body, {"metadata": {"uid": f"uid-{len(recorder.objects)}",
                                                    "resourceVersion": "1"}})  # fmt: skip
                recorder.objects[key] = stored
                self._send(201, stored)
                return
            members = {
                k: o for k, o in recorder.objects.items()
                if k.rsplit("/", 1)[0] == path and _matches(o, query.get("labelSelector"))
            }  # fmt: skip
            if self.command == "DELETE":  # deletecollection
                for key in members:
                    del recorder.objects[key]
            # as the API server, whose list items carry no kind or apiVersion of their own
            # (kubernetes/kubernetes#3030): the list's say what they are
            items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")}
                     for o in members.values()]  # fmt: skip
            self._send(200, {"apiVersion": version, "kind": f"{kind}List", "items": items})

        def _exec(self, path: str, argv: list[str]) -> None:
            pod = recorder.objects.get(path.removesuffix("/exec"))
            recorder.requests.append(Request("EXEC", path, {}, None, argv))
            if not path.endswith("/exec") or pod is None:
                self._send(404, _status(404, "NotFound", f"{path} not found"))
                return
            exec_endpoint.serve(self, argv, recorder.exec_prefix(pod), recorder.exec_protocol)
            self.close_connection = True

        def _object(self, path: str, body: Any) -> None:
            subresource = None
            if path.endswith(("/scale", "/status")):
                path, subresource = path.rsplit("/", 1)
            obj = recorder.objects.get(path)
            if obj is None:
                self._send(404, _status(404, "NotFound", f"{path} not found"))
                return
            if self.command == "DELETE":
                del recorder.objects[path]
                self._send(200, obj)
            elif self.command == "PATCH":
                recorder.objects[path] = obj = _merge(obj, body or {})
                if subresource == "scale":
                    self._send(200, {"kind": "Scale", "apiVersion": "autoscaling/v1",
                                     "spec": {"replicas": obj["spec"]["replicas"]}})  # fmt: skip
                else:
                    self._send(200, obj)
            else:
                self._send(200, obj)

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@contextlib.contextmanager
def serving() -> Iterator[ApiRecorder]:
    """A recorder answering on a loopback port for the block's length."""
    recorder = ApiRecorder()
    server = start(recorder)
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()


def kubeconfig(folder: Path, url: str) -> Path:
    """A kubeconfig whose one cluster is `url` (token auth, as a real one may have)."""
    path = folder / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": url}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}],
        "users": [{"name": "lab", "user": {"token": "not-a-secret"}}],
    }))  # fmt: skip
    return path
