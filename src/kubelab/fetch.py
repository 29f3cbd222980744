"""`kubelab fetch LAB`: fill a Kubernetes lab's artifacts folder on this machine, so that
VMs with no route out get every file copied in (cluster_plan.ClusterPlan.missing_artifacts
lists what it lacks).

- files/: each download of the plan, checked against its publisher's checksum file
  (the `<sha256>  <name>` lines of a .sha256 / .sha256sum file, as Ansible's get_url reads
  them); a file without one is pinned by its tagged URL. A file already there whose
  checksum matches is kept; one that does not match is fetched again.
- images/: each image of the plan, saved with skopeo as a docker archive that keeps the
  image's name (what `ctr images import` on the nodes needs).
- debs/: not fetched: apt needs the Kubernetes repository configured to resolve the
  packages' dependencies; `missing_artifacts` gives the command.

A download goes to `<name>.part` and is renamed only once complete and checked, so a
stopped fetch leaves no half file under the real name.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import requests

from kubelab.dataplanes.kubernetes.cluster_plan import ClusterPlan
from kubelab.dataplanes.kubernetes.versions import Download
from kubelab.errors import EnvironmentMissing, LabError

CHUNK = 1 << 20
TIMEOUT_S = 60.0  # per connection attempt and between bytes, not for a whole file


def expected_sha256(checksums: str, name: str) -> str:
    """The hex digest a checksum file gives for `name` (or its only digest)."""
    lines = [line.split() for line in checksums.splitlines() if line.strip()]
    for words in lines:
        if len(words) >= 2 and words[1].lstrip("*") == name:
            return words[0].lower()
    if len(lines) == 1 and len(lines[0]) == 1:
        return lines[0][0].lower()
    raise LabError(f"the checksum file names no digest for {name}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fetch_file(download: Download, folder: Path, session: requests.Session) -> str:
    """Bring one file into `folder`; what was done, in a few words."""
    target = folder / download.name
    wanted = None
    if download.checksum_url:
        reply = session.get(download.checksum_url, timeout=TIMEOUT_S)
        reply.raise_for_status()
        wanted = expected_sha256(reply.text, download.name)
    if target.is_file() and (wanted is None or _sha256(target) == wanted):
        return "kept"
    part = target.with_name(target.name + ".part")
    try:
        with session.get(download.url, stream=True, timeout=TIMEOUT_S) as reply:
            reply.raise_for_status()
            with part.open("wb") as out:
                for block in reply.iter_content(CHUNK):
                    out.write(block)
        if wanted is not None and (got := _sha256(part)) != wanted:
            raise LabError(
                f"{download.url}: sha256 {got[:16]}... is not the publisher's {wanted[:16]}...; "
                "the file was not kept"
            )
        part.replace(target)
    finally:
        part.unlink(missing_ok=True)
    return "fetched, checksum matches" if wanted else "fetched"


def image_archive(image: str) -> str:
    """The archive's file name for an image reference."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", image) + ".tar"


def fetch(plan: ClusterPlan, say: Callable[[str], None] = print) -> list[str]:
    """Every file and image the plan needs, into its artifacts folder; the lines of what
    is still missing (the .deb packages, and anything a failure left)."""
    files = plan.artifacts_dir / "files"
    files.mkdir(parents=True, exist_ok=True)
    with requests.Session() as session:
        for d in plan.downloads():
            try:
                say(f"{d.name}: {fetch_file(d, files, session)}")
            except requests.RequestException as exc:
                raise LabError(f"{d.name}: cannot fetch {d.url} ({exc})") from None
    images = plan.artifacts_dir / "images"
    images.mkdir(exist_ok=True)
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise EnvironmentMissing(
            "skopeo is missing here (it saves the images); apt-get install skopeo"
        )
    for image in plan.images():  # the manifests are in files/ now: their images are listed
        archive = images / image_archive(image)
        if archive.is_file():
            say(f"{image}: kept")
            continue
        part = archive.with_name(archive.name + ".part")
        try:
            result = subprocess.run(
                [skopeo, "copy", f"docker://{image}", f"docker-archive:{part}:{image}"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if result.returncode != 0:
                why = (result.stderr.strip().splitlines() or ["no message"])[-1]
                raise LabError(f"{image}: skopeo copy failed: {why}")
            part.replace(archive)
        finally:
            part.unlink(missing_ok=True)
        say(f"{image}: saved")
    return plan.missing_artifacts()
