"""The real-cluster path, proven as far as a machine without Kubernetes packages allows:
every lab of labs/matrix.yaml plans a cluster whose kubeadm, kube-proxy, kubelet, CNI and
MetalLB configuration is checked field by field (against the spec and against the
upstream types' field names), the impossible combinations are refused with their reason,
the playbooks read nothing the plan does not give them, and `kubelab plan` creates
nothing."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import pytest
import yaml

from conftest import DATA, ROOT
from helpers import kubelab, lab_traces
from kubelab.dataplanes.kubernetes.cluster_plan import ClusterPlan, manifest_images
from kubelab.dataplanes.kubernetes.options import KubernetesOptions
from kubelab.errors import SpecError
from kubelab.matrix import load_matrix
from kubelab.plan import cluster_of, lab_plan
from kubelab.spec import LabSpec, parse_spec
from kubelab.spec_common import NetworkSpec

MATRIX = load_matrix(ROOT / "labs" / "matrix.yaml")
CELLS = {c.name: c for c in MATRIX.cells}
RUNNABLE = [c.name for c in MATRIX.runnable]
FIELDS = yaml.safe_load((DATA / "kubernetes" / "config-fields.yaml").read_text())


def cluster(name: str) -> tuple[LabSpec, ClusterPlan]:
    spec = CELLS[name].spec
    assert spec is not None
    plan = cluster_of(spec)
    assert plan is not None
    return spec, plan


def cell(name: str) -> tuple[LabSpec, ClusterPlan, KubernetesOptions, NetworkSpec]:
    """A matrix cell's spec, plan, dataplane options and network."""
    spec, plan = cluster(name)
    assert isinstance(spec.dataplane, KubernetesOptions)
    return spec, plan, spec.dataplane, spec.network


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs}


# --- the matrix ---------------------------------------------------------------------------------


def test_the_matrix_is_every_proxy_mode_under_every_cni() -> None:
    combos = {(c.values["proxy_mode"], c.values["cni"]) for c in MATRIX.cells}
    assert combos == {
        (m, c)
        for m in ("iptables", "ipvs", "nftables", "none")
        for c in ("flannel", "calico", "cilium")
    }
    refused = {
        (c.values["proxy_mode"], c.values["cni"]): c.refused for c in MATRIX.cells if c.refused
    }
    assert set(refused) == {("none", "flannel"), ("none", "calico")}
    assert all("only Cilium's kube-proxy replacement" in why for why in refused.values())
    assert len(RUNNABLE) == 10


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"cni": "calico", "proxy_mode": "nftables", "calico_dataplane": "iptables"},
         "dataplane", "Calico's iptables rules break beside nftables kube-proxy"),
        ({"cni": "calico", "proxy_mode": "ipvs", "calico_dataplane": "nftables"},
         "dataplane", "needs kube-proxy in nftables mode"),
        ({"cni": "flannel", "cni_mode": "bgp"}, "dataplane", "not a mode of flannel"),
        ({"proxy_mode": "iptables", "scheduler": "sh"}, "dataplane", "only in proxy_mode ipvs"),
        ({"cni": "flannel", "calico_dataplane": "nftables"}, "dataplane", "only with cni calico"),
        ({"artifacts": "cache"}, "dataplane.artifacts", "give an absolute path"),
    ],
)  # fmt: skip
def test_combinations_that_cannot_work_are_refused_with_the_reason(
    change: dict[str, Any], field: str, reason: str
) -> None:
    data = yaml.safe_load((ROOT / "labs" / "vm-kubernetes.yaml").read_text())
    data["dataplane"].update(change)
    with pytest.raises(SpecError) as err:
        parse_spec(data, "lab.yaml")
    line = str(err.value)
    assert line.startswith(f"lab.yaml: {field}") and reason in line and "\n" not in line


