"""The kubelab pytest plugin: lab selection, fixtures and result recording for scenarios.

Registered through the `pytest11` entry point. Scenarios get:

- `lab`: the running Lab (brought up by `kubelab run`, or by this plugin with --lab SPEC)
- `record`: this case's recorder: metrics, expectations, and a named verdict
- `traffic`: bounded Locust probes from the lab's client; samples land in samples.parquet
- `hosts`: testinfra hosts for every node, over SSH, exactly as for VMs

Every case writes its rows to results.parquet as soon as it ends (`pytest_runtest_makereport`).
"""

from __future__ import annotations

import random
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import testinfra

from kubelab.case_plan import CasePlan, PlannedCase, write_plan
from kubelab.diagnose.checklist import diagnose
from kubelab.diagnose.rows import diagnosis_as_rows
from kubelab.errors import EnvironmentMissing
from kubelab.lab import Lab
from kubelab.results import ResultRow, ResultsWriter, Verdict
from kubelab.runs import open_run
from kubelab.spec import ServiceSpec, WorkloadSpec, load_spec
from kubelab.traffic.runner import ProbePlan, ProbeRun, RunningProbes, start_probes

SESSION_KEY = pytest.StashKey["LabSession"]()
RECORD_KEY = pytest.StashKey["CaseRecord"]()


@dataclass
class LabSession:
    """A running lab and where its results go; `kubelab run` hands one to pytest."""

    lab: Lab
    writer: ResultsWriter


class SessionPlugin:
    """Hands an already-running LabSession to the plugin (used by `kubelab run`), and
    writes the run's case plan once the cases are collected (a resumed run keeps its own)."""

    def __init__(self, session: LabSession, write_plan: bool = True) -> None:
        self.session = session
        self.write_plan = write_plan

    def pytest_configure(self, config: pytest.Config) -> None:
        config.stash[SESSION_KEY] = self.session

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if not self.write_plan:
            return
        root = session.config.rootpath
        cases = [
            PlannedCase(*case_ids(item), f"{root}/{item.nodeid}")
            for item in session.items
            if "record" in getattr(item, "fixturenames", ())
        ]
        write_plan(self.session.writer.run_dir, CasePlan(str(root), cases))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "kubelab_requires(proxy_modes=None, dataplane=None, reason=''): the scenario needs this; "
        "elsewhere it is skipped with the reason",
    )


