"""Cleanup's transitions (kube/cleanup.py), pass by pass against the fake API server of test_reconcile_pass: the
finalizer comes and goes with what the spec asks, previous outputs beyond retention and, on deletion, every output
are removed (registry artifacts by the operator, files by a cleanup Job), and nothing waits forever."""

import copy
import json
from dataclasses import dataclass, field

import pytest

from fixtures.fake_kube import Status
from initramfs_operator.errors import RegistryError
from initramfs_operator.kube import api, buildjob, cleanup, crd
from initramfs_operator.kube.cleanup import FINALIZER
from initramfs_operator.kube.report import Report
from initramfs_operator.oci.registry import Removal
from test_reconcile_pass import BUILT_PVC, KEY, T0, Cluster, build, condition, job, merged, pod, sent, written

BUILD_PATH = api.path(crd.API_VERSION, crd.PLURAL, "ns", "b")
REPO = "reg.example/out"
OCI = {"oci": {"repository": REPO, "tag": "t"}}


def artifact(n: int, tag: str = "t") -> dict:
    digest = f"sha256:{n:064d}"
    return {"reference": f"{REPO}@{digest}", "digest": digest, "tag": tag}


def file(path: str, claim: str = "c") -> dict:
    return {"claimName": claim, "path": path}


BUILT_OCI = written(("True", "Succeeded", "built"), imageDigest="sha256:" + "d" * 64, jobName="j",
                    output={**artifact(0), "sha256": "f" * 64})


@dataclass
class Remover:
    """The registry's answers to removals, by digest: a Removal, or an error raised (unreachable)."""
    answers: dict = field(default_factory=dict)
    calls: list = field(default_factory=list)

    def __call__(self, where, digest: str, options, tag: str | None = None) -> Removal:
        self.calls.append((where.name, digest, tag))
        answer = self.answers.get(digest, Removal(done=[f"deleted {digest}"]))
        if isinstance(answer, Exception):
            raise answer
        return answer


