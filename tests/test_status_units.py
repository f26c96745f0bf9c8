"""What `kubectl get/describe`, Argo CD and Flux show of a build, without a cluster: each message says each
piece once, a failure that may pass on a retry is Reconciling and one that needs someone is Stalled (both say
when they are looked at again), and Node events requeue builds only when a selector's choice of nodes changes."""

import asyncio

import kopf
import pytest

from fixtures.fake_kube import FakeClock
from initramfs_operator.kube import buildjob, conditions, controller, diagnosis, handlers
from initramfs_operator.kube.cache import Overlay
from initramfs_operator.kube.delivery_status import labels_only
from initramfs_operator.kube.jobs import deadline_message
from initramfs_operator.kube.report import Report
from initramfs_operator.kube.settings import Settings
from initramfs_operator.kube.workqueue import Backoff, Retries

RUNS_AS_ROOT = 'container has runAsNonRoot and image will run as root (pod: "b-x_ns(0a1b)", container: build)'
BUILDER = "registry.example/initramfs-operator@sha256:" + "0" * 64


def waiting_pod(reason: str, message: str | None) -> dict:
    waiting = {"reason": reason, **({"message": message} if message is not None else {})}
    return {"metadata": {"name": "p", "uid": "u", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "status": {"phase": "Pending", "containerStatuses": [{"name": "build", "image": BUILDER,
                                                                  "state": {"waiting": waiting}}]}}


# --- each piece of a message once -----------------------------------------------------------------------------

@pytest.mark.parametrize(("kubelet_reason", "kubelet_message", "reason", "message"), [
    # The condition's reason is the kubelet's: the message is the kubelet's alone.
    ("CreateContainerConfigError", RUNS_AS_ROOT, "CreateContainerConfigError", RUNS_AS_ROOT),
    # A different kubelet reason under the condition's: named once, before its message.
    ("CreateContainerError", "failed to reserve container name", "CreateContainerConfigError",
     "CreateContainerError: failed to reserve container name"),
    ("ImagePullBackOff", f'Back-off pulling image "{BUILDER}"', "BuilderImagePullFailed",
     f'ImagePullBackOff: Back-off pulling image "{BUILDER}"'),
    # A kubelet message that starts with its reason already.
    ("ErrImagePull", f"ErrImagePull: {BUILDER}: not found", "BuilderImagePullFailed",
     f"ErrImagePull: {BUILDER}: not found"),
    # No message: the image the pod waits for (its reference as the pod spec has it, digest once).
    ("ErrImagePull", None, "BuilderImagePullFailed", f"ErrImagePull: {BUILDER}"),
])
def test_a_stuck_pod_message_says_each_piece_once(kubelet_reason, kubelet_message, reason, message):
    assert diagnosis.of_pod(waiting_pod(kubelet_reason, kubelet_message)) == diagnosis.Diagnosis(reason, message)


def test_messages_built_on_a_diagnosis_name_its_reason_once():
    found = diagnosis.of_pod(waiting_pod("CreateContainerConfigError", RUNS_AS_ROOT))
    assert found is not None
    # A refresh rebuild stuck on it: Ready stays True, Reconciling (Refreshing) says what holds it up.
    refresh = conditions.over_previous_output(conditions.retrying(found.reason, found.message, "Building"), "v1")
    assert refresh.reconciling == conditions.Reason("Refreshing", f"CreateContainerConfigError: {RUNS_AS_ROOT}")
    # Its deadline passed meanwhile: DeadlineExceeded says what it was.
    ready = {"type": "Ready", "status": "False", "reason": found.reason, "message": found.message}
    failed = {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
              "message": "Job was active longer than specified deadline"}
    assert deadline_message("b-1-abc", failed, ready) == (
        "build job b-1-abc: Job was active longer than specified deadline "
        f"(it was CreateContainerConfigError: {RUNS_AS_ROOT})")
    assert deadline_message("b-1-abc", failed, {"reason": "Building", "message": "build job b-1-abc is running"}) \
        == "build job b-1-abc: Job was active longer than specified deadline"


@pytest.mark.parametrize(("reason", "message", "shown"), [
    ("FailedMount", 'MountVolume.SetUp failed for volume "out": secret "push" not found',
     'FailedMount: MountVolume.SetUp failed for volume "out": secret "push" not found'),
    ("FailedCreate", "FailedCreate: exceeded quota: q", "FailedCreate: exceeded quota: q"),
    ("FailedCreate", "", "FailedCreate"),
])
def test_an_event_message_names_its_reason_once(reason, message, shown):
    event = {"type": "Warning", "reason": reason, "message": message, "lastTimestamp": "2024-01-01T00:00:05Z"}
    found = diagnosis.of_events([event])
    assert found is not None and found.message == shown


# --- retried (Reconciling) or Stalled, never both, never a promise a Stalled build does not keep ---------------

DIGEST = "sha256:" + "d" * 64
KEY = ("ns", "b")


def build(generation: int, status: dict, image: str = f"127.0.0.1:1/app@{DIGEST}") -> dict:
    return {"metadata": {"namespace": "ns", "name": "b", "uid": "u1", "generation": generation,
                         "resourceVersion": "7", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"image": image, "output": {"pvc": {"claimName": "c", "path": "x"}}}, "status": status}


@pytest.fixture
def report() -> Report:
    """A pass over a build, on a clock that stands still; no API: after_failure sends nothing."""
    return Report(None, Overlay(), {}, FakeClock(), build(1, {}))  # type: ignore[arg-type]


RETRIES = Retries(Backoff(base=1.0, cap=1.0, jitter=0), FakeClock())  # a one-second backoff, no jitter


def kstatus_shape(state: conditions.State) -> dict:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in conditions.conditions(None, state, 1, "t")}


