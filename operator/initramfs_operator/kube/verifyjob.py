"""A candidate output -> the Job that boots it (`initramfs-builder verify`), and that Job's pod's termination
state -> the verdict. Pure functions, like buildjob.py, whose pod shape (security, registry access) it shares.

spec.verify (or the operator's default for every build, merged under it) says how: the kernel image, path
and extra command line, how long init must run (settleSeconds) and the whole boot may take
(timeoutSeconds), an optional successRegex, guest memory and CPUs, and whether to use /dev/kvm (asked of a
device plugin as an extended resource) instead of TCG.
"""

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import BootFailed, BootTimeout, BuildError, InvalidImageError, RegistryError, UsageError
from ..oci import reference
from . import buildjob, crd
from .buildjob import CONTAINER, SCRATCH, TERMINATION_LOG, PodIds, registry_access_arguments

ROLE = f"{crd.GROUP}/role"      # label: "verify" on verification Jobs and pods (build Jobs have none)
VERIFY = "verify"
OUTPUT_SHA256 = f"{crd.GROUP}/output-sha256"   # annotation: the candidate a verification Job boots
BOOTED = "Booted"
DEADLINE_SLACK = 600       # seconds a verification pod may take beyond its boot timeout (pulls, kernel extraction)
# A boot that fails or a spec that cannot work fails the same way again; a timeout under TCG on a loaded node
# may not (it is retried once).
FINAL_EXIT_CODES = sorted({UsageError.exit_code, RegistryError.exit_code, InvalidImageError.exit_code,
                           BootFailed.exit_code})
REASONS = {c.reason for c in (BuildError, UsageError, RegistryError, InvalidImageError, BootFailed, BootTimeout)}


@dataclass(frozen=True)
class Settings:
    """The operator's side of verification (command line, chart values)."""
    image: str | None = None            # the verifier image: the project's, with qemu (None: the builder image)
    default: dict | None = None         # spec.verify every build gets unless it says otherwise
    kvm_resource: str = "devices.kubevirt.io/kvm"  # the extended resource a device plugin offers /dev/kvm as


def wanted(spec: dict, settings: Settings) -> dict | None:
    """The verification a build asks for: spec.verify over the operator's default; None: none. A build of
    several platforms is not verified (the CRD refuses spec.verify with them; the default passes them by)."""
    merged = {**(settings.default or {}), **(spec.get("verify") or {})}
    if len(spec.get("platforms") or []) > 1 or not merged or not merged.get("enabled", True) \
            or not (merged.get("kernel") or {}).get("image"):
        return None
    return merged


def job_name(build: dict, sha256: str) -> str:
    """One name per (build object, candidate output): a restarted operator finds its Job by name."""
    key = hashlib.sha256(f"{build['metadata']['uid']}/{sha256}".encode()).hexdigest()[:10]
    suffix = f"-verify-{key}"
    return build["metadata"]["name"][: buildjob.MAX_NAME - len(suffix)].rstrip("-.") + suffix


def is_verification(job: dict) -> bool:
    return (job["metadata"].get("labels") or {}).get(ROLE) == VERIFY


def verify_job(build: dict, candidate: dict, verify: dict, image: str, settings: Settings,
               registry_secrets: Sequence[tuple[str, str]], ids: PodIds, limits: buildjob.Limits) -> dict:
    """The Job that boots `candidate` (the status.output a build Job produced) as `verify` says."""
    meta, spec = build["metadata"], build["spec"]
    name = job_name(build, candidate["sha256"])
    labels = {buildjob.MANAGED_BY: buildjob.OPERATOR, "app.kubernetes.io/name": "initramfs-verifier",
              crd.BUILD_UID_LABEL: meta["uid"], buildjob.GENERATION: str(buildjob.build_generation(build)),
              ROLE: VERIFY}
    args, mounts, volumes = verifier_arguments(spec, candidate, verify, registry_secrets)
    pod_security, container_security = buildjob.security_contexts(ids)
    resources: dict[str, Any] = json.loads(json.dumps(verify.get("resources") or {}))
    if verify.get("kvm"):
        for part in ("requests", "limits"):
            resources.setdefault(part, {})[settings.kvm_resource] = "1"
    container = {"name": CONTAINER, "image": image, "imagePullPolicy": "IfNotPresent",
                 "command": ["initramfs-builder"], "args": args, "env": [{"name": "TMPDIR", "value": SCRATCH}],
                 "volumeMounts": mounts, "terminationMessagePath": TERMINATION_LOG,
                 "terminationMessagePolicy": "FallbackToLogsOnError", "securityContext": container_security,
                 **({"resources": resources} if resources else {})}
    pod_spec = {"restartPolicy": "Never", "automountServiceAccountToken": False, "enableServiceLinks": False,
                "securityContext": pod_security, "containers": [container], "volumes": volumes}
    for field in ("nodeSelector", "tolerations"):
        if spec.get(field):
            pod_spec[field] = spec[field]
    job_spec = {
        "backoffLimit": 1,
        "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                  "values": FINAL_EXIT_CODES}},
        ]},
        "template": {"metadata": {"labels": labels, "annotations": {buildjob.BUILD_NAME: meta["name"]}},
                     "spec": pod_spec},
        "activeDeadlineSeconds": int(verify.get("timeoutSeconds", 120)) * 2 + DEADLINE_SLACK,
        **({"ttlSecondsAfterFinished": limits.ttl_seconds} if limits.ttl_seconds is not None else {}),
    }
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels,
                         "annotations": {buildjob.BUILD_NAME: meta["name"], OUTPUT_SHA256: candidate["sha256"]},
                         "ownerReferences": [{"apiVersion": crd.API_VERSION, "kind": crd.KIND, "name": meta["name"],
                                              "uid": meta["uid"], "controller": True,
                                              "blockOwnerDeletion": True}]},
            "spec": job_spec}