class World(Cluster):
    """test_reconcile_pass's cluster, with finalizer writes and a registry that removes."""

    def __init__(self, the_build: dict, jobs: tuple = (), deleting: bool = False, finalizer: bool = False, **kw):
        the_build = copy.deepcopy(the_build)
        meta = the_build["metadata"]
        if deleting:
            meta["deletionTimestamp"] = T0
        if finalizer:
            meta["finalizers"] = ["other.example/keep", FINALIZER]
        super().__init__(the_build, jobs, **kw)
        self.remover = Remover()
        self.reconciler.cleanup.remove = self.remover
        self.kube.route("PATCH", BUILD_PATH, self.patch_build)
        self.said: list[tuple[str, str]] = []
        self.kube.route("POST", api.path("v1", "events", "ns"), self.event)

    def event(self, request) -> dict:
        self.said.append((request.body["type"], request.body["message"]))
        return request.body

    def patch_build(self, request) -> dict:
        if request.body["metadata"]["resourceVersion"] != self.build["metadata"]["resourceVersion"]:
            raise Status(409)
        meta = {k: v for k, v in request.body["metadata"].items() if k != "resourceVersion"}
        self.build["metadata"] = merged(self.build["metadata"], meta)
        self.build["metadata"]["resourceVersion"] = str(int(self.build["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(self.build)

    def reconciler_report(self) -> Report:
        """A Report of the build as the indexes show it now, for calling one part of a pass."""
        r = self.reconciler
        self.show()
        return Report(self.kube, r.overlay, r.headlines, self.clock, r.overlay.view(KEY, self.index.build(*KEY)))

    @property
    def finalizers(self) -> list[str]:
        return self.build["metadata"].get("finalizers") or []

    def step(self) -> tuple[float | None, list]:
        """A pass, the watch bringing back what it wrote, and what it sent."""
        requeue = self.reconcile()
        self.show()
        return requeue, sent(self)


def built(status: dict, previous: list[dict]) -> dict:
    return {**status, "previousOutputs": previous}


# --- the finalizer: only while something outside the cluster must go with the build -----------------------

@pytest.mark.parametrize("spec, status, finalizer, wanted", [
    ({}, BUILT_PVC, False, False),
    ({"deletionPolicy": "Retain"}, built(BUILT_PVC, [file("old")]), False, False),
    ({"deletionPolicy": "Delete"}, BUILT_PVC, False, True),
    ({"deletionPolicy": "Delete"}, {}, False, True),
    ({"output": {"pvc": {"claimName": "c", "path": "x"}, "retention": 1}}, built(BUILT_PVC, [file("a")]), False,
     False),
    ({"output": {"pvc": {"claimName": "c", "path": "x"}, "retention": 2}}, built(BUILT_PVC, [file("a")]), True,
     False),
], ids=["retain", "retain-with-previous", "delete", "delete-before-built", "within-retention",
        "no-longer-needed"])
def test_finalizer_follows_the_spec(spec, status, finalizer, wanted) -> None:
    w = World(build(status=status, **spec), finalizer=finalizer)
    w.step()
    assert (FINALIZER in w.finalizers) == wanted
    assert "other.example/keep" in w.finalizers or not finalizer  # others' finalizers are kept


# --- retention ---------------------------------------------------------------------------------------------

def test_previous_artifacts_beyond_retention_are_deleted_then_the_finalizer_goes() -> None:
    previous = [artifact(1), artifact(2), artifact(3)]
    w = World(build(status=built(BUILT_OCI, previous), output={**OCI, "retention": 1}))
    w.registry.digests[f"{REPO}:t"] = artifact(0)["digest"]  # the output is still there
    w.step()
    assert FINALIZER in w.finalizers and w.remover.calls == []  # asked, not yet answered
    w.registry.run()
    assert sorted(c[1] for c in w.remover.calls) == [artifact(2)["digest"], artifact(3)["digest"]]
    assert KEY in w.queued
    _, requests = w.step()
    assert ("POST", "event", "Normal", "PrunedOutputs") in requests
    assert w.build["status"]["previousOutputs"] == [artifact(1)]
    assert FINALIZER not in w.finalizers


def test_a_new_output_pushes_the_last_one_into_previous_outputs() -> None:
    done = job(condition("Complete"), succeeded=1, completionTime="2024-01-01T00:01:00Z")
    result = {"sha256": "f" * 64, "size": 10, "entries": 3, "compression": "gzip",
              "reference": f"{REPO}@{artifact(9)['digest']}", "digest": artifact(9)["digest"]}
    status = built(written(("False", "Building", "running"), ("Building", "running"), imageDigest="sha256:" + "d" * 64,
                           jobName=buildjob.job_name(build(), "sha256:" + "d" * 64), startTime=T0, attempts=1,
                           output={**artifact(1), "sha256": "a" * 64}), [artifact(2)])
    w = World(build(status=status, output=OCI), jobs=(done,),
              pods=(pod("Succeeded", {"terminated": {"exitCode": 0, "message": json.dumps(result)}}),))
    w.clock.advance(70)
    w.step()
    assert w.build["status"]["output"]["digest"] == artifact(9)["digest"]
    assert w.build["status"]["output"]["tag"] == "t"
    assert w.build["status"]["previousOutputs"] == [artifact(1), artifact(2)]


@pytest.mark.parametrize("status, new, previous", [
    ({"output": artifact(1)}, artifact(2), [artifact(1)]),
    ({"output": artifact(1), "previousOutputs": [artifact(2)]}, artifact(1), [artifact(2)]),  # rebuilt the same
    ({"output": artifact(1), "previousOutputs": [artifact(2)]}, artifact(2), [artifact(1)]),  # back to an older one
    ({"output": file("x")}, file("x"), []),                                                  # rewritten in place
    ({"output": file("x")}, file("y"), [file("x")]),
    ({"output": artifact(0), "previousOutputs": [artifact(n) for n in range(1, 11)]}, artifact(11),
     [artifact(n) for n in range(10)]),                                                      # bounded
])
def test_superseded(status, new, previous) -> None:
    assert cleanup.superseded(status, new) == previous


def test_several_platforms_on_a_claim_are_tracked_file_by_file() -> None:
    """output.path of several platforms is the pattern ({arch}); what is removed is each platform's file."""
    def several(pattern: str) -> tuple[dict, list[dict]]:
        output = {"claimName": "c", "path": pattern, "platforms": "linux/amd64,linux/arm64"}
        return output, [{**file(pattern.replace("{arch}", arch)), "architecture": arch} for arch in ("amd64", "arm64")]

    old, old_files = several("a-{arch}")
    new, new_files = several("b-{arch}")
    assert cleanup.superseded({"output": old, "outputs": old_files}, new, new_files) == [file("a-amd64"),
                                                                                          file("a-arm64")]
    assert cleanup.superseded({"output": old, "outputs": old_files}, old, old_files) == []  # rewritten in place
    assert cleanup.removable(new, new_files) == [file("b-amd64"), file("b-arm64")]


def test_retention_and_deletion_policy_are_not_build_inputs() -> None:
    spec = {"image": "a", "output": {"pvc": {"claimName": "c", "path": "x"}}}
    same = {**spec, "deletionPolicy": "Delete", "output": {**spec["output"], "retention": 3}}
    assert buildjob.spec_hash(spec) == buildjob.spec_hash(same)


def test_previous_files_beyond_retention_go_by_a_cleanup_job() -> None:
    previous = [file("a"), file("b"), file("old/c")]
    w = World(build(status=built(BUILT_PVC, previous),
                    output={"pvc": {"claimName": "c", "path": "x"}, "retention": 1}))
    _, requests = w.step()
    name = cleanup.job_name("b", "c", ["b", "old/c"])
    assert ("POST", "job", name) in requests
    w.show(jobs=[job(condition("Complete"), uid="cj") | {"metadata": {
        **job(uid="cj")["metadata"], "name": name,
        "labels": {buildjob.MANAGED_BY: buildjob.OPERATOR, buildjob.COMPONENT: buildjob.CLEANUP,
                   crd.BUILD_UID_LABEL: "u1"}}}])
    _, requests = w.step()
    assert w.build["status"]["previousOutputs"] == [file("a")]
    assert ("POST", "event", "Normal", "PrunedOutputs") in requests
    assert not any(r[0] == "DELETE" for r in requests)  # a cleanup Job is never taken for a superseded build Job


def test_the_cleanup_job_is_restricted_like_build_jobs() -> None:
    b = build()
    body = buildjob.cleanup_job(b, "b-cleanup-x", "c", ["a", "b/c"], "builder:1")
    pod = body["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["remove", "--root", buildjob.OUTPUT, "--json", "a", "b/c"]
    assert container["securityContext"] == {
        "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}, "runAsUser": buildjob.UID,
        "runAsGroup": buildjob.UID, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}}
    assert pod["automountServiceAccountToken"] is False
    assert pod["volumes"] == [{"name": "output", "persistentVolumeClaim": {"claimName": "c"}}]
    assert body["spec"]["activeDeadlineSeconds"] and body["metadata"]["ownerReferences"][0]["uid"] == "u1"
    assert buildjob.is_cleanup(body)


def test_a_failed_cleanup_job_leaves_a_warning_and_is_not_retried() -> None:
    w = World(build(status=built(BUILT_PVC, [file("a"), file("b")]),
                    output={"pvc": {"claimName": "c", "path": "x"}, "retention": 1}))
    w.step()
    name = cleanup.job_name("b", "c", ["b"])
    failed = job(condition("Failed", "DeadlineExceeded", "Job was active longer than specified deadline"), uid="cj")
    failed["metadata"].update(name=name, labels={**failed["metadata"]["labels"],
                                                 buildjob.COMPONENT: buildjob.CLEANUP})
    w.show(jobs=[failed])
    _, requests = w.step()
    assert ("POST", "event", "Warning", "CleanupIncomplete") in requests
    assert w.build["status"]["previousOutputs"] == [file("a")]
    assert FINALIZER not in w.finalizers


# --- deletion ----------------------------------------------------------------------------------------------

def test_delete_policy_removes_current_and_previous_artifacts_then_the_finalizer() -> None:
    w = World(build(status=built(BUILT_OCI, [artifact(1)]), output=OCI, deletionPolicy="Delete"),
              deleting=True, finalizer=True)
    assert w.step() == (None, [])
    w.registry.run()
    assert sorted(w.remover.calls) == [(REPO, artifact(0)["digest"], "t"), (REPO, artifact(1)["digest"], "t")]
    _, requests = w.step()
    assert requests == [("POST", "event", "Normal", "CleanedUp"), ("PATCH", "initramfsbuilds")]
    assert w.finalizers == ["other.example/keep"]


def test_an_unreachable_registry_is_given_up_on_after_bounded_attempts() -> None:
    w = World(build(status=BUILT_OCI, output=OCI, deletionPolicy="Delete"), deleting=True, finalizer=True)
    w.remover.answers[artifact(0)["digest"]] = RegistryError("reg.example: ConnectError (gave up after 2 attempts)")
    waits = []
    for _ in range(cleanup.CLEANUP_ATTEMPTS):
        requeue, requests = w.step()
        assert requests == []
        w.registry.run()
        requeue, requests = w.step()
        if requeue is not None:
            waits.append(requeue)
            w.clock.advance(requeue)
    assert waits == [4.0, 8.0, 16.0]  # SETTINGS' backoff
    assert requests == [("POST", "event", "Warning", "CleanupIncomplete"), ("PATCH", "initramfsbuilds")]
    assert len(w.remover.calls) == cleanup.CLEANUP_ATTEMPTS
    assert "ConnectError" in w.said[-1][1] and "gave up after 4 attempts" in w.said[-1][1]
    assert FINALIZER not in w.finalizers


def test_a_registry_refusing_deletion_is_said_at_once() -> None:
    w = World(build(status=BUILT_OCI, output=OCI, deletionPolicy="Delete"), deleting=True, finalizer=True)
    w.remover.answers[artifact(0)["digest"]] = Removal(False, left=[f"{REPO}:t (HTTP 405: UNSUPPORTED)"])
    w.step()
    w.registry.run()
    _, requests = w.step()
    assert requests == [("POST", "event", "Warning", "CleanupIncomplete"), ("PATCH", "initramfsbuilds")]
    assert w.said[-1] == ("Warning", f"left behind, remove by hand: {REPO}:t (HTTP 405: UNSUPPORTED)")
    assert FINALIZER not in w.finalizers


def test_retain_on_deletion_removes_only_what_retention_was_pruning() -> None:
    w = World(build(status=built(BUILT_OCI, [artifact(1), artifact(2)]), output={**OCI, "retention": 1}),
              deleting=True, finalizer=True)
    w.step()
    w.registry.run()
    assert [c[1] for c in w.remover.calls] == [artifact(2)["digest"]]
    w.step()
    assert FINALIZER not in w.finalizers


def test_running_build_jobs_are_deleted_before_the_cleanup() -> None:
    w = World(build(status=BUILT_PVC, deletionPolicy="Delete"), jobs=(job(active=1),), deleting=True, finalizer=True)
    requeue, requests = w.step()
    assert requeue == 2 and requests[0][0] == "DELETE" and not any(r[:2] == ("POST", "job") for r in requests)
    w.show(jobs=[])
    _, requests = w.step()
    assert ("POST", "job", cleanup.job_name("b", "c", ["x"])) in requests


def test_a_cleanup_job_the_api_server_refuses_does_not_hold_the_deletion() -> None:
    w = World(build(status=BUILT_PVC, deletionPolicy="Delete"), deleting=True, finalizer=True)
    w.kube.route("POST", api.path("batch/v1", "jobs", "ns"), lambda r: (_ for _ in ()).throw(
        Status(403, "unable to create new content in namespace ns because it is being terminated")))
    _, requests = w.step()
    assert ("POST", "event", "Warning", "CleanupIncomplete") in requests and FINALIZER not in w.finalizers


def test_an_artifact_another_build_still_uses_is_never_deleted() -> None:
    w = World(build(status=BUILT_OCI, output=OCI, deletionPolicy="Delete"), deleting=True, finalizer=True)
    other = build(status=BUILT_OCI, output=OCI)
    other["metadata"].update(name="other", uid="u2")
    w.index.bind({KEY: (w.build,), ("ns", "other"): (other,)}, {}, {}, {})
    w.reconcile()
    assert w.remover.calls == [] and w.registry.pending == []
    assert ("POST", "event", "Warning", "CleanupIncomplete") in sent(w)


def test_a_suspended_build_gets_its_finalizer_but_prunes_nothing() -> None:
    w = World(build(status=built(BUILT_OCI, [artifact(1)]), output={**OCI, "retention": 0}, suspend=True,
                    deletionPolicy="Delete"))
    w.step()
    assert FINALIZER in w.finalizers and w.registry.pending == [] and w.remover.calls == []


def test_deleting_says_why_its_build_jobs_go() -> None:
    w = World(build(status=BUILT_PVC, deletionPolicy="Delete"), jobs=(job(active=1),), deleting=True, finalizer=True)
    w.step()
    assert w.said == [("Normal", f"deleted build job {job()['metadata']['name']}: the build is being deleted")]


def test_pruned_one_at_a_time_without_claiming_a_newer_generation_observed() -> None:
    previous = [artifact(1), artifact(2), artifact(3)]
    w = World(build(status=built(BUILT_OCI, previous), generation=2, output={**OCI, "retention": 1}))
    w.registry.digests[f"{REPO}:t"] = artifact(0)["digest"]
    w.reconciler.cleanup.remove = lambda where, digest, options, tag=None: Removal() \
        if digest == artifact(2)["digest"] else (_ for _ in ()).throw(RegistryError("down"))
    w.reconcile()
    w.registry.run()
    w.reconciler.cleanup.prune(report := w.reconciler_report(), [])
    assert report.status["previousOutputs"] == [artifact(1), artifact(3)]  # 3 is being retried
    assert report.status["observedGeneration"] == 1
    assert w.said[-1] == ("Normal", f"removed previous outputs beyond retention: {artifact(2)['reference']}")
