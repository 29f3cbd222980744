"""Locust for a client VM, which has no path out: wheels built here (from PyPI, by this
interpreter's pip) for the Locust version the harness runs, cached, and copied in by the
`client` role. The box's python3 is Debian 12's 3.11, the same minor version and C library
family as this harness needs (requires-python >= 3.11), so the wheels fit it."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from kubelab.errors import LabError
from kubelab.vm.box import CACHE_ROOT

CLIENT_VENV = "/opt/kubelab/locust"  # the client role's default
CLIENT_PYTHON = f"{CLIENT_VENV}/bin/python"


def build_wheelhouse(say: Callable[[str], None] = print) -> Path:
    """A tar of the wheels for `locust==<this harness's version>` (one file to copy in:
    file by file would cost seconds each under emulation), built once."""
    wanted = f"locust=={version('locust')}"
    python = f"py{sys.version_info[0]}{sys.version_info[1]}"
    folder = CACHE_ROOT.parent / "wheelhouse" / f"{python}-{wanted.replace('==', '-')}"
    done = folder / ".complete"
    tar = folder.with_suffix(".tar")
    if done.exists() and tar.exists():
        return tar
    folder.mkdir(parents=True, exist_ok=True)
    say(f"wheelhouse for {wanted} (the client VM has no path out)")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--prefer-binary",
         "--wheel-dir", str(folder), wanted],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        raise LabError(f"pip wheel {wanted} failed: {last}")
    done.write_text(wanted + "\n")
    with tarfile.open(tar, "w") as out:
        for wheel in sorted(folder.iterdir()):
            out.add(wheel, arcname=wheel.name)
    return tar
