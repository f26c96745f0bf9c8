"""Which image digest a build builds, and whether what it built is still there: the registry's answers
(lookup.py, asked off the reconcile path) and the output claim's uid, read for a pass."""

import json
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from ..errors import RegistryError, UsageError
from ..oci import registry
from . import api, buildjob, conditions, lookup, registry_access
from .buildjob import finished
from .clock import Clock
from .conditions import READY, RECONCILING, RESOLVING, STALLED, SUCCEEDED
from .report import NO_DIGEST, Report, retry_note
from .workqueue import Retries

RESOLVING_AFTER = 5.0        # a lookup (its wait for a free lookup thread included) longer than this shows
CLAIM_SECONDS = 10.0         # how long a claim's uid, once read, is taken as current (builds share claims)


@dataclass(frozen=True)
class Unresolved:
    """No digest: the lookup failed with nothing built to fall back on. `state` says why, and when it is
    tried again; the build's Jobs describe nothing it wants any more."""
    state: conditions.State


class Claims:
    """The uid of each output claim, read at most every CLAIM_SECONDS (builds share claims)."""

    def __init__(self, kube: api.Kube, clock: Clock):
        self.kube, self.clock = kube, clock
        self._read: dict[tuple[str, str], tuple[str | None, float]] = {}  # claim -> (uid, when read)

    def uid(self, namespace: str, spec: dict) -> dict:
        """{"claimUID": uid} of the output claim, {} if it has none (or it does not exist)."""
        if "pvc" not in spec["output"]:
            return {}
        key = (namespace, spec["output"]["pvc"]["claimName"])
        uid, read = self._read.get(key, (None, 0.0))
        if self.clock.monotonic() - read > CLAIM_SECONDS:
            try:
                uid = self.kube.get(api.path("v1", "persistentvolumeclaims", *key))["metadata"]["uid"]
            except api.ApiError as e:
                if e.status != 404:
                    raise
                uid = None
            self._read[key] = (uid, self.clock.monotonic())
        return {"claimUID": uid} if uid else {}


