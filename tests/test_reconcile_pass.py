"""Every transition of a reconcile pass, in milliseconds: a fake API server records the requests a pass
sends, indexes hold the objects it reads, a registry answers its lookups when told, and the clock moves
only when a test moves it. Each row: the world before, then the requests sent, the conditions written,
and when the pass wants to look again (requeue-after)."""

import copy
import dataclasses
import json
from dataclasses import dataclass, field

import pytest

from fixtures.fake_kube import FakeClock, FakeKube, Registry, Status, fill
from initramfs_operator.errors import AuthError, RegistryError
from initramfs_operator.kube import api, buildjob, cache, crd, verifyjob
from initramfs_operator.kube.reconcile import Reconciler
from initramfs_operator.kube.settings import Settings
from initramfs_operator.kube.workqueue import Backoff

DIGEST, NEW = "sha256:" + "d" * 64, "sha256:" + "e" * 64
PINNED, TAG = f"reg.example/app@{DIGEST}", "reg.example/app:1"
KEY = ("ns", "b")
T0 = "2024-01-01T00:00:00Z"  # FakeClock's start
STATUS_PATH = api.path(crd.API_VERSION, crd.PLURAL, "ns", "b", "status")
JOBS_PATH = api.path("batch/v1", "jobs", "ns")
# No jitter: the backoff is 4 s, 8 s, ...; a transient failure is Stalled at its second in a row.
SETTINGS = Settings("builder:1", 1, retry=Backoff(base=4.0, cap=60.0, jitter=0), stall_after=2)
RESULT = {"sha256": "f" * 64, "size": 10, "entries": 3, "output": "/out/x", "compression": "gzip"}


def build(image: str = PINNED, generation: int = 1, status: dict | None = None, output: dict | None = None,
          annotations: dict | None = None, **spec: object) -> dict:
    """The build; a status given is as a pass wrote it, of this spec (its buildGeneration, its hash) unless it
    says otherwise."""
    the_spec = {"image": image, "output": output or {"pvc": {"claimName": "c", "path": "x"}}, **spec}
    if status:
        status = {"buildGeneration": status["observedGeneration"], "buildSpecHash": buildjob.spec_hash(the_spec),
                  **status}
    return {"metadata": {"namespace": "ns", "name": "b", "uid": "u1", "generation": generation, "resourceVersion": "7",
                         "creationTimestamp": T0, **({"annotations": annotations} if annotations else {})},
            "spec": the_spec, "status": status or {}}


def job_name(generation: int = 1, digest: str = DIGEST) -> str:
    return buildjob.job_name(build(generation=generation), digest)


def job(*conds: dict, generation: int = 1, digest: str = DIGEST, uid: str = "job-1", build_uid: str = "u1",
        **status: object) -> dict:
    return {"metadata": {"namespace": "ns", "name": job_name(generation, digest), "uid": uid, "creationTimestamp": T0,
                         "labels": {buildjob.MANAGED_BY: buildjob.OPERATOR, crd.BUILD_UID_LABEL: build_uid},
                         "annotations": {buildjob.BUILD_NAME: "b"}},
            "spec": {}, "status": {**status, **({"conditions": list(conds)} if conds else {})}}


def condition(type_: str, reason: str = "", message: str = "", at: str = T0) -> dict:
    return {"type": type_, "status": "True", "reason": reason, "message": message, "lastTransitionTime": at}


def pod(phase: str, state: dict, uid: str = "pod-1", conds: list[dict] | None = None) -> dict:
    return {"metadata": {"namespace": "ns", "name": f"{uid}-x", "uid": uid, "creationTimestamp": T0,
                         "labels": {buildjob.MANAGED_BY: buildjob.OPERATOR, cache.JOB_UID: "job-1"}},
            "status": {"phase": phase, "conditions": conds or [],
                       "containerStatuses": [{"name": "build", "image": "builder:1", "state": state}]}}


def written(ready: tuple, reconciling: tuple | None = None, stalled: tuple | None = None, at: str = T0,
            **fields: object) -> dict:
    """A status as a pass wrote it: Ready (status, reason, message), and Reconciling/Stalled (reason, message)."""
    conds = [{"type": "Ready", "status": ready[0], "reason": ready[1], "message": ready[2], "observedGeneration": 1,
              "lastTransitionTime": at}]
    for type_, r in (("Reconciling", reconciling), ("Stalled", stalled)):
        if r:
            conds.append({"type": type_, "status": "True", "reason": r[0], "message": r[1], "observedGeneration": 1,
                          "lastTransitionTime": at})
    return {"observedGeneration": 1, "conditions": conds, **fields}


BUILT_PVC = written(("True", "Succeeded", "built /out/x"), imageDigest=DIGEST, shortDigest="d" * 12, jobName=job_name(),
                    output={"sha256": "f" * 64, "claimName": "c", "path": "x", "claimUID": "claim-1"})


