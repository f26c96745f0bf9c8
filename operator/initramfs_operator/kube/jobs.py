"""A build's Job: offered to the admission when there is none, observed while it runs, its result read
once it is done, and deleted when the spec or the digest moved on.

Jobs have deterministic names per (object, generation, image digest), so a pass that finds
its Job adopts it instead of starting a second build; the admission (admission.py) is the
one place that creates them.
"""

from collections.abc import Callable, Collection, Hashable

from ..errors import BuildError
from . import api, buildjob, cache, cleanup, conditions, diagnosis
from .admission import Admission, Candidate, Rejection
from .buildjob import failed_condition, finished, finishing
from .clock import Clock
from .conditions import BUILDING, QUEUED, READY, RECONCILING, STALLED
from .report import NO_JOB, Report
from .settings import Settings
from .verification import Verification
from .workqueue import Retries

RESULT_GRACE = 10.0          # how long after its Job finished a build pod's final status may still be on its way
TTL_SLACK = 10.0             # clock skew allowed between the TTL controller and the operator
DELETED_SECONDS = 300.0      # how long a Job deleted is remembered, for its watch to show the deletion
OFFERED, WAITING, STOP = "offered", "waiting", "stop"  # what JobLifecycle.want came to


class JobLifecycle:
    """The Jobs of builds whose digest is known. `deleted` remembers Jobs deleted until the watch shows it;
    `verified` the outputs confirmed present (shared with resolve.Resolver.built)."""

    def __init__(self, kube: api.Kube, index: cache.Cache, admission: Admission, retries: Retries,
                 claim_uid: Callable[[str, dict], dict], secret_keys: Callable[[str, dict], list[tuple[str, str]]],
                 verified: dict[Hashable, tuple], clock: Clock, settings: Settings, verification: Verification):
        self.kube, self.cache, self.admission, self.retries = kube, index, admission, retries
        self.verification = verification
        self.claim_uid, self.secret_keys, self.verified, self.clock = claim_uid, secret_keys, verified, clock
        self.settings = settings
        self.deleted: dict[str, float] = {}  # Job uid -> the clock's monotonic() when deleted

    def prune(self) -> None:
        """Forget deletions the watch must have shown by now."""
        cutoff = self.clock.monotonic() - DELETED_SECONDS
        for uid, deleted in list(self.deleted.items()):
            if deleted < cutoff:
                self.deleted.pop(uid, None)

    # --- no Job for the digest ---------------------------------------------------------------

    def without_job(self, report: Report, name: str, digest: str, built: bool | None) -> None:
        """`built`: whether the same inputs were built and their output is still there (None: being checked;
        the answer queues the build again)."""
        if built is None:
            return
        if built or self.failure_kept(report, name):
            report.write(report.fields, None)
            return
        if self.want(report, digest, name) == WAITING:
            message = f"waiting for a build slot: all {self.settings.max_concurrent_builds} are taken"
            report.write({**report.fields, **NO_JOB}, report.over_output(conditions.in_flight(QUEUED, message)))

    def want(self, report: Report, digest: str, name: str, platform: str | None = None, order: int = 0) -> str:
        """The build wants its Job `name` (of `platform`, the `order`th of its several): offered to the admission
        unless the admission refused it (said in status) or a retry is not due yet. WAITING: offered before, no
        slot was free for it yet; STOP: this pass ends here; OFFERED otherwise."""
        rejection = self.admission.take_rejection(report.uid, platform)
        if rejection and rejection.job_name == name:
            self.rejected(report, rejection)
            return STOP
        retry = self.retries.get(report.key)
        if retry and retry.at > self.clock.monotonic():
            report.again_at(retry)
            return STOP
        offered = self.admission.offered(report.uid, platform)
        if offered is None or offered.job_name != name:
            return OFFERED if self.offer(report, digest, platform, order) else STOP
        return WAITING if self.admission.waiting(report.uid, platform) else OFFERED

    def offer(self, report: Report, digest: str, platform: str | None = None, order: int = 0) -> bool:
        """Offer the build's Job (of `platform`, the `order`th of its several) to the admission; False if it
        cannot be made (said in status)."""
        try:
            secrets = self.secret_keys(report.namespace, report.spec)
        except BuildError as e:  # a Secret missing or unreadable: someone must fix it, and that heals the build
            self.refused(report, e.reason, str(e), transient=False)
            return False
        s, build = self.settings, report.build
        self.admission.offer(Candidate(
            report.namespace, report.name, report.uid, report.observed_generation, report.meta["creationTimestamp"],
            buildjob.job_names(build, digest)[platform],
            lambda: buildjob.build_job(build, digest, s.builder_image, secrets, s.pod_ids, s.limits, s.pod_defaults,
                                       platform), platform, order))
        return True

    def rejected(self, report: Report, rejection: Rejection) -> None:
        # A quota frees up, an admission webhook comes back: Stalled only once it keeps refusing.
        self.refused(report, diagnosis.JOB_REJECTED,
                     f"the API server refused build job {rejection.job_name}: {rejection.message}", transient=True)

    def refused(self, report: Report, reason: str, message: str, transient: bool) -> None:
        """The Job cannot be created now: tried again after a backoff while that may still help."""
        state = report.after_failure(reason, message, self.retries.failed(report.key), QUEUED, transient,
                                     self.settings.stall_after)
        report.write({**report.fields, **NO_JOB}, report.over_output(state))

    def failure_kept(self, report: Report, name: str) -> bool:
        """A failed build's Job removed by its ttlSecondsAfterFinished: the failure stands. (Deleted by
        someone before that, it is retried: deleting the failed Job is how to retry a build.)"""
        s = report.status
        ttl = self.settings.limits.ttl_seconds
        ended = conditions.parse_time(s.get("completionTime"))
        if not (report.same_generation and s.get("jobName") == name and conditions.find(s, STALLED)):
            return False
        return ttl is not None and ended is not None and (report.now - ended).total_seconds() >= ttl - TTL_SLACK

    # --- a Job for the digest ----------------------------------------------------------------

    def observe(self, report: Report, job: dict) -> None:
        """Status from the Job, its pods, and their result once it is done."""
        name = job["metadata"]["name"]
        self.retries.reset(report.key)
        self.admission.withdraw(report.uid)
        result = finished(job)
        attempts = attempts_of(job)
        # The build started when its Job was created (admitted): known at once, and never written twice.
        report.fields.update(jobName=name, startTime=job["metadata"]["creationTimestamp"], attempts=attempts or None,
                             completionTime=completion_time(job))
        if result is None:
            if not finishing(job):  # else its pods are going away: no news until the result
                self.building(report, job, attempts)
            return
        if recorded(report, job):
            report.write(report.fields, None)
            return
        self.ended(report, job)

    def building(self, report: Report, job: dict, attempts: int) -> None:
        pods = self.cache.pods_of(job["metadata"]["uid"])
        found = self.stuck(report, job, pods)
        if found is None and not pods and report.status.get("jobName") == job["metadata"]["name"] and \
                conditions.find(report.status, READY).get("reason") in diagnosis.REASONS:
            # Its pod is gone (the deadline, an eviction) and the Job has not said why yet: what held
            # it up stands until then, so the Job's verdict can still name it.
            report.write(report.fields, None)
            return
        if found:
            state = conditions.retrying(found.reason, found.message, BUILDING)
        else:
            state = conditions.in_flight(BUILDING, f"build job {job['metadata']['name']} is running "
                                                   f"(attempt {attempts})")
        report.write(report.fields, report.over_output(state))

    def stuck(self, report: Report, job: dict, pods: list[dict]) -> diagnosis.Diagnosis | None:
        """What holds a running Job up, if anything does (its pod's state, or the Warning Events about it)."""
        found = diagnosis.of_pod(diagnosis.newest(pods)) if pods else None
        return found or self.from_events(report, job, pods)

    def from_events(self, report: Report, job: dict, pods: list[dict]) -> diagnosis.Diagnosis | None:
        """Why a Job has no pod, or its pod no container, after a while: what the Warning Events about them
        say (from the index; a new one queues the build, see handlers.warning_event)."""
        stuck = diagnosis.stuck_object(job, pods)
        if stuck is None:
            return None
        age = diagnosis.stuck_for(stuck, report.now)
        if age < diagnosis.EVENTS_AFTER_SECONDS:
            report.again_in(diagnosis.EVENTS_AFTER_SECONDS - age + 0.5)
            return None
        return diagnosis.of_events(self.cache.warnings_about(stuck["metadata"]["uid"]))

    def ended(self, report: Report, job: dict) -> None:
        fields = report.fields
        outcome = self.outcome(report, job)
        if outcome is None:
            return
        claim = self.claim_uid(report.namespace, report.spec) if outcome.output else {}
        outputs = [o | claim for o in outcome.outputs or []]
        if outcome.output and self.verification.wanted(report):
            self.verification.begin(report, job["metadata"]["name"], outcome.output | claim, outputs, outcome.message)
            return
        if outcome.output:
            state = conditions.succeeded(outcome.message)
            fields["output"] = outcome.output | claim
            fields["outputs"] = outputs
            fields["previousOutputs"] = cleanup.superseded(report.status, fields["output"], outputs) or None
        else:
            state = conditions.failed(outcome.reason, outcome.message)
        self.record(report, fields, state)

    def record(self, report: Report, fields: dict, state: conditions.State) -> None:
        """Write the end of a build (its output, or why there is none); an output written is known present."""
        start, end = (conditions.parse_time(fields.get(f)) for f in ("startTime", "completionTime"))
        report.write(fields, report.over_output(state), (end - start).total_seconds() if start and end else None)
        if "output" in fields:
            output = fields["output"]
            self.verified[report.key] = (report.generation, fields["imageDigest"],
                                         output.get("claimUID") or output.get("digest"))

    def outcome(self, report: Report, job: dict, platform: str | None = None) -> buildjob.Outcome | None:
        """What a finished Job (of `platform`, of a build of several) came to: stopped at its deadline, or its
        pod's result; None while that pod's final status is on its way (looked at again in 2 s)."""
        failed = failed_condition(job)
        if failed and failed.get("reason") == diagnosis.DEADLINE_EXCEEDED:
            message = deadline_message(job["metadata"]["name"], failed, conditions.find(report.status, READY))
            return buildjob.Outcome(diagnosis.DEADLINE_EXCEEDED, message)
        terminated = self.terminated(job, "Succeeded" if finished(job) == "Complete" else "Failed")
        ended_at = conditions.parse_time(completion_time(job))
        if terminated is None and ended_at and (report.now - ended_at).total_seconds() < RESULT_GRACE:
            report.again_in(2)  # the pod's final status has not reached the index yet
            return None
        return buildjob.outcome(terminated, report.spec, platform)

    def terminated(self, job: dict, phase: str) -> dict | None:
        """The container state of the Job's newest pod in `phase`."""
        pods = [p for p in self.cache.pods_of(job["metadata"]["uid"])
                if p["status"].get("phase") == phase and p["status"].get("containerStatuses")]
        if not pods:
            return None
        return diagnosis.newest(pods)["status"]["containerStatuses"][0]["state"].get("terminated")

    # --- acting ------------------------------------------------------------------------------

    def supersede(self, report: Report, jobs: dict[str, dict], keep: Collection[str] = (),
                  why: str = "the spec or the image digest changed") -> None:
        """Delete the Jobs but those to `keep` (of other generations or digests: `why`); the garbage collector
        takes their pods."""
        for name, job in jobs.items():
            uid = job["metadata"]["uid"]
            if name in keep or job["metadata"].get("deletionTimestamp") or uid in self.deleted:
                continue
            try:
                self.kube.delete(api.path("batch/v1", "jobs", report.namespace, name),
                                 {"propagationPolicy": "Background"})
            except api.ApiError as e:
                if e.status != 404:
                    raise
            self.deleted[uid] = self.clock.monotonic()
            report.event("Normal", "Superseded", f"deleted build job {name}: {why}")


