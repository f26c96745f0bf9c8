"""A build of several platforms, pass by pass: one build Job per platform, each admitted in a slot of its own,
status built from all of them, a failed platform named, and (OCI) the index pushed by the operator once every
platform's artifact is. The world is test_reconcile_pass's: a fake API server, indexes, a clock that moves
when told, and a registry that answers when told."""

import json
from collections import deque

from fixtures.fake_kube import Status
from initramfs_operator.errors import InvalidImageError, RegistryError
from initramfs_operator.kube import buildjob, cache, crd
from initramfs_operator.kube.admission import Candidate, take_turns
from initramfs_operator.kube.settings import Settings
from test_reconcile_pass import DIGEST, JOBS_PATH, KEY, SETTINGS, T0, Cluster, build, condition, sent

PLATFORMS = ["linux/amd64", "linux/arm64"]
FILES = {"pvc": {"claimName": "c", "path": "boot/app-{arch}.cpio.gz"}}
ARTIFACTS = {"oci": {"repository": "reg.example/out", "tag": "v1"}}
INDEX = "sha256:" + "9" * 64
DONE = "2024-01-01T00:01:00Z"


def several(output: dict = FILES, **spec: object) -> dict:
    return build(platforms=PLATFORMS, output=output, **spec)


def names(output: dict = FILES) -> dict:
    return buildjob.job_names(several(output), DIGEST)


def listed(output: dict = FILES) -> str:
    return ", ".join(names(output).values())


def platform_job(platform: str, *conds: dict, output: dict = FILES, **status: object) -> dict:
    arch = platform.rsplit("/", 1)[1]
    return {"metadata": {"namespace": "ns", "name": names(output)[platform], "uid": f"job-{arch}",
                         "creationTimestamp": T0,
                         "labels": {buildjob.MANAGED_BY: buildjob.OPERATOR, crd.BUILD_UID_LABEL: "u1"},
                         "annotations": {buildjob.BUILD_NAME: "b", buildjob.PLATFORM: platform}},
            "spec": {}, "status": {**status, **({"conditions": list(conds)} if conds else {})}}


def result(arch: str) -> dict:
    """What a platform's Job reports: its file (and, pushed by digest, its artifact)."""
    c = {"amd64": "1", "arm64": "2"}[arch]
    return {"output": f"/output/boot/app-{arch}.cpio.gz", "size": int(c) * 10, "sha256": c * 64,
            "sha512": c * 128, "entries": 3, "image": "x", "imageDigest": f"sha256:{c * 64}",
            "platform": f"linux/{arch}", "compression": "gzip"}


def pushed(arch: str) -> dict:
    c = {"amd64": "3", "arm64": "4"}[arch]
    return {**{k: v for k, v in result(arch).items() if k != "output"},
            "reference": f"reg.example/out@sha256:{c * 64}", "digest": f"sha256:{c * 64}"}


def platform_pod(platform: str, phase: str, state: dict) -> dict:
    arch = platform.rsplit("/", 1)[1]
    return {"metadata": {"namespace": "ns", "name": f"pod-{arch}", "uid": f"pod-{arch}", "creationTimestamp": T0,
                        "labels": {buildjob.MANAGED_BY: buildjob.OPERATOR, cache.JOB_UID: f"job-{arch}"}},
            "status": {"phase": phase, "conditions": [],
                       "containerStatuses": [{"name": "build", "image": "builder:1", "state": state}]}}


def running(platform: str, output: dict = FILES) -> tuple[dict, dict]:
    return platform_job(platform, output=output, active=1), platform_pod(platform, "Running", {"running": {}})


def succeeded(platform: str, output: dict = FILES) -> tuple[dict, dict]:
    arch = platform.rsplit("/", 1)[1]
    message = json.dumps(pushed(arch) if "oci" in output else result(arch))
    return (platform_job(platform, condition("Complete", at=DONE), output=output, succeeded=1, completionTime=DONE),
            platform_pod(platform, "Succeeded", {"terminated": {"exitCode": 0, "message": message}}))


def adopted(c: Cluster) -> Cluster:
    """The Jobs the admission creates get the uids the tests' Jobs have: the watch shows them as created."""
    def create(request) -> dict:
        arch = request.body["metadata"]["annotations"][buildjob.PLATFORM].rsplit("/", 1)[1]
        return {**request.body, "metadata": {**request.body["metadata"], "uid": f"job-{arch}"}}

    c.kube.route("POST", JOBS_PATH, create)
    return c


def show(c: Cluster, *pairs: tuple[dict, dict]) -> None:
    c.show(jobs=[j for j, _ in pairs], pods=[p for _, p in pairs])