class Cluster:
    """The API server (FakeKube), the indexes, the registry and the clock one reconciler sees."""

    def __init__(self, the_build: dict, jobs: tuple = (), pods: tuple = (), events: tuple = (),
                 settings: Settings = SETTINGS):
        self.kube, self.clock, self.registry = FakeKube(), FakeClock(), Registry()
        self.build, self.jobs, self.pods, self.events = copy.deepcopy(the_build), list(jobs), list(pods), list(events)
        self.index = cache.Cache()
        self.queued: list = []
        self.reconciler = Reconciler(self.kube, self.index, settings, self.queued.append, self.clock, self.registry,
                                     self.registry.current_digest)
        self.kube.route("PATCH", STATUS_PATH, self.patch_status)
        self.kube.route("POST", api.path("v1", "events", "ns"), lambda r: r.body or {})
        self.kube.route("POST", JOBS_PATH, self.create_job)
        self.kube.route("GET", api.path("v1", "persistentvolumeclaims", "ns", "c"), {"metadata": {"uid": "claim-1"}})
        self.show()

    def show(self, **objects: list) -> None:
        """The watches bring the current objects (and these, replaced) into the indexes."""
        for kind, value in objects.items():
            setattr(self, kind, value)
        fill(self.index, [self.build], self.jobs, self.pods, self.events)

    def patch_status(self, request) -> dict:
        if request.body["metadata"]["resourceVersion"] != self.build["metadata"]["resourceVersion"]:
            raise Status(409, "the object has been modified")
        self.build["status"] = merged(self.build["status"], request.body["status"])
        self.build["metadata"]["resourceVersion"] = str(int(self.build["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(self.build)

    def create_job(self, request) -> dict:
        return {**request.body, "metadata": {**request.body["metadata"], "uid": "job-new"}}

    def reconcile(self) -> float | None:
        return self.reconciler.reconcile(KEY).requeue_after

    def conditions(self) -> dict:
        return {c["type"]: (c["status"], c["reason"], c["message"]) for c in self.build["status"].get("conditions", [])}


def merged(target: dict, patch: dict) -> dict:
    """RFC 7386, the merge patch the API server applies."""
    result = dict(target)
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        elif isinstance(v, dict) and isinstance(result.get(k), dict):
            result[k] = merged(result[k], v)
        else:
            result[k] = v
    return result


def sent(c: Cluster) -> list[tuple]:
    """(method, path, what the body says) of the requests sent since the last look."""
    out = []
    for r in c.kube.sent():
        body = r.body or {}
        if r.path == STATUS_PATH:
            ready = next((x for x in body["status"].get("conditions", []) if x["type"] == "Ready"), None)
            out.append(("PATCH", "status", ready["reason"] if ready else None))
            assert r.content_type == api.MERGE_PATCH and body["metadata"]["resourceVersion"]
        elif r.path.endswith("/events"):
            out.append(("POST", "event", body["type"], body["reason"]))
        elif r.method == "DELETE":
            out.append(("DELETE", r.path.rsplit("/", 1)[1], body.get("propagationPolicy")))
        elif r.path == JOBS_PATH:
            out.append(("POST", "job", body["metadata"]["name"]))
        else:
            out.append((r.method, r.path.rsplit("/", 2)[-2]))
    return out


# --- one pass from a given world -----------------------------------------------------------------------------

@dataclass
class Row:
    id: str
    build: dict
    jobs: tuple = ()
    pods: tuple = ()
    events: tuple = ()
    elapsed: float = 0.0             # seconds the clock moved since T0
    requests: list = field(default_factory=list)
    conditions: dict = field(default_factory=dict)   # type -> (status, reason, message fragment); {} = none
    requeue: float | None = None
    status: dict = field(default_factory=dict)       # fields the written status has


FAILED_PULL = written(("False", "BuilderImagePullFailed", "ImagePullBackOff: back-off"),
                      ("Building", "ImagePullBackOff: back-off"), jobName=job_name(), imageDigest=DIGEST,
                      shortDigest="d" * 12, startTime=T0, attempts=1)
SUCCEEDED_POD = pod("Succeeded", {"terminated": {"exitCode": 0, "message": json.dumps(RESULT)}})
WAITING = {"waiting": {"reason": "ContainerCreating"}}
SCHEDULED = [{"type": "PodScheduled", "status": "True"}]

ROWS = [
    Row("running job: Building, attempt N", build(), jobs=(job(active=1, failed=1),),
        pods=(pod("Running", {"running": {}}),),
        requests=[("PATCH", "status", "Building"), ("POST", "event", "Normal", "Building")],
        conditions={"Ready": ("False", "Building", "is running (attempt 2)"), "Reconciling": ("True", "Building", "")},
        status={"jobName": job_name(), "attempts": 2, "startTime": T0, "imageDigest": DIGEST}),
    Row("pod waiting on ImagePullBackOff: BuilderImagePullFailed", build(), jobs=(job(active=1),),
        pods=(pod("Pending", {"waiting": {"reason": "ImagePullBackOff", "message": "back-off"}}),),
        requests=[("PATCH", "status", "BuilderImagePullFailed"),
                  ("POST", "event", "Warning", "BuilderImagePullFailed")],
        conditions={"Ready": ("False", "BuilderImagePullFailed", "ImagePullBackOff: back-off"),
                    "Reconciling": ("True", "Building", "back-off")}),
    Row("job without a pod, not for long: looked at again when its Events count", build(), jobs=(job(active=1),),
        elapsed=5, requests=[("PATCH", "status", "Building"), ("POST", "event", "Normal", "Building")],
        conditions={"Ready": ("False", "Building", "is running (attempt 1)"), "Reconciling": ("True", "Building", "")},
        requeue=10.5),
    Row("job without a pod for a while, FailedCreate: JobRejected", build(), jobs=(job(active=1),), elapsed=20,
        events=({"type": "Warning", "reason": "FailedCreate", "message": "exceeded quota: q", "lastTimestamp": T0,
                 "involvedObject": {"kind": "Job", "uid": "job-1"}, "metadata": {"name": "e1"}},),
        requests=[("PATCH", "status", "JobRejected"), ("POST", "event", "Warning", "JobRejected")],
        conditions={"Ready": ("False", "JobRejected", "FailedCreate: exceeded quota: q"),
                    "Reconciling": ("True", "Building", "quota")}),
    Row("pod scheduled, container never created, FailedMount: VolumeFailed", build(), jobs=(job(active=1),),
        pods=(pod("Pending", WAITING, conds=SCHEDULED),), elapsed=20,
        events=({"type": "Warning", "reason": "FailedMount", "message": "volume out not found", "lastTimestamp": T0,
                 "involvedObject": {"kind": "Pod", "uid": "pod-1"}, "metadata": {"name": "e1"}},),
        requests=[("PATCH", "status", "VolumeFailed"), ("POST", "event", "Warning", "VolumeFailed")],
        conditions={"Ready": ("False", "VolumeFailed", "FailedMount: volume out not found"),
                    "Reconciling": ("True", "Building", "")}),
    Row("job complete with its result: Ready, output, an Event", build(),
        jobs=(job(condition("Complete"), succeeded=1, completionTime="2024-01-01T00:01:00Z"),),
        pods=(SUCCEEDED_POD,), elapsed=70,
        requests=[("GET", "persistentvolumeclaims"), ("PATCH", "status", "Succeeded"),
                  ("POST", "event", "Normal", "Succeeded")],
        conditions={"Ready": ("True", "Succeeded", f"built /out/x: 10 bytes, 3 entries, sha256:{'f' * 64}")},
        status={"output": {"sha256": "f" * 64, "size": 10, "entries": 3, "compression": "gzip", "claimName": "c",
                           "path": "x",
                           "claimUID": "claim-1"}, "completionTime": "2024-01-01T00:01:00Z", "attempts": 1}),
    Row("job failed on its deadline: the message names what held it up", build(status=FAILED_PULL),
        jobs=(job(condition("Failed", "DeadlineExceeded", "Job was active longer than specified deadline"),
                  failed=1),), elapsed=3600,
        requests=[("PATCH", "status", "DeadlineExceeded"), ("POST", "event", "Warning", "DeadlineExceeded")],
        conditions={"Ready": ("False", "DeadlineExceeded", "deadline (it was BuilderImagePullFailed: ImagePullBackOff"),
                    "Stalled": ("True", "DeadlineExceeded", "")}),
    Row("job complete, its pod's result not indexed yet: no write, again in 2 s", build(),
        jobs=(job(condition("Complete"), succeeded=1, completionTime="2024-01-01T00:01:00Z"),), elapsed=63,
        requeue=2),
    Row("job complete, no result after the grace: BuildFailed", build(),
        jobs=(job(condition("Complete"), succeeded=1, completionTime="2024-01-01T00:01:00Z"),), elapsed=75,
        requests=[("PATCH", "status", "BuildFailed"), ("POST", "event", "Warning", "BuildFailed")],
        conditions={"Ready": ("False", "BuildFailed", "without a container status"),
                    "Stalled": ("True", "BuildFailed", "")}),
    Row("built, claim unchanged: nothing sent but the claim's read", build(status=BUILT_PVC),
        requests=[("GET", "persistentvolumeclaims")], conditions={"Ready": ("True", "Succeeded", "built")}),
    Row("built, claim recreated since: built again", build(status={**BUILT_PVC, "output": {
        **BUILT_PVC["output"], "claimUID": "claim-0"}}),
        requests=[("GET", "persistentvolumeclaims")], conditions={"Ready": ("True", "Succeeded", "built")}),
    Row("tag, refresh not due: looked at again when it is", build(TAG, status={**BUILT_PVC, "resolvedTime": T0},
                                                                  refreshInterval="1h"),
        elapsed=600, requests=[("GET", "persistentvolumeclaims")], requeue=3000,
        conditions={"Ready": ("True", "Succeeded", "built")}),
    Row("image reference that does not parse: Stalled, no retry", build("reg.example/App:!"),
        requests=[("PATCH", "status", "InvalidSpec"), ("POST", "event", "Warning", "InvalidSpec")],
        conditions={"Ready": ("False", "InvalidSpec", ""), "Stalled": ("True", "InvalidSpec", "")}),
    Row("suspended, built: no offer, Ready stays True, reason Suspended, an Event",
        build(status=BUILT_PVC, generation=2, suspend=True),
        requests=[("PATCH", "status", "Suspended"), ("POST", "event", "Normal", "Suspended")],
        conditions={"Ready": ("True", "Suspended", "built /out/x")},
        status={"observedGeneration": 2, "buildGeneration": 1, "imageDigest": DIGEST}),
    Row("suspended before it was built: Ready False, Suspended", build(suspend=True),
        requests=[("PATCH", "status", "Suspended"), ("POST", "event", "Normal", "Suspended")],
        conditions={"Ready": ("False", "Suspended", "paused before this spec was built")},
        status={"observedGeneration": 1, "imageDigest": None}),
    Row("suspended while queued: the digest it waited to build is dropped", build(generation=2, suspend=True, status=
        written(("False", "Queued", "waiting for a build slot"), ("Queued", "waiting"), imageDigest=DIGEST)),
        requests=[("PATCH", "status", "Suspended"), ("POST", "event", "Normal", "Suspended")],
        conditions={"Ready": ("False", "Suspended", "it was Queued: waiting for a build slot")},
        status={"imageDigest": None}),
    Row("suspended and stalled: the failure stands", build(generation=2, suspend=True, status=written(
        ("False", "BuildFailed", "boom"), stalled=("BuildFailed", "boom"))),
        requests=[("PATCH", "status", "BuildFailed")],
        conditions={"Ready": ("False", "BuildFailed", "boom"), "Stalled": ("True", "BuildFailed", "boom")}),
    Row("resumed, built: Succeeded again with its output's words, a Resumed Event", build(generation=3, status={
        **written(("True", "Suspended", "built /out/x"), imageDigest=DIGEST, output=BUILT_PVC["output"]),
        "observedGeneration": 2, "buildGeneration": 1}),
        requests=[("PATCH", "status", "Succeeded"), ("POST", "event", "Normal", "Resumed")],
        conditions={"Ready": ("True", "Succeeded", "built /out/x")}, status={"observedGeneration": 3}),
    Row("resumed before it was built: in flight again", build(generation=3, status={
        **written(("False", "Suspended", "paused before this spec was built")), "observedGeneration": 2}),
        requests=[("PATCH", "status", "Resumed"), ("POST", "event", "Normal", "Resumed")],
        conditions={"Ready": ("False", "Resumed", ""), "Reconciling": ("True", "Resumed", "")}),
    Row("requested-at already handled: nothing looked up, nothing sent but the claim's read",
        build(TAG, status={**BUILT_PVC, "resolvedTime": T0, "lastHandledRequestedAt": "1"}, refreshInterval="1h",
              annotations={"initramfs.dev/requested-at": "1"}),
        elapsed=600, requests=[("GET", "persistentvolumeclaims")], requeue=3000,
        conditions={"Ready": ("True", "Succeeded", "built")}),
    Row("requested-at on a pinned digest: nothing to look up, handled", build(
        status=BUILT_PVC, annotations={"initramfs.dev/requested-at": "2"}),
        requests=[("GET", "persistentvolumeclaims"), ("PATCH", "status", None)],
        conditions={"Ready": ("True", "Succeeded", "built")}, status={"lastHandledRequestedAt": "2"}),
    Row("job of an earlier generation: deleted, Superseded", build(generation=2),
        jobs=(job(condition("Complete"), generation=1),),
        requests=[("DELETE", job_name(1), "Background"), ("POST", "event", "Normal", "Superseded")]),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_a_pass(row: Row) -> None:
    c = Cluster(row.build, row.jobs, row.pods, row.events)
    c.clock.advance(row.elapsed)
    assert c.reconcile() == row.requeue
    assert sent(c) == row.requests
    got = c.conditions()
    assert set(got) == set(row.conditions)
    for type_, (status, reason, fragment) in row.conditions.items():
        assert got[type_][:2] == (status, reason) and fragment in got[type_][2], got[type_]
    assert {k: c.build["status"].get(k) for k in row.status} == row.status
    assert not c.registry.asked


# --- sequences: what a pass does depends on what the last one (and the world meanwhile) did ------------------

def test_an_unchanged_status_sends_nothing() -> None:
    c = Cluster(build(), jobs=(job(active=1),), pods=(pod("Running", {"running": {}}),))
    c.reconcile()
    assert [r[:2] for r in sent(c)] == [("PATCH", "status"), ("POST", "event")]
    c.show()  # the watch brings the write back
    assert c.reconcile() is None and sent(c) == []


def test_a_conflict_on_the_status_write_is_no_error() -> None:
    c = Cluster(build(), jobs=(job(active=1),))
    c.kube.route("PATCH", STATUS_PATH, lambda r: (_ for _ in ()).throw(Status(409, "the object has been modified")))
    assert c.reconcile() == 15.5  # a Job without a pod: looked at again when its Events count
    assert sent(c) == [("PATCH", "status", "Building")]  # no Event: nothing was written


def test_a_pinned_digest_is_offered_and_queued_while_the_slots_are_taken() -> None:
    other = job(active=1, uid="job-other", build_uid="u2")  # another build's Job holds the only slot
    c = Cluster(build(), jobs=(other,))
    assert c.reconcile() is None and sent(c) == []  # offered: nothing sent until its turn
    c.reconciler.admission.round()
    assert c.queued == [KEY] and sent(c) == []  # no slot: told it waits
    assert c.reconcile() is None
    assert sent(c) == [("PATCH", "status", "Queued"), ("POST", "event", "Normal", "Queued")]
    assert c.conditions()["Ready"] == ("False", "Queued", "waiting for a build slot: all 1 are taken")
    assert c.build["status"]["resolvedTime"] == T0 and c.build["status"]["imageDigest"] == DIGEST
    c.show(jobs=[job(condition("Complete"), uid="job-other", build_uid="u2")])  # the slot is free
    c.reconciler.admission.round()
    assert sent(c) == [("POST", "job", job_name())]


def test_the_queue_s_age_is_how_long_its_oldest_build_has_waited() -> None:
    other = job(active=1, uid="job-other", build_uid="u2")
    c = Cluster(build(), jobs=(other,))
    admission = c.reconciler.admission
    now = [100.0]
    admission.monotonic = lambda: now[0]
    assert admission.oldest_wait() == 0.0
    c.reconcile()  # offered at 100
    admission.round()
    now[0] = 160.0
    c.reconcile()  # offered again while it waits: its wait goes on
    assert admission.oldest_wait() == 60.0
    c.show(jobs=[job(condition("Complete"), uid="job-other", build_uid="u2")])
    admission.round()  # admitted
    assert admission.oldest_wait() == 0.0


def test_a_tag_is_looked_up_resolving_shows_after_a_while_and_the_answer_is_built() -> None:
    c = Cluster(build(TAG))
    c.registry.digests[TAG] = DIGEST
    assert c.reconcile() == 5.0 and sent(c) == []  # asked; Resolving only if it takes a while
    c.clock.advance(5)
    assert c.reconcile() is None
    assert sent(c) == [("PATCH", "status", "Resolving")]  # a lookup in flight is no news: no Event
    assert c.conditions()["Reconciling"] == ("True", "Resolving", f"resolving {TAG}")
    c.registry.run()
    assert c.registry.asked == [TAG] and c.queued == [KEY]
    assert c.reconcile() is None and sent(c) == []  # offered
    c.reconciler.admission.round()
    assert sent(c) == [("POST", "job", job_name())]
    c.show(jobs=[job(active=1)], pods=[pod("Running", {"running": {}})])
    c.reconcile()
    assert sent(c) == [("PATCH", "status", "Building"), ("POST", "event", "Normal", "Building")]
    assert c.build["status"]["imageDigest"] == DIGEST and c.build["status"]["resolvedTime"] == "2024-01-01T00:00:05Z"
    assert c.reconcile() is None and sent(c) == [] and c.registry.asked == [TAG]  # the answer taken: not asked again


@pytest.mark.parametrize(("error", "conditions_", "requeue"), [
    # A registry that does not answer may come back: Reconciling, tried again after the backoff.
    (RegistryError("registry down"), {"Ready": ("False", RegistryError.reason),
                                      "Reconciling": ("True", "Resolving")}, 4.0),
    # Refused credentials need someone: Stalled at once, still looked at again after the backoff.
    (AuthError("unauthorized"), {"Ready": ("False", AuthError.reason), "Stalled": ("True", AuthError.reason)}, 4.0),
])
def test_a_failed_lookup(error: Exception, conditions_: dict, requeue: float) -> None:
    c = Cluster(build(TAG))
    c.registry.digests[TAG] = error
    c.reconcile()
    c.registry.run()
    assert c.reconcile() == requeue
    assert {k: v[:2] for k, v in c.conditions().items()} == conditions_
    assert c.conditions()["Ready"][2] == f"{error}; next attempt in 4s (1 failed in a row)"
    assert c.reconcile() == requeue and c.registry.asked == [TAG]  # not due yet: not asked again
    c.clock.advance(4)  # the backoff: due, and asked again (other builds may still share that answer)
    c.reconcile()
    assert c.registry.asked == [TAG] and len(c.registry.pending) == 1  # due: asked again


def test_a_transient_lookup_failure_is_stalled_once_it_keeps_failing() -> None:
    c = Cluster(build(TAG))
    c.registry.digests[TAG] = RegistryError("registry down")
    for elapsed in (0, 4):  # the retry at its backoff, within the time other builds share an answer
        c.clock.advance(elapsed)
        c.reconcile()
        c.registry.run()
        requeue = c.reconcile()
    assert requeue == 8.0
    assert c.conditions()["Stalled"] == ("True", "ImagePullFailed", "registry down; next attempt in 8s "
                                                                     "(2 failed in a row)")


def test_a_refresh_that_is_due_looks_the_tag_up_again_and_rebuilds_a_new_digest_keeping_the_output() -> None:
    c = Cluster(build(TAG, status={**BUILT_PVC, "resolvedTime": T0}, refreshInterval="1h"))
    c.clock.advance(3600)
    c.registry.digests[TAG] = NEW
    assert c.reconcile() == 5.0 and sent(c) == [("GET", "persistentvolumeclaims")]
    c.registry.run()
    c.reconcile()  # the new digest: offered; the old output stays valid meanwhile
    c.reconciler.admission.round()
    assert sent(c) == [("POST", "job", job_name(digest=NEW))]
    c.show(jobs=[job(active=1, digest=NEW, uid="job-2")])
    assert c.reconcile() == 3600  # refreshed now: due again in an hour
    assert sent(c) == [("PATCH", "status", "Succeeded"), ("POST", "event", "Normal", "Refreshing")]
    assert c.conditions()["Reconciling"][:2] == ("True", "Refreshing")
    assert c.build["status"]["output"]["claimUID"] == "claim-1" and c.build["status"]["imageDigest"] == NEW


def test_a_failed_refresh_keeps_what_was_built_and_says_so_in_an_event() -> None:
    c = Cluster(build(TAG, status={**BUILT_PVC, "resolvedTime": T0}, refreshInterval="1h"))
    c.clock.advance(3600)
    c.registry.digests[TAG] = RegistryError("registry down")
    c.reconcile()
    sent(c)
    c.registry.run()
    assert c.reconcile() == 4.0
    assert sent(c) == [("POST", "event", "Warning", "RefreshFailed"), ("PATCH", "status", None)]
    assert c.conditions()["Ready"][:2] == ("True", "Succeeded")
    assert c.build["status"]["resolvedTime"] == "2024-01-01T01:00:00Z"


def test_a_rejected_job_is_retried_then_stalled() -> None:
    c = Cluster(build())
    c.kube.route("POST", JOBS_PATH, lambda r: (_ for _ in ()).throw(Status(403, "exceeded quota: q")))
    for failures, (requeue, type_) in enumerate(((4.0, "Reconciling"), (8.0, "Stalled")), start=1):
        c.reconcile()
        c.reconciler.admission.round()
        assert sent(c) == [("POST", "job", job_name())]
        assert c.reconcile() == requeue
        assert c.conditions()["Ready"][:2] == ("False", "JobRejected")
        assert c.conditions()[type_][2] == (f"the API server refused build job {job_name()}: exceeded quota: q; "
                                            f"next attempt in {requeue:.0f}s ({failures} failed in a row)")
        sent(c)
        assert c.reconcile() == requeue and sent(c) == []  # not offered again before its time
        c.clock.advance(requeue)


def test_a_spec_edit_supersedes_the_old_job_and_forgets_earlier_failures() -> None:
    c = Cluster(build())
    c.kube.route("POST", JOBS_PATH, lambda r: (_ for _ in ()).throw(Status(403, "exceeded quota: q")))
    c.reconcile()
    c.reconciler.admission.round()
    c.reconcile()  # JobRejected, the next attempt in 4 s
    old = job(condition("Failed", "BackoffLimitExceeded"), generation=1, uid="job-old")
    c.build["metadata"]["generation"], c.build["spec"]["platform"] = 2, "linux/arm64"
    c.show(jobs=[old])
    c.kube.route("POST", JOBS_PATH, c.create_job)
    sent(c)
    c.reconcile()  # at once: the edit may be the fix
    c.reconciler.admission.round()
    assert sent(c) == [("DELETE", job_name(1), "Background"), ("POST", "event", "Normal", "Superseded"),
                       ("POST", "job", job_name(2))]
    c.reconcile()
    assert sent(c) == []  # deleted once: the watch has not shown it gone yet


def test_an_oci_output_built_and_verified_is_not_looked_up_again() -> None:
    oci = {"oci": {"repository": "reg.example/out", "tag": "v1"}}
    status = {**BUILT_PVC, "output": {"sha256": "f" * 64, "reference": "reg.example/out:v1", "digest": NEW}}
    c = Cluster(build(status=status, output=oci))
    c.registry.digests["reg.example/out:v1"] = NEW
    assert c.reconcile() is None
    c.registry.run()
    for _ in range(3):
        assert c.reconcile() is None
    assert c.registry.asked == ["reg.example/out:v1"] and sent(c) == []


def test_an_oci_output_gone_is_built_again() -> None:
    oci = {"oci": {"repository": "reg.example/out", "tag": "v1"}}
    status = {**BUILT_PVC, "output": {"sha256": "f" * 64, "reference": "reg.example/out:v1", "digest": NEW}}
    c = Cluster(build(status=status, output=oci))
    c.registry.digests["reg.example/out:v1"] = DIGEST  # overwritten by someone else
    c.reconcile()
    c.registry.run()
    c.reconcile()
    c.reconciler.admission.round()
    assert sent(c) == [("POST", "job", job_name())]


def test_a_deleted_build_is_forgotten_without_a_request() -> None:
    c = Cluster(build())
    c.build["metadata"]["deletionTimestamp"] = T0
    c.show()
    assert c.reconcile() is None and sent(c) == []
    c.reconciler.admission.round()
    assert sent(c) == []


def test_a_failure_whose_job_expired_stands() -> None:
    stalled = written(("False", "BuildFailed", "boom"), stalled=("BuildFailed", "boom"), jobName=job_name(),
                      imageDigest=DIGEST, shortDigest="d" * 12, completionTime=T0)
    c = Cluster(build(status=stalled), settings=Settings("builder:1", 1, limits=buildjob.Limits(ttl_seconds=60)))
    c.clock.advance(60)
    assert c.reconcile() is None and sent(c) == []
    c.reconciler.admission.round()
    assert sent(c) == []  # not built again: its Job's TTL removed it


# --- suspend and resume ---------------------------------------------------------------------------------------

def test_a_suspended_build_offers_no_job_and_looks_nothing_up() -> None:
    c = Cluster(build(TAG, suspend=True, refreshInterval="1h"))
    c.registry.digests[TAG] = DIGEST
    assert c.reconcile() is None
    c.reconciler.admission.round()
    assert sent(c) == [("PATCH", "status", "Suspended"), ("POST", "event", "Normal", "Suspended")]
    c.show()
    assert c.reconcile() is None and sent(c) == [] and c.registry.asked == [] and not c.registry.pending


def test_a_job_running_when_suspended_is_observed_to_its_result_then_the_build_says_suspended() -> None:
    c = Cluster(build(), jobs=(job(active=1),), pods=(pod("Running", {"running": {}}),))
    c.reconcile()
    assert sent(c)[0] == ("PATCH", "status", "Building")
    c.build["metadata"]["generation"], c.build["spec"]["suspend"] = 2, True  # kubectl patch: a new generation
    c.show()
    c.reconcile()
    assert sent(c) == [("PATCH", "status", "Building")]  # the same Job, not superseded: its generation is 2 now
    c.clock.advance(70)
    c.show(jobs=[job(condition("Complete"), succeeded=1, completionTime="2024-01-01T00:01:00Z")],
           pods=[SUCCEEDED_POD])
    c.reconcile()
    assert sent(c) == [("GET", "persistentvolumeclaims"), ("PATCH", "status", "Succeeded"),
                       ("POST", "event", "Normal", "Succeeded")]
    assert c.build["status"]["output"]["sha256"] == "f" * 64
    c.show()
    c.reconcile()
    assert sent(c) == [("PATCH", "status", "Suspended"), ("POST", "event", "Normal", "Suspended")]
    assert c.conditions()["Ready"][:2] == ("True", "Suspended")
    c.show()
    assert c.reconcile() is None and sent(c) == []


def test_a_resumed_build_is_not_built_again_and_a_due_refresh_happens() -> None:
    c = Cluster(build(TAG, status={**BUILT_PVC, "resolvedTime": T0}, refreshInterval="1h"))
    c.build["metadata"]["generation"], c.build["spec"]["suspend"] = 2, True
    c.show()
    c.reconcile()
    sent(c)
    c.clock.advance(7200)  # the refresh fell due while paused
    c.show()
    assert c.reconcile() is None and c.registry.asked == []
    c.build["metadata"]["generation"], c.build["spec"]["suspend"] = 3, False
    c.show()
    c.reconcile()
    assert sent(c) == [("PATCH", "status", "Succeeded"), ("POST", "event", "Normal", "Resumed")]
    c.registry.digests[TAG] = DIGEST
    c.show()
    c.reconcile()
    c.registry.run()
    assert c.registry.asked == [TAG]
    c.reconcile()
    c.reconciler.admission.round()
    assert sent(c) == [("GET", "persistentvolumeclaims"), ("PATCH", "status", None)]  # same digest: no Job
    assert c.build["status"]["buildGeneration"] == 1 and c.build["status"]["observedGeneration"] == 3


def test_a_spec_edited_while_suspended_is_built_once_resumed() -> None:
    c = Cluster(build(status=BUILT_PVC))
    c.build["metadata"]["generation"], c.build["spec"]["suspend"] = 2, True
    c.show()
    c.reconcile()
    c.build["metadata"]["generation"], c.build["spec"]["platform"] = 3, "linux/arm64"
    c.show()
    c.reconcile()
    c.reconciler.admission.round()
    assert ("POST", "job", job_name(3)) not in sent(c)
    assert c.conditions()["Ready"] == ("False", "Suspended", "paused before this spec was built")
    c.build["metadata"]["generation"], c.build["spec"]["suspend"] = 4, False
    for _ in range(2):  # the resume said, then acted on
        c.show()
        c.reconcile()
    c.reconciler.admission.round()
    assert sent(c)[-1] == ("POST", "job", job_name(3))  # of the edit's generation: resuming changed nothing built


# --- the requested-at annotation ------------------------------------------------------------------------------

def requested(c: Cluster, value: str) -> None:
    c.build["metadata"].setdefault("annotations", {})[crd.REQUESTED_AT] = value
    c.show()


@pytest.mark.parametrize(("digest", "job_wanted"), [(DIGEST, False), (NEW, True)])
def test_a_request_looks_the_tag_up_although_no_refresh_is_due(digest: str, job_wanted: bool) -> None:
    c = Cluster(build(TAG, status={**BUILT_PVC, "resolvedTime": T0}, refreshInterval="1h"))
    c.clock.advance(600)
    c.registry.digests[TAG] = digest
    requested(c, "1700000000")
    c.reconcile()
    c.registry.run()
    assert c.registry.asked == [TAG]
    sent(c)
    c.reconcile()
    c.reconciler.admission.round()
    jobs = [r for r in sent(c) if r[:2] == ("POST", "job")]
    assert jobs == ([("POST", "job", job_name(digest=NEW))] if job_wanted else [])
    if job_wanted:  # recorded with the pass that reports the new Job
        c.show(jobs=[job(active=1, digest=NEW, uid="job-2")])
        c.reconcile()
    assert c.build["status"]["lastHandledRequestedAt"] == "1700000000"
    c.show()
    c.reconcile()
    assert c.registry.asked == [TAG]  # handled: not asked again


def test_a_request_to_a_suspended_build_waits_for_the_resume() -> None:
    c = Cluster(build(TAG, generation=2, status={**BUILT_PVC, "resolvedTime": T0}, refreshInterval="1h",
                      suspend=True))
    requested(c, "r1")
    c.reconcile()
    assert c.registry.asked == [] and "lastHandledRequestedAt" not in c.build["status"]
    c.build["metadata"]["generation"], c.build["spec"]["suspend"] = 3, False
    c.registry.digests[TAG] = DIGEST
    for _ in range(2):
        c.show()
        c.reconcile()
    c.registry.run()
    c.reconcile()
    assert c.registry.asked == [TAG] and c.build["status"]["lastHandledRequestedAt"] == "r1"


# --- boot verification (spec.verify): the candidate waits aside until it booted --------------------------------

VERIFY = {"kernel": {"image": "reg.example/kernel:6.1"}}
VERIFY_SETTINGS = dataclasses.replace(SETTINGS, verify=verifyjob.Settings(image="verifier:1"))
BUILT = f"built /out/x: 10 bytes, 3 entries, sha256:{'f' * 64}"
CANDIDATE = {"sha256": "f" * 64, "size": 10, "entries": 3, "compression": "gzip", "claimName": "c", "path": "x",
             "claimUID": "claim-1"}
GOOD = {"sha256": "a" * 64, "claimName": "c", "path": "x", "claimUID": "claim-1"}  # an earlier output that booted
VERIFY_JOB = verifyjob.job_name(build(), "f" * 64)
BUILD_DONE = job(condition("Complete"), succeeded=1, completionTime="2024-01-01T00:01:00Z")
CANDIDATE_KEPT = {"buildJob": job_name(), "output": CANDIDATE, "built": BUILT,
                  "outputs": [CANDIDATE | {"os": "linux", "architecture": "amd64"}]}  # status.outputs once it booted


def verification_job(*conds: dict, **status: object) -> dict:
    j = job(*conds, uid="vjob-1", **status)
    j["metadata"]["name"] = VERIFY_JOB
    j["metadata"]["labels"][verifyjob.ROLE] = verifyjob.VERIFY
    return j


def verification_pod(phase: str, code: int, result: dict) -> dict:
    p = pod(phase, {"terminated": {"exitCode": code, "message": json.dumps(result)}}, uid="vpod-1")
    p["metadata"]["labels"][cache.JOB_UID] = "vjob-1"
    return p


def verification_pod_waiting(state: dict) -> dict:
    p = pod("Pending", state, uid="vpod-1")
    p["metadata"]["labels"][cache.JOB_UID] = "vjob-1"
    return p


def verifying(output: dict | None = None, **verification: object) -> dict:
    status = written(("False", "Verifying", "booting"), ("Verifying", "booting"), jobName=job_name(),
                     imageDigest=DIGEST, shortDigest="d" * 12, verification={**CANDIDATE_KEPT, **verification},
                     **({"output": output} if output else {}))
    status["conditions"].append({"type": "Verified", "status": "False", "reason": "Verifying", "message": "booting",
                                 "observedGeneration": 1, "lastTransitionTime": T0})
    return status


BOOTED_POD = verification_pod("Succeeded", 0, {"reason": "Booted", "message": "ran /init for 5s", "seconds": 9.5,
                                               "accelerator": "tcg", "memory": 256 << 20})
PANICKED_POD = verification_pod("Failed", 6, {"reason": "BootFailed", "error": "the kernel panicked: Attempted "
                                              "to kill init!; last console lines:\n  Run /init as init process"})
SILENT_POD = verification_pod("Failed", 7, {"reason": "BootTimeout", "error": "no verdict within 120s: waited for "
                                            "the kernel running init"})
FAILED_AT = condition("Failed", "PodFailurePolicy", at="2024-01-01T00:02:00Z")

VERIFY_ROWS = [
    Row("build done: its output kept aside as the candidate, Verifying", build(verify=VERIFY), jobs=(BUILD_DONE,),
        pods=(SUCCEEDED_POD,), elapsed=70,
        requests=[("GET", "persistentvolumeclaims"), ("PATCH", "status", "Verifying"),
                  ("POST", "event", "Normal", "Verifying")],
        conditions={"Ready": ("False", "Verifying", BUILT), "Reconciling": ("True", "Verifying", ""),
                    "Verified": ("False", "Verifying", "booting it")},
        status={"output": None, "verification": CANDIDATE_KEPT}),
    Row("candidate without a verification Job: created", build(verify=VERIFY, status=verifying()), jobs=(BUILD_DONE,),
        requests=[("POST", "job", VERIFY_JOB), ("PATCH", "status", "Verifying")],
        conditions={"Ready": ("False", "Verifying", "created"), "Reconciling": ("True", "Verifying", ""),
                    "Verified": ("False", "Verifying", "created")}),
    Row("verification Job running", build(verify=VERIFY, status=verifying()), jobs=(BUILD_DONE, verification_job(
        active=1)), requests=[("PATCH", "status", "Verifying")],
        conditions={"Ready": ("False", "Verifying", "is booting"), "Reconciling": ("True", "Verifying", ""),
                    "Verified": ("False", "Verifying", "is booting")}),
    Row("verifier image not pulled: said, still Verifying", build(verify=VERIFY, status=verifying()),
        jobs=(BUILD_DONE, verification_job(active=1)),
        pods=(verification_pod_waiting({"waiting": {"reason": "ImagePullBackOff", "message": "back-off"}}),),
        requests=[("PATCH", "status", "BuilderImagePullFailed"),
                  ("POST", "event", "Warning", "BuilderImagePullFailed")],
        conditions={"Ready": ("False", "BuilderImagePullFailed", "verification job"),
                    "Reconciling": ("True", "Verifying", "back-off"), "Verified": ("False", "Verifying", "back-off")}),
    Row("booted: the candidate is the output, Ready and Verified", build(verify=VERIFY, status=verifying(GOOD)),
        jobs=(BUILD_DONE, verification_job(condition("Complete"), succeeded=1, completionTime="2024-01-01T00:02:00Z")),
        pods=(BOOTED_POD,), elapsed=130,
        requests=[("PATCH", "status", "Succeeded"), ("POST", "event", "Normal", "Succeeded")],
        conditions={"Ready": ("True", "Succeeded", BUILT), "Verified": ("True", "Booted", "ran /init for 5s (9.5s")},
        status={"output": CANDIDATE}),
    Row("boot failed: Stalled, not Ready, the previous output stays", build(verify=VERIFY, status=verifying(GOOD)),
        jobs=(BUILD_DONE, verification_job(FAILED_AT, failed=1)), pods=(PANICKED_POD,), elapsed=130,
        requests=[("PATCH", "status", "BootFailed"), ("POST", "event", "Warning", "BootFailed")],
        conditions={"Ready": ("False", "BootFailed", "kernel panicked"), "Stalled": ("True", "BootFailed", ""),
                    "Verified": ("False", "BootFailed", "Run /init as init process")},
        status={"output": GOOD}),
    Row("no verdict in time: BootTimeout, Stalled", build(verify=VERIFY, status=verifying(GOOD)),
        jobs=(BUILD_DONE, verification_job(FAILED_AT, failed=1)), pods=(SILENT_POD,), elapsed=130,
        requests=[("PATCH", "status", "BootTimeout"), ("POST", "event", "Warning", "BootTimeout")],
        conditions={"Ready": ("False", "BootTimeout", ""), "Stalled": ("True", "BootTimeout", ""),
                    "Verified": ("False", "BootTimeout", "waited for the kernel running init")},
        status={"output": GOOD}),
    Row("verification Job failed, its pod not indexed yet: no verdict, again in 2 s",
        build(verify=VERIFY, status=verifying(GOOD, jobName=VERIFY_JOB, startTime=T0)),
        jobs=(BUILD_DONE, verification_job(FAILED_AT, failed=1)), elapsed=122, requeue=2,
        conditions={"Ready": ("False", "Verifying", ""), "Reconciling": ("True", "Verifying", ""),
                    "Verified": ("False", "Verifying", "booting")}),
    Row("verdict recorded: it stands, nothing sent",
        build(verify=VERIFY, status=written(("False", "BootFailed", "panicked"), stalled=("BootFailed", "panicked"),
                                            jobName=job_name(), imageDigest=DIGEST, shortDigest="d" * 12, output=GOOD,
                                            verification={**CANDIDATE_KEPT, "result": "BootFailed"})),
        jobs=(BUILD_DONE,), conditions={"Ready": ("False", "BootFailed", ""), "Stalled": ("True", "BootFailed", "")}),
    Row("refresh of a good output: Ready stays True on it while the new one boots",
        build(verify=VERIFY, status=written(("True", "Succeeded", "built /out/old"), imageDigest=NEW, output=GOOD,
                                            jobName=job_name(digest=NEW))),
        jobs=(BUILD_DONE,),
        pods=(SUCCEEDED_POD,), elapsed=70,
        requests=[("GET", "persistentvolumeclaims"), ("PATCH", "status", "Succeeded"),
                  ("POST", "event", "Normal", "Refreshing")],
        conditions={"Ready": ("True", "Succeeded", "built /out/old"), "Reconciling": ("True", "Refreshing", ""),
                    "Verified": ("False", "Verifying", "")},
        status={"output": GOOD}),
]


@pytest.mark.parametrize("row", VERIFY_ROWS, ids=[r.id for r in VERIFY_ROWS])
def test_a_verification_pass(row: Row) -> None:
    c = Cluster(row.build, row.jobs, row.pods, row.events, settings=VERIFY_SETTINGS)
    c.clock.advance(row.elapsed)
    assert c.reconcile() == row.requeue
    assert sent(c) == row.requests
    got = c.conditions()
    assert set(got) == set(row.conditions), got
    for type_, (status, reason, fragment) in row.conditions.items():
        assert got[type_][:2] == (status, reason) and fragment in got[type_][2], got[type_]
    assert {k: c.build["status"].get(k) for k in row.status} == row.status


def test_a_verification_job_boots_the_candidate_as_the_spec_says() -> None:
    c = Cluster(build(verify={**VERIFY, "successRegex": "ready$", "kvm": True}, status=verifying()),
                jobs=(BUILD_DONE,), settings=VERIFY_SETTINGS)
    c.reconcile()
    [created] = [r.body for r in c.kube.sent("POST")]
    pod_spec = created["spec"]["template"]["spec"]
    [container] = pod_spec["containers"]
    assert container["image"] == "verifier:1" and container["args"][:3] == ["verify", "/output/x", "--kernel"]
    assert {"--success-regex", "ready$", "--kvm"} <= set(container["args"])
    assert container["resources"]["limits"] == {"devices.kubevirt.io/kvm": "1"}
    assert container["securityContext"]["readOnlyRootFilesystem"] and pod_spec["automountServiceAccountToken"] is False
    assert {"name": "output", "mountPath": "/output", "readOnly": True} in container["volumeMounts"]
    assert created["metadata"]["labels"][verifyjob.ROLE] == verifyjob.VERIFY


def test_a_build_without_verification_never_has_a_verified_condition() -> None:
    c = Cluster(build(), jobs=(BUILD_DONE,), pods=(SUCCEEDED_POD,), settings=VERIFY_SETTINGS)
    c.clock.advance(70)
    c.reconcile()
    assert "Verified" not in c.conditions() and c.build["status"]["output"]["sha256"] == "f" * 64


def test_a_build_suspended_while_verifying_says_so_and_verifies_once_resumed() -> None:
    running = verification_job(active=1)
    c = Cluster(build(verify=VERIFY, status=verifying(jobName=VERIFY_JOB)), jobs=(BUILD_DONE, running),
                settings=VERIFY_SETTINGS)
    c.build["metadata"]["generation"], c.build["spec"]["suspend"] = 2, True
    c.show()
    c.reconcile()
    assert sent(c) == [("PATCH", "status", "Suspended"), ("POST", "event", "Normal", "Suspended")]
    assert c.conditions()["Ready"][:2] == ("False", "Suspended")
    c.build["metadata"]["generation"], c.build["spec"]["suspend"] = 3, False
    for _ in range(3):  # the resume said, the candidate taken up again, its running verification observed
        c.show()
        c.reconcile()
    assert c.conditions()["Verified"][:2] == ("False", "Verifying") and ("POST", "job", VERIFY_JOB) not in sent(c)
    c.clock.advance(130)
    c.show(jobs=[BUILD_DONE, verification_job(condition("Complete"), succeeded=1,
                                              completionTime="2024-01-01T00:02:00Z")], pods=[BOOTED_POD])
    c.reconcile()
    assert c.conditions()["Verified"][:2] == ("True", "Booted") and c.build["status"]["output"] == CANDIDATE