def completion_time(job: dict) -> str | None:
    """When the Job ended: its completionTime, or when it was given up on."""
    return (job.get("status") or {}).get("completionTime") or (failed_condition(job) or {}).get("lastTransitionTime")


def attempts_of(job: dict) -> int:
    """Pods the Job ran, retried, or runs; one in flight even before its pod shows while it runs."""
    js = job.get("status") or {}
    attempts = (js.get("failed") or 0) + (js.get("succeeded") or 0) + (js.get("active") or 0)
    return max(attempts, 1) if finished(job) is None else attempts


def recorded(report: Report, job: dict) -> bool:
    """The Job is done and status holds its result (its output, or the candidate being verified)."""
    name = job["metadata"]["name"]
    return finished(job) is not None and report.same_generation and report.status.get("jobName") == name and \
        (not conditions.find(report.status, RECONCILING) or
         (report.status.get("verification") or {}).get("buildJob") == name)


def deadline_message(job_name: str, failed: dict, before: dict) -> str:
    """A build Job stopped by its deadline: the Job controller's words, and what held the build up, if known
    (`before` is the Ready condition the last pass wrote)."""
    message = f"build job {job_name}: {failed.get('message') or 'deadline exceeded'}"
    if before.get("reason") in diagnosis.REASONS:
        message += f" (it was {conditions.explained(before['reason'], before.get('message') or '')})"
    return message
