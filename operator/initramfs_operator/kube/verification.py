"""Boot verification of a build's new output (spec.verify): the steps between its build Job's success and
the output reaching status.output.

A build Job that succeeds for a build that wants verification leaves its output as a candidate,
`status.verification.output` (JobLifecycle.ended calls `begin`); status.output keeps the previous good
output meanwhile, so nothing that reads it (the delivery agents, `deliverable`) sees the candidate.
Then each pass steps: the verification Job is created (a deterministic name per candidate, so a
restarted operator adopts it), observed, and its verdict recorded: Booted moves the candidate into
status.output (Ready, Verified=True); anything else is Stalled with Verified=False, the candidate never
leaves status.verification, and a spec edit or a new image digest starts over.
"""

from collections.abc import Callable

from . import api, cache, cleanup, conditions, diagnosis, verifyjob
from .buildjob import failed_condition, finished
from .clock import Clock
from .conditions import BOOTED
from .report import Report
from .settings import Settings

SecretKeys = Callable[[str, dict], list[tuple[str, str]]]
RESULT_GRACE = 10.0  # how long after its Job finished a pod's final status may still be on its way (as jobs.py)


class Verification:
    def __init__(self, kube: api.Kube, index: cache.Cache, settings: Settings,
                 secret_keys: SecretKeys, proven: dict, clock: Clock):
        self.kube, self.cache, self.settings, self.secret_keys, self.clock = kube, index, settings, secret_keys, clock
        self.proven = proven  # outputs confirmed present (resolve.Resolver.built): a booted one is, at once

    def wanted(self, report: Report) -> dict | None:
        return verifyjob.wanted(report.spec, self.settings.verify)

    def begin(self, report: Report, build_job: str, candidate: dict, outputs: list[dict], built: str) -> None:
        """The build Job `build_job` produced `candidate` and its per-platform `outputs` (`built`: its words):
        boot it before anything uses it."""
        report.fields["verification"] = {"buildJob": build_job, "output": candidate, "outputs": outputs,
                                         "built": built}
        report.write(report.fields, report.over_output(conditions.verifying(
            f"built; booting it before it is used: {built}")))

    def owns(self, report: Report, build_job: str) -> bool:
        """The pass is about the verification of `build_job`'s output: in flight, or failed."""
        v = report.status.get("verification") or {}
        return report.same_generation and v.get("buildJob") == build_job and v.get("result") != BOOTED and \
            report.status.get("jobName") == build_job

    def step(self, report: Report, jobs: dict[str, dict]) -> str:
        """One pass over the verification; returns the name of its Job (the others are superseded)."""
        v = report.status["verification"]
        candidate = v["output"]
        name = verifyjob.job_name(report.build, candidate["sha256"])
        if v.get("result"):  # the verdict is in: it stands until the spec or the digest moves on
            report.write(report.fields, None)
            return name
        job = jobs.get(name)
        if job is None:
            self.create(report, name, candidate)
            return name
        fields = {**report.fields, "verification": {**v, "jobName": name,
                                                    "startTime": job["metadata"]["creationTimestamp"]}}
        if finished(job) is None:
            pods = self.cache.pods_of(job["metadata"]["uid"])
            stuck = diagnosis.of_pod(diagnosis.newest(pods)) if pods else None  # the verifier image, scheduling
            state = conditions.verifying(f"verification job {name} is booting the output") if stuck is None else \
                conditions.verifying_held(stuck.reason, f"verification job {name}: {stuck.message}")
            report.write(fields, report.over_output(state))
            return name
        terminated = self.terminated(job)
        ended = conditions.parse_time((job.get("status") or {}).get("completionTime") or
                                      (failed_condition(job) or {}).get("lastTransitionTime"))
        if terminated is None and ended and (report.now - ended).total_seconds() < RESULT_GRACE:
            report.again_in(2)  # the pod's final status has not reached the index yet
            return name
        verdict = verifyjob.verdict(terminated)
        done = {**fields["verification"], "result": verdict.reason,
                "completionTime": conditions.timestamp(ended or report.now)}
        if verdict.reason == BOOTED:
            outputs = v.get("outputs") or []
            report.write({**fields, "verification": done, "output": candidate, "outputs": outputs,
                          "previousOutputs": cleanup.superseded(report.status, candidate, outputs) or None},
                         conditions.booted(v.get("built") or "built", verdict.message))
            self.proven[report.key] = (report.generation, report.status.get("imageDigest"),
                                       candidate.get("claimUID") or candidate.get("digest"))
        else:
            report.write({**fields, "verification": done}, conditions.boot_failed(verdict.reason, verdict.message))
        return name

    def create(self, report: Report, name: str, candidate: dict) -> None:
        verify = self.wanted(report)
        assert verify is not None  # begin() ran for it
        s = self.settings
        manifest = verifyjob.verify_job(report.build, candidate, verify, s.verify.image or s.builder_image, s.verify,
                                        self.secret_keys(report.namespace, report.spec), s.pod_ids, s.limits)
        try:
            self.kube.create(api.path("batch/v1", "jobs", report.namespace), manifest)
        except api.ApiError as e:
            if e.status != 409:  # 409: created by an earlier pass whose watch event is on its way
                raise
        v = report.status["verification"]
        report.write({**report.fields, "verification": {**v, "jobName": name}},
                     report.over_output(conditions.verifying(f"verification job {name} created")))

    def terminated(self, job: dict) -> dict | None:
        pods = [p for p in self.cache.pods_of(job["metadata"]["uid"]) if p["status"].get("containerStatuses")
                and p["status"].get("phase") in ("Succeeded", "Failed")]
        if not pods:
            return None
        return diagnosis.newest(pods)["status"]["containerStatuses"][0]["state"].get("terminated")

