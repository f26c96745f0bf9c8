"""The identity of the project's API: one place for what the CRDs, the Jobs, the handlers and the agents name."""

from collections.abc import Mapping
from typing import Any

from ..oci.image import PLATFORM_FIELDS

GROUP, VERSION, KIND, PLURAL = "initramfs.dev", "v1alpha1", "InitramfsBuild", "initramfsbuilds"
API_VERSION = f"{GROUP}/{VERSION}"
DELIVERY_KIND, DELIVERY_PLURAL = "InitramfsDelivery", "initramfsdeliveries"  # one per (build, node), by the agents
RELEASE_KIND, RELEASE_PLURAL = "InitramfsRelease", "initramfsreleases"  # one per delivering build, by the operator

BUILD_UID_LABEL = f"{GROUP}/build-uid"  # on build Jobs and pods, and on delivery reports: the build they serve
NODE_LABEL = f"{GROUP}/node"            # on delivery reports: the node that wrote it
# On builds: a new value asks for a registry lookup now, and a build if that or the spec changed (flux reconcile's
# kind); status.lastHandledRequestedAt says which value was handled.
REQUESTED_AT = f"{GROUP}/requested-at"


OS_LABEL, ARCH_LABEL = "kubernetes.io/os", "kubernetes.io/arch"  # a Node's platform, as the kubelet labels it
FILE_FIELDS = ("reference", "sha256", "sha512")


def deliverable(build: Mapping[str, Any]) -> dict[str, Any]:
    """The output hosts may be given ({} for none): status.output, an OCI artifact. The one rule of what is
    delivered. With boot verification (spec.verify) a new output reaches status.output only once it booted
    (kube/verification.py), so an output that failed is never delivered and the last good one stays.
    A build of several platforms pushed an index (status.output, with `platforms`) and one file per platform
    (status.outputs): those come as its `outputs`, each complete on its own."""
    status = build.get("status") or {}
    output = status.get("output") or {}
    if "platforms" in output:
        files = [dict(f) for f in status.get("outputs") or []]
        complete = output.get("reference") and output.get("digest") and files and all(map(_complete, files))
        return {**output, "outputs": files} if complete else {}
    return dict(output) if _complete(output) else {}


def _complete(output: Mapping[str, Any]) -> bool:
    return all(output.get(k) for k in FILE_FIELDS) and output.get("size") is not None


def platform_name(entry: Mapping[str, Any]) -> str:
    """os/architecture[/variant] of one of a release's platforms."""
    return "/".join(entry[k] for k in PLATFORM_FIELDS if entry.get(k))


def file_for(output: Mapping[str, Any], labels: Mapping[str, str]) -> Mapping[str, Any] | None:
    """The file a node with these labels holds of a release's output. One file (a build of one platform) is the
    file of every node but those whose kubernetes.io/os or kubernetes.io/arch label says another platform than
    the one it was built for (a node without the labels, or a file whose platform is not known, takes it, as it
    always did); of several platforms, the first whose os and architecture are the node's kubernetes.io/os and
    kubernetes.io/arch (Kubernetes labels no CPU variant: list the variant the hosts run first); None when the
    build has none of the node's platform. The operator counts and the agent picks by this one rule."""
    platforms = output.get("platforms")
    if platforms is None:
        built_for = {OS_LABEL: output.get("os"), ARCH_LABEL: output.get("architecture")}
        return None if any(v and labels.get(k) and labels[k] != v for k, v in built_for.items()) else output
    node = (labels.get(OS_LABEL), labels.get(ARCH_LABEL))
    return next((p for p in platforms if (p["os"], p["architecture"]) == node), None)


def platforms_of(output: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The platforms a release's output has a file for, as far as it says."""
    return list(output.get("platforms") or ([output] if output.get("architecture") else []))


def node_platform(labels: Mapping[str, str]) -> str:
    """A node's os/architecture from its labels, "?" for a label it lacks."""
    return f"{labels.get(OS_LABEL) or '?'}/{labels.get(ARCH_LABEL) or '?'}"
