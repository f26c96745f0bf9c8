"""InitramfsBuild spec -> build Job manifest, and the build pod's termination state -> result.

Pure functions: everything here is decided from the objects passed in, so it is tested
without a cluster and the controller only moves objects between here and the API.
"""

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import AuthError, BuildError, InvalidImageError, LimitExceeded, OutputError, RegistryError, UsageError
from ..oci import image, reference
from ..oci.image import DEFAULT_PLATFORM, Platform
from . import crd
from .diagnosis import OOM_KILLED
from .registry_access import DEFAULT_CA_KEY, registry_hosts

MANAGED_BY = "app.kubernetes.io/managed-by"
OPERATOR = "initramfs-operator"
GENERATION = "initramfs.dev/generation"      # label: the spec generation a Job builds
BUILD_NAME = "initramfs.dev/build-name"      # annotation: names can be longer than label values
IMAGE_DIGEST = "initramfs.dev/image-digest"  # annotation: the digest a Job builds
PLATFORM = "initramfs.dev/platform"          # annotation: the platform a Job of a build of several builds
SELECTOR = f"{MANAGED_BY}={OPERATOR}"
COMPONENT = "app.kubernetes.io/component"
CLEANUP = "cleanup"                          # COMPONENT of cleanup Jobs (cleanup.py); build Jobs have none

CONTAINER = "build"
UID = 65532  # the conventional "nonroot" user of distroless images, and the project image's USER
TERMINATION_LOG = "/dev/termination-log"
SCRATCH, OUTPUT, CACHE = "/scratch", "/output", "/cache"
CONFIG_DIR = "/var/run/initramfs"
MAX_NAME = 63  # Job names end up in the job-name label of their pods

# The builder's exit codes when it could not write its JSON result (see cli.py).
REASON_BY_EXIT_CODE = {c.exit_code: c.reason for c in (UsageError, RegistryError, InvalidImageError, OutputError)}
REASONS = {c.reason for c in (BuildError, UsageError, RegistryError, AuthError, InvalidImageError, LimitExceeded,
                               OutputError)}
# A full or unwritable output or scratch volume (exit 5) may be fine on the next try: it is retried.
FINAL_EXIT_CODES = sorted(code for code in REASON_BY_EXIT_CODE if code != OutputError.exit_code)


def spec_hash(spec: dict) -> str:
    """What the build is of: its spec but what says when to build or what to clean up (`suspend`,
    `deletionPolicy`, `output.retention`), hashed (status.buildSpecHash)."""
    inputs = {k: v for k, v in spec.items() if k not in ("suspend", "deletionPolicy")}
    if "retention" in (spec.get("output") or {}):
        inputs["output"] = {k: v for k, v in spec["output"].items() if k != "retention"}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def build_generation(build: dict) -> int:
    """The generation whose spec the build is of: metadata.generation, unless status says an earlier one had the
    same spec but `suspend` (pausing or resuming changes the generation, not what is built)."""
    meta, status = build["metadata"], build.get("status") or {}
    if status.get("buildGeneration") and status.get("buildSpecHash") == spec_hash(build["spec"]):
        return status["buildGeneration"]
    return meta["generation"]


def job_name(build: dict, digest: str) -> str:
    """One name per (build object, build generation, image digest): a restarted operator finds its Job by name."""
    meta, generation = build["metadata"], build_generation(build)
    key = hashlib.sha256(f"{meta['uid']}/{generation}/{digest}".encode()).hexdigest()[:10]
    return _named(meta["name"], f"-{generation}-{key}")


def platform_job_name(build: dict, digest: str, platform: str) -> str:
    """The Job of one platform of a build of several: one name per (build object, build generation, image
    digest, platform), the platform readable in it (arm64, arm-v7; the os too when not linux)."""
    meta, generation = build["metadata"], build_generation(build)
    key = hashlib.sha256(f"{meta['uid']}/{generation}/{digest}/{platform}".encode()).hexdigest()[:10]
    readable = re.sub(r"[^a-z0-9]+", "-", platform.lower().removeprefix("linux/"))[:16].strip("-")
    return _named(meta["name"], f"-{generation}-{readable}-{key}")


