"""Level-triggered reconciliation of one InitramfsBuild: read what is, make what should be.

Every pass starts from the API server (the InitramfsBuild, its Jobs and their pods) and
ends by writing status, so the operator can be killed at any point: the next pass sees
the same objects and takes the same decisions. Jobs have deterministic names per
(object, generation, image digest), so a pass that finds its Job adopts it instead of
starting a second build.
"""

import base64
import json
import logging
import socket
import threading
from contextlib import contextmanager
from functools import cached_property
from dataclasses import dataclass
from datetime import datetime

import kubernetes
from kubernetes.client.rest import ApiException

from ..errors import AccessDenied, BuildError, UsageError
from . import buildjob, conditions, crd, lookup, metrics

log = logging.getLogger(__name__)

COMPONENT = "initramfs-operator"


@dataclass(frozen=True)
class Settings:
    builder_image: str
    max_concurrent_builds: int
    namespaces: tuple[str, ...] = ()     # the namespaces served; none: the whole cluster
    resolve_retry_seconds: float = 60.0  # how soon an image that failed to resolve is tried again


def due(build: dict, now: datetime, settings: Settings) -> bool:
    """Whether a build needs a pass without any event: queued, building, or time to resolve again."""
    status = build.get("status") or {}
    if status.get("observedGeneration") != build["metadata"]["generation"] or conditions.reason(status) in conditions.IN_PROGRESS:
        return True
    return resolution_due(build["spec"], status, now, settings)


def resolution_due(spec: dict, status: dict, now: datetime, settings: Settings) -> bool:
    """For the current generation: retry a failed resolution, or follow the tag every refreshInterval."""
    last = conditions.parse_time(status.get("resolvedTime"))
    elapsed = (now - last).total_seconds() if last else float("inf")
    if not status.get("imageDigest"):
        return elapsed >= settings.resolve_retry_seconds
    return bool(spec.get("refreshInterval")) and elapsed >= conditions.parse_duration(spec["refreshInterval"])


def raw(call, *args, **kwargs) -> dict:
    """An API call's JSON as plain dicts with the API's own field names and timestamps."""
    return json.loads(call(*args, **kwargs, _preload_content=False).data)


def finished(job: dict) -> str | None:
    """"Complete" or "Failed" once the Job controller has decided, else None."""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c["type"] in ("Complete", "Failed") and c["status"] == "True":
            return c["type"]
    return None


class Reconciler:
    def __init__(self, client: kubernetes.client.ApiClient, settings: Settings):
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.batch = kubernetes.client.BatchV1Api(client)
        self.core = kubernetes.client.CoreV1Api(client)
        self.settings = settings
        # kopf serializes the handlers of one object, but Job events and the ticker run beside
        # them: one lock per build keeps a pass's read-decide-write consistent. Only
        # synchronization lives here; losing it on restart loses nothing.
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # Counting running builds and creating a Job must be atomic, or two passes both take the last slot.
        self._admission = threading.Lock()

    def reconcile(self, namespace: str, name: str) -> None:
        with self._lock(f"{namespace}/{name}"):
            try:
                build = self.custom.get_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, crd.PLURAL, name)
            except ApiException as e:
                if e.status == 404:
                    return
                raise
            if not build["metadata"].get("deletionTimestamp"):
                Pass(self, build).run()

    def list_builds(self) -> list[dict]:
        return self._list(lambda **kw: self.custom.list_cluster_custom_object(crd.GROUP, crd.VERSION, crd.PLURAL, **kw),
                          lambda ns, **kw: self.custom.list_namespaced_custom_object(crd.GROUP, crd.VERSION, ns,
                                                                                     crd.PLURAL, **kw))

    def _list(self, cluster_wide, namespaced, **kwargs) -> list[dict]:
        """Items in the served namespaces: one cluster-wide list, or one list per namespace (all that a
        namespaced installation's RBAC allows)."""
        if not self.settings.namespaces:
            return raw(cluster_wide, **kwargs)["items"]
        return [item for ns in self.settings.namespaces for item in raw(namespaced, ns, **kwargs)["items"]]

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def running_builds(self) -> int:
        """Builds holding a slot: unfinished Jobs, and Jobs whose pods still run (a superseded Job's pod
        keeps running until the garbage collector deletes it)."""
        listed = self._list(self.batch.list_job_for_all_namespaces, self.batch.list_namespaced_job,
                            label_selector=buildjob.SELECTOR)
        holding = {(j["metadata"]["namespace"], j["metadata"]["name"]) for j in listed if not finished(j)}
        for pod in self._list(self.core.list_pod_for_all_namespaces, self.core.list_namespaced_pod,
                              label_selector=buildjob.SELECTOR):
            if pod["status"].get("phase") not in ("Succeeded", "Failed"):
                holding.add((pod["metadata"]["namespace"], pod["metadata"]["labels"].get("job-name")))
        return len(holding)


