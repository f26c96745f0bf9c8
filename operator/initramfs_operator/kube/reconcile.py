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

A pass is the controller-runtime kind: it returns when it wants to look at the build again
(`Result.requeue_after`, the earliest of what its parts want), and the worker that ran it
queues that (controller.py); it reads the time from the clock it is given. Its parts:
resolve.py (which digest), jobs.py (the Job for it; platformjobs.py the Jobs, one per platform, of
a build of several platforms, and the index of their artifacts), report.py (status and Events), cleanup.py
(outputs removed past spec.output.retention, or on deletion under deletionPolicy Delete, behind
its finalizer: a build being deleted gets a pass only while it carries that).

A suspended build (spec.suspend) is paused: its pass only reports the Job that runs on (see `pause`).
The requested-at annotation (crd.REQUESTED_AT) makes a lookup due at once (resolve.py), recorded as
status.lastHandledRequestedAt with the pass that used its answer; a suspended build leaves it unhandled,
as Flux's suspended objects ignore `flux reconcile`, so resuming handles it.
"""

from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass

from ..oci import registry
from . import api, buildjob, cache, conditions, lookup, registry_access, verifyjob
from .admission import Admission
from .cleanup import FINALIZER, Cleanup
from .clock import REAL, Clock
from .conditions import READY, SUSPENDED
from .jobs import JobLifecycle, recorded
from .platformjobs import PlatformJobs, PushIndex
from .report import NO_DIGEST, Report
from .resolve import Claims, Resolver, Unresolved, known_digest, refresh_in
from .settings import Settings
from .verification import Verification
from .workqueue import Retries

KEY = tuple[str, str]        # (namespace, name) of an InitramfsBuild
CLEANUP_WORKERS = 2          # registry removals at once (cleanup.py)
INDEX_WORKERS = 2            # index pushes at once (platformjobs.py)


@dataclass(frozen=True)
class Result:
    requeue_after: float | None = None  # seconds until the build wants another pass (<= 0: now); None: no need


class Reconciler:
    """Passes over builds, and what this process learnt between them (lost on restart, asked again then).

    `requeue(key)` queues a build when news arrives off the pass: a lookup's answer, the admission's word.
    """

    def __init__(self, kube: api.Kube, index: cache.Cache, settings: Settings, requeue: Callable[[Hashable], None],
                 clock: Clock = REAL, lookup_pool: Executor | None = None,
                 current_digest: Callable[[str, registry.RegistryOptions], str] = lookup.current_digest,
                 remove_artifact: Callable[..., registry.Removal] = registry.remove_artifact,
                 push_index: PushIndex = registry.push_index_of):
        self.kube, self.cache, self.settings, self.clock = kube, index, settings, clock
        self.lookups = lookup.Lookups(settings.lookup_workers, requeue, clock, lookup_pool)
        self.admission = Admission(kube, index, settings.max_concurrent_builds, requeue)
        self.overlay = cache.Overlay()
        verified: dict[Hashable, tuple] = {}  # outputs confirmed present: (generation, digest, proof)
        self.headlines: dict[Hashable, str] = {}  # what the last Event about each build was about
        claims = Claims(kube, clock)
        self.resolver = Resolver(self.lookups, Retries(settings.retry, clock), claims, verified,
                                 self.registry_options, current_digest, settings.stall_after)
        self.verification = Verification(kube, index, settings, self.secret_keys, verified, clock)
        self.jobs = JobLifecycle(kube, index, self.admission, Retries(settings.retry, clock), claims.uid,
                                 self.secret_keys, verified, clock, settings, self.verification)
        # Index pushes and removals in threads of their own: a registry slow to take them holds up no lookup.
        self.indexes = lookup.Lookups(INDEX_WORKERS, requeue, clock, lookup_pool)
        self.platforms = PlatformJobs(self.jobs, self.indexes, self.registry_options, push_index)
        removals = lookup.Lookups(CLEANUP_WORKERS, requeue, clock, lookup_pool)
        self.cleanup = Cleanup(kube, index, removals, Retries(settings.retry, clock), clock, settings,
                               self.registry_options, remove_artifact)

    def reconcile(self, key: KEY) -> Result:
        indexed = self.cache.build(*key)
        finalizers = (indexed or {}).get("metadata", {}).get("finalizers") or []
        if indexed is None or (indexed["metadata"].get("deletionTimestamp") and FINALIZER not in finalizers):
            self.forget(key)  # the garbage collector removes its Jobs
            return Result()
        report = Report(self.kube, self.overlay, self.headlines, self.clock, self.overlay.view(key, indexed))
        try:
            if report.meta.get("deletionTimestamp"):
                self.delete(report)
            else:
                self.run(report)
        finally:
            if report.recorded and report.answered:  # status has the lookup's answer now: forget it
                self.lookups.take(key, report.answered)
        return Result(report.requeue_after)

    def run(self, report: Report) -> None:
        if not report.same_generation:
            self.forget_failures(report.key)  # a spec edit may be the fix: its generation starts afresh
        jobs, verifying, cleanup_jobs = self.jobs_of(report)
        self.cleanup.keep_finalizer(report)  # suspended too: a deletion meanwhile must find it
        if report.suspended:
            self.pause(report, jobs)
            return
        self.cleanup.prune(report, cleanup_jobs)
        if conditions.find(report.status, READY).get("reason") == SUSPENDED:
            # Taken up again: said in this pass, acted on in the next (the write queues it).
            report.write(report.fields, conditions.resumed(conditions.recorded(report.status)))
            return
        digest = self.resolver.target(report, jobs)
        if isinstance(digest, Unresolved):
            self.jobs.supersede(report, {**jobs, **verifying})
            report.write({**report.fields, **NO_DIGEST}, digest.state)
            return
        if digest is None:
            return
        names = buildjob.job_names(report.build, digest)
        self.jobs.supersede(report, jobs, keep=set(names.values()))
        report.with_digest(digest)
        if None not in names:  # several platforms, a Job each
            self.platforms.step(report, digest, jobs, lambda: self.resolver.built(report, digest))
            self.refresh(report)
            return
        name = names[None]
        job = jobs.get(name)
        if self.verification.owns(report, name):
            self.jobs.supersede(report, verifying, keep={self.verification.step(report, verifying)})
        elif job is None:
            self.jobs.without_job(report, name, digest, self.resolver.built(report, digest))
        else:
            self.jobs.observe(report, job)
        self.refresh(report)

    @staticmethod
    def refresh(report: Report) -> None:
        refresh = refresh_in(report)
        if refresh:
            report.again_in(refresh)

    def jobs_of(self, report: Report) -> tuple[dict[str, dict], dict[str, dict], list[dict]]:
        """The build's build Jobs and its verification Jobs by name, and its cleanup Jobs."""
        jobs: dict[str, dict] = {}
        verifying: dict[str, dict] = {}
        cleanup_jobs: list[dict] = []
        for j in self.cache.jobs_of(report.uid):
            if buildjob.is_cleanup(j):
                cleanup_jobs.append(j)
            else:
                (verifying if verifyjob.is_verification(j) else jobs)[j["metadata"]["name"]] = j
        return jobs, verifying, cleanup_jobs

    def delete(self, report: Report) -> None:
        """Being deleted with the cleanup finalizer: no build may push after the cleanup, so its Jobs go first."""
        self.admission.withdraw(report.uid)
        jobs, verifying, cleanup_jobs = self.jobs_of(report)
        jobs.update(verifying)
        self.jobs.supersede(report, jobs, why="the build is being deleted")
        if jobs:
            report.again_in(2)  # until the watch shows them gone
            return
        self.cleanup.finalize(report, cleanup_jobs)
        if FINALIZER not in (report.meta.get("finalizers") or []):
            self.forget(report.key)

    def pause(self, report: Report, jobs: dict[str, dict]) -> None:
        """spec.suspend: no Job offered, nothing looked up, nothing deleted; the Job of this build that runs on
        is reported until its result is recorded, then the build says Suspended."""
        self.lookups.forget(report.key)
        self.admission.withdraw(report.uid)
        known = known_digest(report)
        names = buildjob.job_names(report.build, known) if known else {}
        if known and None not in names and self.platforms.in_flight(report, known, jobs):
            report.with_digest(known)
            self.platforms.step(report, known, jobs, lambda: self.resolver.built(report, known), offering=False)
            return
        job = jobs.get(names[None]) if known and None in names else None
        if known and job is not None and not recorded(report, job):
            report.with_digest(known)
            self.jobs.observe(report, job)
            return
        before = conditions.recorded(report.status)
        # Work that was in flight starts over on resume: its digest is not what the output was built from. A
        # candidate being verified was built from it: its verification goes on.
        candidate_of = (report.status.get("verification") or {}).get("buildJob")
        verifying = candidate_of is not None and candidate_of == report.status.get("jobName")
        kept = report.same_generation and (before.reconciling is None or verifying)
        report.write(report.fields if kept else {**report.fields, **NO_DIGEST},
                     conditions.suspended(before, report.same_generation))

    def forget(self, key: KEY) -> None:
        self.lookups.forget(key)
        self.indexes.forget(key)
        self.admission.withdraw_build(key)
        self.forget_failures(key)
        self.overlay.drop(key)
        self.cleanup.forget(key)
        self.resolver.verified.pop(key, None)
        self.headlines.pop(key, None)

    def forget_failures(self, key: KEY) -> None:
        self.resolver.retries.reset(key)
        self.jobs.retries.reset(key)

    def prune(self) -> None:
        """Drop what the watches have caught up with."""
        self.overlay.prune(self.cache)
        self.jobs.prune()

    # --- reads that need the API: objects the spec names, only when needed ---------------------

    def referenced(self, plural: str, namespace: str, name: str) -> dict:
        """An object the spec names (a registry_access.Reader): missing is a spec error, unreadable is the
        operator's RBAC."""
        hints = {"secrets": " (installed with the Helm value rbac.registrySecrets=false?)"}
        return registry_access.ObjectReader(self.kube.get, "the operator", hints)(plural, namespace, name)

    def secret_keys(self, namespace: str, spec: dict) -> list[tuple[str, str]]:
        """The build's registry Secrets and the key of each holding the docker config, push secret first."""
        return registry_access.secret_keys(self.referenced, namespace, spec)

    def registry_options(self, namespace: str, spec: dict) -> registry.RegistryOptions:
        """Credentials and CA for the operator's own registry lookups, in memory."""
        return registry_access.registry_options(self.referenced, namespace, spec)