def _named(name: str, suffix: str) -> str:
    return name[: MAX_NAME - len(suffix)].rstrip("-.") + suffix


def job_names(build: dict, digest: str) -> dict[str | None, str]:
    """The build Jobs a build of `digest` wants: by platform, one each for a build of several platforms; else
    one, under None, named as before platforms had Jobs of their own."""
    several = platforms(build["spec"])
    if len(several) < 2:
        return {None: job_name(build, digest)}
    return {p: platform_job_name(build, digest, p) for p in several}


@dataclass(frozen=True)
class PodIds:
    """The user and groups build pods run as. None: not set, so a platform that assigns IDs per namespace
    can (else the image's USER applies); the pods must run as non-root either way."""
    run_as_user: int | None = UID
    run_as_group: int | None = UID
    fs_group: int | None = UID   # makes the output volume writable by the build


def pinned_image(spec: dict, digest: str) -> str:
    """The image by digest, so the pod builds exactly what the Job name promises even if the tag moves."""
    ref = reference.parse(spec["image"])
    return str(reference.Reference(ref.registry, ref.repository, ref.tag, digest))


@dataclass(frozen=True)
class BuildCache:
    """The layer cache of build pods: a PVC of this name in the build's namespace, mounted as the builder's
    --cache-dir and trimmed to `max_size` (a quantity; None: unbounded) after each build."""
    claim_name: str
    max_size: str | None = None


@dataclass(frozen=True)
class PodDefaults:
    """What the operator (the chart's builder values) gives every build pod: the layer cache unless the build
    names its own, Secrets to pull the builder image with, and resources unless the build sets its own."""
    cache: BuildCache | None = None
    image_pull_secrets: tuple[str, ...] = ()
    resources: dict | None = None


def build_cache(spec: dict, default: BuildCache | None) -> BuildCache | None:
    """spec.cache, else the operator's default (the chart's builder.cache)."""
    cache = spec.get("cache")
    if cache:
        return BuildCache(cache["claimName"], str(cache["maxSize"]) if "maxSize" in cache else None)
    return default


QUANTITY_UNITS = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                  "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
DEFAULT_MAX_UNCOMPRESSED = "16Gi"  # the CRD's default of spec.limits.maxUncompressedSize


def quantity_bytes(quantity: int | str) -> int:
    """Bytes of a size as the CRD's limits allow it (an integer, or digits and one unit such as 16Gi)."""
    text = str(quantity)
    digits = text.rstrip("kKMGTi")
    return int(digits) * QUANTITY_UNITS[text[len(digits):]]


def quantity(n: int) -> str:
    """Bytes as the largest binary unit that divides them (a Quantity in its canonical form)."""
    for unit in ("Ti", "Gi", "Mi", "Ki"):
        if n and n % QUANTITY_UNITS[unit] == 0:
            return f"{n // QUANTITY_UNITS[unit]}{unit}"
    return str(n)


def scratch_size_limit(spec: dict, cached: bool) -> str:
    """What the scratch emptyDir may hold: for the one platform a Job builds, the image's layers while it is
    read (in the cache instead when there is one), the file contents kept for the archive, and the archive
    itself before its push, each bounded by maxUncompressedSize. Over it the kubelet evicts the build pod
    (its own disk use, not its neighbours', decides)."""
    limit = quantity_bytes((spec.get("limits") or {}).get("maxUncompressedSize", DEFAULT_MAX_UNCOMPRESSED))
    return quantity(limit * (1 + (not cached) + ("oci" in spec["output"])))


@dataclass(frozen=True)
class Limits:
    """How long a build Job may hold its slot, and how long it stays once finished (operator settings)."""
    deadline_seconds: int = 3600      # activeDeadlineSeconds unless the build sets its own
    ttl_seconds: int | None = 3600    # ttlSecondsAfterFinished; None: kept until superseded or deleted


