"""What a build leaves outside Kubernetes, removed when the spec says so: previous outputs beyond
`spec.output.retention`, and every output on deletion under `spec.deletionPolicy: Delete`.

- status.previousOutputs lists the outputs a newer one replaced, newest first (at most MAX_PREVIOUS):
  an artifact pushed before (the tag moved on, the manifest stays by digest) or a file at a path or
  claim the spec no longer names. Retention keeps the first N and removes the rest.
- Registry artifacts are removed by the operator itself (oci/registry/removal.py), in threads of
  their own (a lookup.Lookups), with the registry options its lookups use: the build's Secrets are read in one place and
  never leave the operator's memory. What the registry refuses (deletion disabled) is left and said.
- Files need a pod that mounts the claim: a cleanup Job runs `initramfs-builder remove` with the
  build pods' restricted securityContext (buildjob.cleanup_job); the operator mounts nothing.
- The finalizer FINALIZER is on a build only while something outside the cluster must go with it:
  deletionPolicy Delete, or previous outputs beyond retention not removed yet.
- Nothing waits forever: a registry that keeps failing is given CLEANUP_ATTEMPTS attempts with backoff,
  a cleanup Job has a deadline; then what is left is said in a Warning Event and given up on, and a
  build being deleted loses its finalizer. (Failures are counted in memory: a restarted operator
  starts counting again.)
"""

import hashlib
import json
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import cast

from ..errors import BuildError
from ..oci import reference, registry
from . import api, buildjob, cache, lookup
from .clock import Clock
from .report import Report
from .settings import Settings
from .workqueue import Retries

log = logging.getLogger(__name__)

FINALIZER = "initramfs.dev/cleanup"
MAX_PREVIOUS = 10          # status.previousOutputs entries; retention is at most this
CLEANUP_ATTEMPTS = 4       # a registry failing this many times in a row: what it holds is left
RETAIN, DELETE = "Retain", "Delete"


def identity(output: dict) -> tuple[str, ...]:
    """What an output is, whatever else status says of it: the artifact's repository and digest, or the file."""
    if "digest" in output:
        return "oci", output["reference"].split("@")[0], output["digest"]
    return "pvc", output.get("claimName", ""), output.get("path", "")


def tracked(output: dict) -> dict:
    """The fields of an output that removing it needs."""
    keep = ("reference", "digest", "tag") if "digest" in output else ("claimName", "path")
    return {k: output[k] for k in keep if k in output}


def removable(output: dict | None, outputs: list[dict] | None = None) -> list[dict]:
    """What removing an output (status.output, with status.outputs beside it) removes, one entry each: its
    artifact (of one platform, or the index of several), or its file, or each platform's file (several
    platforms on a claim: output.path is only the pattern their paths were made from)."""
    if not output:
        return []
    if "digest" not in output and output.get("platforms"):
        return [tracked(o) for o in outputs or []]
    return [tracked(output)]


def superseded(status: dict, new_output: dict, new_outputs: list[dict] | None = None) -> list[dict]:
    """status.previousOutputs once `new_output` (and `new_outputs`) replace status.output: the old one first,
    unless it is the same output (a file rewritten in place, a reproducible build); never an entry that is
    the new output."""
    current = {identity(e) for e in removable(new_output, new_outputs)}
    entries = removable(status.get("output"), status.get("outputs")) + list(status.get("previousOutputs") or [])
    kept: list[dict] = []
    for entry in entries:
        if identity(entry) not in current:
            current.add(identity(entry))
            kept.append(entry)
    return kept[:MAX_PREVIOUS]


def describe(output: dict) -> str:
    if "digest" in output:
        return output["reference"]
    return f"{output['claimName']}:{output['path']}"


@dataclass(frozen=True)
class Outcome:
    removed: bool
    message: str


