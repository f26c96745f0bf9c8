"""The operator end to end: a real `initramfs-operator` process (kopf) against the real control
plane, build pods run by the node agent with the real `initramfs-builder`, images served by a
real registry. Tests that cannot run a build keep their pods unschedulable or waiting for a volume.
"""

import base64
import hashlib
import json
import subprocess
import time

import httpx
import pytest

from fixtures.images import E, Layout
from fixtures.kube import wait_until
from fixtures.operator import Builds
from fixtures.registry import PASSWORD, USER, unique_repo
from fixtures.tools import need
from initramfs_operator.kube import buildjob

UNSCHEDULABLE = {"nodeSelector": {"initramfs.dev/test": "no-such-node"}}
PINNED = "registry.invalid/never/pulled@sha256:" + "0" * 64  # a digest needs no resolving
INIT = b"#!/bin/sh\necho booted\n"  # the image's own /init: the builder keeps it


@pytest.fixture
def builder_cli():
    """The real CLI the build pods run (the node agent executes it from PATH)."""
    subprocess.run([need("initramfs-builder"), "--help"], check=True, capture_output=True)


@pytest.fixture
def image(registry, tmp_path):
    """push(tag, content) pushes a one-layer image to a fresh repository; returns (reference, manifest digest)."""
    repo = unique_repo("operator")

    def push(tag: str = "v1", content: bytes = b"hello\n") -> tuple[str, str]:
        layout = Layout(tmp_path / f"layout-{tag}-{hashlib.sha256(content).hexdigest()[:8]}")
        desc = layout.image([[E("etc", "dir"), E("etc/hello", data=content), E("init", data=INIT, mode=0o755)]])
        layout.tag(desc, tag)
        return registry.push(layout.root, tag, repo), desc["digest"]

    return push


def pvc(builds, name: str) -> None:
    builds.core.create_namespaced_persistent_volume_claim(builds.namespace, {
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})