def build_job(build: dict, digest: str, builder_image: str, registry_secrets: Sequence[tuple[str, str]] = (),
              ids: PodIds = PodIds(), limits: Limits = Limits(), defaults: PodDefaults = PodDefaults(),
              platform: str | None = None) -> dict:
    """The Job that builds `build` from the image at `digest`; of a build of several platforms, the Job of
    `platform` (named by job_names).

    `registry_secrets` are the build's registry Secrets as (name, key of the docker config),
    the push secret first: the pod mounts them as they are, and the builder reads them in
    that order, the first entry for a registry winning.
    """
    meta, spec = build["metadata"], build["spec"]
    name = job_names(build, digest)[platform]
    labels = {MANAGED_BY: OPERATOR, "app.kubernetes.io/name": "initramfs-builder",
              crd.BUILD_UID_LABEL: meta["uid"], GENERATION: str(build_generation(build))}
    args, mounts, volumes = builder_arguments(spec, digest, registry_secrets, build_cache(spec, defaults.cache),
                                              platform)
    pod_security, container_security = security_contexts(ids)
    container = {
        "name": CONTAINER, "image": builder_image, "imagePullPolicy": "IfNotPresent",
        "command": ["initramfs-builder"], "args": args,
        "env": [{"name": "TMPDIR", "value": SCRATCH}],
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        # The result is the JSON the builder writes there; a crash leaves it empty and the log tail says why.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security,
    }
    resources: dict = spec.get("resources") or defaults.resources or {}
    if resources:
        container["resources"] = resources
    pod_spec = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security,
        "containers": [container],
        "volumes": volumes,
    }
    if defaults.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": secret} for secret in defaults.image_pull_secrets]
    for field in ("nodeSelector", "tolerations"):
        if spec.get(field):
            pod_spec[field] = spec[field]
    job_spec = {
        "backoffLimit": spec.get("backoffLimit", 2),
        "podFailurePolicy": {"rules": [
            # Evicted or preempted: not the build's fault, do not count it.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            # Bad spec, registry refusal, invalid image or over its limits: a retry fails the same way.
            {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                  "values": FINAL_EXIT_CODES}},
        ]},
        # The build's name on its pods too, so a pod's events lead to its build without a lookup.
        "template": {"metadata": {"labels": labels, "annotations": {BUILD_NAME: meta["name"]}}, "spec": pod_spec},
        # No build holds a slot forever: a pod that cannot start fails the Job at the deadline.
        "activeDeadlineSeconds": spec.get("activeDeadlineSeconds") or limits.deadline_seconds,
    }
    if limits.ttl_seconds is not None:
        # The result is in the InitramfsBuild's status by then; the Job and its pod are only clutter.
        job_spec["ttlSecondsAfterFinished"] = limits.ttl_seconds
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": name, "namespace": meta["namespace"], "labels": labels,
            "annotations": {BUILD_NAME: meta["name"], IMAGE_DIGEST: digest,
                            **({PLATFORM: platform} if platform else {})},
            "ownerReferences": [{"apiVersion": crd.API_VERSION, "kind": crd.KIND, "name": meta["name"],
                                 "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": job_spec,
    }


def platforms(spec: dict) -> list[str]:
    """The platforms the build builds: spec.platforms, or spec.platform as a one-element shorthand (the CRD
    allows one of them); none: the builder's default (linux/amd64)."""
    return list(spec.get("platforms") or ([spec["platform"]] if spec.get("platform") else []))


def security_contexts(ids: PodIds) -> tuple[dict, dict]:
    """The pod's and the container's securityContext of the operator's pods: restricted Pod Security, non-root,
    a read-only root filesystem, no capabilities."""
    security = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
                **({"runAsUser": ids.run_as_user} if ids.run_as_user is not None else {}),
                **({"runAsGroup": ids.run_as_group} if ids.run_as_group is not None else {})}
    volume_group = {"fsGroup": ids.fs_group, "fsGroupChangePolicy": "OnRootMismatch"} \
        if ids.fs_group is not None else {}
    return {**security, **volume_group}, {**security, "allowPrivilegeEscalation": False,
                                          "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


CLEANUP_DEADLINE = 120  # a cleanup pod that cannot start (claim gone, image missing) fails by then
CLEANUP_TTL = 600


def cleanup_job(build: dict, name: str, claim: str, paths: list[str], builder_image: str,
                ids: PodIds = PodIds()) -> dict:
    """A Job that removes `paths` (relative to the volume root) from the PersistentVolumeClaim `claim`, with the
    restrictions of build pods; the build owns it, so it goes with the build."""
    meta = build["metadata"]
    labels = {MANAGED_BY: OPERATOR, COMPONENT: CLEANUP, crd.BUILD_UID_LABEL: meta["uid"]}
    pod_security, container_security = security_contexts(ids)
    container = {
        "name": CONTAINER, "image": builder_image, "imagePullPolicy": "IfNotPresent",
        "command": ["initramfs-builder"], "args": ["remove", "--root", OUTPUT, "--json", *paths],
        "volumeMounts": [{"name": "output", "mountPath": OUTPUT}],
        "terminationMessagePath": TERMINATION_LOG, "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": container_security,
    }
    pod_spec = {"restartPolicy": "Never", "automountServiceAccountToken": False, "enableServiceLinks": False,
                "securityContext": pod_security, "containers": [container],
                "volumes": [{"name": "output", "persistentVolumeClaim": {"claimName": claim}}]}
    for field in ("nodeSelector", "tolerations"):
        if build["spec"].get(field):
            pod_spec[field] = build["spec"][field]
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels,
                     "annotations": {BUILD_NAME: meta["name"]},
                     "ownerReferences": [{"apiVersion": crd.API_VERSION, "kind": crd.KIND, "name": meta["name"],
                                          "uid": meta["uid"], "controller": True}]},
        "spec": {"backoffLimit": 1, "activeDeadlineSeconds": CLEANUP_DEADLINE, "ttlSecondsAfterFinished": CLEANUP_TTL,
                 "template": {"metadata": {"labels": labels, "annotations": {BUILD_NAME: meta["name"]}},
                              "spec": pod_spec}},
    }


