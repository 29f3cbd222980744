"""The run composer, for scenarios and benchmarks alike: a run id, a run folder with its
ResultsWriter and provenance, and the rows' context taken from the lab's own inventory (so
results record the nodes' kernels, not the harness's)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubelab.case_plan import finished
from kubelab.errors import SpecError
from kubelab.lab import Lab
from kubelab.results import (
    ResultsWriter,
    RunContext,
    load_results,
    new_run_id,
    update_provenance,
    write_provenance,
)
from kubelab.spec import LabSpec


def context_for(lab: Lab, run_id: str, kernels: dict[str, str] | None = None) -> RunContext:
    """The columns a lab's rows share; `kernels` are the nodes' (read from them if None)."""
    kernels = kernels if kernels is not None else lab.substrate.kernels()
    cni, cni_mode = lab.dataplane.cni
    return RunContext(
        run_id=run_id,
        lab=lab.spec.lab_id,
        substrate=lab.spec.substrate.kind,
        dataplane=lab.spec.dataplane.kind,
        proxy_mode=lab.dataplane.proxy_mode,
        cni=cni,
        cni_mode=cni_mode,
        kernel=",".join(sorted(set(kernels.values()))),
    )


def spec_context(run_id: str, spec: LabSpec) -> RunContext:
    """The columns known before any lab exists (the CNI and kernels come with the lab)."""
    return RunContext(
        run_id=run_id,
        lab=spec.lab_id,
        substrate=spec.substrate.kind,
        dataplane=spec.dataplane.kind,
        proxy_mode=spec.dataplane.proxy_mode,
        cni="",
        cni_mode="",
        kernel="",
    )


@dataclass
class RunFolder:
    run_id: str
    run_dir: Path
    writer: ResultsWriter
    resumes: int = 0  # how many times this run was resumed

    def attach(self, lab: Lab) -> RunContext:
        """Rows from now on belong to `lab` (a benchmark attaches one lab per mode)."""
        kernels = lab.substrate.kernels()
        self.writer.context = context_for(lab, self.run_id, kernels)
        update_provenance(
            self.run_dir,
            node_kernels={lab.spec.lab_id: kernels},
            **lab.substrate.provenance(),  # a VM lab's box: name, version, hash
            **lab.dataplane.provenance(),  # the reference proxier's kube-proxy layout
        )
        lab.substrate.keep_records(self.run_dir)
        return self.writer.context

    def use(self, context: RunContext) -> None:
        """Rows from now on carry `context` (a mode skipped before any lab existed)."""
        self.writer.context = context


def open_run(
    label: str,
    spec: LabSpec,
    spec_path: str,
    reports_root: Path = Path("reports"),
    run_dir: Path | None = None,
    extra: dict[str, Any] | None = None,
) -> RunFolder:
    """A new run folder; its rows take the spec's context until a lab is attached."""
    run_id = new_run_id(label)
    folder = run_dir or reports_root / run_id
    context = spec_context(run_id, spec)
    writer = ResultsWriter(folder, context)
    write_provenance(folder, spec, spec_path, context, extra)
    return RunFolder(run_id, folder, writer)


def reopen_run(run_dir: Path) -> tuple[RunFolder, LabSpec]:
    """A stopped run's folder and the spec it ran, to resume it under the same run id."""
    provenance = json.loads((run_dir / "provenance.json").read_text())
    if "spec_fields" not in provenance:
        raise SpecError(f"{run_dir}: this run was not made by `kubelab run`; it cannot resume")
    spec = LabSpec.model_validate(provenance["spec_fields"])
    if spec.digest() != provenance["spec_digest"]:
        raise SpecError(f"{run_dir}: the recorded spec does not match its digest; run it anew")
    done = finished(load_results(run_dir))
    context = spec_context(provenance["run_id"], spec)
    writer = ResultsWriter.reopen(run_dir, context, done)
    resumed = [*provenance.get("resumed", []), datetime.now(UTC).isoformat()]
    update_provenance(run_dir, resumed=resumed)
    return RunFolder(provenance["run_id"], run_dir, writer, len(resumed)), spec
