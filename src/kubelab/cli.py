"""The kubelab command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from kubelab.errors import KubelabError, SpecError
from kubelab.lab import Lab, check_environment
from kubelab.spec import LabSpec, load_spec

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
    check_environment(spec)
    Lab(spec).down()
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
        console.print(f"  node {n['name']:<8} {n['ip']:<15} pods {n['pod_cidr']:<16} {n['netns']}")
    c = status["client"]
    console.print(f"  client {c['name']:<6} {c['ip']:<15} {'':<21} {c['netns']}")
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
        console.print(
            f"  service {s['name']} {s['type']} {s['cluster_ip']} {ports} "
            f"eTP={s['external_traffic_policy']}"
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
    from kubelab.run import run_lab  # imports pytest; keep the other commands light

    outcome = run_lab(
        _spec_path(args.lab),
        args.scenarios and Path(args.scenarios),
        Path(args.reports),
        [*(["-k", args.k] if args.k else []), *args.pytest_args],
        progress=_step,
    )
    console.print(f"report: {outcome.report}")
    print(outcome.report)
    return outcome.exit_code


def cmd_audit(args: argparse.Namespace) -> int:
    from kubelab.rules.audit import AuditInputError, audit
    from kubelab.rules.expected import ObjectsError, diff_tables, expected_table
    from kubelab.rules.table import render_text

    path = Path(args.dump)
    if not path.is_file():
        raise SpecError(
            f"{path}: no such dump file; pass a file of iptables-save, nft or ipvsadm output"
        )
    try:
        table = audit(path.read_text(errors="replace"), str(path), args.pod_cidr)
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


def cmd_report(args: argparse.Namespace) -> int:
    from kubelab.report.html import render

    run_dir = Path(args.run_dir)
    if not (run_dir / "provenance.json").exists():
        raise SpecError(
            f"{run_dir}: not a run directory (no provenance.json); pass reports/<run-id>"
        )
    print(render(run_dir))
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
    p = lab_cmd("run", "up -> scenarios -> report -> down")
    p.add_argument("-k", metavar="EXPR", help="only scenarios matching this pytest expression")
    p.add_argument("--scenarios", help="scenario directory (default: scenarios/ beside labs/)")
    p.add_argument("--reports", default="reports", help="where run folders go")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser(
        "audit",
        help="read a kube-proxy dump into a forwarding table",
        description="Read iptables-save / iptables -S, nft list ruleset (text or "
        "-j) or ipvsadm -Ln / -S -n output into one forwarding table; optionally "
        "diff it against Services and EndpointSlices.",
    )
    p.add_argument("dump", help="file holding the dump")
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
    p.set_defaults(func=cmd_audit)
    p = sub.add_parser("report", help="render report.html of a run folder again")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KubelabError as exc:
        console.print(f"[red]kubelab:[/] {exc}", soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        console.print("[red]kubelab:[/] interrupted; the lab was torn down")
        return 130


if __name__ == "__main__":
    sys.exit(main())