def is_cleanup(job: dict) -> bool:
    return (job["metadata"].get("labels") or {}).get(COMPONENT) == CLEANUP


def builder_arguments(spec: dict, digest: str, registry_secrets: Sequence[tuple[str, str]],
                      cache: BuildCache | None = None, platform: str | None = None) -> tuple[list, list, list]:
    """`initramfs-builder build` arguments, with the volumes and mounts they refer to: of the build's one platform,
    or of `platform` of its several (its own file on a claim; its artifact pushed by digest, the index of them
    all is the operator's to push)."""
    compression = spec.get("compression") or {}
    args = ["build", pinned_image(spec, digest), "-c", compression.get("format", "gzip"),
            "--scratch-dir", SCRATCH, "--result-file", TERMINATION_LOG, "--quiet"]
    mounts: list[dict] = [{"name": "scratch", "mountPath": SCRATCH}]
    volumes: list[dict] = [{"name": "scratch", "emptyDir": {"sizeLimit": scratch_size_limit(spec, bool(cache))}}]
    if cache:
        args += ["--cache-dir", CACHE, *(["--cache-max-size", cache.max_size] if cache.max_size else [])]
        mounts.append({"name": "cache", "mountPath": CACHE})
        volumes.append({"name": "cache", "persistentVolumeClaim": {"claimName": cache.claim_name}})

    def mount(name: str, path: str, source: dict) -> None:
        mounts.append({"name": name, "mountPath": path, "readOnly": True})
        volumes.append({"name": name, **source})

    if "level" in compression:
        args += ["--level", str(compression["level"])]
    one = platform or next(iter(platforms(spec)), None)
    if one:
        args += ["--platform", one]
    output = spec["output"]
    if "pvc" in output:
        args += ["-o", f"{OUTPUT}/{output['pvc']['path']}", "--create-dirs"]
        mounts.append({"name": "output", "mountPath": OUTPUT})
        volumes.append({"name": "output", "persistentVolumeClaim": {"claimName": output["pvc"]["claimName"]}})
    else:
        args += ["--push", f"{output['oci']['repository']}:{output['oci']['tag']}"]
        if platform:
            args.append("--push-by-digest")
    access_args, access_mounts, access_volumes = registry_access_arguments(spec, registry_secrets)
    args += access_args
    mounts += access_mounts
    volumes += access_volumes
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
    image_limits = spec.get("limits") or {}
    if "maxUncompressedSize" in image_limits:
        args += ["--max-uncompressed-size", str(image_limits["maxUncompressedSize"])]
    if "maxEntries" in image_limits:
        args += ["--max-entries", str(image_limits["maxEntries"])]
    return args, mounts, volumes


