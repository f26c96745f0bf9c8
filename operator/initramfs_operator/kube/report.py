"""What one reconcile pass says: its build's status and Events to the API server, and to its caller
when it wants to look at the build again.

Status writes carry the resourceVersion the pass decided on: one that decided on a stale
view fails with a conflict instead of overwriting newer news, and the watch event that
made its view stale queues the build again. Nothing is sent when status would not change.
"""

import logging
import socket
from collections.abc import Hashable

from . import api, buildjob, cache, conditions, crd, metrics
from .clock import Clock
from .conditions import READY, RECONCILING, RESOLVING, SUCCEEDED
from .workqueue import Retry

log = logging.getLogger(__name__)

COMPONENT = "initramfs-operator"
# What describes a build Job, when there is none; and the digest it would build, when there is none either.
NO_JOB = {"jobName": None, "startTime": None, "completionTime": None, "attempts": None}
NO_DIGEST = {"imageDigest": None, "shortDigest": None, **NO_JOB}


class Report:
    """One pass over one InitramfsBuild: the build as the pass read it, the status fields it decided on,
    and the earliest time it wants another pass (`requeue_after`, seconds; None: when something changes)."""

    def __init__(self, kube: api.Kube, overlay: cache.Overlay, headlines: dict[Hashable, str], clock: Clock,
                 build: dict):
        self.kube, self.overlay, self.headlines, self.clock = kube, overlay, headlines, clock
        self.build = build
        self.meta, self.spec = build["metadata"], build["spec"]
        self.status: dict = build.get("status") or {}
        self.namespace, self.name, self.uid = self.meta["namespace"], self.meta["name"], self.meta["uid"]
        self.key = (self.namespace, self.name)
        self.observed_generation = self.meta["generation"]  # what status.observedGeneration and conditions say
        # The generation whose spec is built: pausing or resuming alone keeps it (buildjob.build_generation).
        self.generation = buildjob.build_generation(build)
        self.now = clock.now()
        # Status is of this build generation (written before buildGeneration was: of the observed one).
        self.same_generation = self.status.get("buildGeneration", self.status.get("observedGeneration")) == \
            self.generation
        self.fields: dict = {"observedGeneration": self.observed_generation, "buildGeneration": self.generation,
                             "buildSpecHash": buildjob.spec_hash(self.spec)}
        self.suspended = bool(self.spec.get("suspend"))
        # A rebuild asked for with the requested-at annotation, not handled yet (a suspended build ignores it).
        requested = (self.meta.get("annotations") or {}).get(crd.REQUESTED_AT)
        self.request = requested if requested is not None and \
            requested != self.status.get("lastHandledRequestedAt") else None
        self.requeue_after: float | None = None
        self.recorded = False  # status holds what the pass decided (written now, or already)
        self.answered: tuple | None = None  # the lookup whose answer the pass used: taken once recorded
        ready = conditions.find(self.status, READY)
        # A valid output of this generation: a rebuild for a new digest keeps it Ready meanwhile.
        self.previous = ready.get("message") if ready.get("status") == "True" and self.same_generation and \
            self.status.get("output") else None

    def with_digest(self, digest: str) -> None:
        """The status fields of building `digest`."""
        self.fields.update(imageDigest=digest, shortDigest=digest.split(":")[-1][:12])

    def handled_request(self) -> None:
        """The requested-at annotation's lookup is done (or there was none to do): recorded with this pass."""
        if self.request is not None:
            self.fields["lastHandledRequestedAt"] = self.request

    def again_in(self, seconds: float) -> None:
        """Another pass in `seconds` at the latest (at once if <= 0)."""
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)

    def again_at(self, retry: Retry) -> None:
        self.again_in(retry.at - self.clock.monotonic())

    def over_output(self, state: conditions.State) -> conditions.State:
        return conditions.over_previous_output(state, self.previous) if self.previous else state

    def after_failure(self, reason: str, message: str, retry: Retry, phase: str, transient: bool,
                      stall_after: int) -> conditions.State:
        """Reconciling in `phase` while a transient failure has attempts left; Stalled (kstatus Failed: someone
        must act) once it has none, or at once when no retry alone could fix it (credentials, a missing
        Secret). Either way the next attempt is scheduled and said, with backoff: as Flux re-checks its
        stalled objects at their interval, fixing the cause (the Secret applied after the build, the quota
        raised) heals the build without a spec change."""
        self.again_at(retry)
        note = retry_note(message, retry)
        if transient and retry.failures < stall_after:
            return conditions.retrying(reason, note, phase)
        return conditions.failed(reason, note)

    def write(self, fields: dict, state: conditions.State | None, duration: float | None = None) -> None:
        """Patch status with `fields` (None removes one) and, if given, the conditions of `state`; with
        observedGeneration this pass's unless `fields` say otherwise.

        A change of state is an Event, and a final state is counted in the metrics."""
        patch = {"observedGeneration": self.observed_generation, **fields}
        if state:
            patch["conditions"] = conditions.conditions(self.status.get("conditions"), state, self.observed_generation,
                                                        conditions.timestamp(self.now))
        merged = {k: v for k, v in {**self.status, **patch}.items() if v is not None}
        if merged == self.status:
            self.recorded = True
            return
        for replaced in ("output", "verification"):
            if patch.get(replaced):
                # A merge patch merges objects: drop what the last one had and this one has not (pvc -> oci).
                patch[replaced] = {**{k: None for k in self.status.get(replaced) or {}}, **patch[replaced]}
        written = self._guarded_patch({"status": patch}, "status")
        if written is None:
            return
        before = self.status
        self.build, self.meta, self.status = written, written["metadata"], merged
        self.recorded = True
        if state:
            self.announce(state, before, duration)

    def patch_metadata(self, metadata: dict) -> None:
        """Merge-patch the build's metadata (its finalizers), guarded by the resourceVersion the pass decided on."""
        written = self._guarded_patch({"metadata": metadata})
        if written is not None:
            self.build, self.meta = written, written["metadata"]

    def _guarded_patch(self, body: dict, subresource: str | None = None) -> dict | None:
        """Merge-patch the build (or its `subresource`) if it is still at the resourceVersion the pass decided
        on, and tell the overlay; None if it changed meanwhile or is gone."""
        guarded = {**body, "metadata": {**body.get("metadata", {}), "resourceVersion": self.meta["resourceVersion"]}}
        try:
            written = self.kube.merge_patch(
                api.path(crd.API_VERSION, crd.PLURAL, self.namespace, self.name, subresource), guarded)
        except api.ApiError as e:
            if e.status not in (404, 409):
                raise
            log.debug("%s/%s changed meanwhile: its next event brings it back", self.namespace, self.name)
            return None
        self.overlay.written(self.key, self.build, cache.build_entry(written))
        return written

    def announce(self, state: conditions.State, before: dict, duration: float | None) -> None:
        """An Event when what the state is about changes (not on every message), and the metrics of a
        final state (Succeeded, or Stalled) once it is reached."""
        headline = state.headline
        said = self.headlines.get(self.key) or conditions.headline_of(before)
        self.headlines[self.key] = headline.reason
        if headline.reason != said and headline.reason != RESOLVING:  # a lookup in flight is no news
            self.event("Warning" if state.problem else "Normal", headline.reason, headline.message)
        if state.news is None and state.reconciling is None and \
                (conditions.find(before, RECONCILING) or headline.reason != said):
            metrics.finished(state.stalled.reason if state.stalled else SUCCEEDED, duration)

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
            self.kube.create(api.path("v1", "events", self.namespace), body)
        except api.ApiError as e:
            log.warning("cannot post event %s on %s/%s: %s", reason, self.namespace, self.name, e.reason)


def retry_note(message: str, retry: Retry) -> str:
    """A failure that is tried again: when, and how many failed before."""
    return f"{message}; next attempt in {retry.delay:.0f}s ({retry.failures} failed in a row)"