@pytest.mark.parametrize(
    ("substrate", "reason"),
    [
        ({"kind": "netns"}, "dataplane.kind: kubernetes needs machines of their own"),
        ({"kind": "vagrant", "cpus": 1, "memory_mib": 2048}, "substrate.cpus: 1 is too few"),
        ({"kind": "vagrant", "cpus": 2, "memory_mib": 1024}, "substrate.memory_mib: 1024"),
    ],
)
def test_a_cluster_needs_machines_big_enough_for_kubeadm(
    substrate: dict[str, Any], reason: str
) -> None:
    data = yaml.safe_load((ROOT / "labs" / "vm-kubernetes.yaml").read_text())
    data["substrate"] = substrate
    with pytest.raises(SpecError, match=re.escape(reason)):
        parse_spec(data, "lab.yaml")


# --- every rendered field -----------------------------------------------------------------------


def unknown_fields(doc: dict[str, Any], type_name: str, path: str = "") -> list[str]:
    """Keys of `doc` that are not json fields of the upstream type (recursively)."""
    fields = FIELDS["types"][type_name]
    out = []
    for key, value in doc.items():
        where = f"{path}.{key}" if path else key
        if key not in fields:
            out.append(f"{type_name}: {where}")
            continue
        child = fields[key]
        if child == "-":
            continue
        for item in value if isinstance(value, list) else [value]:
            out += unknown_fields(item, child, where)
    return out


def test_the_field_check_names_a_misspelt_field() -> None:
    _, plan = cluster("mxiptfla")
    init = plan.init_documents()[0]
    registration = dict(init["nodeRegistration"])
    registration["kubeletExtraArg"] = registration.pop("kubeletExtraArgs")
    assert unknown_fields({**init, "nodeRegistration": registration}, "InitConfiguration") == [
        "NodeRegistrationOptions: nodeRegistration.kubeletExtraArg"
    ]


def rendered_documents(plan: ClusterPlan) -> list[dict[str, Any]]:
    docs = plan.init_documents() + [d for ds in plan.join_documents().values() for d in ds]
    docs += plan.metallb_documents()
    if plan.options.cni == "calico":
        docs.append(plan.cni_config())
    return docs


@pytest.mark.parametrize("name", RUNNABLE)
def test_every_rendered_field_is_a_field_of_the_upstream_types(name: str) -> None:
    _, plan = cluster(name)
    docs = rendered_documents(plan)
    assert docs
    bad = [f for d in docs for f in unknown_fields(d, FIELDS["roots"][d["kind"]])]
    assert bad == []
    for d in docs:
        for key, allowed in FIELDS["enums"].items():
            kind, field = key.split(".")
            found = _values_of(d, kind, field)
            assert set(found) <= set(allowed), (key, found)


def _values_of(doc: dict[str, Any], type_name: str, field: str) -> list[Any]:
    """Every value of `field` in the parts of `doc` that are of `type_name`."""
    out: list[Any] = []

    def walk(node: Any, current: str) -> None:
        if not isinstance(node, dict):
            return
        if current == type_name and field in node:
            out.append(node[field])
        for key, value in node.items():
            child = FIELDS["types"].get(current, {}).get(key, "-")
            for item in value if isinstance(value, list) else [value]:
                if child != "-":
                    walk(item, child)

    walk(doc, FIELDS["roots"][doc["kind"]])
    return out


