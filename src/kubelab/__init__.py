"""kubelab: a test lab for Kubernetes Service forwarding."""

from kubelab.errors import KubelabError, LabError, SpecError
from kubelab.spec import LabSpec, load_spec

__all__ = ["KubelabError", "LabError", "LabSpec", "SpecError", "load_spec"]
__version__ = "0.1.0"
