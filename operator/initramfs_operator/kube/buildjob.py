"""InitramfsBuild spec -> build Job manifest, and the build pod's termination state -> result.

Pure functions: everything here is decided from the objects passed in, so it is tested
without a cluster and the controller only moves objects between here and the API.
"""

import hashlib
import json
from dataclasses import dataclass

from ..errors import AuthError, BuildError, InvalidImageError, OutputError, RegistryError, UsageError
from ..oci import reference
from . import crd

MANAGED_BY = "app.kubernetes.io/managed-by"
OPERATOR = "initramfs-operator"
BUILD_UID = "initramfs.dev/build-uid"        # label: Jobs and pods of one InitramfsBuild
GENERATION = "initramfs.dev/generation"      # label: the spec generation a Job builds
BUILD_NAME = "initramfs.dev/build-name"      # annotation: names can be longer than label values
IMAGE_DIGEST = "initramfs.dev/image-digest"  # annotation: the digest a Job builds
SELECTOR = f"{MANAGED_BY}={OPERATOR}"

CONTAINER = "build"
UID = 65532  # the conventional "nonroot" user of distroless images
TERMINATION_LOG = "/dev/termination-log"
SCRATCH, OUTPUT = "/scratch", "/output"
CONFIG_DIR = "/var/run/initramfs"
REGISTRY_CONFIG_KEY = ".dockerconfigjson"  # the merged credentials are a kubernetes.io/dockerconfigjson Secret
MAX_NAME = 63  # Job names end up in the job-name label of their pods

# The builder's exit codes when it could not write its JSON result (see cli.py).
REASON_BY_EXIT_CODE = {c.exit_code: c.reason for c in (UsageError, RegistryError, InvalidImageError, OutputError)}
REASONS = {c.reason for c in (BuildError, UsageError, RegistryError, AuthError, InvalidImageError, OutputError)}


def job_name(build: dict, digest: str) -> str:
    """One name per (build object, generation, image digest): a restarted operator finds its Job by name."""
    meta = build["metadata"]
    key = hashlib.sha256(f"{meta['uid']}/{meta['generation']}/{digest}".encode()).hexdigest()[:10]
    suffix = f"-{meta['generation']}-{key}"
    return meta["name"][: MAX_NAME - len(suffix)].rstrip("-.") + suffix


def registry_secret_name(job: str) -> str:
    return f"{job}-registry"


def registry_hosts(spec: dict) -> list[str]:
    """The registries a build talks to: the image's, and the push destination's."""
    hosts = [reference.parse(spec["image"]).registry]
    if "oci" in spec["output"]:
        hosts.append(reference.parse(spec["output"]["oci"]["repository"]).registry)
    return list(dict.fromkeys(hosts))


def registry_secret_names(spec: dict) -> list[str]:
    """Docker config Secrets the build needs, the push secret first: its entry wins for the push registry."""
    push = (spec["output"].get("oci") or {}).get("pushSecret")
    names = ([push["name"]] if push else []) + [s["name"] for s in spec.get("imagePullSecrets") or []]
    return list(dict.fromkeys(names))


def merge_docker_configs(configs: list[dict]) -> dict:
    """One docker config.json from several (the builder reads one); the first entry for a key wins."""
    auths: dict = {}
    for config in configs:
        for key, entry in (config.get("auths") or {}).items():
            auths.setdefault(key, entry)
    return {"auths": auths}


def docker_config_of(secret_type: str, data: dict[str, bytes], name: str) -> dict:
    """The docker config.json inside a kubernetes.io/dockerconfigjson (or legacy dockercfg) Secret."""
    try:
        if ".dockerconfigjson" in data:
            return json.loads(data[".dockerconfigjson"])
        if ".dockercfg" in data:
            return {"auths": json.loads(data[".dockercfg"])}
    except ValueError:
        # The decoder's message would quote the document, which holds secrets.
        raise UsageError(f"secret {name}: its docker config is not valid JSON") from None
    raise UsageError(f"secret {name} (type {secret_type}) has no .dockerconfigjson key")