@pytest.mark.parametrize("name", RUNNABLE)
def test_kubeadm_configuration_field_by_field(name: str) -> None:
    spec, plan, options, net = cell(name)
    nodes = {n.name: str(n.ip) for n in plan.nodes}
    cp = spec.nodes[0].name
    docs = by_kind(plan.init_documents())
    assert all(d["apiVersion"] == "kubeadm.k8s.io/v1beta4" for k, d in docs.items()
               if k in ("InitConfiguration", "ClusterConfiguration"))  # fmt: skip

    init = docs["InitConfiguration"]
    assert init["localAPIEndpoint"] == {"advertiseAddress": nodes[cp], "bindPort": 6443}
    registration = init["nodeRegistration"]
    assert registration["name"] == cp
    assert registration["criSocket"] == "unix:///run/containerd/containerd.sock"
    assert registration["kubeletExtraArgs"] == [{"name": "node-ip", "value": nodes[cp]}]
    assert registration["taints"] == []  # pods on the control plane too
    assert init.get("skipPhases", []) == ([] if options.kube_proxy else ["addon/kube-proxy"])

    config = docs["ClusterConfiguration"]
    assert config["kubernetesVersion"] == "v1.35.4"
    assert config["controlPlaneEndpoint"] == f"{nodes[cp]}:6443"
    assert config["networking"] == {
        "podSubnet": str(net.pod_cidr),
        "serviceSubnet": str(net.service_cidr),
        "dnsDomain": "cluster.local",
    }
    assert config["controllerManager"]["extraArgs"] == [
        {"name": "node-cidr-mask-size", "value": str(net.node_pod_prefix)}
    ]
    assert docs["KubeletConfiguration"]["cgroupDriver"] == "systemd"

    proxy = docs.get("KubeProxyConfiguration")
    if not options.kube_proxy:
        assert proxy is None  # Cilium replaces kube-proxy: no kube-proxy at all
    else:
        assert proxy is not None
        assert proxy["apiVersion"] == "kubeproxy.config.k8s.io/v1alpha1"
        assert proxy["mode"] == options.proxy_mode
        assert proxy["clusterCIDR"] == str(net.pod_cidr)
        assert proxy["metricsBindAddress"] == "0.0.0.0:10249"
        if options.proxy_mode == "ipvs":
            assert proxy["ipvs"] == {"scheduler": "rr", "strictARP": True}  # MetalLB L2
        else:
            assert "ipvs" not in proxy

    joins = plan.join_documents()
    assert sorted(joins) == sorted(n.name for n in spec.nodes[1:])
    for node, (join,) in joins.items():
        assert join["kind"] == "JoinConfiguration"
        token = join["discovery"]["bootstrapToken"]
        assert token["apiServerEndpoint"] == f"{nodes[cp]}:6443"
        assert token["caCertHashes"] == ["{{ workers_ca_cert_hash }}"]  # pinned, not skipped
        assert join["nodeRegistration"]["kubeletExtraArgs"] == [
            {"name": "node-ip", "value": nodes[node]}
        ]
        assert "taints" not in join["nodeRegistration"]


@pytest.mark.parametrize("name", RUNNABLE)
def test_cni_and_metallb_configuration_field_by_field(name: str) -> None:
    _, plan, options, net = cell(name)
    config = plan.cni_config()
    if options.cni == "flannel":
        assert config["net_conf"] == {
            "Network": str(net.pod_cidr),
            "EnableNFTables": options.proxy_mode == "nftables",
            "Backend": {"Type": options.mode},
        }
        assert config["args"] == ["--ip-masq", "--kube-subnet-mgr", "--iface=eth1"]
    elif options.cni == "calico":
        network = config["spec"]["calicoNetwork"]
        expected = "Nftables" if options.proxy_mode == "nftables" else "Iptables"
        assert network["linuxDataplane"] == expected
        assert network["bgp"] == ("Disabled" if options.mode == "vxlan" else "Enabled")
        assert network["nodeAddressAutodetectionV4"] == {"cidrs": [str(net.node_cidr)]}
        (pool,) = network["ipPools"]
        assert ipaddress.ip_network(pool["cidr"]).subnet_of(net.pod_cidr)  # the operator's rule
        assert (
            pool["encapsulation"] == {"vxlan": "VXLAN", "ipip": "IPIP", "bgp": "None"}[options.mode]
        )
    else:
        assert config["kubeProxyReplacement"] is (options.proxy_mode == "none")
        assert config["k8sServiceHost"] == str(plan.control_plane.ip)
        assert config["k8sServicePort"] == 6443
        assert config["ipam"] == {"mode": "kubernetes"}  # not 10.0.0.0/8
        assert config["routingMode"] == options.mode
        assert config["devices"] == ["eth1"]
    pool, advert = plan.metallb_documents()
    assert pool["spec"]["addresses"] == [str(net.lb_pool)]
    assert ipaddress.ip_network(pool["spec"]["addresses"][0]).subnet_of(net.node_cidr)
    assert advert["spec"] == {"ipAddressPools": [pool["metadata"]["name"]], "interfaces": ["eth1"]}