class Pass:
    """One reconciliation of one InitramfsBuild."""

    def __init__(self, reconciler: Reconciler, build: dict):
        self.r = reconciler
        self.build = build
        self.meta, self.spec = build["metadata"], build["spec"]
        self.status = build.get("status") or {}
        self.generation = self.meta["generation"]
        self.now = conditions.now()

    def run(self) -> None:
        owned = {j["metadata"]["name"]: j for j in self.jobs()}
        same_generation = self.status.get("observedGeneration") == self.generation
        digest = self.status.get("imageDigest") if same_generation else None
        current = owned.get(buildjob.job_name(self.build, digest)) if digest else None
        fields = {"observedGeneration": self.generation}

        building = current is not None and not finished(current)
        if not same_generation or (not building and resolution_due(self.spec, self.status, self.now,
                                                                    self.r.settings)):
            fields["resolvedTime"] = conditions.timestamp(self.now)
            try:
                with self.registry_options() as options:
                    resolved = lookup.image_digest(self.spec, options)
            except BuildError as e:
                if digest:  # a refresh failed: what was built stays valid, try again next interval
                    self.event("Warning", "RefreshFailed", f"cannot resolve {self.spec['image']}: {e}")
                    self.write(fields, None)
                    return
                self.supersede(owned, keep=None)
                self.write({**fields, "imageDigest": None, "shortDigest": None, "jobName": None,
                            "startTime": None, "completionTime": None, "attempts": None},
                           conditions.failed(e.reason, str(e)))
                return
            digest = resolved

        name = buildjob.job_name(self.build, digest)
        self.supersede(owned, keep=name)
        fields.update(imageDigest=digest, shortDigest=digest.split(":")[-1][:12])
        job = owned.get(name)
        if job is None:
            if self.already_built(digest):
                self.write(fields, None)
                return
            job = self.admit(digest)
            if job is None:
                # A message without the running count: it would change, and be written, on every pass.
                self.write({**fields, "jobName": None, "startTime": None, "completionTime": None, "attempts": None},
                           conditions.queued(f"waiting for a build slot: all {self.r.settings.max_concurrent_builds} "
                                     "are taken"))
                return
        if not finished(job):
            self.ensure_registry_secret(job)
        self.observe(job, fields)

    # --- reading ----------------------------------------------------------------------------

    def jobs(self) -> list[dict]:
        return raw(self.r.batch.list_namespaced_job, self.meta["namespace"],
                   label_selector=f"{buildjob.BUILD_UID}={self.meta['uid']}")["items"]

    def referenced(self, kind: str, name: str, read, hint: str = ""):
        """An object the spec names: missing is a spec error, unreadable is the operator's RBAC."""
        try:
            return read(name, self.meta["namespace"])
        except ApiException as e:
            if e.status == 404:
                raise UsageError(f"{kind} {name} not found") from None
            if e.status == 403:
                raise AccessDenied(f"the operator may not read {kind} {name}{hint}") from None
            raise

    def secret_data(self, name: str) -> tuple[str, dict[str, bytes]]:
        secret = self.referenced("secret", name, self.r.core.read_namespaced_secret,
                                 " (installed with the Helm value rbac.registrySecrets=false?)")
        return secret.type, {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    @cached_property
    def docker_config(self) -> dict | None:
        """The build's registry credentials, merged; read once a pass however often they are needed."""
        names = buildjob.registry_secret_names(self.spec)
        if not names:
            return None
        return buildjob.merge_docker_configs([buildjob.docker_config_of(*self.secret_data(n), n) for n in names])

    @contextmanager
    def registry_options(self):
        ca_pem = None
        ca = (self.spec.get("registry") or {}).get("caConfigMap")
        if ca:
            cm = self.referenced("configmap", ca["name"], self.r.core.read_namespaced_config_map)
            key = ca.get("key", "ca.crt")
            if key not in (cm.data or {}):
                raise UsageError(f"configmap {ca['name']} has no key {key}")
            ca_pem = cm.data[key].encode()
        with lookup.registry_options(self.spec, self.docker_config, ca_pem) as options:
            yield options

    def already_built(self, digest: str) -> bool:
        """The same inputs were built and the output is still there (its Job may be long gone)."""
        s = self.status
        if not (s.get("observedGeneration") == self.generation and s.get("imageDigest") == digest
                and conditions.reason(s) == conditions.SUCCEEDED and s.get("output")):
            return False
        if "pvc" in self.spec["output"]:
            # The operator cannot look inside the volume; a claim recreated since the build is empty.
            uid = self.claim_uid().get("claimUID")
            return uid is not None and uid == s["output"].get("claimUID")
        try:
            with self.registry_options() as options:
                return lookup.pushed_digest(self.spec, options) == s["output"].get("digest")
        except BuildError:
            return False  # cannot confirm: rebuild, which reports the real problem if there is one

    # --- acting -----------------------------------------------------------------------------

    def supersede(self, owned: dict[str, dict], keep: str | None) -> None:
        """Delete the Jobs of other generations or digests; the garbage collector takes their pods."""
        for name, job in owned.items():
            if name != keep and not job["metadata"].get("deletionTimestamp"):
                try:
                    self.r.batch.delete_namespaced_job(name, self.meta["namespace"], propagation_policy="Background")
                except ApiException as e:
                    if e.status != 404:
                        raise
                self.event("Normal", "Superseded", f"deleted build job {name}: the spec or the image digest changed")

    def admit(self, digest: str) -> dict | None:
        """Create the build Job if a slot is free; None if not."""
        secret = buildjob.registry_secret_name(buildjob.job_name(self.build, digest)) \
            if buildjob.registry_secret_names(self.spec) else None
        manifest = buildjob.build_job(self.build, digest, self.r.settings.builder_image, secret)
        with self.r._admission:
            if self.r.running_builds() >= self.r.settings.max_concurrent_builds:
                return None
            try:
                return raw(self.r.batch.create_namespaced_job, self.meta["namespace"], manifest)
            except ApiException as e:
                if e.status != 409:
                    raise
        # Created by an earlier pass that did not get to write status (the operator restarted).
        return raw(self.r.batch.read_namespaced_job, manifest["metadata"]["name"], self.meta["namespace"])

    def ensure_registry_secret(self, job: dict) -> None:
        """The merged registry credentials the pod mounts, owned by its Job so they go with it."""
        if not buildjob.registry_secret_names(self.spec):
            return
        name = buildjob.registry_secret_name(job["metadata"]["name"])
        try:
            self.r.core.read_namespaced_secret(name, self.meta["namespace"])
            return
        except ApiException as e:
            if e.status != 404:
                raise
        config = json.dumps(self.docker_config).encode()
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
                 "uid": job["metadata"]["uid"], "controller": True}
        body = {"metadata": {"name": name, "labels": {buildjob.MANAGED_BY: buildjob.OPERATOR},
                             "ownerReferences": [owner]},
                "type": "kubernetes.io/dockerconfigjson",
                "data": {buildjob.REGISTRY_CONFIG_KEY: base64.b64encode(config).decode()}}
        try:
            self.r.core.create_namespaced_secret(self.meta["namespace"], body)
        except ApiException as e:
            if e.status != 409:
                raise

    def observe(self, job: dict, fields: dict) -> None:
        """Status from the Job, and from its pod's termination message once it is done."""
        name = job["metadata"]["name"]
        js = job.get("status") or {}
        attempts = (js.get("failed") or 0) + (js.get("succeeded") or 0) + (js.get("active") or 0)
        fields.update(jobName=name, startTime=js.get("startTime"), attempts=attempts or None,
                      completionTime=js.get("completionTime"))
        result = finished(job)
        if result is None:
            self.write(fields, conditions.building(f"build job {name} is running (attempt {max(attempts, 1)})"))
            return
        if self.status.get("jobName") == name and conditions.reason(self.status) not in conditions.IN_PROGRESS:
            self.write(fields, None)  # already recorded; no need to read pods again
            return
        failed = next(c for c in js["conditions"] if c["type"] == "Failed") if result == "Failed" else None
        if failed and failed.get("reason") == "DeadlineExceeded":
            state = conditions.failed("DeadlineExceeded", f"build job {name}: {failed.get('message') or 'deadline exceeded'}")
        else:
            outcome = buildjob.outcome(self.terminated(job, "Succeeded" if result == "Complete" else "Failed"), self.spec)
            state = conditions.succeeded(outcome.message) if outcome.output else conditions.failed(outcome.reason, outcome.message)
            if outcome.output:
                fields["output"] = outcome.output | self.claim_uid()
        ended = js.get("completionTime") or (failed or {}).get("lastTransitionTime")
        if failed:
            fields["completionTime"] = ended
        start, end = conditions.parse_time(js.get("startTime")), conditions.parse_time(ended)
        self.write(fields, state, (end - start).total_seconds() if start and end else None)

    def terminated(self, job: dict, phase: str) -> dict | None:
        """The container state of the Job's newest pod in `phase`."""
        pods = raw(self.r.core.list_namespaced_pod, self.meta["namespace"],
                   label_selector=f"batch.kubernetes.io/controller-uid={job['metadata']['uid']}")["items"]
        candidates = sorted((p for p in pods
                             if p["status"].get("phase") == phase and p["status"].get("containerStatuses")),
                            key=lambda p: p["metadata"]["creationTimestamp"])
        if not candidates:
            return None
        return candidates[-1]["status"]["containerStatuses"][0]["state"].get("terminated")

    def claim_uid(self) -> dict:
        if "pvc" not in self.spec["output"]:
            return {}
        try:
            claim = self.r.core.read_namespaced_persistent_volume_claim(
                self.spec["output"]["pvc"]["claimName"], self.meta["namespace"])
        except ApiException as e:
            if e.status == 404:
                return {}
            raise
        return {"claimUID": claim.metadata.uid}

    def write(self, fields: dict, state: conditions.State | None, duration: float | None = None) -> None:
        """Patch status with `fields` (None removes one) and, if given, the conditions of `state`.

        A change of state is an event, and a final state is counted in the metrics."""
        patch = dict(fields)
        before = conditions.find(self.status, conditions.READY), conditions.find(self.status, conditions.PROGRESSING)
        if state:
            patch["conditions"] = conditions.conditions(self.status.get("conditions"), state, self.generation,
                                                conditions.timestamp(self.now))
        merged = {k: v for k, v in {**self.status, **patch}.items() if v is not None}
        if merged == self.status:
            return
        if "output" in patch:
            # A merge patch merges objects: drop what the last output had and this one has not (pvc -> oci).
            patch["output"] = {**{k: None for k in self.status.get("output") or {}}, **patch["output"]}
        self.r.custom.patch_namespaced_custom_object_status(
            crd.GROUP, crd.VERSION, self.meta["namespace"], crd.PLURAL, self.meta["name"], {"status": patch})
        self.status = merged
        if state is None:
            return
        transition = (before[0].get("status"), before[0].get("reason"), before[1].get("status")) != \
            ("True" if state.ready else "False", state.reason, "True" if state.progressing else "False")
        if transition:
            self.event("Normal" if state.ready or state.progressing else "Warning", state.reason, state.message)
            if not state.progressing:
                metrics.finished(state.reason, duration)

    def event(self, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the InitramfsBuild; losing one must not fail the pass."""
        t = conditions.timestamp(self.now)
        body = {
            "metadata": {"generateName": f"{self.meta['name']}."},
            "involvedObject": {"apiVersion": crd.API_VERSION, "kind": crd.KIND,
                               "name": self.meta["name"], "namespace": self.meta["namespace"],
                               "uid": self.meta["uid"]},
            "type": type_, "reason": reason, "message": message[:1024],
            "firstTimestamp": t, "lastTimestamp": t, "count": 1,
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
            "reportingInstance": socket.gethostname(),
        }
        try:
            self.r.core.create_namespaced_event(self.meta["namespace"], body)
        except ApiException as e:
            log.warning("cannot post event %s on %s/%s: %s", reason, self.meta["namespace"], self.meta["name"],
                        e.reason)