def test_a_retried_failure_is_reconciling_and_says_when_it_is_tried_again(report):
    RETRIES.reset(KEY)
    state = report.after_failure("JobRejected", "exceeded quota: q", RETRIES.failed(KEY), "Queued", transient=True,
                                 stall_after=3)
    note = "exceeded quota: q; next attempt in 1s (1 failed in a row)"
    assert kstatus_shape(state) == {"Ready": ("False", "JobRejected", note), "Reconciling": ("True", "Queued", note)}
    assert report.requeue_after == 1.0  # and it is tried again


@pytest.mark.parametrize(("failures", "transient", "reason", "error", "message"), [
    # A transient failure's last attempt (stall_after 3).
    (3, True, "ImagePullFailed", "registry down", "registry down; next attempt in 1s (3 failed in a row)"),
    # One no retry alone could fix: Stalled at once, but still looked at again (a Secret applied later heals it).
    (1, False, "Unauthorized", "unauthorized", "unauthorized; next attempt in 1s (1 failed in a row)"),
])
def test_a_stalled_failure_is_still_tried_again_after_its_backoff(report, failures, transient, reason, error,
                                                                   message):
    RETRIES.reset(KEY)
    for _ in range(failures - 1):
        RETRIES.failed(KEY)
    state = report.after_failure(reason, error, RETRIES.failed(KEY), "Resolving", transient, stall_after=3)
    assert kstatus_shape(state) == {"Ready": ("False", reason, message), "Stalled": ("True", reason, message)}
    assert report.requeue_after == 1.0


# --- Node events: only a change in which nodes a selector picks queues a build --------------------------------

SELECTORS = {"every-node": {}, "vm-only": {"matchLabels": {"vm": "yes"}}, "no-delivery": None}


@pytest.fixture
def operator():
    """An Operator with delivery on, its build index holding one build per selector; no API server (a Node
    event only queues builds: no request is sent) and no thread started."""
    op = controller.Operator(None, Settings("builder:1", 1), ("ns", "lease"), 15.0, deliveries=True)
    builds = {}
    for name, selector in SELECTORS.items():
        spec = build(1, {})["spec"]
        if selector is not None:
            spec["delivery"] = {"nodeSelector": selector, "directory": "d"}
        builds[("ns", name)] = [{"metadata": {"namespace": "ns", "name": name, "uid": name}, "spec": spec}]
    op.cache.bind(builds, {}, {}, {})
    return op


def node(name: str, labels: dict, version: str) -> dict:
    """A Node as the metadata-only watch brings it, trimmed as the operator keeps it."""
    return labels_only({"metadata": {"name": name, "labels": labels, "resourceVersion": version,
                                     "managedFields": [{"manager": "kubelet"}]}})