# --- what the playbooks read --------------------------------------------------------------------

ANSIBLE_MAGIC = {"inventory_hostname", "groups", "hostvars", "ansible_facts", "playbook_dir",
                 "item", "omit", "lookup", "query", "true", "false"}  # fmt: skip
ROLES = ("fetch", "containerd", "kubernetes", "control_plane", "workers", "cni", "metallb",
         "collect", "common")  # fmt: skip


def role_variables() -> tuple[set[str], set[str]]:
    """(variables the roles read, variables they define) over every task and template."""
    env = jinja2.Environment()
    env.filters.update(dict.fromkeys(["to_nice_yaml", "to_json", "dict2items", "combine",
                       "regex_replace", "bool"], lambda *a, **k: a[0]))  # fmt: skip
    env.tests.update(match=lambda *a: True)
    used: set[str] = set()
    defined: set[str] = set()

    def read(text: str) -> None:
        used.update(jinja2.meta.find_undeclared_variables(env.parse(text)))

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "register":
                    defined.add(v)
                elif k == "ansible.builtin.set_fact" or k == "vars":
                    defined.update(v)
                walk(v, k)
        elif isinstance(node, list):
            for item in node:
                walk(item, key)
        elif isinstance(node, str):
            read(f"{{{{ {node} }}}}" if key in ("when", "until", "that", "changed_when",
                 "failed_when") else node)  # fmt: skip

    for role in ROLES:
        folder = ROOT / "playbooks" / "roles" / role
        for path in folder.glob("defaults/*.yml"):
            defaults = yaml.safe_load(path.read_text()) or {}
            defined.update(defaults)
            walk(defaults)
        for path in [*folder.glob("tasks/*.yml"), *folder.glob("handlers/*.yml")]:
            walk(yaml.safe_load(path.read_text()))
        for path in folder.glob("templates/*"):
            read(path.read_text())
    walk(yaml.safe_load((ROOT / "playbooks" / "kubernetes.yml").read_text()))
    return used, defined


@pytest.mark.parametrize("name", ["mxiptfla", "mxipvcal", "mxnftcil", "mxnoncil"])
def test_the_playbooks_read_only_what_the_plan_gives_them(name: str) -> None:
    _, plan = cluster(name)
    given = plan.playbook_vars()
    used, defined = role_variables()
    missing = used - defined - set(given) - ANSIBLE_MAGIC
    # the join credentials are set on the spot by the workers role, as are these
    assert missing == set(), sorted(missing)
    unused = set(given) - used
    assert unused == set(), f"the plan passes variables no role reads: {sorted(unused)}"


def test_the_file_names_the_roles_pick_are_in_every_plan() -> None:
    for name in RUNNABLE:
        _, plan = cluster(name)
        names = list(plan.playbook_vars()["kubernetes_downloads"])
        assert sum(n.startswith("containerd-") and n.endswith(".tar.gz") for n in names) == 1
        assert sum(n.startswith("cni-plugins") for n in names) == 1
        assert "runc.amd64" in names and "containerd.service" in names
        chart = f"cilium-{plan.playbook_vars()['cilium_version']}.tgz"
        wanted = {"flannel": {"kube-flannel.yml"}, "cilium": {chart},
                  "calico": {"operator-crds.yaml", "tigera-operator.yaml"}}  # fmt: skip
        assert wanted[plan.options.cni] <= set(names)
        assert "metallb-native.yaml" in names


# --- artifacts: what VMs with no route out need -------------------------------------------------