def registry_access_arguments(spec: dict, registry_secrets: Sequence[tuple[str, str]], more_hosts: Sequence[str] = ()
                              ) -> tuple[list, list, list]:
    """The builder's registry flags (credentials, plain-HTTP hosts, CA), with the volumes and mounts they refer to:
    the same for a build pod and a verification pod. `more_hosts`: registries the pod reads besides the spec's."""
    args: list[str] = []
    mounts: list[dict] = []
    volumes: list[dict] = []

    def mount(name: str, path: str, source: dict) -> None:
        mounts.append({"name": name, "mountPath": path, "readOnly": True})
        volumes.append({"name": name, **source})

    if registry_secrets:
        # One projected volume, one file per Secret: the credentials are never copied, and a rotated
        # Secret reaches the next build pod as it is.
        mount("registry", f"{CONFIG_DIR}/registry", {"projected": {"sources": [
            {"secret": {"name": secret, "items": [{"key": key, "path": f"{secret}/{key}"}]}}
            for secret, key in registry_secrets]}})
        for secret, key in registry_secrets:
            args += ["--registry-config", f"{CONFIG_DIR}/registry/{secret}/{key}"]
    registry = spec.get("registry") or {}
    if registry.get("insecure"):
        for host in dict.fromkeys([*registry_hosts(spec), *more_hosts]):
            args += ["--insecure-registry", host]
    if registry.get("caConfigMap"):
        ca = registry["caConfigMap"]
        mount("ca", f"{CONFIG_DIR}/ca", {"configMap": {
            "name": ca["name"], "items": [{"key": ca.get("key", DEFAULT_CA_KEY), "path": "ca.crt"}]}})
        args += ["--ca-file", f"{CONFIG_DIR}/ca/ca.crt"]
    return args, mounts, volumes


# --- the Job's state, and its result ---------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    reason: str                 # "Succeeded" or a failure reason
    message: str
    output: dict | None = None  # status.output on success
    outputs: list[dict] | None = None  # status.outputs on success: one per platform


def failed_condition(job: dict) -> dict | None:
    """The Job's Failed condition once the Job controller gave up on it (its reason says why: DeadlineExceeded,
    BackoffLimitExceeded)."""
    return next((c for c in (job.get("status") or {}).get("conditions") or []
                 if c["type"] == "Failed" and c["status"] == "True"), None)


