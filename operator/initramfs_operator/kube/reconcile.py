"""Level-triggered reconciliation of one InitramfsBuild: read what is, make what should be.

A pass reads the indexes (cache.py) and this process's memory of work in flight (registry
lookups, the admission queue, retries), so looking at a build costs no request; it sends
one only to change something: a status write when the state changed, a Job deletion.
The operator can be killed at any point: the next pass sees the same objects and takes
the same decisions. Jobs have deterministic names per (object, generation, image digest),
so a pass that finds its Job adopts it instead of starting a second build.

Status writes carry the resourceVersion the pass decided on: one that decided on a stale
view fails with a conflict instead of overwriting newer news, and the watch event that
made its view stale queues the build again.
"""

import base64
import json
import logging
import socket
import time
from collections.abc import Hashable
from dataclasses import dataclass

from kubernetes.client.rest import ApiException

from ..errors import AccessDenied, BuildError, RegistryError, UsageError
from ..oci import registry
from . import api, buildjob, cache, conditions, crd, diagnosis, lookup, metrics
from .admission import Admission, Candidate, Rejection
from .buildjob import failed_condition, finished, finishing
from .conditions import BUILDING, QUEUED, READY, RECONCILING, RESOLVING, STALLED, SUCCEEDED
from .workqueue import Backoff, Retries, Retry, WorkQueue

log = logging.getLogger(__name__)

COMPONENT = "initramfs-operator"
RESOLVING_AFTER = 5.0        # a lookup (its wait for a free lookup thread included) longer than this shows
CLAIM_SECONDS = 10.0         # how long a claim's uid, once read, is taken as current (builds share claims)
RESULT_GRACE = 10.0          # how long after its Job finished a build pod's final status may still be on its way
TTL_SLACK = 10.0             # clock skew allowed between the TTL controller and the operator
KEY = tuple[str, str]        # (namespace, name) of an InitramfsBuild


@dataclass(frozen=True)
class Settings:
    builder_image: str
    max_concurrent_builds: int
    pod_ids: buildjob.PodIds = buildjob.PodIds()
    limits: buildjob.Limits = buildjob.Limits()
    retry: Backoff = Backoff(base=5.0, cap=300.0)  # failed lookups and refused Jobs, per build
    stall_after: int = 5                 # failures in a row after which a retried failure is reported Stalled
    lookup_workers: int = 4              # registry lookups at once