def test_an_empty_artifacts_folder_is_listed_file_by_file(tmp_path: Path) -> None:
    spec, _ = cluster("mxiptfla")
    spec = spec.model_copy(
        update={"dataplane": spec.dataplane.model_copy(update={"artifacts": str(tmp_path)})}
    )
    plan = cluster_of(spec)
    assert plan is not None and plan.package_source == "artifacts"
    missing = plan.missing_artifacts()
    assert len(missing) == len(plan.downloads()) + 2  # every file, the debs, the images
    assert any("apt-get install --download-only kubeadm=1.35.4-1.1" in m for m in missing)
    for d in plan.downloads():
        (tmp_path / "files").mkdir(exist_ok=True)
        (tmp_path / "files" / d.name).write_text("")
    (tmp_path / "files" / "kube-flannel.yml").write_text(
        (DATA / "kubernetes" / "flannel-like.yml").read_text()
    )
    (tmp_path / "debs").mkdir()
    for package in ("kubeadm", "kubelet", "kubectl"):
        (tmp_path / "debs" / f"{package}_1.35.4-1.1_amd64.deb").write_text("")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "pause.tar").write_text("")
    assert plan.missing_artifacts() == []
    images = plan.images()
    assert "registry.k8s.io/kube-proxy:v1.35.4" in images
    assert images[-2:] == ["ghcr.io/flannel-io/flannel-cni-plugin:v1.8.0-flannel1",
                           "ghcr.io/flannel-io/flannel:v0.28.4"]  # fmt: skip
    assert plan.manifests_pending() == []


def test_manifest_images_are_read_from_every_document() -> None:
    text = (DATA / "kubernetes" / "flannel-like.yml").read_text()
    assert manifest_images(text) == [
        "ghcr.io/flannel-io/flannel-cni-plugin:v1.8.0-flannel1",
        "ghcr.io/flannel-io/flannel:v0.28.4",
    ]


# --- the command line ---------------------------------------------------------------------------


def test_plan_prints_the_cluster_and_creates_nothing(tmp_path: Path) -> None:
    before = set(Path("/run/kubelab").glob("*")) if Path("/run/kubelab").exists() else set()
    proc = kubelab("plan", "labs/vm-kubernetes.yaml", "--vars", str(tmp_path / "vars.json"))
    assert proc.returncode == 0, proc.stderr
    for heading in ("== kubeadm-init.yaml on node1", "== kubeadm-join.yaml on node3",
                    "== CNI: flannel vxlan", "== MetalLB (L2)", "kind: KubeProxyConfiguration",
                    "== images", "site.yml", "control_plane"):  # fmt: skip
        assert heading in proc.stdout, heading
    rendered = proc.stdout.split("== kubeadm-init.yaml on node1 (kubeadm init --config)\n")[1]
    init = list(yaml.safe_load_all(rendered.split("\n== ")[0]))
    spec = CELLS["mxiptfla"].spec
    assert spec is not None
    plan = cluster_of(spec.model_copy(update={"name": "vmk8s"}))
    assert plan is not None and init == plan.init_documents()  # the text is the file
    given = json.loads((tmp_path / "vars.json").read_text())
    assert given["kubeadm_init_documents"] == init and given["cni_name"] == "flannel"
    after = set(Path("/run/kubelab").glob("*")) if Path("/run/kubelab").exists() else set()
    assert after == before