def test_a_job_per_platform_each_in_a_slot_of_its_own_then_ready_with_an_output_each() -> None:
    c = adopted(Cluster(several()))  # one slot
    assert c.reconcile() is None and sent(c) == []  # both offered: nothing is sent until their turn
    c.reconciler.admission.round()
    assert sent(c) == [("POST", "job", names()["linux/amd64"])]  # the spec's first platform first
    assert c.queued == [KEY]  # the other is told it waits
    show(c, running("linux/amd64"))
    c.reconcile()
    assert sent(c) == [("PATCH", "status", "Building"), ("POST", "event", "Normal", "Building")]
    assert c.conditions()["Ready"] == ("False", "Building", (
        f"building 2 platforms: linux/amd64 (job {names()['linux/amd64']}, attempt 1) running; "
        "linux/arm64 waiting for a build slot (all 1 are taken)"))
    assert c.build["status"]["jobName"] == listed() and c.build["status"]["attempts"] == 1
    c.reconciler.admission.round()
    assert sent(c) == []  # the slot is still taken
    show(c, succeeded("linux/amd64"))
    c.reconciler.admission.round()
    assert sent(c) == [("POST", "job", names()["linux/arm64"])]
    show(c, succeeded("linux/amd64"), running("linux/arm64"))
    c.clock.advance(70)
    c.reconcile()
    assert c.conditions()["Ready"][2].endswith("linux/arm64 (job " + names()["linux/arm64"] +
                                               ", attempt 1) running; linux/amd64 built")
    sent(c)
    show(c, succeeded("linux/amd64"), succeeded("linux/arm64"))
    c.reconcile()
    assert sent(c) == [("GET", "persistentvolumeclaims"), ("PATCH", "status", "Succeeded"),
                       ("POST", "event", "Normal", "Succeeded")]
    status = c.build["status"]
    assert c.conditions()["Ready"] == ("True", "Succeeded", "built 2 platforms as c:boot/app-{arch}.cpio.gz: "
                                                            "linux/amd64 10 bytes, linux/arm64 20 bytes")
    assert [(o["architecture"], o["path"], o["sha256"], o["size"], o["claimUID"]) for o in status["outputs"]] == [
        ("amd64", "boot/app-amd64.cpio.gz", "1" * 64, 10, "claim-1"),
        ("arm64", "boot/app-arm64.cpio.gz", "2" * 64, 20, "claim-1")]
    assert status["output"] == {"claimName": "c", "path": "boot/app-{arch}.cpio.gz", "claimUID": "claim-1",
                                "compression": "gzip", "imageDigest": DIGEST, "platforms": "linux/amd64,linux/arm64"}
    assert (status["jobName"], status["startTime"], status["completionTime"], status["attempts"]) == (
        listed(), T0, DONE, 2)
    c.show()
    assert c.reconcile() is None and sent(c) == []  # recorded: nothing read, nothing written
    c.clock.advance(3600)
    c.show(jobs=[], pods=[])  # their TTL took the Jobs: what was built stands
    c.reconcile()
    c.reconciler.admission.round()
    assert sent(c) == []  # confirmed present already: no claim read, no Job


def test_a_failed_platform_fails_the_build_naming_it_and_the_others_jobs_are_deleted() -> None:
    failed = platform_job("linux/arm64", condition("Failed", "PodFailurePolicy", at=DONE), failed=1)
    pod = platform_pod("linux/arm64", "Failed", {"terminated": {"exitCode": 4, "message": json.dumps(
        {"error": "layer digest mismatch", "reason": "InvalidImage"})}})
    settings = Settings("builder:1", 2, limits=buildjob.Limits(ttl_seconds=600))
    c = Cluster(several(), jobs=[running("linux/amd64")[0], failed], pods=[running("linux/amd64")[1], pod],
                settings=settings)
    c.clock.advance(70)
    c.reconcile()
    assert sent(c) == [("DELETE", names()["linux/amd64"], "Background"), ("POST", "event", "Normal", "Superseded"),
                       ("PATCH", "status", "InvalidImage"), ("POST", "event", "Warning", "InvalidImage")]
    assert c.conditions()["Ready"] == ("False", "InvalidImage", "linux/arm64: layer digest mismatch")
    assert c.conditions()["Stalled"][:2] == ("True", "InvalidImage")
    assert (c.build["status"]["jobName"], c.build["status"]["completionTime"]) == (listed(), DONE)
    c.show(jobs=[failed], pods=[pod])  # the watch shows the other gone
    c.reconcile()
    c.reconciler.admission.round()
    assert sent(c) == []  # the failure stands: nothing offered
    c.show(jobs=[], pods=[])  # the failed Job deleted by someone before its TTL: the build is retried
    c.reconcile()
    c.reconciler.admission.round()
    assert sent(c) == [("POST", "job", names()["linux/amd64"]), ("POST", "job", names()["linux/arm64"])]


