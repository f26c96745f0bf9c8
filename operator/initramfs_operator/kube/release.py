"""The InitramfsRelease of each delivering build: what its hosts must hold, and nothing else.

The delivery agents watch releases, not builds. A build changes often in ways no host cares about (its
status at every phase, the summed Delivered condition, annotations, suspend, resources); each change
of a watched object is an event to every agent, so with agents watching builds one rollout to N hosts
cost events in proportion to N per host. A release is written only when what it says changes (compared
with the release as the operator's index holds it: no write, no event), so a rollout is about one event
per host, and the agents need no read access to builds at all.

`release_spec` is a pure function of the build; `released_output` is the one place that decides which
output hosts may take.
"""

from collections.abc import Hashable, Mapping
from typing import Any

from . import api, crd
from .cache import snapshot

FIELD_MANAGER = "initramfs-operator"
DEFAULT_KEEP, DEFAULT_RECLAIM = 3, "Retain"  # the build CRD's defaults, for a build its schema did not default
OUTPUT_FIELDS = ("reference", "digest", "sha256", "sha512", "size", "compression")


def released_output(build: Mapping[str, Any]) -> dict[str, Any] | None:
    """The output the build's hosts may take: its latest pushed one. (A condition a build must meet before its
    hosts get it, such as a verified boot, belongs here.)"""
    output = (build.get("status") or {}).get("output") or {}
    if not all(output.get(k) for k in ("reference", "sha256", "sha512")) or output.get("size") is None:
        return None
    return {k: output[k] for k in OUTPUT_FIELDS if output.get(k) is not None}


def release_spec(build: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the build's release says; None when the build delivers nothing (or is being deleted)."""
    meta, spec = build["metadata"], build["spec"]
    delivery = spec.get("delivery")
    if delivery is None or meta.get("deletionTimestamp"):
        return None
    registry = spec.get("registry") or {}
    push = (spec["output"].get("oci") or {}).get("pushSecret")
    access = {"insecure": bool(registry.get("insecure")), "caConfigMap": registry.get("caConfigMap"),
              "pullSecret": push["name"] if push else None}
    released = {
        "buildUID": meta["uid"], "buildCreationTimestamp": meta["creationTimestamp"],
        "delivery": {"nodeSelector": delivery.get("nodeSelector") or {},
                     "directory": delivery.get("directory") or meta["name"],
                     "keep": int(delivery.get("keep", DEFAULT_KEEP)),
                     "reclaimPolicy": delivery.get("reclaimPolicy", DEFAULT_RECLAIM)},
        "registry": {k: v for k, v in access.items() if v is not None},
    }
    output = released_output(build)
    return {**released, "output": output} if output else released


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

    def sync(self, namespace: str, name: str, build: Mapping[str, Any] | None) -> None:
        """`build` None: it is gone, and the garbage collector takes its release."""
        if build is None:
            return
        wanted, held = release_spec(build), self.held(namespace, name)
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