class Reconciler:
    def __init__(self, kube: api.Kube, index: cache.Cache, settings: Settings, queue: WorkQueue):
        self.kube, self.cache, self.settings, self.queue = kube, index, settings, queue
        self.lookups = lookup.Lookups(settings.lookup_workers, queue.add)
        self.admission = Admission(kube, index, settings.max_concurrent_builds, queue.add)
        self.lookup_retries = Retries(settings.retry)
        self.job_retries = Retries(settings.retry)
        self.overlay = cache.Overlay()
        # Per build, what this process learnt: no need to ask again (lost on restart, asked again then).
        self.verified: dict[Hashable, tuple] = {}      # outputs confirmed present: (generation, digest, proof)
        self.deleted: dict[str, float] = {}            # Job uids deleted, until the watch shows it
        self.claims: dict[tuple[str, str], tuple[str | None, float]] = {}  # claim -> (uid, when read)
        self.headlines: dict[Hashable, str] = {}       # what the last Event about each build was about

    def reconcile(self, key: KEY) -> None:
        indexed = self.cache.build(*key)
        if indexed is None or indexed["metadata"].get("deletionTimestamp"):
            self.forget(key)  # the garbage collector removes its Jobs
            return
        Pass(self, self.overlay.view(key, indexed)).run()

    def forget(self, key: KEY) -> None:
        self.lookups.forget(key)
        self.admission.withdraw_build(key)
        self.forget_failures(key)
        self.overlay.drop(key)
        self.verified.pop(key, None)
        self.headlines.pop(key, None)

    def forget_failures(self, key: KEY) -> None:
        self.lookup_retries.reset(key)
        self.job_retries.reset(key)

    def prune(self) -> None:
        """Drop what the watches have caught up with."""
        self.overlay.prune(self.cache)
        cutoff = time.monotonic() - 300
        for uid, deleted in list(self.deleted.items()):
            if deleted < cutoff:
                self.deleted.pop(uid, None)

    # --- reads that need the API: objects the spec names, only when needed ---------------------

    def referenced(self, plural: str, namespace: str, name: str, hint: str = "") -> dict:
        """An object the spec names: missing is a spec error, unreadable is the operator's RBAC."""
        kind = plural.rstrip("s")
        try:
            return self.kube.get(api.path("v1", plural, namespace, name))
        except ApiException as e:
            if e.status == 404:
                raise UsageError(f"{kind} {name} not found") from None
            if e.status == 403:
                raise AccessDenied(f"the operator may not read {kind} {name}{hint}") from None
            raise

    def secret(self, namespace: str, name: str) -> dict:
        return self.referenced("secrets", namespace, name,
                               " (installed with the Helm value rbac.registrySecrets=false?)")

    def secret_keys(self, namespace: str, spec: dict) -> list[tuple[str, str]]:
        """The build's registry Secrets and the key of each holding the docker config, push secret first."""
        keys = []
        for name in buildjob.registry_secret_names(spec):
            secret = self.secret(namespace, name)
            keys.append((name, buildjob.docker_config_key(secret.get("type", ""), secret.get("data") or {}, name)))
        return keys

    def registry_options(self, namespace: str, spec: dict) -> registry.RegistryOptions:
        """Credentials and CA for the operator's own registry lookups, in memory."""
        configs = []
        for name in buildjob.registry_secret_names(spec):
            secret = self.secret(namespace, name)
            data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
            configs.append(buildjob.docker_config_of(secret.get("type", ""), data, name))
        ca_pem = None
        ca = (spec.get("registry") or {}).get("caConfigMap")
        if ca:
            texts = self.referenced("configmaps", namespace, ca["name"]).get("data") or {}
            key = ca.get("key", "ca.crt")
            if key not in texts:
                raise UsageError(f"configmap {ca['name']} has no key {key}")
            ca_pem = texts[key].encode()
        return lookup.registry_options(spec, buildjob.merge_docker_configs(configs) if configs else None, ca_pem)

    def ask_image(self, key: KEY, question: tuple, spec: dict) -> None:
        same = ("image", spec["image"], *self.access(key[0], spec))
        self.lookups.ask(key, question, same, lambda: lookup.image_digest(spec, self.registry_options(key[0], spec)))

    def ask_output(self, key: KEY, question: tuple, spec: dict) -> None:
        oci = spec["output"]["oci"]
        same = ("output", f"{oci['repository']}:{oci['tag']}", *self.access(key[0], spec))
        self.lookups.ask(key, question, same, lambda: lookup.pushed_digest(spec, self.registry_options(key[0], spec)))

    @staticmethod
    def access(namespace: str, spec: dict) -> tuple:
        """What decides how a build reaches registries: builds alike in it may share a lookup's answer."""
        return namespace, tuple(buildjob.registry_secret_names(spec)), json.dumps(spec.get("registry") or {},
                                                                                  sort_keys=True)

    def claim_uid(self, namespace: str, spec: dict) -> dict:
        """{"claimUID": uid} of the output claim, {} if it has none (or it does not exist)."""
        if "pvc" not in spec["output"]:
            return {}
        key = (namespace, spec["output"]["pvc"]["claimName"])
        uid, read = self.claims.get(key, (None, 0.0))
        if time.monotonic() - read > CLAIM_SECONDS:
            try:
                uid = self.kube.get(api.path("v1", "persistentvolumeclaims", *key))["metadata"]["uid"]
            except ApiException as e:
                if e.status != 404:
                    raise
                uid = None
            self.claims[key] = (uid, time.monotonic())
        return {"claimUID": uid} if uid else {}