def finishing(job: dict) -> bool:
    """The Job controller has decided (FailureTarget, SuccessCriteriaMet) and is stopping the pods; Complete
    or Failed follows once they are gone."""
    return any(c["type"] in ("FailureTarget", "SuccessCriteriaMet") and c["status"] == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def finished(job: dict) -> str | None:
    """"Complete" or "Failed" once the Job controller has decided, else None."""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c["type"] in ("Complete", "Failed") and c["status"] == "True":
            return c["type"]
    return None


def outcome(terminated: dict | None, spec: dict, platform: str | None = None) -> Outcome:
    """What a finished build pod's container state says: its JSON result, or why there is none. `platform`:
    the one a Job of a build of several built."""
    if not terminated:
        return Outcome(BuildError.reason, "the build pod ended without a container status")
    message = terminated.get("message") or ""
    code = terminated.get("exitCode")
    try:
        result = json.loads(message)
    except ValueError:
        result = None
    if terminated.get("reason") == "OOMKilled":
        return Outcome(OOM_KILLED, f"the build ran out of memory (OOMKilled, exit code {code}); "
                                   "raise spec.resources.limits.memory")
    if not isinstance(result, dict):
        reason = REASON_BY_EXIT_CODE.get(code, BuildError.reason) if isinstance(code, int) else BuildError.reason
        tail = f": {message.strip()}" if message.strip() else ""
        return Outcome(reason, f"the builder exited with code {code} without a result{tail}")
    if code == 0 and "sha256" in result:
        try:
            output, outputs = output_status(result, spec, platform)
            return Outcome("Succeeded", success_message(result), output, outputs)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            return Outcome(BuildError.reason, f"the builder's result cannot be read ({type(e).__name__}: {e})")
    reported = result.get("reason")
    reason = reported if isinstance(reported, str) and reported in REASONS else BuildError.reason
    return Outcome(reason, str(result.get("error") or f"the builder exited with code {code}"))


PLATFORM_FIELDS = ("sha256", "sha512", "size", "entries", "platform", "imageDigest")


def output_status(result: dict, spec: dict, platform: str | None = None) -> tuple[dict, list[dict]]:
    """status.output and status.outputs of a build Job's success: of the build's one platform, or of `platform`
    (one of several: status.output is then theirs together, `combined_output`).

    The status.outputs entry has what a consumer of that platform needs on its own: platform, os,
    architecture (a node's kubernetes.io/arch) and variant, the file's sha256, sha512, size, entries and
    compression, the image manifest flattened, and where it is (path on the claim, or reference and digest
    of its artifact). os, architecture and variant say what was asked for, which the builder selected by
    (the image config's own words, in `platform`, are the image author's).
    """
    requested = Platform.parse(platform) if platform else \
        next((Platform.parse(p) for p in platforms(spec)), DEFAULT_PLATFORM)
    entry = _platform_output(result, requested, result.get("compression"), spec, result.get("reference"))
    tag = {"tag": spec["output"]["oci"]["tag"]} if "oci" in spec["output"] else {}
    # os, architecture and variant are status.outputs' own (what was asked for).
    return {k: v for k, v in entry.items() if k not in image.PLATFORM_FIELDS} | tag, [entry]


def combined_output(spec: dict, outputs: list[dict], image_digest: str, index_digest: str | None) -> dict:
    """status.output of a build of several platforms (`outputs`, in the spec's order): the index of their
    artifacts (`index_digest`, at the spec's tag) or the claim, with no file fields (those are each platform's)."""
    output = {"compression": outputs[0].get("compression"), "imageDigest": image_digest,
              "platforms": ",".join(o["platform"] for o in outputs)}
    if "pvc" in spec["output"]:
        output.update(claimName=spec["output"]["pvc"]["claimName"], path=spec["output"]["pvc"]["path"])
    else:
        repository = outputs[0]["reference"].rpartition("@")[0]
        output.update(reference=f"{repository}@{index_digest}", digest=index_digest, tag=spec["output"]["oci"]["tag"])
    return {k: v for k, v in output.items() if v is not None}


def _platform_output(entry: dict, platform: Platform, compression: str | None, spec: dict,
                     reference: str | None) -> dict:
    out = {k: entry[k] for k in PLATFORM_FIELDS if k in entry}
    out.update(os=platform.os, architecture=platform.architecture, compression=compression)
    if platform.variant:
        out["variant"] = platform.variant
    if "pvc" in spec["output"]:
        out.update(claimName=spec["output"]["pvc"]["claimName"], path=platform.expand(spec["output"]["pvc"]["path"]))
    else:
        repository = (reference or "").rpartition("@")[0]
        out.update(reference=f"{repository}@{entry['digest']}", digest=entry["digest"])
    return {k: v for k, v in out.items() if v is not None}


def success_message(result: dict) -> str:
    where = result.get("reference") or result.get("output")
    return f"built {where}: {result['size']} bytes, {result['entries']} entries, sha256:{result['sha256']}"


def combined_message(output: dict, outputs: list[dict]) -> str:
    """Ready's message once every platform of several is built."""
    where = output.get("reference") or f"{output['claimName']}:{output['path']}"
    built = ", ".join(f"{o['platform']} {o['size']} bytes" for o in outputs)
    return f"built {len(outputs)} platforms as {where}: {built}"
