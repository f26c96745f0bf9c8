"""The Jobs of a build of several platforms (spec.platforms with two or more): one build Job per platform,
and once all of them succeeded, the build's output.

- Each platform's Job is a build Job like any other: offered to the admission (admission.py) as a
  Candidate of its own, it waits for a slot and takes one; named per (build, generation, image digest,
  platform) (buildjob.platform_job_name), so a restarted operator adopts it. It builds that platform
  only: its own file on the claim (spec.output.pvc.path with {arch}/{platform} expanded), or its artifact
  pushed by digest (--push-by-digest), the spec's tag left where it is. A build of one platform keeps
  its one Job, named as before.
- Ready once every platform's Job succeeded: their results are status.outputs, in the spec's order, and
  status.output is the claim, or the OCI index of the artifacts at the spec's tag (what the output check
  and refreshInterval's rebuilds follow, as before).
- The index is pushed by the operator, not by a pod: it is one small manifest that can only be made once
  every platform is built, and the operator already reaches the build's registries with the build's
  registry options (lookups, removals), read from its Secrets in one place; a pod would take another
  Job, and a slot, for one request. It is pushed in threads of its own (a lookup.Lookups, as removals
  are), never on the reconcile thread; its answer queues the build. Each artifact is read back and the
  index is dated as the newest of them (oci/registry/push.push_index_of), so pushing it again after a
  restart pushes the same index: same digest. A registry that refuses it is retried with backoff.
- A platform that fails fails the build: Stalled with its Job's reason, the message naming the
  platform. The other platforms' Jobs still running are deleted (their slots go to builds that can
  still succeed; the failure stands until someone acts), and no Job is offered while it stands.
  status.jobName lists the platforms' Jobs (comma-separated, in the spec's order); deleting the failed
  one retries the build, building again only the platforms whose Jobs are gone.
"""

from collections.abc import Callable

from ..errors import BuildError, RegistryError
from ..oci import image, reference, registry
from . import buildjob, cleanup, conditions, lookup
from .buildjob import finished, finishing
from .conditions import BUILDING, QUEUED, READY, RECONCILING, STALLED, SUCCEEDED
from .jobs import STOP, WAITING, JobLifecycle, attempts_of, completion_time
from .report import NO_JOB, Report

PushIndex = Callable[..., str]  # registry.push_index_of