def test_a_failure_stands_once_the_failed_job_s_ttl_removed_it() -> None:
    c = Cluster(several(status={"observedGeneration": 1, "imageDigest": DIGEST, "shortDigest": "d" * 12,
                                "jobName": listed(), "completionTime": T0, "conditions": [
                                    {**condition("Ready", "InvalidImage", "linux/arm64: boom"), "status": "False"},
                                    condition("Stalled", "InvalidImage", "linux/arm64: boom")]}),
                settings=Settings("builder:1", 2, limits=buildjob.Limits(ttl_seconds=600)))
    c.clock.advance(600)
    c.reconcile()
    c.reconciler.admission.round()
    assert sent(c) == []


def test_an_oci_build_pushes_the_index_of_its_platforms_artifacts_once_all_are_built() -> None:
    c = Cluster(several(ARTIFACTS))
    calls: list = []

    def push_index(target, entries, annotations, options):
        calls.append((str(target), entries, annotations))
        if len(calls) == 1:
            raise RegistryError("reg.example: 503 Service Unavailable")
        return INDEX

    c.reconciler.platforms.push_index = push_index
    show(c, succeeded("linux/amd64", ARTIFACTS), succeeded("linux/arm64", ARTIFACTS))
    c.clock.advance(70)
    c.reconcile()
    assert sent(c) == [("PATCH", "status", "Building"), ("POST", "event", "Normal", "Building")]
    assert c.conditions()["Ready"][2] == "built 2 platforms; pushing their index to reg.example/out:v1"
    assert not calls  # off the pass: the registry answers in a thread of its own
    c.registry.run()
    assert calls == [("reg.example/out:v1", [({"os": "linux", "architecture": "amd64"}, "sha256:" + "3" * 64),
                                             ({"os": "linux", "architecture": "arm64"}, "sha256:" + "4" * 64)],
                      {"org.opencontainers.image.base.name": c.build["spec"]["image"],
                       "org.opencontainers.image.base.digest": DIGEST})]
    assert c.queued == [KEY]
    c.show()
    assert c.reconcile() == 4.0  # tried again after the backoff
    note = ("cannot push the index of 2 platforms: reg.example: 503 Service Unavailable; next attempt in 4s "
            "(1 failed in a row)")
    assert c.conditions() == {"Ready": ("False", "ImagePullFailed", note), "Reconciling": ("True", "Building", note)}
    c.show()
    sent(c)
    assert c.reconcile() == 4.0 and sent(c) == [] and not c.registry.pending  # not before its time
    c.clock.advance(4)
    c.reconcile()
    c.registry.run()
    c.show()
    c.reconcile()
    status = c.build["status"]
    assert c.conditions()["Ready"] == ("True", "Succeeded", f"built 2 platforms as reg.example/out@{INDEX}: "
                                                            "linux/amd64 10 bytes, linux/arm64 20 bytes")
    assert status["output"] == {"reference": f"reg.example/out@{INDEX}", "digest": INDEX, "tag": "v1",
                                "compression": "gzip", "imageDigest": DIGEST, "platforms": "linux/amd64,linux/arm64"}
    assert [(o["architecture"], o["reference"], o["digest"]) for o in status["outputs"]] == [
        ("amd64", "reg.example/out@sha256:" + "3" * 64, "sha256:" + "3" * 64),
        ("arm64", "reg.example/out@sha256:" + "4" * 64, "sha256:" + "4" * 64)]
    c.show()
    sent(c)
    assert c.reconcile() is None and sent(c) == [] and len(calls) == 2  # pushed once it worked


def test_an_index_the_registry_refuses_for_good_is_stalled() -> None:
    c = Cluster(several(ARTIFACTS))
    c.reconciler.platforms.push_index = lambda *_: (_ for _ in ()).throw(
        InvalidImageError("reg.example/out@sha256:33: not an initramfs artifact"))
    show(c, succeeded("linux/amd64", ARTIFACTS), succeeded("linux/arm64", ARTIFACTS))
    c.clock.advance(70)
    c.reconcile()
    c.registry.run()
    c.show()
    c.reconcile()
    assert c.conditions()["Stalled"][:2] == ("True", "InvalidImage")
    assert "not an initramfs artifact" in c.conditions()["Ready"][2]


