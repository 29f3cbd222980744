"""Files other processes read (results, the case plan, a lab's status) are replaced whole.

The new content goes to `<name>.tmp` and is renamed over the file, so a reader sees the old
file or the new one, never half of one. Ctrl-C or SIGTERM is held while that happens (a
stopped run must not leave a `.tmp` behind); only SIGKILL can cut it short, and a resumed
run discards what that left.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from kubelab.signals import shielded


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp)` to fill a temporary file beside `path`, then rename it to `path`."""
    tmp = path.with_suffix(".tmp")
    with shielded():
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
