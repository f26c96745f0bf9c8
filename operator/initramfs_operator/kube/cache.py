"""What the operator knows of the cluster: kopf indexes fed by the watch streams it holds.

handlers.py registers four indexes, and kopf keeps them current from its watches:
- `builds`: (namespace, name) -> the InitramfsBuild;
- `build_jobs`: build uid -> its build Jobs;
- `build_pods`: Job uid -> its build pods;
- `build_warnings`: uid of a Job or pod -> the Warning Events about it that say why a pod cannot be
  created or started (FailedCreate, FailedMount, ...): the watch is of Warning Events only (the
  API server filters them), and the index keeps only those reasons; Kubernetes expires Events
  (an hour by default), and their deletion removes them from the index.
Every read of the reconciler and of the admission comes from here, so a pass costs no
request to look at anything. The values are trimmed to what is read (no managedFields), and
never changed once stored.

kopf updates the indexes in its event loop while worker threads read them; each read takes
a snapshot with one C-level copy (atomic under the GIL), retried in the rare case the
dictionary changed size between the snapshot's start and end.
"""

import threading
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping
from copy import deepcopy
from typing import Any, TypeVar

from . import buildjob, crd

JOB_UID = "batch.kubernetes.io/controller-uid"  # the label the Job controller puts on its pods
T = TypeVar("T")


def build_entry(body: Mapping) -> dict:
    meta = body["metadata"]
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k == crd.REQUESTED_AT}
    return {"metadata": {**{k: meta[k] for k in ("name", "namespace", "uid", "generation", "resourceVersion",
                                                 "creationTimestamp", "deletionTimestamp", "finalizers") if k in meta},
                         **({"annotations": annotations} if annotations else {})},
            "spec": deepcopy(dict(body.get("spec") or {})), "status": deepcopy(dict(body.get("status") or {}))}


def job_entry(body: Mapping) -> dict:
    meta, spec = body["metadata"], body.get("spec") or {}
    return {"metadata": {k: deepcopy(meta[k]) for k in ("name", "namespace", "uid", "creationTimestamp",
                                                        "deletionTimestamp", "labels", "annotations") if k in meta},
            "spec": {k: spec[k] for k in ("activeDeadlineSeconds", "ttlSecondsAfterFinished") if k in spec},
            "status": deepcopy(dict(body.get("status") or {}))}


def pod_entry(body: Mapping) -> dict:
    meta, status = body["metadata"], body.get("status") or {}
    return {"metadata": {k: meta[k] for k in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp")
                         if k in meta},
            "status": {k: deepcopy(status[k]) for k in ("phase", "reason", "message", "conditions",
                                                        "containerStatuses", "initContainerStatuses", "startTime")
                       if k in status}}


def warning_entry(body: Mapping, reasons: Collection[str]) -> tuple[str, dict] | None:
    """(uid of the object it is about, the Event trimmed) for a Warning Event with one of `reasons` about
    a Job or a pod (a ReplicaSet's FailedCreate, say, is none of a build's business)."""
    involved = body.get("involvedObject") or {}
    if body.get("type") != "Warning" or body.get("reason") not in reasons or not involved.get("uid") or \
            involved.get("kind") not in ("Job", "Pod"):
        return None
    return involved["uid"], {k: body[k] for k in ("type", "reason", "message", "lastTimestamp", "eventTime")
                             if body.get(k) is not None}


def job_uid_of_pod(labels: Mapping) -> str | None:
    return labels.get(JOB_UID) or labels.get("controller-uid")


def build_name_of(job_or_pod_annotations: Mapping) -> str | None:
    return job_or_pod_annotations.get(buildjob.BUILD_NAME)


def snapshot(read: Callable[[], Iterable[T]]) -> list[T]:
    while True:
        try:
            return list(read())
        except RuntimeError:  # changed size during iteration: kopf wrote meanwhile, read again
            continue


class Cache:
    def __init__(self) -> None:
        self._builds: Mapping[Hashable, Any] = {}
        self._jobs: Mapping[Hashable, Any] = {}
        self._pods: Mapping[Hashable, Any] = {}
        self._warnings: Mapping[Hashable, Any] = {}

    def bind(self, builds: Mapping, jobs: Mapping, pods: Mapping, warnings: Mapping) -> None:
        """The kopf indexes (kopf.Index: key -> a store of values), once kopf has made them."""
        self._builds, self._jobs, self._pods, self._warnings = builds, jobs, pods, warnings

    @staticmethod
    def _values(index: Mapping, key: Hashable) -> list[dict]:
        store = index.get(key)
        return snapshot(lambda: store) if store is not None else []

    def build(self, namespace: str, name: str) -> dict | None:
        found = self._values(self._builds, (namespace, name))
        return found[0] if found else None

    def jobs_of(self, build_uid: str) -> list[dict]:
        return self._values(self._jobs, build_uid)

    def pods_of(self, job_uid: str) -> list[dict]:
        return self._values(self._pods, job_uid)

    def warnings_about(self, uid: str) -> list[dict]:
        return self._values(self._warnings, uid)

    def build_of(self, uid: str) -> tuple[str, str] | None:
        """(namespace, build name) of the build Job or build pod with this uid. A scan: it runs for the
        rare Warning Event about a build's Job or pod, not per pass."""
        jobs = {job["metadata"]["uid"]: job for job in self.all_jobs()}
        job = jobs.get(uid)
        if job is None:
            job = next((jobs.get(str(job_uid)) for job_uid, pods in self.pods_by_job()
                        if any(pod["metadata"]["uid"] == uid for pod in pods)), None)
        name = build_name_of(job["metadata"].get("annotations") or {}) if job else None
        return (job["metadata"]["namespace"], name) if job and name else None

    def build_keys(self) -> list[Hashable]:
        return snapshot(lambda: self._builds)

    def all_jobs(self) -> list[dict]:
        return [job for uid in snapshot(lambda: self._jobs) for job in self._values(self._jobs, uid)]

    def pods_by_job(self) -> list[tuple[Hashable, list[dict]]]:
        return [(uid, self._values(self._pods, uid)) for uid in snapshot(lambda: self._pods)]


class Overlay:
    """Status this process wrote that the watch has not brought back yet.

    An index only moves forward. A write based on the version the index showed (or on an
    earlier write of ours) makes that version stale: while the index still shows a stale
    version, the written object is the truth; once it shows any other, the index has caught
    up (with our write, or with something newer) and the written object is dropped.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Hashable, tuple[frozenset[str], dict]] = {}

    def written(self, key: Hashable, based_on: dict, written: dict) -> None:
        version = based_on["metadata"]["resourceVersion"]
        with self._lock:
            before = self._entries.get(key)
            stale = {version} | (before[0] if before and before[1]["metadata"]["resourceVersion"] == version
                                 else frozenset())
            self._entries[key] = (frozenset(stale), written)

    def view(self, key: Hashable, indexed: dict) -> dict:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return indexed
            if indexed["metadata"]["resourceVersion"] in entry[0]:
                return entry[1]
            del self._entries[key]
            return indexed

    def drop(self, key: Hashable) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def prune(self, cache: Cache) -> None:
        with self._lock:
            keys = list(self._entries)
        for key in keys:
            indexed = cache.build(*key)  # type: ignore[misc]  # keys are (namespace, name)
            if indexed is None:
                self.drop(key)
            else:
                self.view(key, indexed)