def test_a_rejected_platform_job_is_said_and_retried() -> None:
    c = Cluster(several(), settings=Settings("builder:1", 2, retry=SETTINGS.retry, stall_after=2))

    def create(request):
        if request.body["metadata"]["annotations"][buildjob.PLATFORM] == "linux/arm64":
            raise Status(403, "exceeded quota: q")
        return {**request.body, "metadata": {**request.body["metadata"], "uid": "job-new"}}

    c.kube.route("POST", JOBS_PATH, create)
    c.reconcile()
    c.reconciler.admission.round()
    assert sent(c) == [("POST", "job", names()["linux/amd64"]), ("POST", "job", names()["linux/arm64"])]
    show(c, running("linux/amd64"))
    assert c.reconcile() == 4.0
    assert c.conditions()["Ready"][:2] == ("False", "JobRejected")
    assert names()["linux/arm64"] in c.conditions()["Ready"][2]


def test_a_refresh_waits_while_a_platform_s_job_runs() -> None:
    tag = "reg.example/app:1"
    b = several(image=tag, refreshInterval="1m",
                status={"observedGeneration": 1, "imageDigest": DIGEST, "resolvedTime": T0, "jobName": listed()})
    c = Cluster(b)
    c.registry.digests[tag] = DIGEST
    done, pod = succeeded("linux/amd64")
    show(c, (done, pod), running("linux/arm64"))
    c.clock.advance(3600)
    c.reconcile()
    assert not c.registry.pending  # not while building
    show(c, (done, pod), succeeded("linux/arm64"))
    c.reconcile()
    c.registry.run()
    assert c.registry.asked == [tag]


def test_platforms_take_slots_in_turn_with_other_namespaces_builds() -> None:
    """Fairness is unchanged: a build of several platforms is one build in its namespace's turn."""
    def candidate(ns: str, name: str, created: str, platform: str | None = None, order: int = 0) -> Candidate:
        return Candidate(ns, name, f"{ns}/{name}", 1, created, f"{name}-{platform}", dict, platform, order)

    wide = [candidate("a", "wide", "1", p, i) for i, p in enumerate(["linux/amd64", "linux/arm64", "linux/s390x"])]
    other = candidate("b", "one", "2")
    picked, turns = take_turns([*reversed(wide), other], deque(), 3)
    assert [(c.name, c.platform) for c in picked] == [("wide", "linux/amd64"), ("one", None), ("wide", "linux/arm64")]
    assert list(turns) == ["a"]


def test_a_suspended_build_follows_its_running_platform_job_and_offers_none_until_resumed() -> None:
    b = several(suspend=True, status={"observedGeneration": 1, "imageDigest": DIGEST, "shortDigest": "d" * 12})
    c = Cluster(b, settings=Settings("builder:1", 2))
    show(c, running("linux/amd64"))
    c.reconcile()
    c.reconciler.admission.round()
    assert sent(c) == [("PATCH", "status", "Building"), ("POST", "event", "Normal", "Building")]
    assert "linux/arm64" not in c.conditions()["Ready"][2]  # not offered: it waits for the resume
    show(c, succeeded("linux/amd64"))
    c.clock.advance(70)
    c.reconcile()
    c.reconciler.admission.round()
    assert sent(c) == [("PATCH", "status", "Suspended"), ("POST", "event", "Normal", "Suspended")]
    c.build["spec"].pop("suspend")
    c.build["metadata"]["generation"] = 2
    c.show()
    c.reconcile()  # Resumed
    c.show()
    c.reconcile()
    c.reconciler.admission.round()
    assert [r for r in sent(c) if r[:2] == ("POST", "job")] == [("POST", "job", names()["linux/arm64"])]


def test_an_index_whose_push_secret_went_missing_is_stalled_and_tried_again_later() -> None:
    """The Jobs pushed with the Secret; it is gone by the time the index is due: said, and tried again, so
    applying it again heals the build."""
    output = {"oci": {**ARTIFACTS["oci"], "pushSecret": {"name": "push"}}}
    c = Cluster(several(output))
    show(c, succeeded("linux/amd64", output), succeeded("linux/arm64", output))
    c.clock.advance(70)
    assert c.reconcile() == 4.0
    assert sent(c)[-2:] == [("PATCH", "status", "InvalidSpec"), ("POST", "event", "Warning", "InvalidSpec")]
    assert c.conditions()["Stalled"][2].startswith("secret push") and not c.registry.pending
    c.kube.route("GET", "/api/v1/namespaces/ns/secrets/push", {"metadata": {"name": "push"}, "type": "x", "data": {
        ".dockerconfigjson": "eyJhdXRocyI6IHt9fQ=="}})
    c.reconciler.platforms.push_index = lambda *_: INDEX
    c.clock.advance(4)
    c.show()
    c.reconcile()
    c.registry.run()
    c.show()
    c.reconcile()
    assert c.conditions()["Ready"][:2] == ("True", "Succeeded") and c.build["status"]["output"]["digest"] == INDEX
