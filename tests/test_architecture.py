"""The boundaries the one-interface design rests on, read from the source itself."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import pytest

from kubelab.dataplanes.registry import DATAPLANES
from kubelab.substrates.registry import SUBSTRATES

SRC = Path(__file__).resolve().parent.parent / "src" / "kubelab"
# programs shipped to a member and run there may use what the member has
SHIPPED = {"podserver.py", "locust_worker.py"}
LOCAL_ONLY = {"pyroute2", "subprocess", "kubelab.netns_util"}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def harness_side(folder: str) -> list[Path]:
    return [p for p in sorted((SRC / folder).rglob("*.py")) if p.name not in SHIPPED]


@pytest.mark.parametrize("path", harness_side("dataplanes") + harness_side("traffic"), ids=str)
def test_dataplanes_and_traffic_reach_members_only_through_runners(path: Path) -> None:
    bad = {name for name in imports(path) if name.split(".")[0] in LOCAL_ONLY or name in LOCAL_ONLY}
    assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"


def test_the_lab_names_no_concrete_backend() -> None:
    lab = SRC / "lab.py"
    concrete = {
        name
        for name in imports(lab)
        if name.startswith(("kubelab.substrates.", "kubelab.dataplanes."))
        and not name.startswith(("kubelab.substrates.base", "kubelab.dataplanes.base"))
        and ".registry" not in name
    }
    assert not concrete, concrete
    assert len(lab.read_text().splitlines()) < 200


@pytest.mark.parametrize("registry", [SUBSTRATES, DATAPLANES], ids=["substrates", "dataplanes"])
def test_every_registered_backend_owns_its_spec_model(registry: dict[str, type]) -> None:
    for kind, backend in registry.items():
        assert backend.kind == kind
        assert get_args(backend.Options.model_fields["kind"].annotation) == (kind,)
