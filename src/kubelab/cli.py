"""The kubelab command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from kubelab import signals
from kubelab.errors import KubelabError, SpecError
from kubelab.lab import Lab
from kubelab.spec import LabSpec, load_spec

if TYPE_CHECKING:
    from kubelab.dataplanes.kubernetes.cluster_plan import ClusterPlan

console = Console(stderr=True, highlight=False)


def _spec_path(arg: str) -> Path:
    """LAB is a spec file, or a bare name meaning labs/<name>.yaml."""
    p = Path(arg)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return Path("labs") / f"{arg}.yaml"


def _load(arg: str) -> tuple[Path, LabSpec]:
    path = _spec_path(arg)
    return path, load_spec(path)


def _step(label: str) -> None:
    console.print(f"[bold cyan]>[/] {label}")


def cmd_up(args: argparse.Namespace) -> int:
    _, spec = _load(args.lab)
    lab = Lab(spec)
    lab.up(_step)
    console.print(
        f"lab [bold]{spec.lab_id}[/] is up; `kubelab status {args.lab}` shows it, "
        f"`kubelab down {args.lab}` removes it"
    )
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    _, spec = _load(args.lab)
    lab = Lab(spec)
    lab.check()
    lab.down()
    console.print(f"lab [bold]{spec.lab_id}[/] is down")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    _, spec = _load(args.lab)
    status = Lab(spec).saved_status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    console.print(
        f"lab {status['lab']}: {'up' if status['up'] else 'down'} "
        f"({status['substrate']}/{status['dataplane']}, {status['proxy_mode']})"
    )
    for n in status["nodes"]:
        console.print(
            f"  node {n['name']:<8} {n['ip']:<15} pods {n['pod_cidr']:<16} {n['location']}"
        )
    c = status["client"]
    console.print(f"  client {c['name']:<6} {c['ip']:<15} {'':<21} {c['location']}")
    for p in status["pods"]:
        console.print(
            f"  pod {p['name']:<14} {p['ip']:<15} on {p['node']:<8} {p['phase']:<11} {p['netns']}"
        )
    for s in status["services"]:
        ports = ", ".join(
            f"{p['port']}->{p['target_port']}"
            + (f" nodePort {p['node_port']}" if p["node_port"] else "")
            for p in s["ports"]
        )
        external = [*s.get("external_ips", []), *s.get("load_balancer_ips", [])]
        ranges = s.get("load_balancer_source_ranges", [])
        console.print(
            f"  service {s['name']} {s['type']} {s['cluster_ip']} {ports} "
            f"eTP={s['external_traffic_policy']}"
            + (f" external {', '.join(external)}" if external else "")
            + (f" from {', '.join(ranges)}" if ranges else "")
        )
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    _, spec = _load(args.lab)
    lab = Lab(spec)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise SpecError("exec: no command given; use `kubelab exec LAB MEMBER -- CMD ...`")
    if not lab.exists():
        raise KubelabError(f"lab {spec.lab_id} is not up; run `kubelab up {args.lab}` first")
    argv = lab.runner(args.member).wrap(command)
    return subprocess.call(argv)


def cmd_run(args: argparse.Namespace) -> int:
    from kubelab.run import resume_run, run_lab  # imports pytest; keep the others light

    pytest_args = [*(["-k", args.k] if args.k else []), *args.pytest_args]
    if args.matrix:
        return _run_matrix(args, pytest_args)
    if args.resume:
        if args.lab or args.scenarios or args.k:
            raise SpecError("run --resume RUN_DIR takes the lab, scenarios and cases of that "
                            "run; drop LAB, --scenarios and -k")  # fmt: skip
        outcome = resume_run(_run_dir(args.resume), pytest_args, progress=_step)
    elif not args.lab:
        raise SpecError("run: name a lab (kubelab run labs/local.yaml) or --resume RUN_DIR")
    else:
        outcome = run_lab(
            _spec_path(args.lab),
            args.scenarios and Path(args.scenarios),
            Path(args.reports),
            pytest_args,
            progress=_step,
        )
    console.print(f"report: {outcome.report}")
    print(outcome.report)
    return outcome.exit_code


def _run_matrix(args: argparse.Namespace, pytest_args: list[str]) -> int:
    from kubelab.matrix import load_matrix, run_matrix

    if args.lab or args.resume:
        raise SpecError("run --matrix FILE runs the matrix's labs; drop LAB and --resume")
    matrix = load_matrix(Path(args.matrix))
    outcome = run_matrix(
        matrix, args.scenarios and Path(args.scenarios), Path(args.reports), pytest_args, _step
    )
    console.print(f"matrix: {outcome.folder / 'matrix.json'}")
    print(outcome.report or outcome.folder / "matrix.json")
    return outcome.exit_code


def _cluster(spec: LabSpec, verb: str) -> ClusterPlan:
    """The Kubernetes cluster the lab builds; bad input when it builds none."""
    from kubelab.plan import cluster_of

    cluster = cluster_of(spec)
    if cluster is None:
        raise SpecError(
            f"{verb}: lab {spec.name} builds no Kubernetes cluster (dataplane kind "
            f"{spec.dataplane.kind}); use a lab with dataplane kind kubernetes"
        )
    return cluster


def cmd_plan(args: argparse.Namespace) -> int:
    from kubelab.plan import lab_plan, render_text

    if args.matrix:
        from kubelab.matrix import describe, load_matrix

        if args.lab or args.vars:
            raise SpecError("plan --matrix FILE plans the matrix's labs; drop LAB and --vars")
        matrix = load_matrix(Path(args.matrix))
        if args.format == "json":
            plans = {c.name: lab_plan(c.spec) for c in matrix.runnable if c.spec}
            print(json.dumps({"cells": describe(matrix), "plans": plans}, indent=1, default=str))
            return 0
        for row in describe(matrix):
            values = ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("lab", "refused"))
            verdict = f"refused: {row['refused']}" if "refused" in row else "planned"
            print(f"{row['lab']:<11} {values:<40} {verdict}")
        return 0
    if not args.lab:
        raise SpecError("plan: name a lab (kubelab plan labs/vm-kubernetes.yaml) or --matrix FILE")
    _, spec = _load(args.lab)
    if args.vars:
        cluster = _cluster(spec, "--vars")
        Path(args.vars).write_text(json.dumps(cluster.playbook_vars(), indent=1))
        console.print(f"variables for playbooks/kubernetes.yml: {args.vars}")
    plan = lab_plan(spec)
    print(json.dumps(plan, indent=1, default=str) if args.format == "json" else render_text(plan))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from kubelab.fetch import fetch

    _, spec = _load(args.lab)
    cluster = _cluster(spec, "fetch")
    missing = fetch(cluster, say=_step)
    for line in missing:
        console.print(f"[yellow]still missing:[/] {line}", soft_wrap=True)
    print(cluster.artifacts_dir)
    return 1 if missing else 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from rich.table import Table

    from kubelab.doctor import examine

    _, spec = _load(args.lab)
    findings, can_run = examine(Lab(spec))
    if args.json:
        rows = [f.__dict__ for f in findings]
        print(json.dumps({"lab": spec.lab_id, "can_run": can_run, "findings": rows}, indent=1))
        return 0 if can_run else 1
    table = Table("check", "", "what was found", "fix", title=f"kubelab doctor: {spec.lab_id}")
    for f in findings:
        status = "[green]ok[/]" if f.ok else "[red]missing[/]"
        table.add_row(f.check, status, f.detail, "" if f.ok else f.fix)
    Console(highlight=False, width=160).print(table)
    first = next((f.detail for f in findings if f.check.startswith("lab ") and not f.ok), "")
    verdict = "can run" if can_run else f"cannot run: {first}"
    console.print(f"lab [bold]{spec.lab_id}[/] {verdict}", soft_wrap=True)
    return 0 if can_run else 1


def cmd_diagnose(args: argparse.Namespace) -> int:
    from rich.table import Table

    from kubelab.diagnose.checklist import diagnose

    _, spec = _load(args.lab)
    lab = Lab(spec)
    if not lab.exists():
        raise SpecError(f"lab {spec.lab_id} is not up; run `kubelab up {args.lab}` first")
    found = diagnose(lab, args.service, args.source, args.port)
    if args.format == "json":
        print(json.dumps(found.as_data(), indent=1))
        return 0 if found.ok else 1
    table = Table("step", "", "evidence", title=f"kubelab diagnose {spec.lab_id} {found.service}")
    marks = {"pass": "[green]pass[/]", "fail": "[red]FAIL[/]", "skip": "[yellow]skip[/]"}
    for step in found.steps:
        table.add_row(step.title or step.name, marks[step.verdict], "\n".join(step.evidence))
    Console(highlight=False, width=160).print(table)
    first = found.first_failure
    if first is None:
        console.print("every applicable step passed")
        return 0
    console.print(f"[bold]most likely cause:[/] {first.cause}", soft_wrap=True)
    console.print(f"[bold]fix:[/] {first.fix}", soft_wrap=True)
    return 1


def cmd_audit(args: argparse.Namespace) -> int:
    from kubelab.rules.audit import AuditInputError, audit
    from kubelab.rules.expected import ObjectsError, diff_tables, expected_table
    from kubelab.rules.table import render_text

    text, source = _read_dump(args.dump)
    if args.trace:
        return _trace(text, source, args)
    try:
        table = audit(text, source, args.pod_cidr, set(args.node_address))
    except AuditInputError as exc:
        raise SpecError(str(exc)) from None
    if args.format == "json":
        print(json.dumps(table.to_json(), indent=2))
    else:
        print(render_text(table), end="")
    if not args.expect:
        return 0
    if not args.node:
        raise SpecError("--expect needs --node NAME: the node whose rules the dump holds")
    try:
        doc = json.loads(Path(args.expect).read_text())
        want = expected_table(doc, args.node, table.mode)
    except (OSError, ValueError, ObjectsError) as exc:
        raise SpecError(f"{args.expect}: {exc}") from None
    differences = diff_tables(want, table)
    for line in differences:
        print(f"DIFF {line}")
    print(f"{len(differences)} differences against {args.expect} for node {args.node}")
    return 1 if differences else 0


def _trace(text: str, source: str, args: argparse.Namespace) -> int:
    from kubelab.rules.audit import AuditInputError, trace
    from kubelab.rules.trace import TraceInputError, parse_flow, render_text

    try:
        packet = parse_flow(*args.trace)
        result = trace(text, source, packet, set(args.node_address))
    except (TraceInputError, AuditInputError) as exc:
        raise SpecError(str(exc)) from None
    if args.format == "json":
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(render_text(result), end="")
    return 0


def _read_dump(arg: str) -> tuple[str, str]:
    """The dump's text and a name for it: `-` is standard input (`iptables-save | kubelab
    audit -`); a path may be a pipe (`kubelab audit <(ssh node1 nft list ruleset)`)."""
    if arg == "-":
        return sys.stdin.read(), "standard input"
    path = Path(arg)
    if path.is_dir() or not path.exists():
        raise SpecError(
            f"{path}: no such dump file; pass a file of iptables-save, nft or ipvsadm "
            "output, or - to read it from standard input"
        )
    try:
        return path.read_text(errors="replace"), str(path)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read it: {exc.strerror}") from None


def cmd_bench(args: argparse.Namespace) -> int:
    from kubelab.bench.runner import run_scale, supported_modes
    from kubelab.bench.scale import ScaleConfig

    if args.kind == "programming":
        return _bench_programming(args)
    if args.kind != "scale":
        from kubelab.bench.runner import run_bench

        modes = args.modes.split(",") if args.modes else supported_modes()
        if sorted(set(modes) - {"iptables", "nftables", "ipvs"}):
            raise SpecError("--modes takes iptables,nftables,ipvs")
        if not 1 <= args.seconds <= 600 or not 1 <= args.users <= 500 or not 1 <= args.trials <= 50:
            raise SpecError("--seconds takes 1..600, --users 1..500, --trials 1..50")
        report = run_bench(
            args.kind, modes, Path(args.reports), _step, args.seconds, args.users, args.trials
        )
        console.print(f"report: {report}")
        print(report)
        return 0
    try:
        sizes = [int(x) for x in args.sizes.split(",")]
        modes = args.modes.split(",") if args.modes else supported_modes()
    except ValueError:
        raise SpecError("--sizes: use numbers separated by commas, e.g. 100,1000,5000") from None
    unknown = sorted(set(modes) - {"iptables", "nftables", "ipvs"})
    if unknown or any(n < 1 or n > 50_000 for n in sizes):
        raise SpecError("--modes takes iptables,nftables,ipvs; --sizes 1..50000 each")
    budget = 300.0 if args.budget is None else args.budget
    if not 1 <= args.endpoints <= 100 or not 10 <= budget <= 7200:
        raise SpecError("--endpoints takes 1..100 and --budget 10..7200 seconds")
    config = ScaleConfig(
        modes=modes,
        sizes=sorted(sizes),
        endpoints=args.endpoints,
        budget_s=budget,
        connects=args.connects,
    )
    return _bench_done(run_scale(config, Path(args.reports), _step))


def _bench_programming(args: argparse.Namespace) -> int:
    from kubelab.bench.programming import ProgrammingConfig
    from kubelab.bench.runner import run_programming, supported_modes

    try:
        nodes = sorted({int(x) for x in args.nodes.split(",")})
    except ValueError:
        raise SpecError("--nodes: use numbers separated by commas, e.g. 10,100") from None
    modes = args.modes.split(",") if args.modes else supported_modes()
    budget = 900.0 if args.budget is None else args.budget
    for ok, message in (
        (not set(modes) - {"iptables", "nftables", "ipvs"}, "--modes takes iptables,nftables,ipvs"),
        (all(1 <= n <= 250 for n in nodes), "--nodes takes 1..250 each"),
        (1 <= args.services <= 20_000, "--services takes 1..20000"),
        (1 <= args.endpoints <= 1000, "--endpoints takes 1..1000 (pods of the workload)"),
        (1 <= args.changes <= 300, "--changes takes 1..300"),
        (10 <= budget <= 7200, "--budget takes 10..7200 seconds"),
    ):
        if not ok:
            raise SpecError(message)
    config = ProgrammingConfig(
        modes=modes,
        nodes=nodes,
        services=args.services,
        endpoints=args.endpoints,
        changes=args.changes,
        budget_s=budget,
    )
    return _bench_done(run_programming(config, Path(args.reports), _step))


def _bench_done(report: Path) -> int:
    """The report's path; exit 1 when a step failed (its error row says why)."""
    from kubelab.results import load_results

    console.print(f"report: {report}")
    print(report)
    verdicts = load_results(report.parent)["verdict"]
    return 1 if (verdicts == "error").any() else 0


def _run_dir(arg: str) -> Path:
    run_dir = Path(arg)
    if not (run_dir / "provenance.json").exists():
        raise SpecError(
            f"{run_dir}: not a run directory (no provenance.json); pass reports/<run-id>"
        )
    return run_dir


def cmd_box(args: argparse.Namespace) -> int:
    from kubelab.vm.box import build_box

    box = build_box(mirror=args.mirror, force=args.force, say=lambda line: _step(line))
    console.print(f"box {box.name} {box.version} (hash {box.hash[:16]}) in {box.folder}")
    return 0


def cmd_vagrant_json(args: argparse.Namespace) -> int:
    """The lab as the Vagrantfile reads it (what `vagrant` run by hand needs)."""
    from kubelab.plan import plan_substrate
    from kubelab.substrates.vagrant import VagrantSubstrate
    from kubelab.vm.box import planned_box

    _, spec = _load(args.lab)
    substrate = plan_substrate(spec)  # the VMs alone, whatever the dataplane
    if not isinstance(substrate, VagrantSubstrate):
        raise SpecError(f"substrate.kind: {spec.substrate.kind!r} has no VMs; use kind vagrant")
    driver = "kvm" if substrate.options.accel == "kvm" else "qemu"
    print(json.dumps(substrate.render(planned_box(), driver), indent=1))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from kubelab.report import compare
    from kubelab.report.html import incompleteness, render

    words = args.args
    if words[:1] == ["compare"]:
        runs = [_run_dir(a) for a in words[1:]]
        if len(runs) < 2:
            raise SpecError("report compare needs two or more run folders")
        print(compare.render_compare(runs, Path(args.out or runs[0]), args.tolerance))
    elif words[:1] == ["history"]:
        if len(words) != 2 or not args.into:
            raise SpecError("usage: kubelab report history RUN_DIR --into HISTORY.parquet")
        compare.append_history(_run_dir(words[1]), Path(args.into))
        print(compare.render_history(Path(args.into)))
    elif len(words) == 1:
        run_dir = _run_dir(words[0])
        print(render(run_dir))
        if line := incompleteness(run_dir):
            console.print(f"[yellow]kubelab:[/] {line}", soft_wrap=True)
    else:
        raise SpecError(
            "usage: kubelab report RUN_DIR | compare RUN_DIR... | history RUN_DIR "
            "--into HISTORY.parquet"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubelab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def lab_cmd(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("lab", help="lab spec file, or a name meaning labs/<name>.yaml")
        return p

    lab_cmd("up", "build the lab and leave it running").set_defaults(func=cmd_up)
    lab_cmd("down", "remove everything of the lab, also after a crash").set_defaults(func=cmd_down)
    p = lab_cmd("status", "nodes, pods, client and Services of the lab")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)
    p = lab_cmd("exec", "run a command inside a node, pod or the client")
    p.add_argument("member", help="node, pod or client name (see `kubelab status`)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    p.set_defaults(func=cmd_exec)
    p = sub.add_parser(
        "doctor",
        help="what this machine has for a lab, with a fix for each missing thing",
        description="Check root, tools, Python packages and kernel features (tried in a "
        "scratch namespace), then the lab's own checks; exit 0 when the lab can run.",
    )
    p.add_argument("lab", nargs="?", default="local", help="lab spec (default: labs/local.yaml)")
    p.add_argument("--json", action="store_true", help="the findings as data")
    p.set_defaults(func=cmd_doctor)
    p = sub.add_parser(
        "run",
        help="up -> scenarios -> report -> down",
        description="up -> scenarios -> report -> down; or, with --resume RUN_DIR, the "
        "cases a stopped run did not finish, into the same run folder",
    )
    p.add_argument("lab", nargs="?", help="lab spec file, or a name meaning labs/<name>.yaml")
    p.add_argument("--resume", metavar="RUN_DIR", help="run only the unfinished cases of a run")
    p.add_argument(
        "--matrix", metavar="FILE", help="run every lab of a matrix (labs/matrix.yaml) and "
        "compare them in one report"
    )  # fmt: skip
    p.add_argument("-k", metavar="EXPR", help="only scenarios matching this pytest expression")
    p.add_argument("--scenarios", help="scenario directory (default: scenarios/ beside labs/)")
    p.add_argument("--reports", default="reports", help="where run folders go")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser(
        "plan",
        help="what `up` would do, creating nothing",
        description="Print the lab's members, inventory and playbooks, and for a Kubernetes "
        "lab the rendered kubeadm, KubeProxyConfiguration, CNI and MetalLB configuration "
        "and the files and images its nodes need. Creates nothing.",
    )
    p.add_argument("lab", nargs="?", help="lab spec file, or a name meaning labs/<name>.yaml")
    p.add_argument("--matrix", metavar="FILE", help="list a matrix's labs and refusals instead")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument(
        "--vars", metavar="FILE", help="also write the variables of playbooks/kubernetes.yml "
        "(ansible-playbook ... -e @FILE)"
    )  # fmt: skip
    p.set_defaults(func=cmd_plan)
    lab_cmd(
        "fetch", "fill a Kubernetes lab's artifacts folder: files (checksums checked), images"
    ).set_defaults(func=cmd_fetch)
    p = lab_cmd("diagnose", "why a Service cannot be reached: the checklist, run for real")
    p.add_argument("service", help="NAME or NAMESPACE/NAME")
    p.add_argument("--from", dest="source", metavar="MEMBER", help="probe from this member")
    p.add_argument("--port", metavar="NAME", help="the Service port to check (default: first)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_diagnose)
    p = sub.add_parser(
        "audit",
        help="read a kube-proxy dump into a forwarding table",
        description="Read iptables-save / iptables -S, nft list ruleset (text or "
        "-j), ipvsadm -Ln / -S -n or cilium-dbg service list output into one forwarding "
        "table; optionally diff it against Services and EndpointSlices.",
    )
    p.add_argument("dump", help="file holding the dump, or - for standard input")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument(
        "--expect",
        metavar="OBJECTS.json",
        help="kubectl get svc,endpointslices -A -o json output to diff against",
    )
    p.add_argument("--node", help="with --expect: the node the dump was taken on")
    p.add_argument(
        "--pod-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="warn about DNAT targets outside these ranges (repeatable)",
    )
    p.add_argument(
        "--node-address",
        action="append",
        default=[],
        metavar="IP",
        help="an address of the node (repeatable): IPVS virtual servers on it in the "
        "NodePort range are NodePorts; with --trace, what `type local` matches",
    )
    p.add_argument(
        "--trace",
        nargs=2,
        metavar=("SRC", "DST:PORT[/PROTO]"),
        help="follow one new connection from SRC to DST:PORT (tcp, udp or sctp) through the "
        "rules and print where it goes",
    )
    p.set_defaults(func=cmd_audit)
    p = sub.add_parser("box", help="the VM labs' Vagrant box: build it from Debian packages")
    p.add_argument("action", choices=["build"])
    p.add_argument("--mirror", help="Debian mirror URL (default: the one apt uses here)")
    p.add_argument("--force", action="store_true", help="build again even if cached")
    p.set_defaults(func=cmd_box)
    p = sub.add_parser("vagrant-json", help="print a VM lab as the Vagrantfile reads it")
    p.add_argument("lab", help="lab spec (a vagrant-substrate one)")
    p.set_defaults(func=cmd_vagrant_json)
    p = sub.add_parser(
        "bench",
        help="benchmarks: scale (rules, sync time, latency vs N), programming (latency "
        "across nodes), load, failover",
    )
    p.add_argument("kind", choices=["scale", "programming", "load", "failover"])
    p.add_argument("--modes", help="proxy modes, comma separated (default: all this kernel has)")
    p.add_argument("--sizes", default="100,1000,5000,10000", help="Service counts N")
    p.add_argument("--endpoints", type=int, default=10, help="endpoints per Service (M)")
    p.add_argument(
        "--budget",
        type=float,
        help="seconds; stops cleanly before (default: scale 300, programming 900)",
    )
    p.add_argument("--nodes", default="10,100", help="programming: node counts")
    p.add_argument("--services", type=int, default=1000, help="programming: Services")
    p.add_argument("--changes", type=int, default=12, help="programming: changes timed")
    p.add_argument("--connects", type=int, default=200, help="connections per latency sample")
    p.add_argument("--seconds", type=float, default=10, help="load: seconds per generator run")
    p.add_argument("--users", type=int, default=20, help="load: Locust users / wrk connections")
    p.add_argument("--trials", type=int, default=5, help="failover: trials per action")
    p.add_argument("--reports", default="reports", help="where run folders go")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser(
        "report",
        help="render a run's report; compare runs; append to history",
        description="kubelab report RUN_DIR | compare RUN_DIR RUN_DIR... "
        "[--out DIR] [--tolerance 0.2] | history RUN_DIR --into HISTORY.parquet",
    )
    p.add_argument("args", nargs="+", metavar="RUN_DIR | compare RUN_DIR... | history RUN_DIR")
    p.add_argument("--out", help="compare: where compare.html goes (default: the first run)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.2,
        help="compare: relative worsening that counts as a regression",
    )
    p.add_argument("--into", help="history: the history parquet file to append to")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if argv[:1] == ["run"] and "--" in argv:  # `kubelab run LAB -- PYTEST ARGS`
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    if extra:
        args.pytest_args = [*args.pytest_args, *extra]
    signals.install()  # SIGTERM tears the lab down as Ctrl-C does
    try:
        return int(args.func(args))
    except KubelabError as exc:
        console.print(f"[red]kubelab:[/] {exc}", soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        console.print("[red]kubelab:[/] interrupted; the lab was torn down")
        return signals.interrupted_exit_code()


if __name__ == "__main__":
    sys.exit(main())