class Cleanup:
    """Removing outputs: a pass says which (`prune` while the build lives, `finalize` once it is being deleted);
    answers arrive off the pass and queue the build again. `outcomes` remembers what each output came to until
    status no longer lists it."""

    def __init__(self, kube: api.Kube, index: cache.Cache, lookups: lookup.Lookups, retries: Retries, clock: Clock,
                 settings: Settings, registry_options: Callable[[str, dict], registry.RegistryOptions],
                 remove: Callable[..., registry.Removal]):
        self.kube, self.cache, self.lookups, self.retries, self.clock = kube, index, lookups, retries, clock
        self.settings, self.registry_options, self.remove = settings, registry_options, remove
        self.outcomes: dict[Hashable, dict[tuple[str, ...], Outcome]] = {}

    # --- what to remove, and the finalizer -----------------------------------------------------

    @staticmethod
    def beyond_retention(spec: dict, status: dict) -> list[dict]:
        retention = (spec.get("output") or {}).get("retention")
        return list(status.get("previousOutputs") or [])[retention:] if retention is not None else []

    def wants_finalizer(self, report: Report) -> bool:
        return report.spec.get("deletionPolicy", RETAIN) == DELETE or \
            bool(self.beyond_retention(report.spec, report.status))

    def keep_finalizer(self, report: Report) -> None:
        """Add the finalizer when the spec needs one, or remove it when it no longer does."""
        present = FINALIZER in (report.meta.get("finalizers") or [])
        if self.wants_finalizer(report) != present:
            self.set_finalizer(report, not present)

    def set_finalizer(self, report: Report, present: bool) -> None:
        others = [f for f in report.meta.get("finalizers") or [] if f != FINALIZER]
        report.patch_metadata({"finalizers": others + [FINALIZER] if present else others or None})

    # --- while the build lives: previous outputs beyond retention ------------------------------

    def prune(self, report: Report, cleanup_jobs: list[dict]) -> None:
        excess = self.beyond_retention(report.spec, report.status)
        finished = self.settle(report, excess, cleanup_jobs) if excess else {}
        if finished:  # said in status, and the finalizer goes once nothing is left to prune
            gone = {identity(e) for e in excess if identity(e) in finished}
            kept = [e for e in report.status.get("previousOutputs") or [] if identity(e) not in gone]
            # The generation status speaks of stays: this write says nothing of the rest of the spec.
            report.write({"previousOutputs": kept or None, "observedGeneration": report.status["observedGeneration"]},
                         None)
            if report.recorded:
                self.announce(report, [e for e in excess if identity(e) in gone], finished, "PrunedOutputs",
                              "removed previous outputs beyond retention")
                for key in gone:
                    self.outcomes.get(report.key, {}).pop(key, None)
                self.keep_finalizer(report)

    # --- the build is being deleted ------------------------------------------------------------

    def finalize(self, report: Report, cleanup_jobs: list[dict]) -> None:
        """Remove what the deletion policy says, then the finalizer: the API server deletes the build."""
        targets = self.beyond_retention(report.spec, report.status)
        if report.spec.get("deletionPolicy", RETAIN) == DELETE:
            targets = removable(report.status.get("output"), report.status.get("outputs")) + \
                list(report.status.get("previousOutputs") or [])
        finished = self.settle(report, targets, cleanup_jobs) if targets else {}
        if len(finished) < len({identity(t) for t in targets}):
            return  # the rest is under way; its answer queues the build
        self.announce(report, targets, finished, "CleanedUp", "removed the build's outputs")
        self.set_finalizer(report, False)
        self.forget(report.key)

    def announce(self, report: Report, targets: list[dict], finished: dict[tuple[str, ...], Outcome],
                 reason: str, what: str) -> None:
        left = [finished[identity(t)].message for t in targets if not finished[identity(t)].removed]
        removed = [describe(t) for t in targets if finished[identity(t)].removed]
        if removed:
            report.event("Normal", reason, f"{what}: {', '.join(removed)}")
        if left:
            report.event("Warning", "CleanupIncomplete", f"left behind, remove by hand: {'; '.join(left)}")

    # --- doing it ------------------------------------------------------------------------------

    def settle(self, report: Report, targets: list[dict], cleanup_jobs: list[dict]) -> dict[tuple[str, ...], Outcome]:
        """Start or follow the removal of each target: the outcomes known so far."""
        outcomes = self.outcomes.setdefault(report.key, {})
        files = [t for t in targets if "digest" not in t and identity(t) not in outcomes]
        for t in targets:
            if "digest" in t and identity(t) not in outcomes:
                self.remove_artifact(report, t, outcomes)
        for claim in sorted({t["claimName"] for t in files}):
            self.remove_files(report, claim, [t for t in files if t["claimName"] == claim], cleanup_jobs, outcomes)
        return {identity(t): outcomes[identity(t)] for t in targets if identity(t) in outcomes}

    def remove_artifact(self, report: Report, target: dict, outcomes: dict[tuple[str, ...], Outcome]) -> None:
        key, question = (report.key, "cleanup"), ("remove", target["digest"])  # key: of self.retries
        other = self.used_elsewhere(report, identity(target))
        if other:
            outcomes[identity(target)] = Outcome(False, f"{describe(target)} (also the output of {other})")
            return
        answer = self.lookups.answer(report.key, question)
        if isinstance(answer, lookup.Answer):
            self.lookups.take(report.key, question)
            if answer.error is None:
                self.retries.reset(key)  # the registry answers: the next removal has all its attempts
                removal: registry.Removal = answer.value
                outcomes[identity(target)] = Outcome(removal.removed, "; ".join(removal.left))
                return
            retry = self.retries.failed(key)
            if retry.failures >= CLEANUP_ATTEMPTS:
                outcomes[identity(target)] = Outcome(False, f"{describe(target)} ({answer.error}; "
                                                            f"gave up after {retry.failures} attempts)")
                self.retries.reset(key)
                return
        elif answer is not None:
            return  # in flight
        waiting = self.retries.get(key)
        if waiting and waiting.at > self.clock.monotonic():
            report.again_at(waiting)
            return
        try:
            options = self.registry_options(report.namespace, report.spec)
        except BuildError as e:  # its Secret is gone: nothing will get better by waiting
            outcomes[identity(target)] = Outcome(False, f"{describe(target)} ({e})")
            return
        where = reference.parse(target["reference"])
        remove, options = self.remove, lookup.limited(options)
        self.lookups.ask(report.key, question, ("cleanup", report.key, target["digest"]),
                         lambda: remove(where, target["digest"], options, tag=target.get("tag")))

    def used_elsewhere(self, report: Report, output: tuple[str, ...]) -> str | None:
        """Another build whose current or kept output this is (two builds can push one reproducible artifact)."""
        for key in self.cache.build_keys():
            namespace, name = cast(tuple[str, str], key)
            other = self.cache.build(namespace, name)
            if other is None or key == report.key or (output[0] == "pvc" and namespace != report.namespace):
                continue
            status = other.get("status") or {}
            kept = [status["output"]] if status.get("output") else []
            retention = (other["spec"].get("output") or {}).get("retention")
            kept += list(status.get("previousOutputs") or [])[:retention]
            if any(identity(o) == output for o in kept):
                return f"{namespace}/{name}"
        return None

    def remove_files(self, report: Report, claim: str, targets: list[dict], cleanup_jobs: list[dict],
                     outcomes: dict[tuple[str, ...], Outcome]) -> None:
        paths = sorted(t["path"] for t in targets)
        name = job_name(report.name, claim, paths)
        job = next((j for j in cleanup_jobs if j["metadata"]["name"] == name), None)
        if job is None:
            body = buildjob.cleanup_job(report.build, name, claim, paths, self.settings.builder_image,
                                        self.settings.pod_ids)
            try:
                self.kube.create(api.path("batch/v1", "jobs", report.namespace), body)
            except api.ApiError as e:
                if e.status == 409:
                    return  # created by an earlier pass: its watch event is on its way
                message = f"cannot create cleanup job {name}: {api.message_of(e)}"
                for t in targets:
                    outcomes[identity(t)] = Outcome(False, f"{describe(t)} ({message})")
            return
        result = buildjob.finished(job)
        if result is None:
            return  # its end queues the build
        failed = buildjob.failed_condition(job) or {}
        why = f"cleanup job {name} failed: {failed.get('reason')}: {failed.get('message') or ''}".rstrip(": ")
        for t in targets:
            outcomes[identity(t)] = Outcome(result == "Complete", "" if result == "Complete" else
                                            f"{describe(t)} ({why})")

    def forget(self, key: Hashable) -> None:
        self.outcomes.pop(key, None)
        self.retries.reset((key, "cleanup"))


def job_name(build_name: str, claim: str, paths: list[str]) -> str:
    """One name per set of files: a pass that finds the Job follows it instead of starting another."""
    digest = hashlib.sha256(json.dumps([claim, paths]).encode()).hexdigest()[:10]
    suffix = f"-cleanup-{digest}"
    return build_name[: buildjob.MAX_NAME - len(suffix)].rstrip("-.") + suffix
