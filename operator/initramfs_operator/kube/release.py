"""The InitramfsRelease of each delivering build: what its hosts must hold, and nothing else.

The delivery agents watch releases, not builds. A build changes often in ways no host cares about (its
status at every phase, the summed Delivered condition, annotations, suspend, resources); each change
of a watched object is an event to every agent, so with agents watching builds one rollout to N hosts
cost events in proportion to N per host. A release is written only when what it says changes (compared
with the release as the operator's index holds it: no write, no event), so a rollout is about one event
per host, and the agents need no read access to builds at all.

`release_spec` is a pure function of the build, the release as last written and rollout.py's plan (which
output, which hosts now); `rollout.released_output` is the one place that decides which output hosts may
take at all.
"""

from collections.abc import Hashable, Mapping
from typing import Any

from . import api, crd
from .cache import snapshot
from .rollout import Plan, history, released_output

FIELD_MANAGER = "initramfs-operator"
DEFAULT_KEEP, DEFAULT_RECLAIM = 3, "Retain"  # the build CRD's defaults, for a build its schema did not default


def release_spec(build: Mapping[str, Any], plan: Plan | None = None,
                 held: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """What the build's release says, given which output its hosts may take and which of them may now (`plan`,
    rollout.py; by default the build's latest output, every host) and the release as written last (`held`):
    None when the build delivers nothing (or is being deleted)."""
    meta, spec = build["metadata"], build["spec"]
    delivery = spec.get("delivery")
    if delivery is None or meta.get("deletionTimestamp"):
        return None
    plan = plan or Plan(released_output(build))
    registry = spec.get("registry") or {}
    push = (spec["output"].get("oci") or {}).get("pushSecret")
    access = {"insecure": bool(registry.get("insecure")), "caConfigMap": registry.get("caConfigMap"),
              "pullSecret": push["name"] if push else None}
    keep = int(delivery.get("keep", DEFAULT_KEEP))
    released: dict[str, Any] = {
        "buildUID": meta["uid"], "buildCreationTimestamp": meta["creationTimestamp"],
        "delivery": {"nodeSelector": delivery.get("nodeSelector") or {},
                     "directory": delivery.get("directory") or meta["name"], "keep": keep,
                     "reclaimPolicy": delivery.get("reclaimPolicy", DEFAULT_RECLAIM)},
        "registry": {k: v for k, v in access.items() if v is not None},
    }
    if plan.output:
        released["output"] = plan.output
    if plan.nodes is not None:
        released["rollout"] = {"nodes": plan.nodes}
    earlier = history(held, plan.output, keep)
    return {**released, "history": earlier} if earlier else released


def release_entry(body: Mapping[str, Any]) -> dict[str, Any]:
    """A release as the operator's index keeps it: what is compared."""
    return dict(body.get("spec") or {})


class Releases:
    """Writes each build's release when, and only when, it differs from the release the index holds.

    A release is owned by its build (the garbage collector deletes it with the build); one whose build
    stops delivering is deleted here. Written by server-side apply: a write repeated before the index has
    caught up with the first changes nothing on the server, so it is no event either."""

    def __init__(self, kube: api.Kube):
        self.kube = kube
        self._index: Mapping[Hashable, Any] = {}

    def bind(self, index: Mapping[Hashable, Any]) -> None:
        self._index = index

    def held(self, namespace: str, name: str) -> dict[str, Any] | None:
        store = self._index.get((namespace, name))
        found: list[dict[str, Any]] = snapshot(lambda: store) if store is not None else []
        return found[0] if found else None

    def sync(self, namespace: str, name: str, build: Mapping[str, Any] | None, plan: Plan | None = None) -> None:
        """`build` None: it is gone, and the garbage collector takes its release."""
        if build is None:
            return
        held = self.held(namespace, name)
        wanted = release_spec(build, plan, held)
        if wanted == held:
            return
        url = api.path(crd.API_VERSION, crd.RELEASE_PLURAL, namespace, name)
        if wanted is None:
            try:
                self.kube.delete(url)
            except api.ApiError as e:
                if e.status != 404:
                    raise
            return
        meta = build["metadata"]
        self.kube.apply(url, {
            "apiVersion": crd.API_VERSION, "kind": crd.RELEASE_KIND,
            "metadata": {"name": name, "namespace": namespace, "labels": {crd.BUILD_UID_LABEL: meta["uid"]},
                         "ownerReferences": [{"apiVersion": crd.API_VERSION, "kind": crd.KIND, "name": name,
                                              "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
            "spec": wanted}, FIELD_MANAGER)