class Resolver:
    """The digests of builds: pinned in the spec, or looked up (again after refreshInterval, or after a
    failure's backoff); and each build's output, confirmed present once per (generation, digest, output)."""

    def __init__(self, lookups: lookup.Lookups, retries: Retries, claims: Claims, verified: dict[Hashable, tuple],
                 registry_options: Callable[[str, dict], registry.RegistryOptions],
                 current_digest: Callable[[str, registry.RegistryOptions], str], stall_after: int):
        self.lookups, self.retries, self.claims, self.verified = lookups, retries, claims, verified
        self.registry_options, self.current_digest, self.stall_after = registry_options, current_digest, stall_after

    def target(self, report: Report, jobs: dict[str, dict]) -> str | Unresolved | None:
        """The digest to build; None while it is being looked up, or when it cannot be (said in status).
        `jobs` are the build's Jobs by name: a build running is not refreshed. Sets report.answered to the
        lookup whose answer the pass uses."""
        spec = report.spec
        try:
            pinned = lookup.pinned_digest(spec)
        except UsageError as e:  # only a spec change can fix the reference
            report.write(NO_DIGEST, conditions.failed(e.reason, str(e)))
            return None
        if pinned:
            report.handled_request()  # nothing to look up: the spec says the digest
            if known_digest(report) != pinned:
                report.fields["resolvedTime"] = conditions.timestamp(report.now)
            return pinned
        question = ("image", report.generation, spec["image"])
        answer = self.lookups.answer(report.key, question)
        self.lookups.forget(report.key, keep=(question, ("output", report.generation, known_digest(report))))
        if isinstance(answer, lookup.Answer):
            report.answered = question
            report.handled_request()
            return self.resolved(report, answer)
        if answer is None and self.lookup_due(report, jobs):
            self.ask(report, question, spec["image"])
            report.again_in(RESOLVING_AFTER)
        elif answer is lookup.PENDING and not report.same_generation:
            # The previous generation's digest and Job describe nothing of this one.
            report.write(NO_DIGEST, conditions.in_flight(RESOLVING, f"resolving {spec['image']}"))
        return known_digest(report)

    def ask(self, report: Report, question: tuple, image: str) -> None:
        namespace, spec = report.namespace, report.spec
        # What decides how a build reaches registries: builds alike in it may share a lookup's answer.
        access = (namespace, tuple(registry_access.registry_secret_names(spec)),
                  json.dumps(spec.get("registry") or {}, sort_keys=True))
        self.lookups.ask(report.key, question, (question[0], image, *access),
                         lambda: self.current_digest(image, self.registry_options(namespace, spec)))

    def lookup_due(self, report: Report, jobs: dict[str, dict]) -> bool:
        """A new generation, a retry whose time has come, or a refresh or a requested lookup (never while
        building: the request waits for the Job to end)."""
        known = known_digest(report)
        current = [jobs[n] for n in buildjob.job_names(report.build, known).values() if n in jobs] if known else []
        idle = all(finished(job) is not None for job in current)
        if report.request is not None and idle:
            return True
        retry = self.retries.get(report.key)
        if retry:
            wait = retry.at - report.clock.monotonic()
            if wait > 0:
                report.again_in(wait)
            return wait <= 0
        return not known or (idle and refresh_in(report) == 0)

    def resolved(self, report: Report, answer: lookup.Answer) -> str | Unresolved:
        report.fields["resolvedTime"] = conditions.timestamp(answer.ended)
        if answer.error is None:
            self.retries.reset(report.key)
            return str(answer.value)  # an answer without an error has one
        error, retry = answer.error, self.retries.failed(report.key)
        known = known_digest(report)
        if known:  # a refresh: what was built stays valid, and the tag is looked up again after the backoff
            report.again_at(retry)
            report.event("Warning", "RefreshFailed", retry_note(f"cannot resolve {report.spec['image']}: {error}",
                                                                  retry))
            return known
        # A registry that does not answer may come back; refused credentials or a bad spec need someone.
        return Unresolved(report.after_failure(error.reason, str(error), retry, RESOLVING,
                                               error.reason == RegistryError.reason, self.stall_after))

    def built(self, report: Report, digest: str) -> bool | None:
        """Whether the same inputs were built and the output is still there (its Job may be long gone);
        None while that is being checked."""
        s = report.status
        ready = conditions.find(s, READY)
        if not (report.same_generation and s.get("imageDigest") == digest and ready.get("status") == "True"
                and ready.get("reason") == SUCCEEDED and s.get("output") and not conditions.find(s, RECONCILING)
                and not conditions.find(s, STALLED)):
            return False
        output = s["output"]
        proof = (report.generation, digest, output.get("claimUID") or output.get("digest"))
        if self.verified.get(report.key) == proof:
            return True
        if "pvc" in report.spec["output"]:
            # The operator cannot look inside the volume; a claim recreated since the build is empty.
            present = self.claims.uid(report.namespace, report.spec).get("claimUID") == output.get("claimUID")
        else:
            question = ("output", report.generation, digest)
            answer = self.lookups.answer(report.key, question)
            if not isinstance(answer, lookup.Answer):
                if answer is None:
                    oci = report.spec["output"]["oci"]
                    self.ask(report, question, f"{oci['repository']}:{oci['tag']}")
                return None
            self.lookups.take(report.key, question)
            # Cannot confirm: rebuild, which reports the real problem if there is one.
            present = answer.value == output.get("digest")
        if present:
            self.verified[report.key] = proof
        return present


def known_digest(report: Report) -> str | None:
    """The digest status recorded for this generation."""
    return report.status.get("imageDigest") if report.same_generation else None


def refresh_in(report: Report) -> float | None:
    """Seconds until the tag is due to be looked up again; None if the build does not follow its tag."""
    if not report.spec.get("refreshInterval"):
        return None
    last = conditions.parse_time(report.status.get("resolvedTime"))
    if not last:
        return 0
    due = conditions.parse_duration(report.spec["refreshInterval"]) - (report.now - last).total_seconds()
    return max(due, 0)