@pytest.fixture(autouse=True)
def _kubelab_requirements(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("kubelab_requires")
    if marker is None:
        return
    lab: Lab = request.getfixturevalue("lab")
    modes = marker.kwargs.get("proxy_modes")
    dataplane = marker.kwargs.get("dataplane")
    reason = marker.kwargs.get("reason", "")
    if modes and lab.dataplane.proxy_mode not in modes:
        pytest.skip(
            reason
            or f"needs proxy mode {'/'.join(modes)}, this lab runs {lab.dataplane.proxy_mode}"
        )
    if dataplane and lab.spec.dataplane.kind != dataplane:
        pytest.skip(reason or f"needs the {dataplane} dataplane")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kubelab", "kubelab scenarios")
    group.addoption("--lab", metavar="SPEC", help="bring up this lab spec for the scenarios")
    group.addoption("--run-dir", metavar="DIR", help="results directory (default reports/<id>)")
    group.addoption(
        "--scenario-order-seed",
        type=int,
        metavar="N",
        help="run the scenario modules in an order shuffled with this seed (the cases of a "
        "module keep their order): shows whether a scenario leaks into a later one",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seed = config.getoption("--scenario-order-seed", None)
    if seed is None:
        return
    modules = list(dict.fromkeys(str(item.fspath) for item in items))
    random.Random(seed).shuffle(modules)
    rank = {module: i for i, module in enumerate(modules)}
    items.sort(key=lambda item: rank[str(item.fspath)])  # stable: a module's order stays


@pytest.fixture(scope="session")
def lab_session(request: pytest.FixtureRequest) -> Iterator[LabSession]:
    config = request.config
    if SESSION_KEY in config.stash:
        yield config.stash[SESSION_KEY]
        return
    spec_path = config.getoption("--lab")
    if not spec_path:
        pytest.skip("no lab: pass --lab labs/local.yaml, or use `kubelab run`")
    spec = load_spec(spec_path)
    lab = Lab(spec)
    try:
        lab.check()
    except EnvironmentMissing as exc:
        pytest.skip(str(exc))
    run_dir = config.getoption("--run-dir")
    run = open_run(spec.lab_id, spec, spec_path, run_dir=Path(run_dir) if run_dir else None)
    lab.up()
    run.attach(lab)
    session = LabSession(lab, run.writer)
    config.stash[SESSION_KEY] = session  # so skips before `record` exists still get a row
    try:
        yield session
    finally:
        lab.down()


@pytest.fixture(scope="session")
def lab(lab_session: LabSession) -> Lab:
    return lab_session.lab


@dataclass
class CaseRecord:
    """What one scenario case measured and expected. Its verdict is named, never a bag of
    booleans: PASS when every expectation held, FAIL with the broken ones listed."""

    scenario: str
    case: str
    writer: ResultsWriter
    metrics: list[tuple[str, float, str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def metric(self, name: str, value: float, unit: str = "", detail: str = "") -> None:
        self.metrics.append((name, float(value), unit, detail))

    def expect(self, condition: bool, message: str) -> bool:
        """Record an expectation; `message` says what is broken when it does not hold."""
        if not condition:
            self.failures.append(message)
        return condition

    def samples(self, frame: pd.DataFrame) -> None:
        self.writer.add_samples(self.scenario, self.case, frame)

    def verdict(self) -> Verdict:
        """Call last in a case: fails the test with every broken expectation."""
        if self.failures:
            raise AssertionError("; ".join(self.failures))
        return Verdict.PASS

    def rows(self, verdict: Verdict, detail: str) -> list[ResultRow]:
        rows = [
            ResultRow(self.scenario, self.case, m, v, u, verdict, d) for m, v, u, d in self.metrics
        ]
        value = 1.0 if verdict is Verdict.PASS else 0.0
        rows.append(ResultRow(self.scenario, self.case, "verdict", value, "", verdict, detail))
        return rows


def case_ids(item: pytest.Item) -> tuple[str, str]:
    """Scenario = module name without `test_`; case = test name without `test_`."""
    module = Path(str(item.fspath)).stem.removeprefix("test_")
    return module, item.name.removeprefix("test_")


@pytest.fixture
def record(request: pytest.FixtureRequest, lab_session: LabSession) -> CaseRecord:
    scenario, case = case_ids(request.node)
    rec = CaseRecord(scenario, case, lab_session.writer)
    request.node.stash[RECORD_KEY] = rec
    return rec


class Traffic:
    """Bounded probes from the lab's client; every probe becomes a sample row."""

    def __init__(self, lab: Lab, record: CaseRecord) -> None:
        self.lab = lab
        self.record = record

    def probe(self, host: str, port: int, **plan: Any) -> ProbeRun:
        """Run bounded probes and wait for them."""
        return self.start(host, port, **plan).wait()

    def start(self, host: str, port: int, **plan: Any) -> RecordedProbes:
        """Start bounded probes in the background; `.wait()` returns the run."""
        plan.setdefault("seed", self.lab.spec.seed)
        self.lab.topology.require_own(host)
        client = self.lab.topology.client.name
        running = start_probes(
            self.lab.runner(client),
            ProbePlan(host, port, **plan),
            self.lab.spec.lab_id,
        )
        return RecordedProbes(running, self.record)


@dataclass
class RecordedProbes:
    running: RunningProbes
    record: CaseRecord

    def wait(self) -> ProbeRun:
        run = self.running.wait()
        self.record.samples(run.samples)
        return run


class Resources:
    """Workloads and Services a case creates for itself; all removed when it ends."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._services: list[str] = []
        self._workloads: list[str] = []

    def workload(self, name: str, replicas: int, nodes: list[str] | None = None) -> str:
        self.lab.create_workload(WorkloadSpec(name=name, replicas=replicas, nodes=nodes))
        self._workloads.append(name)
        return name

    @property
    def services(self) -> list[str]:
        """The Services this case made, still present."""
        return list(self._services)

    def service(self, **fields: Any) -> str:
        """A Service from ServiceSpec fields, e.g. name=, workload=, type=, ports=[...]."""
        spec = ServiceSpec.model_validate(fields)
        self.lab.create_service(spec)
        key = f"{spec.namespace}/{spec.name}"
        self._services.append(key)
        return key

    def clean(self) -> None:
        try:
            self.lab.settle()
            if self._services:
                existing = {state.service.key for state in self.lab.service_states()}
                self.lab.delete_services([k for k in self._services if k in existing])
        finally:
            for name in self._workloads:
                self.lab.delete_workload(name)


@pytest.fixture
def resources(lab: Lab) -> Iterator[Resources]:
    made = Resources(lab)
    try:
        yield made
    finally:
        made.clean()


@pytest.fixture
def traffic(lab: Lab, record: CaseRecord) -> Traffic:
    return Traffic(lab, record)


@pytest.fixture(scope="session")
def hosts(lab: Lab) -> dict[str, Any]:
    """testinfra hosts for every node, reached over SSH with the lab's ssh_config."""
    return {
        node.name: testinfra.get_host(
            f"ssh://{node.name}",
            ssh_config=str(lab.ssh_config),
            sudo=lab.substrate.become(node.name),
        )
        for node in lab.topology.nodes
    }


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    rec = item.stash.get(RECORD_KEY, None)
    if rec is None and "record" in getattr(item, "fixturenames", ()):
        session = item.config.stash.get(SESSION_KEY, None)
        if session is None:
            return
        rec = CaseRecord(*case_ids(item), session.writer)  # skipped before `record` ran
    if rec is None:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if report.passed:
            verdict, detail = Verdict.PASS, ""
        elif report.skipped:
            verdict = Verdict.SKIP
            detail = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else ""
        elif call.excinfo is not None and call.excinfo.errisinstance(AssertionError):
            verdict, detail = Verdict.FAIL, "; ".join(rec.failures) or str(call.excinfo.value)
        else:
            verdict = Verdict.ERROR
            detail = call.excinfo.exconly() if call.excinfo else "error"
        diagnoses = []
        if verdict in (Verdict.FAIL, Verdict.ERROR) and report.when == "call":
            diagnoses = diagnosis_rows(item, rec)  # before the case's resources are removed
        rec.writer.add_rows([*diagnoses, *rec.rows(verdict, detail[:2000])])


MAX_DIAGNOSED = 2  # Services per failing case


def diagnosis_rows(item: pytest.Item, rec: CaseRecord) -> list[ResultRow]:
    """`kubelab diagnose` of the Services a failing case used (those it made, else the
    lab's own), taken while the lab is still as the case left it."""
    session = item.config.stash.get(SESSION_KEY, None)
    if session is None:
        return []
    lab = session.lab
    made = getattr(item, "funcargs", {}).get("resources")
    keys = list(made.services) if isinstance(made, Resources) else []
    keys = keys or [f"{s.namespace}/{s.name}" for s in lab.spec.services]
    rows = []
    for key in keys[:MAX_DIAGNOSED]:
        try:
            found = diagnose(lab, key, status=lab.status())
        except Exception as exc:  # a diagnosis must never hide the case's own failure
            rows.append(ResultRow(rec.scenario, rec.case, f"diagnose {key}", 0.0, "",
                                  Verdict.ERROR, f"diagnose failed: {exc}"))  # fmt: skip
            continue
        rows += diagnosis_as_rows(rec.scenario, rec.case, found)
    return rows
