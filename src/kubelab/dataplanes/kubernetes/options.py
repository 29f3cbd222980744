"""The `kubernetes` dataplane's options: a kubeadm cluster with kube-proxy in the chosen
mode (or none, when Cilium replaces it), a pinned CNI in one of its modes, and MetalLB.

    dataplane: {kind: kubernetes, proxy_mode: ipvs, cni: calico, cni_mode: vxlan}

Combinations that cannot work are refused here, each with its reason, so a matrix cell
that would fail half way through `up` is refused before anything is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import model_validator

from kubelab.spec_common import DataplaneOptions

if TYPE_CHECKING:
    from kubelab.spec import LabSpec

# each CNI's modes, the first its default
CNI_MODES: dict[str, tuple[str, ...]] = {
    "flannel": ("vxlan", "host-gw"),
    "calico": ("vxlan", "ipip", "bgp"),
    "cilium": ("tunnel", "native"),
}
IPVS_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh")
# kubeadm's preflight: 2 CPUs and about 1700 MB on the control plane; the CNI agents and
# MetalLB need room on every node
MIN_CPUS = 2
MIN_MEMORY_MIB = 2048


class KubernetesOptions(DataplaneOptions):
    """A real cluster: kubeadm, kube-proxy, a CNI, MetalLB (see docs/architecture.md)."""

    kind: Literal["kubernetes"]
    # "none": no kube-proxy at all; Cilium's kube-proxy replacement forwards Services
    proxy_mode: Literal["iptables", "ipvs", "nftables", "none"] = "iptables"
    scheduler: Literal[IPVS_SCHEDULERS] = "rr"  # type: ignore[valid-type]
    cni: Literal["flannel", "calico", "cilium"] = "flannel"
    cni_mode: str | None = None  # None: the CNI's first mode (CNI_MODES)
    # Calico's own dataplane; auto: nftables under nftables kube-proxy, else iptables
    calico_dataplane: Literal["auto", "iptables", "nftables"] = "auto"
    metallb: bool = True  # MetalLB in L2 mode hands out LoadBalancer IPs from the pool
    # where the nodes' files, packages and images come from when they cannot fetch them
    # (always on the VM labs); default /var/cache/kubelab/kubernetes/<version>
    artifacts: str | None = None
    # a cluster that exists (kind, k3s, kubeadm, a cloud's): kubelab reaches it with this
    # kubeconfig (an absolute path), builds nothing and creates only the lab's objects
    kubeconfig: str | None = None
    context: str | None = None  # the kubeconfig's context; default its current one

    @property
    def mode(self) -> str:
        """The CNI's mode in use."""
        return self.cni_mode or CNI_MODES[self.cni][0]

    @property
    def kube_proxy(self) -> bool:
        return self.proxy_mode != "none"

    @property
    def calico_linux_dataplane(self) -> str:
        """Calico's Installation `linuxDataplane` (Iptables | Nftables)."""
        chosen = self.calico_dataplane
        if chosen == "auto":
            chosen = "nftables" if self.proxy_mode == "nftables" else "iptables"
        return chosen.capitalize()

    @model_validator(mode="after")
    def _combination_works(self) -> KubernetesOptions:
        modes = CNI_MODES[self.cni]
        if self.cni_mode is not None and self.cni_mode not in modes:
            raise ValueError(
                f"cni_mode {self.cni_mode!r} is not a mode of {self.cni}; use one of {list(modes)}"
            )
        if "scheduler" in self.model_fields_set and self.proxy_mode != "ipvs":
            raise ValueError(
                f"scheduler {self.scheduler!r} is read only in proxy_mode ipvs; remove it or "
                "set proxy_mode: ipvs"
            )
        if self.proxy_mode == "none" and self.cni != "cilium":
            raise ValueError(
                f"proxy_mode none leaves Services unforwarded under {self.cni}: only Cilium's "
                "kube-proxy replacement takes kube-proxy's place here; use cni: cilium or a "
                "kube-proxy mode"
            )
        if "calico_dataplane" in self.model_fields_set and self.cni != "calico":
            raise ValueError(
                "calico_dataplane is read only with cni calico; remove it or set cni: calico"
            )
        linux = self.calico_linux_dataplane
        if self.cni == "calico" and (linux == "Nftables") != (self.proxy_mode == "nftables"):
            raise ValueError(
                f"calico_dataplane {linux.lower()} under proxy_mode {self.proxy_mode}: Calico's "
                "iptables rules break beside nftables kube-proxy and its nftables dataplane "
                "needs kube-proxy in nftables mode (projectcalico/calico #8025, #10582); "
                "use calico_dataplane: auto"
            )
        return self

    def check_lab(self, spec: LabSpec) -> None:
        """Checks across the spec's sections; each message starts with its field."""
        if self.artifacts is not None and not self.artifacts.startswith("/"):
            raise ValueError(
                f"dataplane.artifacts: {self.artifacts!r} is relative; give an absolute path"
            )
        selected: dict[str, str] = {}
        for i, svc in enumerate(spec.services):
            other = selected.setdefault(svc.workload, svc.namespace)
            if other != svc.namespace:
                raise ValueError(
                    f"services[{i}].namespace: on a real cluster a Service selects pods of its "
                    f"own namespace, and workload {svc.workload!r} is selected from {other!r} "
                    "already; give this Service a workload of its own"
                )
        if self.kubeconfig is not None and not self.kubeconfig.startswith("/"):
            raise ValueError(
                f"dataplane.kubeconfig: {self.kubeconfig!r} is relative; give an absolute path"
            )
        substrate = spec.substrate.kind
        if self.kubeconfig is not None and substrate != "existing":
            raise ValueError(
                f"dataplane.kubeconfig: a {substrate} lab's cluster is built by kubelab; remove "
                "kubeconfig, or use substrate kind existing for a cluster of your own"
            )
        if self.context is not None and self.kubeconfig is None:
            raise ValueError("dataplane.context: read only with kubeconfig; set both or neither")
        if substrate == "netns":
            raise ValueError(
                "dataplane.kind: kubernetes needs machines of their own (a kubelet, a container "
                "runtime); use substrate kind vagrant or existing, or dataplane kind reference"
            )
        cpus = getattr(spec.substrate, "cpus", None)
        memory = getattr(spec.substrate, "memory_mib", None)
        if cpus is not None and cpus < MIN_CPUS:
            raise ValueError(
                f"substrate.cpus: {cpus} is too few for kubeadm (its preflight wants "
                f"{MIN_CPUS}); set cpus: {MIN_CPUS}"
            )
        if memory is not None and memory < MIN_MEMORY_MIB:
            raise ValueError(
                f"substrate.memory_mib: {memory} is too little for a kubeadm node with a CNI; "
                f"set memory_mib: {MIN_MEMORY_MIB} or more"
            )