def node_event(op, old: dict | None, new: dict | None) -> list[str]:
    """Delivers one change of the Node informer (old None: listed or added; new None: deleted); the names
    of the builds it queued."""
    op.delivery.node_changed(("", (new or old)["metadata"]["name"]), old, new)
    queued = []
    while (key := op.delivery.queue.get(timeout=0.01)) is not None:
        op.delivery.queue.done(key)
        queued.append(key[1])
    return sorted(queued)


def test_node_events_queue_a_build_only_when_its_selector_gains_or_loses_the_node(operator):
    n1 = node("n1", {"vm": "yes"}, "1")
    assert n1 == {"metadata": {"name": "n1", "labels": {"vm": "yes"}, "resourceVersion": "1"}}  # no managedFields
    assert node_event(operator, None, n1) == ["every-node", "vm-only"]
    # kubelet heartbeats and other status updates: labels unchanged, nothing to recompute.
    for version in ("2", "3", "4"):
        n1, before = node("n1", {"vm": "yes"}, version), n1
        assert node_event(operator, before, n1) == []
    n1, before = node("n1", {"vm": "no"}, "5"), n1
    assert node_event(operator, before, n1) == ["vm-only"]  # left its selector
    n1, before = node("n1", {"vm": "no", "zone": "a"}, "6"), n1
    assert node_event(operator, before, n1) == []  # no selector cares
    assert node_event(operator, n1, None) == ["every-node"]
    assert node_event(operator, None, node("n2", {"vm": "yes"}, "7")) == ["every-node", "vm-only"]
    # A node's platform changing changes which file of a build of several platforms it takes: its builds sum again.
    n2 = node("n2", {"vm": "yes", "kubernetes.io/arch": "arm64"}, "8")
    assert node_event(operator, node("n2", {"vm": "yes"}, "7"), n2) == ["every-node", "vm-only"]
    assert node_event(operator, n2, node("n2", {"vm": "no", "kubernetes.io/arch": "amd64"}, "9")) == \
        ["every-node", "vm-only"]  # vm-only: left it
    assert node_event(operator, node("n3", {"vm": "no"}, "1"), node("n3", {"vm": "no", "kubernetes.io/arch": "arm64"},
                                                                    "2")) == ["every-node"]


# --- Warning Events: indexed by what they are about, and queueing that object's build -------------------------

def warning(reason: str, uid: str, kind: str = "Warning", about: str = "Pod") -> dict:
    return {"type": kind, "reason": reason, "message": f"{reason} about {uid}", "lastTimestamp": "2024-01-01T00:00:05Z",
            "involvedObject": {"kind": about, "uid": uid}, "metadata": {"name": "e", "managedFields": [{}]}}


def test_only_warnings_that_explain_a_stuck_build_are_indexed_trimmed():
    index = asyncio.run(handlers.build_warnings(body=warning("FailedMount", "pod-1")))
    assert index == {"pod-1": {"type": "Warning", "reason": "FailedMount", "message": "FailedMount about pod-1",
                               "lastTimestamp": "2024-01-01T00:00:05Z"}}
    for ignored in (warning("BackOff", "pod-1"), warning("FailedMount", "pod-1", kind="Normal"),
                    warning("FailedMount", ""), warning("FailedCreate", "rs-1", about="ReplicaSet")):
        assert asyncio.run(handlers.build_warnings(body=ignored)) is None


def test_a_warning_about_a_build_job_or_its_pod_queues_that_build(operator):
    job = {"metadata": {"namespace": "ns", "name": "vm-only-1", "uid": "job-1",
                        "annotations": {buildjob.BUILD_NAME: "vm-only"}}}
    pod = {"metadata": {"namespace": "ns", "name": "vm-only-1-x", "uid": "pod-1"}}
    operator.cache.bind({}, {"vm-only": [job]}, {"job-1": [pod]}, {})
    queued = []
    for about, kind in (("pod-1", "Pod"), ("job-1", "Job"), ("someone-else", "Pod")):
        asyncio.run(handlers.warning_event(body=warning("FailedCreate", about, about=kind),
                                             memo=kopf.Memo(operator=operator)))
        while (key := operator.queue.get(timeout=0.01)) is not None:
            operator.queue.done(key)
            queued.append((about, key))
    assert queued == [("pod-1", ("ns", "vm-only")), ("job-1", ("ns", "vm-only"))]