def pinned_image(spec: dict, digest: str) -> str:
    """The image by digest, so the pod builds exactly what the Job name promises even if the tag moves."""
    ref = reference.parse(spec["image"])
    return str(reference.Reference(ref.registry, ref.repository, ref.tag, digest))


def build_job(build: dict, digest: str, builder_image: str, registry_secret: str | None) -> dict:
    """The Job that builds `build` from the image at `digest`.

    `registry_secret` names the Secret holding the merged registry credentials, if the
    build uses any.
    """
    meta, spec = build["metadata"], build["spec"]
    name = job_name(build, digest)
    labels = {MANAGED_BY: OPERATOR, "app.kubernetes.io/name": "initramfs-builder",
              BUILD_UID: meta["uid"], GENERATION: str(meta["generation"])}
    args, mounts, volumes = builder_arguments(spec, digest, registry_secret)
    security = {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
                "seccompProfile": {"type": "RuntimeDefault"}}
    container = {
        "name": CONTAINER, "image": builder_image, "imagePullPolicy": "IfNotPresent",
        "command": ["initramfs-builder"], "args": args,
        "env": [{"name": "TMPDIR", "value": SCRATCH}],
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        # The result is the JSON the builder writes there; a crash leaves it empty and the log tail says why.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {**security, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    if spec.get("resources"):
        container["resources"] = spec["resources"]
    pod_spec = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {**security, "fsGroup": UID, "fsGroupChangePolicy": "OnRootMismatch"},
        "containers": [container],
        "volumes": volumes,
    }
    for field in ("nodeSelector", "tolerations"):
        if spec.get(field):
            pod_spec[field] = spec[field]
    job_spec = {
        "backoffLimit": spec.get("backoffLimit", 2),
        "podFailurePolicy": {"rules": [
            # Evicted or preempted: not the build's fault, do not count it.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            # Bad spec, registry refusal, invalid image, output refused: a retry fails the same way.
            {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                  "values": sorted(REASON_BY_EXIT_CODE)}},
        ]},
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if spec.get("activeDeadlineSeconds"):
        job_spec["activeDeadlineSeconds"] = spec["activeDeadlineSeconds"]
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": name, "namespace": meta["namespace"], "labels": labels,
            "annotations": {BUILD_NAME: meta["name"], IMAGE_DIGEST: digest},
            "ownerReferences": [{"apiVersion": crd.API_VERSION, "kind": crd.KIND, "name": meta["name"],
                                 "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": job_spec,
    }


def builder_arguments(spec: dict, digest: str, registry_secret: str | None) -> tuple[list, list, list]:
    """`initramfs-builder build` arguments, with the volumes and mounts they refer to."""
    compression = spec.get("compression") or {}
    args = ["build", pinned_image(spec, digest), "-c", compression.get("format", "gzip"),
            "--scratch-dir", SCRATCH, "--result-file", TERMINATION_LOG, "--quiet"]
    mounts = [{"name": "scratch", "mountPath": SCRATCH}]
    volumes = [{"name": "scratch", "emptyDir": {}}]

    def mount(name: str, path: str, source: dict) -> None:
        mounts.append({"name": name, "mountPath": path, "readOnly": True})
        volumes.append({"name": name, **source})

    if "level" in compression:
        args += ["--level", str(compression["level"])]
    if spec.get("platform"):
        args += ["--platform", spec["platform"]]
    output = spec["output"]
    if "pvc" in output:
        args += ["-o", f"{OUTPUT}/{output['pvc']['path']}", "--create-dirs"]
        mounts.append({"name": "output", "mountPath": OUTPUT})
        volumes.append({"name": "output", "persistentVolumeClaim": {"claimName": output["pvc"]["claimName"]}})
    else:
        args += ["--push", f"{output['oci']['repository']}:{output['oci']['tag']}"]
    if registry_secret:
        mount("registry", f"{CONFIG_DIR}/registry", {"secret": {
            "secretName": registry_secret, "items": [{"key": REGISTRY_CONFIG_KEY, "path": "config.json"}]}})
        args += ["--registry-config", f"{CONFIG_DIR}/registry/config.json"]
    registry = spec.get("registry") or {}
    if registry.get("insecure"):
        for host in registry_hosts(spec):
            args += ["--insecure-registry", host]
    if registry.get("caConfigMap"):
        ca = registry["caConfigMap"]
        mount("ca", f"{CONFIG_DIR}/ca", {"configMap": {
            "name": ca["name"], "items": [{"key": ca.get("key", "ca.crt"), "path": "ca.crt"}]}})
        args += ["--ca-file", f"{CONFIG_DIR}/ca/ca.crt"]
    if spec.get("init"):
        ref = spec["init"]["configMapKeyRef"]
        mount("init", f"{CONFIG_DIR}/init", {"configMap": {
            "name": ref["name"], "items": [{"key": ref["key"], "path": "init"}]}})
        args += ["--init", f"{CONFIG_DIR}/init/init"]
    for i, item in enumerate(spec.get("inject") or []):
        directory = f"{CONFIG_DIR}/inject/{i}"
        ref = item.get("secretKeyRef") or item["configMapKeyRef"]
        items = [{"key": ref["key"], "path": "file"}]
        mount(f"inject-{i}", directory, {"secret": {"secretName": ref["name"], "items": items}}
              if "secretKeyRef" in item else {"configMap": {"name": ref["name"], "items": items}})
        # SRC=DEST form: DEST may contain '=' but not ':' (the CRD forbids ':').
        mode = f":{item['mode']:04o}" if "mode" in item else ""
        args += ["--inject", f"{directory}/file={item['path']}{mode}"]
    for pattern in spec.get("exclude") or []:
        args += ["--exclude", pattern]
    return args, mounts, volumes


# --- results -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    reason: str                 # "Succeeded" or a failure reason
    message: str
    output: dict | None = None  # status.output on success


def outcome(terminated: dict | None, spec: dict) -> Outcome:
    """What a finished build pod's container state says: its JSON result, or why there is none."""
    if not terminated:
        return Outcome(BuildError.reason, "the build pod ended without a container status")
    message = terminated.get("message") or ""
    code = terminated.get("exitCode")
    try:
        result = json.loads(message)
    except ValueError:
        result = None
    if not isinstance(result, dict):
        if terminated.get("reason") == "OOMKilled":
            return Outcome(BuildError.reason, "the build ran out of memory (OOMKilled); "
                                              "raise spec.resources.limits.memory")
        reason = REASON_BY_EXIT_CODE.get(code, BuildError.reason)
        tail = f": {message.strip()}" if message.strip() else ""
        return Outcome(reason, f"the builder exited with code {code} without a result{tail}")
    if code == 0 and "sha256" in result:
        return Outcome("Succeeded", success_message(result), output_status(result, spec))
    reason = result.get("reason") if result.get("reason") in REASONS else BuildError.reason
    return Outcome(reason, str(result.get("error") or f"the builder exited with code {code}"))


def output_status(result: dict, spec: dict) -> dict:
    out = {k: result[k] for k in ("sha256", "sha512", "size", "entries", "compression", "platform", "imageDigest")
           if k in result}
    if "pvc" in spec["output"]:
        out.update(claimName=spec["output"]["pvc"]["claimName"], path=spec["output"]["pvc"]["path"])
    else:
        out.update(reference=result["reference"], digest=result["digest"])
    return out


def success_message(result: dict) -> str:
    where = result.get("reference") or result.get("output")
    return f"built {where}: {result['size']} bytes, {result['entries']} entries, sha256:{result['sha256']}"