class PlatformJobs:
    """The Jobs of builds of several platforms whose digest is known, and the index of their artifacts."""

    def __init__(self, lifecycle: JobLifecycle, indexes: lookup.Lookups,
                 registry_options: Callable[[str, dict], registry.RegistryOptions], push_index: PushIndex):
        self.lifecycle, self.indexes = lifecycle, indexes
        self.registry_options, self.push_index = registry_options, push_index

    def step(self, report: Report, digest: str, jobs: dict[str, dict], built: Callable[[], bool | None],
             offering: bool = True) -> None:
        """One pass over the build of `digest`: `jobs` are the build's Jobs by name, `built()` whether what
        status says was built is still there (None: being checked). `offering`: Jobs may be offered (not
        while suspended: the Jobs running are followed to their end)."""
        names = buildjob.job_names(report.build, digest)
        mine = {p: jobs[n] for p, n in names.items() if n in jobs}
        done = {p: j for p, j in mine.items() if finished(j)}
        self.lifecycle.admission.withdraw(report.uid, list(mine))
        outcomes: dict[str | None, buildjob.Outcome] = {}
        for p, job in done.items():
            found = self.lifecycle.outcome(report, job, p)
            if found is None:
                return  # its pod's result is on its way
            outcomes[p] = found
        listed = ", ".join(names.values())
        failed = next((p for p in names if p in outcomes and not outcomes[p].output), None)
        if failed is not None or len(done) == len(names):
            s = report.status
            said = conditions.find(s, STALLED) if failed is not None else \
                conditions.find(s, READY).get("reason") == SUCCEEDED
            if said and report.same_generation and s.get("jobName") == listed and \
                    not conditions.find(s, RECONCILING):
                report.write(report.fields, None)  # status says what they came to
            elif failed is not None:
                self.failed(report, names, mine, failed, outcomes[failed], listed)
            else:
                self.all_built(report, digest, mine, outcomes, listed)
            return
        if len(mine) < len(names):
            state = built()
            if state is None:
                return
            if state or self.lifecycle.failure_kept(report, listed):
                report.write(report.fields, None)
                return
        self.building(report, names, mine, listed, offering, digest)

    def in_flight(self, report: Report, digest: str, jobs: dict[str, dict]) -> bool:
        """Work of a suspended build that goes on to its end: a platform's Job of `digest` runs, or every
        platform's ended and status does not say yet what they came to (the index may be pushed still).
        Platforms whose Jobs were not created yet wait for the resume."""
        names = buildjob.job_names(report.build, digest)
        present = [jobs[n] for n in names.values() if n in jobs]
        if any(not finished(j) for j in present):
            return True
        return len(present) == len(names) and not (
            report.same_generation and report.status.get("jobName") == ", ".join(names.values()) and
            not conditions.find(report.status, RECONCILING))

    # --- the states of the build --------------------------------------------------------------

    def describe(self, report: Report, jobs: list[dict], listed: str) -> None:
        """status's job fields: the platforms' Jobs, when the first started, when the last ended."""
        starts = [j["metadata"]["creationTimestamp"] for j in jobs]
        ends = [end for end in map(completion_time, jobs) if end]
        report.fields.update(jobName=listed, startTime=min(starts) if starts else None,
                             completionTime=max(ends) if ends and len(ends) == len(jobs) else None,
                             attempts=sum(attempts_of(j) for j in jobs) or None)

    def failed(self, report: Report, names: dict[str | None, str], mine: dict[str | None, dict], platform: str | None,
               outcome: buildjob.Outcome, listed: str) -> None:
        """A platform's Job failed: the build did, named after it; the others' Jobs still running are deleted."""
        failed_job = mine[platform]
        running = {names[p]: j for p, j in mine.items() if p != platform and not finished(j)}
        self.lifecycle.supersede(report, running, why=f"platform {platform} of the build failed")
        self.lifecycle.admission.withdraw(report.uid)
        self.describe(report, [failed_job], listed)
        state = conditions.failed(outcome.reason, f"{platform}: {outcome.message}")
        self.lifecycle.record(report, report.fields, state)

    def all_built(self, report: Report, digest: str, mine: dict[str | None, dict],
                  outcomes: dict[str | None, buildjob.Outcome], listed: str) -> None:
        self.describe(report, list(mine.values()), listed)
        claim = self.lifecycle.claim_uid(report.namespace, report.spec)
        outputs = [(outcomes[p].outputs or [])[0] | claim for p in mine]
        index = None
        if "oci" in report.spec["output"]:
            index = self.index(report, digest, outputs)
            if index is None:
                return
        output = buildjob.combined_output(report.spec, outputs, digest, index) | claim
        report.fields.update(output=output, outputs=outputs,
                             previousOutputs=cleanup.superseded(report.status, output, outputs) or None)
        self.lifecycle.record(report, report.fields, conditions.succeeded(buildjob.combined_message(output, outputs)))

    def building(self, report: Report, names: dict[str | None, str], mine: dict[str | None, dict], listed: str,
                 offering: bool, digest: str) -> None:
        """Jobs running, or wanted: those missing are offered; status says what each platform is at."""
        lifecycle = self.lifecycle
        waiting: list[str | None] = []
        for order, (p, name) in enumerate(names.items()):
            if p in mine or not offering:
                continue
            wanted = lifecycle.want(report, digest, name, p, order)
            if wanted == STOP:
                return
            if wanted == WAITING:
                waiting.append(p)
        if len(mine) == len(names):  # every Job was created: what refused one is over
            lifecycle.retries.reset(report.key)
        self.describe(report, list(mine.values()), listed)
        running = {p: j for p, j in mine.items() if not finished(j)}
        if not running and not waiting:
            return  # offered, not yet told whether a slot is free; or every Job is finishing
        for p, job in running.items():
            found = lifecycle.stuck(report, job, lifecycle.cache.pods_of(job["metadata"]["uid"]))
            if found:
                report.write(report.fields, report.over_output(conditions.retrying(
                    found.reason, f"{p}: {found.message}", BUILDING)))
                return
        slots = f"all {lifecycle.settings.max_concurrent_builds} are taken"
        if not mine:
            state = conditions.in_flight(QUEUED, f"waiting for a build slot: {slots} "
                                                 f"({len(waiting)} platforms to build)")
        else:
            said = [f"{p} (job {names[p]}, attempt {attempts_of(j)})" for p, j in running.items()
                    if not finishing(j)]
            built = [str(p) for p, j in mine.items() if finished(j)]
            message = f"building {len(names)} platforms: {', '.join(said) or 'none'} running"
            if built:
                message += f"; {', '.join(built)} built"
            if waiting:
                message += f"; {', '.join(map(str, waiting))} waiting for a build slot ({slots})"
            state = conditions.in_flight(BUILDING, message)
        report.write({**report.fields, **({} if mine else NO_JOB)}, report.over_output(state))

    # --- the index of the artifacts ------------------------------------------------------------

    def index(self, report: Report, digest: str, outputs: list[dict]) -> str | None:
        """The digest of the index of the platforms' artifacts at the spec's tag, once pushed; None while it is
        being pushed, or will be again after a failure (said in status)."""
        question = ("index", report.generation, digest, tuple(o["digest"] for o in outputs))
        retries, key = self.lifecycle.retries, (report.key, "index")
        answer = self.indexes.answer(report.key, question)
        if isinstance(answer, lookup.Answer):
            self.indexes.take(report.key, question)
            if answer.error is None:
                retries.reset(key)
                return str(answer.value)
            error = answer.error
            state = report.after_failure(error.reason, f"cannot push the index of {len(outputs)} platforms: {error}",
                                         retries.failed(key), BUILDING, error.reason == RegistryError.reason,
                                         self.lifecycle.settings.stall_after)
            report.write(report.fields, report.over_output(state))
            return None
        if answer is not None:
            return None  # being pushed
        retry = retries.get(key)
        if retry and retry.at > self.lifecycle.clock.monotonic():
            report.again_at(retry)
            return None
        oci = report.spec["output"]["oci"]
        target = f"{oci['repository']}:{oci['tag']}"
        try:
            options = lookup.limited(self.registry_options(report.namespace, report.spec))
        except BuildError as e:  # its Secret is gone or unreadable: someone must act (then the next attempt heals it)
            report.write(report.fields, report.over_output(report.after_failure(
                e.reason, str(e), retries.failed(key), BUILDING, False, self.lifecycle.settings.stall_after)))
            return None
        entries = [(platform_fields(o), o["digest"]) for o in outputs]
        annotations = {"org.opencontainers.image.base.name": report.spec["image"],
                       "org.opencontainers.image.base.digest": digest}
        push = self.push_index
        self.indexes.ask(report.key, question, ("index", report.key, question),
                         lambda: push(reference.parse(target), entries, annotations, options))
        if not conditions.find(report.status, STALLED):
            report.write(report.fields, report.over_output(conditions.in_flight(
                BUILDING, f"built {len(outputs)} platforms; pushing their index to {target}")))
        return None


def platform_fields(output: dict) -> dict[str, str]:
    """An index entry's platform: what was asked for (os, architecture, variant), as clients select by."""
    return {k: output[k] for k in image.PLATFORM_FIELDS if k in output}
