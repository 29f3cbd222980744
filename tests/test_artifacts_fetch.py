"""`kubelab fetch`'s downloads, against a real HTTP server on loopback: a file is kept only
when its sha256 is the one its checksum file gives, a stopped or failed download leaves
nothing under the real name, a good file already there is not fetched again, a bad one is."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from kubelab.dataplanes.kubernetes.versions import Download
from kubelab.errors import LabError
from kubelab.fetch import expected_sha256, fetch_file, image_archive

BODY = b"containerd release bytes\n" * 1000
SUM = hashlib.sha256(BODY).hexdigest()


class Files(BaseHTTPRequestHandler):
    served: dict[str, bytes] = {}
    asked: Counter[str] = Counter()

    def do_GET(self) -> None:
        self.asked[self.path] += 1
        body = self.served.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Files.served, Files.asked = {}, Counter()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def release(base: str, sums: bytes) -> Download:
    Files.served["/c.tar.gz"] = BODY
    Files.served["/c.tar.gz.sha256sum"] = sums
    return Download("c.tar.gz", f"{base}/c.tar.gz", f"{base}/c.tar.gz.sha256sum")


def test_a_file_is_kept_when_its_checksum_matches_and_not_fetched_twice(
    server: str, tmp_path: Path
) -> None:
    d = release(server, f"{SUM}  c.tar.gz\n".encode())
    with requests.Session() as s:
        assert fetch_file(d, tmp_path, s) == "fetched, checksum matches"
        assert (tmp_path / "c.tar.gz").read_bytes() == BODY
        assert fetch_file(d, tmp_path, s) == "kept"
    assert Files.asked["/c.tar.gz"] == 1 and Files.asked["/c.tar.gz.sha256sum"] == 2


def test_a_file_whose_checksum_differs_is_not_kept(server: str, tmp_path: Path) -> None:
    d = release(server, f"{'0' * 64}  c.tar.gz\n".encode())
    with requests.Session() as s, pytest.raises(LabError, match="is not the publisher's"):
        fetch_file(d, tmp_path, s)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .part


def test_a_bad_file_already_there_is_fetched_again(server: str, tmp_path: Path) -> None:
    d = release(server, f"{SUM} *c.tar.gz\n".encode())  # sha256sum's binary-mode mark
    (tmp_path / "c.tar.gz").write_bytes(b"truncated")
    with requests.Session() as s:
        assert fetch_file(d, tmp_path, s) == "fetched, checksum matches"
    assert (tmp_path / "c.tar.gz").read_bytes() == BODY


def test_a_missing_file_fails_and_leaves_nothing(server: str, tmp_path: Path) -> None:
    d = Download("gone.yml", f"{server}/gone.yml", "")
    with requests.Session() as s, pytest.raises(requests.HTTPError):
        fetch_file(d, tmp_path, s)
    assert list(tmp_path.iterdir()) == []


def test_checksum_files_as_publishers_write_them() -> None:
    runc = "aaa1  runc.arm64\nbbb2  runc.amd64\nccc3  libseccomp-2.5.5.tar.gz\n"
    assert expected_sha256(runc, "runc.amd64") == "bbb2"
    assert expected_sha256("ABCDEF\n", "kube-flannel.yml") == "abcdef"  # a bare digest
    with pytest.raises(LabError, match="names no digest for helm"):
        expected_sha256(runc, "helm")


def test_image_archives_are_named_after_the_image() -> None:
    assert image_archive("registry.k8s.io/pause:3.10.1") == "registry.k8s.io_pause_3.10.1.tar"
