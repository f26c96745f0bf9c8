"""Why a build Job is not getting anywhere, in Kubernetes' own words.

A build pod can wait forever without failing: it cannot be scheduled, the builder image
cannot be pulled, its container cannot be configured, its volumes cannot be attached or
mounted; or the Job controller cannot even create it (quota, admission). The pod's status
says the first three; only Events say the others (FailedMount, FailedAttachVolume on the
pod, FailedCreate on the Job), so the operator watches those (Warning Events with these
reasons, cache.py) and looks at them for a build stuck for a while. Each becomes a condition
reason with the message Kubernetes gave.
"""

from dataclasses import dataclass
from datetime import datetime

from .conditions import explained, parse_time

UNSCHEDULABLE = "Unschedulable"
BUILDER_IMAGE_PULL_FAILED = "BuilderImagePullFailed"
CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
VOLUME_FAILED = "VolumeFailed"
JOB_REJECTED = "JobRejected"
DEADLINE_EXCEEDED = "DeadlineExceeded"
OOM_KILLED = "OOMKilled"
REASONS = {UNSCHEDULABLE, BUILDER_IMAGE_PULL_FAILED, CREATE_CONTAINER_CONFIG_ERROR, VOLUME_FAILED, JOB_REJECTED,
           DEADLINE_EXCEEDED, OOM_KILLED}

IMAGE_PULL_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                      "RegistryUnavailable", "SignatureValidationFailed"}
CONTAINER_CONFIG_WAITING = {"CreateContainerConfigError", "CreateContainerError"}
VOLUME_EVENTS = {"FailedMount", "FailedAttachVolume", "FailedMapVolume"}
POD_CREATE_EVENTS = {"FailedCreate"}
WARNING_REASONS = VOLUME_EVENTS | POD_CREATE_EVENTS  # the Events kept in the operator's index

# How long a pod may sit in ContainerCreating, or a Job without any pod, before its Events count: a
# volume that mounts at the second try, or a quota freed a moment later, is not worth a status.
EVENTS_AFTER_SECONDS = 15.0


@dataclass(frozen=True)
class Diagnosis:
    reason: str
    message: str


def of_pod(pod: dict) -> Diagnosis | None:
    """What the pod's own status says keeps it from running, if anything."""
    status = pod.get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            message = c.get("message") or "the build pod cannot be scheduled"
            return Diagnosis(VOLUME_FAILED if _about_volumes(message) else UNSCHEDULABLE, message)
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in IMAGE_PULL_WAITING:
            return _waiting(BUILDER_IMAGE_PULL_FAILED, reason, waiting, container)
        if reason in CONTAINER_CONFIG_WAITING:
            return _waiting(CREATE_CONTAINER_CONFIG_ERROR, reason, waiting, container)
    return None


def _waiting(condition_reason: str, kubelet_reason: str, waiting: dict, container: dict) -> Diagnosis:
    """The kubelet's message; its reason too where the condition's reason does not say it already
    (ImagePullBackOff under BuilderImagePullFailed, not CreateContainerConfigError twice)."""
    message = waiting.get("message") or container.get("image", "")
    if kubelet_reason != condition_reason:
        message = explained(kubelet_reason, message)
    return Diagnosis(condition_reason, message)


def _about_volumes(message: str) -> bool:
    return "PersistentVolumeClaim" in message or "volume" in message.lower()


def of_events(events: list[dict]) -> Diagnosis | None:
    """The newest Warning Event about volumes or pod creation, if any."""
    relevant = [e for e in events if e.get("type") == "Warning" and e.get("reason") in WARNING_REASONS]
    if not relevant:
        return None
    newest = max(relevant, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    reason = VOLUME_FAILED if newest["reason"] in VOLUME_EVENTS else JOB_REJECTED
    return Diagnosis(reason, explained(newest["reason"], newest.get("message") or ""))


def stuck_object(job: dict, pods: list[dict]) -> dict | None:
    """The Job when it has no pod yet, or its newest pod when that is scheduled but its container was
    never created: the object whose Events explain it, if any. None when neither applies."""
    if not pods:
        return job
    pod = newest(pods)
    status = pod.get("status") or {}
    scheduled = any(c.get("type") == "PodScheduled" and c.get("status") == "True"
                    for c in status.get("conditions") or [])
    created = any(((c.get("state") or {}).get("waiting") or {}).get("reason") != "ContainerCreating"
                  for c in status.get("containerStatuses") or [])
    if status.get("phase") == "Pending" and scheduled and not created:
        return pod
    return None


def stuck_for(obj: dict, now: datetime) -> float:
    created = parse_time(obj["metadata"].get("creationTimestamp"))
    return (now - created).total_seconds() if created else 0.0


def newest(pods: list[dict]) -> dict:
    return max(pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]))