class Pass:
    """One reconciliation of one InitramfsBuild."""

    def __init__(self, reconciler: Reconciler, build: dict):
        self.r = reconciler
        self.build = build
        self.meta, self.spec = build["metadata"], build["spec"]
        self.status: dict = build.get("status") or {}
        self.namespace, self.name, self.uid = self.meta["namespace"], self.meta["name"], self.meta["uid"]
        self.key = (self.namespace, self.name)
        self.generation = self.meta["generation"]
        self.now = conditions.now()
        self.jobs = {j["metadata"]["name"]: j for j in self.r.cache.jobs_of(self.uid)}
        self.same_generation = self.status.get("observedGeneration") == self.generation
        self.fields: dict = {"observedGeneration": self.generation}
        self.answered: tuple | None = None  # the lookup whose answer this pass reports
        ready = conditions.find(self.status, READY)
        # A valid output of this generation: a rebuild for a new digest keeps it Ready meanwhile.
        self.previous = ready.get("message") if ready.get("status") == "True" and \
            ready.get("observedGeneration") == self.generation and self.status.get("output") else None

    def run(self) -> None:
        if not self.same_generation:
            self.r.forget_failures(self.key)  # a spec edit may be the fix: its generation starts afresh
        digest = self.target()
        if digest is None:
            return
        name = buildjob.job_name(self.build, digest)
        self.supersede(keep=name)
        self.fields.update(imageDigest=digest, shortDigest=digest.split(":")[-1][:12])
        job = self.jobs.get(name)
        if job is None:
            self.without_job(name, digest)
        else:
            self.observe(job)
        self.schedule_refresh()

    # --- which digest to build ---------------------------------------------------------------

    @property
    def known_digest(self) -> str | None:
        return self.status.get("imageDigest") if self.same_generation else None

    def target(self) -> str | None:
        """The digest to build; None while it is being looked up, or when it cannot be."""
        try:
            pinned = lookup.pinned_digest(self.spec)
        except UsageError as e:  # only a spec change can fix the reference
            self.write(self.cleared(), conditions.failed(e.reason, str(e)))
            return None
        if pinned:
            if self.known_digest != pinned:
                self.fields["resolvedTime"] = conditions.timestamp(self.now)
            return pinned
        question = ("image", self.generation, self.spec["image"])
        answer = self.r.lookups.answer(self.key, question)
        self.r.lookups.forget(self.key, keep=(question, ("output", self.generation, self.known_digest)))
        if isinstance(answer, lookup.Answer):
            self.answered = question
            return self.resolved(answer)
        if answer is None and self.lookup_due():
            self.r.ask_image(self.key, question, self.spec)
            self.r.queue.add_after(self.key, RESOLVING_AFTER)
        elif answer is lookup.PENDING and not self.same_generation:
            # The previous generation's digest and Job describe nothing of this one.
            self.write(self.cleared(), conditions.in_flight(RESOLVING, f"resolving {self.spec['image']}"))
        return self.known_digest

    def lookup_due(self) -> bool:
        """A new generation, a retry whose time has come, or a refresh (never while building)."""
        retry = self.r.lookup_retries.get(self.key)
        if retry:
            wait = retry.at - time.monotonic()
            if wait > 0:
                self.r.queue.add_after(self.key, wait)
            return wait <= 0
        known = self.known_digest
        if not known:
            return True
        current = self.jobs.get(buildjob.job_name(self.build, known))
        return (current is None or finished(current) is not None) and self.refresh_in() == 0

    def refresh_in(self) -> float | None:
        """Seconds until the tag is due to be looked up again; None if the build does not follow its tag."""
        if not self.spec.get("refreshInterval"):
            return None
        last = conditions.parse_time(self.status.get("resolvedTime"))
        if not last:
            return 0
        due = conditions.parse_duration(self.spec["refreshInterval"]) - (self.now - last).total_seconds()
        return max(due, 0)

    def schedule_refresh(self) -> None:
        seconds = self.refresh_in()
        if seconds:
            self.r.queue.add_after(self.key, seconds)

    def resolved(self, answer: lookup.Answer) -> str | None:
        if answer.error is not None:
            return self.lookup_failed(answer.error, answer.ended)
        self.r.lookup_retries.reset(self.key)
        self.fields["resolvedTime"] = conditions.timestamp(answer.ended)
        return answer.value

    def lookup_failed(self, error: BuildError, ended) -> str | None:
        retry = self.r.lookup_retries.failed(self.key)
        self.fields["resolvedTime"] = conditions.timestamp(ended)
        known = self.known_digest
        if known:  # a refresh: what was built stays valid, and the tag is looked up again after the backoff
            self.r.queue.add_after(self.key, retry.at - time.monotonic())
            self.event("Warning", "RefreshFailed", retry_note(f"cannot resolve {self.spec['image']}: {error}", retry))
            return known
        # A registry that does not answer may come back; refused credentials or a bad spec need someone.
        state = self.after_failure(error.reason, str(error), retry, RESOLVING,
                                   transient=error.reason == RegistryError.reason)
        self.supersede(keep=None)
        self.write({**self.fields, **self.cleared()}, state)
        return None

    def after_failure(self, reason: str, message: str, retry: Retry, phase: str, transient: bool) -> conditions.State:
        """Reconciling in `phase` while a transient failure has attempts left; Stalled (kstatus Failed: someone
        must act) once it has none, or at once when no retry alone could fix it (credentials, a missing
        Secret). Either way the next attempt is scheduled and said, with backoff: as Flux re-checks its
        stalled objects at their interval, fixing the cause (the Secret applied after the build, the quota
        raised) heals the build without a spec change."""
        self.r.queue.add_after(self.key, retry.at - time.monotonic())
        note = retry_note(message, retry)
        if transient and retry.failures < self.r.settings.stall_after:
            return conditions.retrying(reason, note, phase)
        return conditions.failed(reason, note)

    @staticmethod
    def cleared() -> dict:
        """What describes a build Job, when there is none."""
        return {"imageDigest": None, "shortDigest": None, "jobName": None, "startTime": None,
                "completionTime": None, "attempts": None}

    # --- no Job for the digest ---------------------------------------------------------------

    def without_job(self, name: str, digest: str) -> None:
        built = self.built(digest)
        if built is None:
            return  # being checked; the answer queues the build again
        if built or self.failure_kept(name):
            self.write(self.fields, None)
            return
        rejection = self.r.admission.take_rejection(self.uid)
        if rejection and rejection.job_name == name:
            self.rejected(rejection)
            return
        retry = self.r.job_retries.get(self.key)
        if retry and retry.at > time.monotonic():
            self.r.queue.add_after(self.key, retry.at - time.monotonic())
            return
        offered = self.r.admission.offered(self.uid)
        if offered is None or offered.job_name != name:
            self.offer(digest)
        elif self.r.admission.waiting(self.uid):
            message = f"waiting for a build slot: all {self.r.settings.max_concurrent_builds} are taken"
            self.write({**self.fields, **self.job_cleared()}, self.over_output(conditions.in_flight(QUEUED, message)))

    @staticmethod
    def job_cleared() -> dict:
        return {"jobName": None, "startTime": None, "completionTime": None, "attempts": None}

    def offer(self, digest: str) -> None:
        try:
            secrets = self.r.secret_keys(self.namespace, self.spec)
        except BuildError as e:  # a Secret missing or unreadable: someone must fix it, and that heals the build
            self.refused(e.reason, str(e), transient=False)
            return
        s, build = self.r.settings, self.build
        self.r.admission.offer(Candidate(
            self.namespace, self.name, self.uid, self.generation, self.meta["creationTimestamp"],
            buildjob.job_name(build, digest),
            lambda: buildjob.build_job(build, digest, s.builder_image, secrets, s.pod_ids, s.limits)))

    def rejected(self, rejection: Rejection) -> None:
        # A quota frees up, an admission webhook comes back: Stalled only once it keeps refusing.
        self.refused(diagnosis.JOB_REJECTED,
                     f"the API server refused build job {rejection.job_name}: {rejection.message}", transient=True)

    def refused(self, reason: str, message: str, transient: bool) -> None:
        """The Job cannot be created now: tried again after a backoff while that may still help."""
        state = self.after_failure(reason, message, self.r.job_retries.failed(self.key), QUEUED, transient)
        self.write({**self.fields, **self.job_cleared()}, self.over_output(state))

    def built(self, digest: str) -> bool | None:
        """Whether the same inputs were built and the output is still there (its Job may be long gone);
        None while that is being checked."""
        s = self.status
        ready = conditions.find(s, READY)
        if not (self.same_generation and s.get("imageDigest") == digest and ready.get("status") == "True"
                and ready.get("reason") == SUCCEEDED and s.get("output") and not conditions.find(s, RECONCILING)
                and not conditions.find(s, STALLED)):
            return False
        output = s["output"]
        proof = (self.generation, digest, output.get("claimUID") or output.get("digest"))
        if self.r.verified.get(self.key) == proof:
            return True
        if "pvc" in self.spec["output"]:
            # The operator cannot look inside the volume; a claim recreated since the build is empty.
            present = self.r.claim_uid(self.namespace, self.spec).get("claimUID") == output.get("claimUID")
        else:
            question = ("output", self.generation, digest)
            answer = self.r.lookups.answer(self.key, question)
            if not isinstance(answer, lookup.Answer):
                if answer is None:
                    self.r.ask_output(self.key, question, self.spec)
                return None
            self.r.lookups.take(self.key, question)
            # Cannot confirm: rebuild, which reports the real problem if there is one.
            present = answer.value == output.get("digest")
        if present:
            self.r.verified[self.key] = proof
        return present

    def failure_kept(self, name: str) -> bool:
        """A failed build's Job removed by its ttlSecondsAfterFinished: the failure stands. (Deleted by
        someone before that, it is retried: deleting the failed Job is how to retry a build.)"""
        s = self.status
        ttl = self.r.settings.limits.ttl_seconds
        ended = conditions.parse_time(s.get("completionTime"))
        if not (self.same_generation and s.get("jobName") == name and conditions.find(s, STALLED)):
            return False
        return ttl is not None and ended is not None and (self.now - ended).total_seconds() >= ttl - TTL_SLACK

    # --- a Job for the digest ----------------------------------------------------------------

    def observe(self, job: dict) -> None:
        """Status from the Job, its pods, and their result once it is done."""
        name = job["metadata"]["name"]
        self.r.job_retries.reset(self.key)
        self.r.admission.withdraw(self.uid)
        js = job.get("status") or {}
        result = finished(job)
        # Pods run, retried, or done; a Job that runs has one in flight even before its pod shows.
        attempts = (js.get("failed") or 0) + (js.get("succeeded") or 0) + (js.get("active") or 0)
        attempts = max(attempts, 1) if result is None else attempts
        failed = failed_condition(job)
        # The build started when its Job was created (admitted): known at once, and never written twice.
        self.fields.update(jobName=name, startTime=job["metadata"]["creationTimestamp"], attempts=attempts or None,
                           completionTime=js.get("completionTime") or (failed or {}).get("lastTransitionTime"))
        if result is None:
            if not finishing(job):  # else its pods are going away: no news until the result
                self.building(job, attempts)
            return
        if self.same_generation and self.status.get("jobName") == name and \
                not conditions.find(self.status, RECONCILING):
            self.write(self.fields, None)  # already recorded
            return
        self.ended(job, result)

    def building(self, job: dict, attempts: int) -> None:
        pods = self.r.cache.pods_of(job["metadata"]["uid"])
        found = diagnosis.of_pod(diagnosis.newest(pods)) if pods else None
        found = found or self.from_events(job, pods)
        if found is None and not pods and self.status.get("jobName") == job["metadata"]["name"] and \
                conditions.find(self.status, READY).get("reason") in diagnosis.REASONS:
            # Its pod is gone (the deadline, an eviction) and the Job has not said why yet: what held
            # it up stands until then, so the Job's verdict can still name it.
            self.write(self.fields, None)
            return
        if found:
            state = conditions.retrying(found.reason, found.message, BUILDING)
        else:
            state = conditions.in_flight(BUILDING, f"build job {job['metadata']['name']} is running "
                                                   f"(attempt {attempts})")
        self.write(self.fields, self.over_output(state))

    def from_events(self, job: dict, pods: list[dict]) -> diagnosis.Diagnosis | None:
        """Why a Job has no pod, or its pod no container, after a while: what the Warning Events about them
        say (from the index; a new one queues the build, see handlers.warning_event)."""
        stuck = diagnosis.stuck_object(job, pods)
        if stuck is None:
            return None
        age = diagnosis.stuck_for(stuck, self.now)
        if age < diagnosis.EVENTS_AFTER_SECONDS:
            self.r.queue.add_after(self.key, diagnosis.EVENTS_AFTER_SECONDS - age + 0.5)
            return None
        return diagnosis.of_events(self.r.cache.warnings_about(stuck["metadata"]["uid"]))

    def ended(self, job: dict, result: str) -> None:
        failed = failed_condition(job)
        if failed and failed.get("reason") == diagnosis.DEADLINE_EXCEEDED:
            message = deadline_message(job["metadata"]["name"], failed, conditions.find(self.status, READY))
            state = conditions.failed(diagnosis.DEADLINE_EXCEEDED, message)
        else:
            terminated = self.terminated(job, "Succeeded" if result == "Complete" else "Failed")
            ended_at = conditions.parse_time(self.fields["completionTime"])
            if terminated is None and ended_at and (self.now - ended_at).total_seconds() < RESULT_GRACE:
                self.r.queue.add_after(self.key, 2)  # the pod's final status has not reached the index yet
                return
            outcome = buildjob.outcome(terminated, self.spec)
            if outcome.output:
                state = conditions.succeeded(outcome.message)
                self.fields["output"] = outcome.output | self.r.claim_uid(self.namespace, self.spec)
            else:
                state = conditions.failed(outcome.reason, outcome.message)
        start, end = (conditions.parse_time(self.fields[f]) for f in ("startTime", "completionTime"))
        self.write(self.fields, self.over_output(state), (end - start).total_seconds() if start and end else None)
        if "output" in self.fields:
            output = self.fields["output"]
            self.r.verified[self.key] = (self.generation, self.fields["imageDigest"],
                                         output.get("claimUID") or output.get("digest"))

    def terminated(self, job: dict, phase: str) -> dict | None:
        """The container state of the Job's newest pod in `phase`."""
        pods = [p for p in self.r.cache.pods_of(job["metadata"]["uid"])
                if p["status"].get("phase") == phase and p["status"].get("containerStatuses")]
        if not pods:
            return None
        return diagnosis.newest(pods)["status"]["containerStatuses"][0]["state"].get("terminated")

    def over_output(self, state: conditions.State) -> conditions.State:
        return conditions.over_previous_output(state, self.previous) if self.previous else state

    # --- acting ------------------------------------------------------------------------------

    def supersede(self, keep: str | None) -> None:
        """Delete the Jobs of other generations or digests; the garbage collector takes their pods."""
        for name, job in self.jobs.items():
            uid = job["metadata"]["uid"]
            if name == keep or job["metadata"].get("deletionTimestamp") or uid in self.r.deleted:
                continue
            try:
                self.r.kube.delete(api.path("batch/v1", "jobs", self.namespace, name),
                                   {"propagationPolicy": "Background"})
            except ApiException as e:
                if e.status != 404:
                    raise
            self.r.deleted[uid] = time.monotonic()
            self.event("Normal", "Superseded", f"deleted build job {name}: the spec or the image digest changed")

    def write(self, fields: dict, state: conditions.State | None, duration: float | None = None) -> None:
        """Patch status with `fields` (None removes one) and, if given, the conditions of `state`.

        A change of state is an Event, and a final state is counted in the metrics."""
        patch = {**fields, "observedGeneration": self.generation}
        if state:
            patch["conditions"] = conditions.conditions(self.status.get("conditions"), state, self.generation,
                                                        conditions.timestamp(self.now))
        merged = {k: v for k, v in {**self.status, **patch}.items() if v is not None}
        if merged == self.status:
            self.reported()
            return
        if "output" in patch:
            # A merge patch merges objects: drop what the last output had and this one has not (pvc -> oci).
            patch["output"] = {**{k: None for k in self.status.get("output") or {}}, **patch["output"]}
        body = {"metadata": {"resourceVersion": self.meta["resourceVersion"]}, "status": patch}
        try:
            written = self.r.kube.merge_patch(
                api.path(crd.API_VERSION, crd.PLURAL, self.namespace, self.name, "status"), body)
        except ApiException as e:
            if e.status not in (404, 409):
                raise
            log.debug("%s/%s changed meanwhile: its next event brings it back", self.namespace, self.name)
            return
        self.r.overlay.written(self.key, self.build, cache.build_entry(written))
        before = self.status
        self.build, self.meta, self.status = written, written["metadata"], merged
        self.reported()
        if state:
            self.announce(state, before, duration)

    def announce(self, state: conditions.State, before: dict, duration: float | None) -> None:
        """An Event when what the state is about changes (not on every message), and the metrics of a
        final state (Succeeded, or Stalled) once it is reached."""
        headline = state.headline
        said = self.r.headlines.get(self.key) or conditions.headline_of(before)
        self.r.headlines[self.key] = headline.reason
        if headline.reason != said and headline.reason != RESOLVING:  # a lookup in flight is no news
            self.event("Warning" if state.problem else "Normal", headline.reason, headline.message)
        if state.reconciling is None and (conditions.find(before, RECONCILING) or headline.reason != said):
            metrics.finished(state.stalled.reason if state.stalled else SUCCEEDED, duration)

    def reported(self) -> None:
        """The lookup answer this pass used is in status now: forget it."""
        if self.answered:
            self.r.lookups.take(self.key, self.answered)

    def event(self, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the InitramfsBuild; losing one must not fail the pass."""
        t = conditions.timestamp(self.now)
        body = {
            "metadata": {"generateName": f"{self.name}."},
            "involvedObject": {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "name": self.name,
                               "namespace": self.namespace, "uid": self.uid},
            "type": type_, "reason": reason, "message": message[:1024],
            "firstTimestamp": t, "lastTimestamp": t, "count": 1,
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
            "reportingInstance": socket.gethostname(),
        }
        try:
            self.r.kube.create(api.path("v1", "events", self.namespace), body)
        except ApiException as e:
            log.warning("cannot post event %s on %s/%s: %s", reason, self.namespace, self.name, e.reason)


# --- what status messages say ------------------------------------------------------------------

def retry_note(message: str, retry: Retry) -> str:
    """A failure that is tried again: when, and how many failed before."""
    return f"{message}; next attempt in {retry.delay:.0f}s ({retry.failures} failed in a row)"


def deadline_message(job_name: str, failed: dict, before: dict) -> str:
    """A build Job stopped by its deadline: the Job controller's words, and what held the build up, if known
    (`before` is the Ready condition the last pass wrote)."""
    message = f"build job {job_name}: {failed.get('message') or 'deadline exceeded'}"
    if before.get("reason") in diagnosis.REASONS:
        message += f" (it was {conditions.explained(before['reason'], before.get('message') or '')})"
    return message