def docker_secret(builds, name: str, host: str, user: str, password: str) -> None:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    config = json.dumps({"auths": {host: {"auth": auth}}})
    builds.core.create_namespaced_secret(builds.namespace, {
        "metadata": {"name": name}, "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config}})


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def event_reasons(builds, name: str) -> list[str]:
    return [e.reason for e in sorted(builds.events(name), key=lambda e: e.metadata.creation_timestamp)]


# --- wiring, queueing and failure paths that need no build to run ------------------------------

def test_job_manifest_is_accepted_by_the_api_server(builds):
    spec = {"image": "registry.example.com/app:1", "output": {"pvc": {"claimName": "c", "path": "a.img"}},
            "inject": [{"path": "/etc/x", "mode": 0o755, "configMapKeyRef": {"name": "cm", "key": "k"}}],
            "init": {"configMapKeyRef": {"name": "cm", "key": "init"}}, "activeDeadlineSeconds": 60,
            "resources": {"limits": {"memory": "512Mi"}}, "tolerations": [{"operator": "Exists"}]}
    build = builds.create("dry", spec)
    manifest = buildjob.build_job(build, "sha256:" + "1" * 64, "builder:1", "dry-registry")
    created = builds.batch.create_namespaced_job(builds.namespace, manifest, dry_run="All")
    assert created.spec.template.spec.containers[0].security_context.read_only_root_filesystem
    assert created.spec.pod_failure_policy.rules[1].on_exit_codes.values == [2, 3, 4, 5]


def test_liveness_and_metrics_endpoints(start_operator):
    op = start_operator()
    assert httpx.get(f"http://127.0.0.1:{op.health_port}/healthz").status_code == 200
    text = op.metrics()
    for name, kind in (("initramfs_build_queue_depth", "gauge"), ("initramfs_build_duration_seconds", "histogram"),
                       ("initramfs_builds_total", "counter")):
        assert f"# TYPE {name} {kind}\n" in text
    assert 'initramfs_builds_total{result="Unauthorized"} 0.0' in text


def test_queue_limits_builds_and_frees_slots_in_order(builds, node_agent, start_operator):
    op = start_operator(max_concurrent=1)
    builds.create("first", {"image": PINNED, "output": {"pvc": {"claimName": "c", "path": "1.img"}}, **UNSCHEDULABLE})
    builds.wait_reason("first", "Building")
    builds.create("second", {"image": PINNED, "output": {"pvc": {"claimName": "c", "path": "2.img"}}, **UNSCHEDULABLE})
    queued = builds.wait_reason("second", "Queued")
    assert builds.condition("second")["message"] == "waiting for a build slot: all 1 are taken"
    assert builds.condition("second", "Progressing")["status"] == "True"
    assert queued["status"]["imageDigest"] == PINNED.split("@")[1] and not builds.jobs("second")
    wait_until(lambda: "initramfs_build_queue_depth 1.0" in op.metrics(), what="queue depth metric")

    builds.delete("first")
    builds.wait_reason("second", "Building", timeout=60)
    assert len(builds.jobs("second")) == 1
    assert event_reasons(builds, "second")[:2] == ["Queued", "Building"]


def test_serves_only_the_given_namespaces(builds, kube, start_operator):
    other = f"{builds.namespace}-other"
    builds.core.create_namespace({"metadata": {"name": other}})
    try:
        start_operator(INITRAMFS_WATCH_NAMESPACES=f"{builds.namespace}, {builds.namespace}-absent")
        spec = {"image": PINNED, "output": {"pvc": {"claimName": "c", "path": "x.img"}}, **UNSCHEDULABLE}
        elsewhere = Builds(kube, other)
        elsewhere.create("ignored", spec)
        builds.create("served", spec)
        builds.wait_reason("served", "Building")
        time.sleep(3)  # the ticker has passed over the served namespaces since
        assert "status" not in elsewhere.get("ignored") and not elsewhere.jobs()
    finally:
        builds.core.delete_namespace(other)


def test_deadline_exceeded(builds, node_agent, start_operator):
    start_operator()
    builds.create("slow", {"image": PINNED, "output": {"pvc": {"claimName": "c", "path": "x.img"}},
                           "activeDeadlineSeconds": 2, **UNSCHEDULABLE})
    done = builds.wait_reason("slow", "DeadlineExceeded", timeout=60)
    ready = builds.condition("slow")
    assert ready["status"] == "False" and "deadline" in ready["message"].lower()
    assert builds.condition("slow", "Progressing")["status"] == "False"
    job_name = done["status"]["jobName"]
    assert [j.metadata.name for j in builds.jobs("slow")] == [job_name]
    assert "DeadlineExceeded" in event_reasons(builds, "slow")

    # Deleting the failed Job is the way to retry: the same build starts again.
    builds.batch.delete_namespaced_job(job_name, builds.namespace, propagation_policy="Background")
    wait_until(lambda: builds.condition("slow")["reason"] == "Building", what="the retry")
    wait_until(lambda: [j.metadata.name for j in builds.jobs("slow")] == [job_name], what="the new job")


def test_restarted_operator_adopts_the_running_job(builds, node_agent, image, start_operator, builder_cli,
                                                   tmp_path):
    op = start_operator()
    ref, digest = image()
    # No storage behind the claim yet: the pod is bound but waits for its volume, the build is in flight.
    builds.create("crash", {"image": ref, "registry": {"insecure": True},
                            "output": {"pvc": {"claimName": "later", "path": "x.img"}}})
    job_name = builds.wait_reason("crash", "Building")["status"]["jobName"]
    wait_until(lambda: builds.core.list_namespaced_pod(builds.namespace, label_selector=f"job-name={job_name}").items)

    op.kill()
    start_operator()
    time.sleep(3)  # the new process has replayed every object and ticked at least once
    assert [j.metadata.name for j in builds.jobs("crash")] == [job_name]
    assert builds.condition("crash")["reason"] == "Building"

    node_agent.add_claim(builds.namespace, "later", tmp_path / "pv")
    status = builds.wait_reason("crash", "Succeeded")["status"]
    assert (status["jobName"], status["attempts"], status["imageDigest"]) == (job_name, 1, digest)
    assert status["output"]["sha256"] == sha256(tmp_path / "pv/x.img")
    assert [j.metadata.name for j in builds.jobs("crash")] == [job_name]


def test_a_job_created_before_status_was_written_is_adopted(builds, start_operator):
    # As if an operator created the Job and died before recording it: same name, no second Job.
    build = builds.create("orphan", {"image": PINNED, "output": {"pvc": {"claimName": "c", "path": "x.img"}},
                                     **UNSCHEDULABLE})
    manifest = buildjob.build_job(build, PINNED.split("@")[1], "builder:1", None)
    builds.batch.create_namespaced_job(builds.namespace, manifest)
    start_operator()
    status = builds.wait_reason("orphan", "Building")["status"]
    assert status["jobName"] == manifest["metadata"]["name"]
    assert [j.metadata.name for j in builds.jobs("orphan")] == [manifest["metadata"]["name"]]


def test_spec_edit_supersedes_the_running_build(builds, node_agent, start_operator):
    start_operator()
    builds.create("edit", {"image": PINNED, "output": {"pvc": {"claimName": "c", "path": "x.img"}}, **UNSCHEDULABLE})
    first = builds.wait_reason("edit", "Building")["status"]["jobName"]
    builds.patch_spec("edit", {"compression": {"format": "zstd"}})
    wait_until(lambda: builds.get("edit")["status"].get("observedGeneration") == 2, what="generation 2")
    second = builds.get("edit")["status"]["jobName"]
    assert second != first and second.split("-")[-2] == "2"
    wait_until(lambda: [j.metadata.name for j in builds.jobs("edit")] == [second], what="old job deleted")
    args = builds.batch.read_namespaced_job(second, builds.namespace).spec.template.spec.containers[0].args
    assert args[args.index("-c") + 1] == "zstd"
    assert "Superseded" in event_reasons(builds, "edit")


def test_deleting_the_build_garbage_collects_its_job_and_pods(builds, node_agent, start_operator):
    start_operator()
    builds.create("gone", {"image": PINNED, "output": {"pvc": {"claimName": "nowhere", "path": "x.img"}}})
    job_name = builds.wait_reason("gone", "Building")["status"]["jobName"]
    pods = lambda: builds.core.list_namespaced_pod(builds.namespace, label_selector=f"job-name={job_name}").items
    wait_until(pods, what="build pod")
    builds.delete("gone")
    wait_until(lambda: not builds.jobs(), what="job garbage-collected")
    wait_until(lambda: not pods(), what="pod garbage-collected")


# --- resolution failures (operator talks to a real registry) ------------------------------------

def test_bad_reference_is_invalid_spec(builds, start_operator):
    start_operator()
    builds.create("badref", {"image": "registry.example.com/Bad_Repo//x:1",
                             "output": {"pvc": {"claimName": "c", "path": "x.img"}}})
    builds.wait_reason("badref", "InvalidSpec", timeout=60)
    assert "invalid image reference" in builds.condition("badref")["message"]
    assert not builds.jobs("badref")


def test_missing_image_is_image_pull_failed(builds, registry, start_operator):
    start_operator()
    ref = registry.ref(unique_repo("missing"), "v1")
    builds.create("missing", {"image": ref, "registry": {"insecure": True},
                              "output": {"pvc": {"claimName": "c", "path": "x.img"}}})
    builds.wait_reason("missing", "ImagePullFailed", timeout=60)
    assert "not found" in builds.condition("missing")["message"]
    assert builds.condition("missing", "Progressing")["status"] == "False"
    assert event_reasons(builds, "missing") == ["ImagePullFailed"] and not builds.jobs("missing")


def test_unauthorized_reports_without_leaking_the_secret(builds, auth_registry, start_operator):
    start_operator()
    ref = auth_registry.ref(unique_repo("private"), "v1")
    wrong = "wrong-Pa55word-that-must-not-leak"
    docker_secret(builds, "creds", auth_registry.host, USER, wrong)
    builds.create("denied", {"image": ref, "registry": {"insecure": True}, "imagePullSecrets": [{"name": "creds"}],
                             "output": {"pvc": {"claimName": "c", "path": "x.img"}}})
    builds.wait_reason("denied", "Unauthorized", timeout=60)
    message = builds.condition("denied")["message"]
    assert "refused" in message and auth_registry.host in message
    texts = json.dumps(builds.get("denied")) + " ".join(e.message for e in builds.events("denied"))
    secret_forms = (wrong, base64.b64encode(f"{USER}:{wrong}".encode()).decode())
    assert not any(s in texts for s in secret_forms)


# --- builds that run the real CLI --------------------------------------------------------------

def test_builds_to_a_pvc(builds, node_agent, image, start_operator, builder_cli, tmp_path):
    op = start_operator()
    ref, digest = image()
    pvc(builds, "images")
    node_agent.add_claim(builds.namespace, "images", tmp_path / "pv")
    builds.create("app", {"image": ref, "registry": {"insecure": True},
                          "compression": {"format": "zstd", "level": 5},
                          "output": {"pvc": {"claimName": "images", "path": "boot/app.cpio.zst"}}})
    status = builds.wait_reason("app", "Succeeded")["status"]
    out = tmp_path / "pv/boot/app.cpio.zst"  # the directory is created on a fresh volume
    assert status["imageDigest"] == digest and status["shortDigest"] == digest[7:19]
    assert status["output"]["sha256"] == sha256(out) and status["output"]["size"] == out.stat().st_size
    assert status["output"]["sha512"] == hashlib.sha512(out.read_bytes()).hexdigest()
    assert status["output"]["path"] == "boot/app.cpio.zst" and status["output"]["compression"] == "zstd"
    assert status["output"]["claimUID"] == builds.core.read_namespaced_persistent_volume_claim(
        "images", builds.namespace).metadata.uid
    assert status["attempts"] == 1 and status["observedGeneration"] == 1
    assert status["startTime"] and status["completionTime"]
    ready = builds.condition("app")
    assert ready["status"] == "True" and ready["observedGeneration"] == 1
    assert event_reasons(builds, "app") == ["Building", "Succeeded"]
    wait_until(lambda: 'initramfs_builds_total{result="Succeeded"} 1.0' in op.metrics(), what="build counter")
    assert 'initramfs_build_duration_seconds_count{result="Succeeded"} 1.0' in op.metrics()

    # Same inputs, output still there: a restarted operator does not build again.
    op.stop()
    start_operator()
    time.sleep(3)
    assert len(builds.jobs("app")) == 1 and builds.get("app")["status"] == status


def test_pushes_to_a_registry_and_the_artifact_pulls_back(builds, node_agent, registry, image, start_operator,
                                                            builder_cli):
    start_operator()
    ref, digest = image()
    target = unique_repo("artifacts")
    builds.create("pushed", {"image": ref, "registry": {"insecure": True},
                             "output": {"oci": {"repository": f"{registry.host}/{target}", "tag": "boot"}}})
    status = builds.wait_reason("pushed", "Succeeded")["status"]
    with registry.client() as c:
        manifest = c.get(f"/v2/{target}/manifests/boot",
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert "sha256:" + hashlib.sha256(manifest.content).hexdigest() == status["output"]["digest"]
        layer = manifest.json()["layers"][0]
        blob = c.get(f"/v2/{target}/blobs/{layer['digest']}").content
    assert hashlib.sha256(blob).hexdigest() == status["output"]["sha256"] and len(blob) == status["output"]["size"]
    assert status["output"]["reference"] == f"{registry.host}/{target}@{status['output']['digest']}"
    assert status["imageDigest"] == digest


def test_private_registry_with_pull_and_push_secrets(builds, node_agent, auth_registry, start_operator,
                                                    builder_cli, tmp_path):
    start_operator()
    layout = Layout(tmp_path / "layout")
    layout.tag(layout.image([[E("etc", "dir"), E("etc/secret-app", data=b"x"), E("init", data=INIT, mode=0o755)]]),
               "v1")
    ref = auth_registry.push(layout.root, "v1", unique_repo("private"))
    docker_secret(builds, "pull", auth_registry.host, USER, PASSWORD)
    docker_secret(builds, "push", auth_registry.host, USER, PASSWORD)
    target = unique_repo("private-out")
    builds.create("private", {"image": ref, "registry": {"insecure": True}, "imagePullSecrets": [{"name": "pull"}],
                              "output": {"oci": {"repository": f"{auth_registry.host}/{target}", "tag": "v1",
                                                 "pushSecret": {"name": "push"}}}})
    status = builds.wait_reason("private", "Succeeded")["status"]
    merged = builds.core.read_namespaced_secret(buildjob.registry_secret_name(status["jobName"]), builds.namespace)
    assert merged.metadata.owner_references[0].name == status["jobName"]
    with auth_registry.client() as c:
        assert c.head(f"/v2/{target}/manifests/v1", headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json"}).headers["docker-content-digest"] == \
            status["output"]["digest"]


def test_push_refused_is_reported_from_the_termination_message(builds, node_agent, auth_registry, image,
                                                               start_operator, builder_cli):
    start_operator()
    ref, _ = image()
    builds.create("refused", {"image": ref, "registry": {"insecure": True}, "backoffLimit": 0,
                              "output": {"oci": {"repository": f"{auth_registry.host}/{unique_repo('x')}",
                                                 "tag": "v1"}}})
    status = builds.wait_reason("refused", "Unauthorized")["status"]
    assert status["attempts"] == 1 and "output" not in status
    assert auth_registry.host in builds.condition("refused")["message"]


def test_image_without_the_platform_is_invalid_image(builds, node_agent, registry, start_operator, builder_cli,
                                                      tmp_path):
    start_operator()
    layout = Layout(tmp_path / "layout")
    platforms = [layout.image([[E("init", data=INIT, mode=0o755)]], platform=("linux", arch, ""))
                 for arch in ("amd64", "arm64")]
    index = layout.tag(layout.index(platforms), "multi")
    ref = registry.push(layout.root, "multi", unique_repo("multi"))
    node_agent.add_claim(builds.namespace, "c", tmp_path / "pv")
    builds.create("arm", {"image": ref, "registry": {"insecure": True}, "platform": "linux/s390x",
                          "output": {"pvc": {"claimName": "c", "path": "x.img"}}})
    status = builds.wait_reason("arm", "InvalidImage")["status"]
    assert status["imageDigest"] == index["digest"]  # the tag resolves to the index; the pod finds no s390x in it
    assert "linux/amd64, linux/arm64" in builds.condition("arm")["message"]
    assert builds.get("arm")["status"]["attempts"] == 1  # not retried: a retry cannot fix it
    assert not list((tmp_path / "pv").iterdir())


def test_spec_edit_builds_the_new_generation(builds, node_agent, registry, image, start_operator, builder_cli,
                                             tmp_path):
    start_operator()
    ref, _ = image()
    node_agent.add_claim(builds.namespace, "images", tmp_path / "pv")
    builds.create("gen", {"image": ref, "registry": {"insecure": True},
                          "output": {"pvc": {"claimName": "images", "path": "a.cpio.gz"}}})
    first = builds.wait_reason("gen", "Succeeded")["status"]
    builds.patch_spec("gen", {"compression": {"format": "none"}, "output": {"pvc": {"path": "b.cpio"}}})
    second = wait_until(lambda: (s := builds.get("gen")["status"])["observedGeneration"] == 2
                        and builds.condition("gen")["reason"] == "Succeeded" and s, what="generation 2 built")
    assert second["jobName"] != first["jobName"]
    assert second["output"]["sha256"] == sha256(tmp_path / "pv/b.cpio") != first["output"]["sha256"]
    assert [j.metadata.name for j in builds.jobs("gen")] == [second["jobName"]]

    # To a registry instead: the status output describes the artifact only, nothing of the volume.
    repository = f"{registry.host}/{unique_repo('gen')}"
    builds.patch_spec("gen", {"output": {"pvc": None, "oci": {"repository": repository, "tag": "v3"}}})
    third = wait_until(lambda: (s := builds.get("gen")["status"])["observedGeneration"] == 3
                       and builds.condition("gen")["reason"] == "Succeeded" and s, what="generation 3 built")
    assert set(third["output"]) == {"reference", "digest", "sha256", "sha512", "size", "entries", "compression",
                                    "platform", "imageDigest"}
    assert third["output"]["reference"].startswith(f"{repository}@sha256:")


def test_moved_tag_is_rebuilt_after_refresh_interval(builds, node_agent, image, start_operator, builder_cli, tmp_path):
    start_operator()
    ref, first_digest = image("stable", b"one\n")
    node_agent.add_claim(builds.namespace, "images", tmp_path / "pv")
    builds.create("follow", {"image": ref, "registry": {"insecure": True}, "refreshInterval": "5s",
                             "output": {"pvc": {"claimName": "images", "path": "f.cpio.gz"}}})
    first = builds.wait_reason("follow", "Succeeded")["status"]
    assert first["imageDigest"] == first_digest
    time.sleep(6)
    assert builds.get("follow")["status"]["jobName"] == first["jobName"]  # same digest: nothing rebuilt

    _, second_digest = image("stable", b"two\n")
    second = wait_until(lambda: (s := builds.get("follow")["status"])["imageDigest"] == second_digest
                        and builds.condition("follow")["reason"] == "Succeeded" and s, timeout=60,
                        what="rebuild of the moved tag")
    assert second["jobName"] != first["jobName"] and second["observedGeneration"] == 1
    assert second["output"]["sha256"] == sha256(tmp_path / "pv/f.cpio.gz") != first["output"]["sha256"]


def test_fifty_builds_with_four_slots(builds, node_agent, image, start_operator, builder_cli, tmp_path):
    op = start_operator(max_concurrent=4)
    ref, _ = image()
    node_agent.add_claim(builds.namespace, "images", tmp_path / "pv")
    node_agent.reset_max_running()
    names = [f"many-{i:02d}" for i in range(50)]
    for name in names:
        builds.create(name, {"image": ref, "registry": {"insecure": True}, "compression": {"format": "none"},
                             "output": {"pvc": {"claimName": "images", "path": f"{name}.cpio"}}})
    for name in names:
        builds.wait_reason(name, "Succeeded", timeout=600)
    assert 2 <= node_agent.max_running <= 4
    assert len(list((tmp_path / "pv").glob("many-*.cpio"))) == 50
    assert any("Queued" in event_reasons(builds, n) for n in names)
    assert 'initramfs_builds_total{result="Succeeded"} 50.0' in op.metrics()
    wait_until(lambda: "initramfs_build_queue_depth 0.0" in op.metrics(), what="empty queue")