def test_plan_as_data_for_a_reference_vm_lab() -> None:
    proc = kubelab("plan", "labs/vm-ipvs.yaml", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert [m["name"] for m in plan["substrate"]["vms"]] == ["node1", "node2"]
    assert plan["substrate"]["playbooks"]["site.yml"][0]["roles"] == ["common"]
    assert plan["dataplane"]["proxy_mode"] == "ipvs" and plan["dataplane"]["scheduler"] == "rr"
    assert plan["dataplane"]["rule_layout"].startswith("kube-proxy")


def test_plan_lists_the_matrix_with_its_refusals() -> None:
    proc = kubelab("plan", "--matrix", "labs/matrix.yaml")
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.strip().splitlines()
    assert len(rows) == 12
    assert (
        sum("refused: " in r for r in rows) == 2 and sum(r.endswith("planned") for r in rows) == 10
    )


def test_up_without_the_artifacts_stops_before_anything_is_built(tmp_path: Path) -> None:
    """The VMs have no route out: with the artifacts folder empty, `up` stops with one
    line naming what is missing and how to get it, and builds nothing (no namespace, no
    VM: the check runs before the substrate's)."""
    data = yaml.safe_load((ROOT / "labs" / "vm-kubernetes.yaml").read_text())
    data["dataplane"]["artifacts"] = str(tmp_path / "empty")
    spec_file = tmp_path / "vmk8s.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    proc = kubelab("up", str(spec_file))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"{tmp_path / 'empty'}: " in lines[0] and "artifacts missing" in lines[0]
    assert "`kubelab fetch` this lab on a machine with Internet access" in lines[0]
    assert lab_traces("vmk8s", vm=True) == []


def test_the_lab_plan_of_every_matrix_cell_is_data() -> None:
    for name in RUNNABLE:
        spec = CELLS[name].spec
        assert spec is not None
        plan = lab_plan(spec)
        json.dumps(plan)  # serialisable as is
        assert plan["dataplane"]["package_source"] == "artifacts"  # VMs: no route out


def test_hosts_you_own_fetch_for_themselves_and_name_their_interface(tmp_path: Path) -> None:
    (tmp_path / "hosts.ini").write_text(
        "[nodes]\n"
        "n1 ansible_host=203.0.113.1 node_ip=10.77.0.11 node_interface=ens4\n"
        "n2 ansible_host=203.0.113.2 node_ip=10.77.0.12 node_interface=ens4\n"
        "[client]\nc1 ansible_host=203.0.113.3 node_ip=10.77.0.254\n"
    )  # documentation addresses: nothing is contacted
    spec = parse_spec(
        {
            "name": "ex",
            "substrate": {"kind": "existing", "inventory": "hosts.ini"},
            "dataplane": {"kind": "kubernetes", "proxy_mode": "nftables", "cni": "flannel"},
            "network": {"node_cidr": "10.77.0.0/24"},
            "workloads": [{"name": "echo", "pods_per_node": 1}],
            "services": [
                {"name": "echo", "workload": "echo", "ports": [{"port": 80, "target_port": 8080}]}
            ],
        },
        "ex.yaml",
        tmp_path,
    )
    plan = cluster_of(spec)
    assert plan is not None
    assert plan.package_source == "internet" and plan.missing_artifacts() == []
    assert [n.name for n in plan.nodes] == ["n1", "n2"]
    assert plan.cni_config()["args"][-1] == "--iface=ens4"
    assert plan.cni_config()["net_conf"]["EnableNFTables"] is True
    assert plan.metallb_documents()[1]["spec"]["interfaces"] == ["ens4"]
    init = by_kind(plan.init_documents())["InitConfiguration"]
    assert init["localAPIEndpoint"]["advertiseAddress"] == "10.77.0.11"
    assert plan.playbook_vars()["kubernetes_downloads"]["runc.amd64"]["checksum"].startswith(
        "sha256:https://github.com/opencontainers/runc/releases/download/"
    )


def test_the_kubernetes_matrix_without_artifacts_lists_each_cell_not_run(tmp_path: Path) -> None:
    """Every runnable cell stops at its artifacts check, before any VM exists, and the
    matrix's record says so cell by cell; the refused cells keep their reason."""
    base = yaml.safe_load((ROOT / "labs" / "vm-kubernetes.yaml").read_text())
    base["dataplane"]["artifacts"] = str(tmp_path / "empty")
    (tmp_path / "vm-kubernetes.yaml").write_text(yaml.safe_dump(base))
    matrix = yaml.safe_load((ROOT / "labs" / "matrix.yaml").read_text())
    (tmp_path / "matrix.yaml").write_text(yaml.safe_dump(matrix, sort_keys=False))
    proc = kubelab("run", "--matrix", str(tmp_path / "matrix.yaml"), "--reports",
                   str(tmp_path / "reports"))  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # no cell ran: nothing to compare
    (record,) = (tmp_path / "reports").glob("matrix-*/matrix.json")
    cells = json.loads(record.read_text())["cells"]
    assert {c["status"] for c in cells} == {"refused", "not run"}
    assert [c["lab"] for c in cells if c["status"] == "not run"] == RUNNABLE
    assert all("artifacts missing" in c["reason"] for c in cells if c["status"] == "not run")
    assert lab_traces("mxiptfla", vm=True) == []
