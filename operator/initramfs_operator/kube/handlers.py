"""kopf's side of the operator: the indexes a pass reads, and event handlers that only queue builds.

- kopf indexes (cache.py) over InitramfsBuilds, build Jobs and build pods (label-selected by
  the API server) and the Warning Events that say why a pod is not created or started hold
  everything a pass reads;
- kopf event handlers only queue the build an event is about, and wake the admission (a
  Job or pod event may have freed a slot); kopf replays every object at startup, which is
  how a restarted operator adopts running Jobs.

The decorators register the handlers when this module is imported: command.py imports it
before it runs kopf.
"""

from collections.abc import Mapping
from typing import Any

import kopf

from . import buildjob, cache, crd, diagnosis, release
from .controller import Operator

# --- kopf: indexes, and events that queue builds ----------------------------------------------

JOBS = ("batch", "v1", "jobs")
PODS = ("", "v1", "pods")
EVENTS = ("", "v1", "events")
BUILD_OBJECTS = {buildjob.MANAGED_BY: buildjob.OPERATOR}
# Warning Events travel only if they may be about a build's Job or pod. A field selector cannot ask for
# "Pod or Job", only exclude kinds: these make most of a fleet's Warnings (its nodes', its controllers').
NOT_ABOUT_BUILDS = ("Node", "ReplicaSet", "Deployment", "StatefulSet", "DaemonSet", "CronJob",
                    "HorizontalPodAutoscaler", "PersistentVolumeClaim", "PersistentVolume", "Service", "Endpoints")
WARNINGS_SELECTOR = ",".join(["type=Warning", *(f"involvedObject.kind!={kind}" for kind in NOT_ABOUT_BUILDS)])


@kopf.index(crd.GROUP, crd.VERSION, crd.PLURAL)
async def builds(body: kopf.Body, namespace: str | None, name: str, **_) -> dict:
    return {(namespace, name): cache.build_entry(body)}


@kopf.index(*JOBS, labels=BUILD_OBJECTS)
async def build_jobs(body: kopf.Body, labels: Mapping[str, str], **_) -> dict | None:
    uid = labels.get(crd.BUILD_UID_LABEL)
    return {uid: cache.job_entry(body)} if uid else None


@kopf.index(*PODS, labels=BUILD_OBJECTS)
async def build_pods(body: kopf.Body, labels: Mapping[str, str], **_) -> dict | None:
    uid = cache.job_uid_of_pod(labels)
    return {uid: cache.pod_entry(body)} if uid else None


@kopf.index(*EVENTS)
async def build_warnings(body: kopf.Body, **_) -> dict | None:
    found = cache.warning_entry(body, diagnosis.WARNING_REASONS)
    return {found[0]: found[1]} if found else None


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: Any, **indexes) -> None:
    settings.posting.enabled = False  # the reconciler posts one event per state change, kopf's would be noise
    # The CRD is installed before the operator, and namespaces are given by name: kopf's scans of CRDs
    # and namespaces would only need cluster-wide permissions the operator has no other use for.
    settings.scanning.disabled = True
    # Only the operator's own Jobs and pods travel: the API server filters them.
    settings.watching.label_selectors[JOBS] = buildjob.SELECTOR
    settings.watching.label_selectors[PODS] = buildjob.SELECTOR
    settings.watching.field_selectors[EVENTS] = WARNINGS_SELECTOR
    operator: Operator = memo.operator
    operator.cache.bind(indexes["builds"], indexes["build_jobs"], indexes["build_pods"], indexes["build_warnings"])
    if operator.delivery:
        operator.delivery.bind(indexes["delivery_reports"], indexes["releases"])
    operator.start()


@kopf.on.cleanup()
async def cleanup(memo: Any, **_) -> None:
    memo.operator.stop()


@kopf.on.event(crd.GROUP, crd.VERSION, crd.PLURAL)
async def build_event(namespace: str | None, name: str, memo: Any, **_) -> None:
    memo.operator.synced.set()
    memo.operator.queue.add((namespace, name))
    if memo.operator.delivery:
        memo.operator.delivery.queue.add((namespace, name))


@kopf.on.event(*JOBS, labels=BUILD_OBJECTS)
async def job_event(namespace: str | None, annotations: Mapping[str, str], memo: Any, **_) -> None:
    dependent_event(memo.operator, namespace, annotations)


@kopf.on.event(*PODS, labels=BUILD_OBJECTS)
async def pod_event(namespace: str | None, annotations: Mapping[str, str], memo: Any, **_) -> None:
    dependent_event(memo.operator, namespace, annotations)


@kopf.on.event(*EVENTS)
async def warning_event(body: kopf.Body, memo: Any, **_) -> None:
    """A Warning that may say why a build is stuck: its build needs a pass."""
    found = cache.warning_entry(body, diagnosis.WARNING_REASONS)
    build = memo.operator.cache.build_of(found[0]) if found else None
    if build:
        memo.operator.queue.add(build)


def dependent_event(operator: Operator, namespace: str | None, annotations: Mapping[str, str]) -> None:
    """A build Job or pod changed: its build needs a pass, and a slot may have been freed."""
    operator.synced.set()
    name = cache.build_name_of(annotations)
    if name and namespace:
        operator.queue.add((namespace, name), urgent=True)
    operator.reconciler.admission.wake()


# --- delivery: the agents' reports, only when the agents run (the Nodes' labels: delivery_status.py) ----

DELIVERIES = (crd.GROUP, crd.VERSION, crd.DELIVERY_PLURAL)
RELEASES = (crd.GROUP, crd.VERSION, crd.RELEASE_PLURAL)


async def delivery_reports(body: kopf.Body, **_) -> dict | None:
    spec, meta = body.get("spec") or {}, body["metadata"]
    entry = {"spec": dict(spec), "status": dict(body.get("status") or {}), "metadata": {"name": meta["name"]}}
    return {spec["buildUID"]: entry} if spec.get("buildUID") else None


async def releases(body: kopf.Body, namespace: str | None, name: str, **_) -> dict:
    return {(namespace, name): release.release_entry(body)}


async def report_event(namespace: str | None, body: kopf.Body, memo: Any, **_) -> None:
    build = (body.get("spec") or {}).get("buildName")
    if memo.operator.delivery and namespace and build:
        memo.operator.delivery.queue.add((namespace, build))


async def release_event(namespace: str | None, name: str, memo: Any, **_) -> None:
    """A release changed or went (the operator's own write, mostly): its build's is compared again."""
    if memo.operator.delivery and namespace:
        memo.operator.delivery.queue.add((namespace, name))


def register_delivery() -> None:
    """Watches that cost nothing unless delivery is on (and need RBAC on reports and releases then)."""
    kopf.index(*DELIVERIES)(delivery_reports)
    kopf.index(*RELEASES)(releases)
    kopf.on.event(*DELIVERIES)(report_event)
    kopf.on.event(*RELEASES)(release_event)
