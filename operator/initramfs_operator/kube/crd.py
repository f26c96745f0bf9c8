"""The identity of the project's API: one place for what the CRDs, the Jobs, the handlers and the agents name."""

from collections.abc import Mapping
from typing import Any

GROUP, VERSION, KIND, PLURAL = "initramfs.dev", "v1alpha1", "InitramfsBuild", "initramfsbuilds"
API_VERSION = f"{GROUP}/{VERSION}"
DELIVERY_KIND, DELIVERY_PLURAL = "InitramfsDelivery", "initramfsdeliveries"  # one per (build, node), by the agents
RELEASE_KIND, RELEASE_PLURAL = "InitramfsRelease", "initramfsreleases"  # one per delivering build, by the operator

BUILD_UID_LABEL = f"{GROUP}/build-uid"  # on build Jobs and pods, and on delivery reports: the build they serve
NODE_LABEL = f"{GROUP}/node"            # on delivery reports: the node that wrote it
# On builds: a new value asks for a registry lookup now, and a build if that or the spec changed (flux reconcile's
# kind); status.lastHandledRequestedAt says which value was handled.
REQUESTED_AT = f"{GROUP}/requested-at"


def deliverable(build: Mapping[str, Any]) -> dict[str, Any]:
    """The output hosts may be given ({} for none): status.output, an OCI artifact. The one rule of what is
    delivered. With boot verification (spec.verify) a new output reaches status.output only once it booted
    (kube/verification.py), so an output that failed is never delivered and the last good one stays."""
    output = (build.get("status") or {}).get("output") or {}
    complete = all(output.get(k) for k in ("reference", "sha256", "sha512")) and output.get("size") is not None
    return dict(output) if complete else {}