def verifier_arguments(spec: dict, candidate: dict, verify: dict, registry_secrets: Sequence[tuple[str, str]]
                       ) -> tuple[list, list, list]:
    """`initramfs-builder verify` arguments, with the volumes and mounts they refer to."""
    kernel = verify["kernel"]
    mounts: list[dict] = [{"name": "scratch", "mountPath": SCRATCH}]
    volumes: list[dict] = [{"name": "scratch", "emptyDir": {}}]
    if "claimName" in candidate:  # read-only: verifying never writes the output
        target = f"{buildjob.OUTPUT}/{candidate['path']}"
        mounts.append({"name": "output", "mountPath": buildjob.OUTPUT, "readOnly": True})
        volumes.append({"name": "output", "persistentVolumeClaim": {"claimName": candidate["claimName"],
                                                                    "readOnly": True}})
    else:
        target = candidate["reference"]  # repository@digest: exactly what was pushed
    args = ["verify", target, "--kernel", kernel["image"], "--kernel-path", kernel.get("path", "/boot/vmlinuz"),
            "--platform", candidate.get("platform") or spec.get("platform") or "linux/amd64",
            "--settle-seconds", str(verify.get("settleSeconds", 5)),
            "--timeout-seconds", str(verify.get("timeoutSeconds", 120)),
            "--cpus", str(verify.get("cpus", 2)), "--scratch-dir", SCRATCH, "--result-file", TERMINATION_LOG]
    if kernel.get("cmdline"):
        args += ["--cmdline", kernel["cmdline"]]
    for flag, key in (("--success-regex", "successRegex"), ("--memory", "memory")):
        if verify.get(key) is not None:
            args += [flag, str(verify[key])]
    if verify.get("kvm"):
        args.append("--kvm")
    kernel_host = reference.parse(kernel["image"]).registry  # the CRD admits registry references only
    access_args, access_mounts, access_volumes = registry_access_arguments(spec, registry_secrets, [kernel_host])
    return args + access_args, mounts + access_mounts, volumes + access_volumes


@dataclass(frozen=True)
class Verdict:
    reason: str       # BOOTED, BootFailed, BootTimeout, or why the verifier could not judge
    message: str


def verdict(terminated: dict | None) -> Verdict:
    """What a finished verification pod's container state says."""
    if not terminated:
        return Verdict(BuildError.reason, "the verification pod ended without a container status")
    message, code = terminated.get("message") or "", terminated.get("exitCode")
    try:
        result = json.loads(message)
    except ValueError:
        result = None
    if terminated.get("reason") == "OOMKilled":
        return Verdict(BootFailed.reason, f"the verifier ran out of memory (OOMKilled, exit code {code}); raise "
                                          "spec.verify.resources.limits.memory or lower spec.verify.memory")
    if not isinstance(result, dict):
        tail = f": {message.strip()[-1000:]}" if message.strip() else ""
        return Verdict(BuildError.reason, f"the verifier exited with code {code} without a result{tail}")
    if code == 0 and result.get("reason") == BOOTED:
        return Verdict(BOOTED, f"{result.get('message')} ({result.get('seconds')}s, {result.get('accelerator')}, "
                               f"{int(result.get('memory') or 0) >> 20} MiB)")
    reported = result.get("reason")
    reason = reported if isinstance(reported, str) and reported in REASONS else BuildError.reason
    return Verdict(reason, str(result.get("error") or f"the verifier exited with code {code}"))
