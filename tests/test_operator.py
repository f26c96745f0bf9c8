"""The operator end to end, on a real node: the chart installed with `helm install`, the operator
running as its Deployment from the image built from the Dockerfile, build pods run by the kubelet
(containerd, runc) under the `restricted` Pod Security profile, images served by real registries
that the pods reach over the node's network. Tests act through the API, as a user would.
"""

import base64
import hashlib
import json
import threading
import time

import pytest

from fixtures.boot import boot
from fixtures.images import E, Layout, busybox_entries
from fixtures.kube import RESTRICTED, wait_until
from fixtures.operator import Builds
from fixtures.registry import PASSWORD, USER, FaultProxy, unique_repo
from initramfs_operator.kube import buildjob

UNSCHEDULABLE = {"nodeSelector": {"initramfs.dev/test": "no-such-node"}}
PINNED = "registry.invalid/never/pulled@sha256:" + "0" * 64  # a digest needs no resolving
NOWHERE = {"oci": {"repository": "registry.invalid/never/pushed", "tag": "v1"}}  # no volume to wait for
MARKER = "initramfs-operator-booted"
# The image's own /init, kept by the builder; the marker is split so that the script itself does not show it.
INIT = f'#!/bin/sh\nmount -t proc proc /proc\necho "{MARKER[:10]}""{MARKER[10:]} $(cat /etc/hello)"\npoweroff -f\n'
BUILDER_UID = 65532


@pytest.fixture
def image(node_registry, busybox_static, tmp_path):
    """push(tag, content) pushes a bootable busybox image with /etc/hello = content to a fresh repository
    of the node's registry; returns (reference, manifest digest)."""
    repo = unique_repo("operator")

    def push(tag: str = "v1", content: bytes = b"hello\n") -> tuple[str, str]:
        layout = Layout(tmp_path / f"layout-{tag}-{hashlib.sha256(content).hexdigest()[:8]}")
        desc = layout.image([busybox_entries(busybox_static, INIT, [E("etc/hello", data=content)])])
        layout.tag(desc, tag)
        return node_registry.push(layout.root, tag, repo), desc["digest"]

    return push


def pvc(builds, name: str) -> None:
    builds.core.create_namespaced_persistent_volume_claim(builds.namespace, {
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                 "resources": {"requests": {"storage": "1Gi"}}}})


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


def build_pods(builds, job_name: str) -> list:
    return builds.core.list_namespaced_pod(builds.namespace, label_selector=f"job-name={job_name}").items


def running_build_pods(builds) -> int:
    pods = builds.core.list_namespaced_pod(builds.namespace, label_selector=buildjob.SELECTOR).items
    return sum(p.status.phase == "Running" for p in pods)


def hold_blob_download(proxy: FaultProxy, repo: str, seconds: float) -> None:
    """The first blob GET of `repo` through `proxy` waits `seconds`: the build pod runs meanwhile
    (the operator only asks for manifests)."""
    proxy.inject("GET", f"/v2/{repo}/blobs/sha256:", "delay", seconds=seconds)


def proxied(proxy: FaultProxy, ref: str) -> str:
    return ref.replace(proxy.upstream.host, proxy.host, 1)


def repository(ref: str) -> str:
    """HOST:PORT/REPOSITORY:TAG -> REPOSITORY"""
    return ref.split("/", 1)[1].rsplit(":", 1)[0]


# --- the operator's own pod --------------------------------------------------------------------

def test_job_manifest_is_accepted_by_the_api_server(builds):
    spec = {"image": "registry.example.com/app:1", "output": {"pvc": {"claimName": "c", "path": "a.img"}},
            "inject": [{"path": "/etc/x", "mode": 0o755, "configMapKeyRef": {"name": "cm", "key": "k"}}],
            "init": {"configMapKeyRef": {"name": "cm", "key": "init"}}, "activeDeadlineSeconds": 60,
            "resources": {"limits": {"memory": "512Mi"}}, "tolerations": [{"operator": "Exists"}]}
    build = builds.create("dry", spec)
    manifest = buildjob.build_job(build, "sha256:" + "1" * 64, "builder:1", [("dry-registry", ".dockerconfigjson")])
    created = builds.batch.create_namespaced_job(builds.namespace, manifest, dry_run="All")
    assert created.spec.template.spec.containers[0].security_context.read_only_root_filesystem
    assert created.spec.pod_failure_policy.rules[1].on_exit_codes.values == [2, 3, 4]  # exit 5 is retried


def test_operator_runs_as_the_charts_deployment(builds, start_operator, project_image):
    op = start_operator()
    pod = op.ready_pod()
    assert pod.spec.service_account_name == op.deployment
    [container] = pod.spec.containers
    assert container.image == project_image and pod.status.container_statuses[0].image_id.endswith(
        project_image.split("@")[1])
    assert pod.spec.security_context.run_as_user == BUILDER_UID and pod.spec.security_context.run_as_non_root
    assert container.security_context.read_only_root_filesystem
    assert container.security_context.capabilities.drop == ["ALL"]
    assert op.healthz() == 200
    text = op.metrics()
    for name, kind in (("initramfs_build_queue_depth", "gauge"), ("initramfs_build_duration_seconds", "histogram"),
                       ("initramfs_builds_total", "counter")):
        assert f"# TYPE {name} {kind}\n" in text


# --- queueing, ownership and spec changes (no build runs: the pods cannot be scheduled) --------

def test_unschedulable_build_says_why(builds, start_operator):
    start_operator()
    builds.create("nowhere", {"image": PINNED, "output": NOWHERE, **UNSCHEDULABLE})
    built = builds.wait_reason("nowhere", "Unschedulable")
    message = builds.condition("nowhere")["message"]
    assert "node affinity/selector" in message and built["status"]["jobName"]
    # The scheduler keeps trying (a node may join): the build is not given up.
    assert builds.condition("nowhere", "Reconciling")["status"] == "True"
    assert not builds.condition("nowhere", "Stalled")


def test_queue_limits_builds_and_frees_slots_in_order(builds, start_operator):
    op = start_operator(max_concurrent=1)
    builds.create("first", {"image": PINNED, "output": NOWHERE, **UNSCHEDULABLE})
    builds.wait_reason("first", "Unschedulable")
    builds.create("second", {"image": PINNED, "output": NOWHERE, **UNSCHEDULABLE})
    queued = builds.wait_reason("second", "Queued")
    assert builds.condition("second")["message"] == "waiting for a build slot: all 1 are taken"
    assert builds.condition("second", "Reconciling")["status"] == "True"
    assert queued["status"]["imageDigest"] == PINNED.split("@")[1] and not builds.jobs("second")
    wait_until(lambda: "initramfs_build_queue_depth 1.0" in op.metrics(), what="queue depth metric")

    builds.delete("first")
    builds.wait_reason("second", "Unschedulable", timeout=60)
    assert len(builds.jobs("second")) == 1
    assert event_reasons(builds, "second")[0] == "Queued"


def test_serves_only_its_namespaces(builds, kube, start_operator):
    other = f"{builds.namespace}-other"
    builds.core.create_namespace({"metadata": {"name": other, "labels": RESTRICTED}})
    try:
        start_operator()  # installed with watchNamespaces: [its own namespace]
        spec = {"image": PINNED, "output": NOWHERE, **UNSCHEDULABLE}
        elsewhere = Builds(kube, other)
        elsewhere.create("ignored", spec)
        builds.create("served", spec)
        builds.wait_reason("served", "Unschedulable")
        time.sleep(3)
        untouched = elsewhere.get("ignored").get("status") or {}
        assert not untouched.get("conditions") and not untouched.get("jobName") and not elsewhere.jobs()
    finally:
        builds.core.delete_namespace(other)


def test_a_job_created_before_status_was_written_is_adopted(builds, start_operator, project_image):
    op = start_operator()
    op.scale(0)
    # As if the operator created the Job and died before recording it: same name, no second Job.
    build = builds.create("orphan", {"image": PINNED, "output": NOWHERE, **UNSCHEDULABLE})
    manifest = buildjob.build_job(build, PINNED.split("@")[1], project_image)
    builds.batch.create_namespaced_job(builds.namespace, manifest)
    op.scale(1)
    status = builds.wait_reason("orphan", "Unschedulable")["status"]
    assert status["jobName"] == manifest["metadata"]["name"]
    assert [j.metadata.name for j in builds.jobs("orphan")] == [manifest["metadata"]["name"]]


def test_spec_edit_supersedes_the_running_build(builds, start_operator):
    start_operator()
    builds.create("edit", {"image": PINNED, "output": NOWHERE, **UNSCHEDULABLE})
    first = builds.wait_reason("edit", "Unschedulable")["status"]["jobName"]
    builds.patch_spec("edit", {"compression": {"format": "zstd"}})
    wait_until(lambda: builds.get("edit")["status"].get("observedGeneration") == 2, what="generation 2")
    second = wait_until(lambda: (name := builds.get("edit")["status"].get("jobName")) != first and name,
                        what="the generation 2 job")
    assert second.split("-")[-2] == "2"
    wait_until(lambda: [j.metadata.name for j in builds.jobs("edit")] == [second], what="old job deleted")
    args = builds.batch.read_namespaced_job(second, builds.namespace).spec.template.spec.containers[0].args
    assert args[args.index("-c") + 1] == "zstd"
    assert "Superseded" in event_reasons(builds, "edit")


def test_a_suspended_build_starts_no_job_and_a_request_after_resume_is_handled(builds, kube, start_operator):
    """The README's one-liners: kubectl patch spec.suspend, kubectl annotate initramfs.dev/requested-at."""
    start_operator()
    builds.create("paused", {"image": PINNED, "output": NOWHERE, "suspend": True, **UNSCHEDULABLE})
    assert builds.wait_reason("paused", "Suspended")["status"]["observedGeneration"] == 1
    builds.patch_spec("paused", {"compression": {"format": "zstd"}})  # an edit while paused is not built
    wait_until(lambda: builds.get("paused")["status"]["observedGeneration"] == 2, what="generation 2 observed")
    assert builds.condition("paused")["reason"] == "Suspended" and builds.jobs("paused") == []

    kube.kubectl("patch", "-n", builds.namespace, "irb", "paused", "--type", "merge", "-p",
                 '{"spec":{"suspend":false}}')
    wait_until(lambda: builds.get("paused")["status"]["observedGeneration"] == 3, what="the resume observed")
    resumed = builds.wait_reason("paused", "Unschedulable")["status"]
    assert resumed["buildGeneration"] == 2 and [j.metadata.name for j in builds.jobs("paused")] == [resumed["jobName"]]
    kube.kubectl("annotate", "--overwrite", "-n", builds.namespace, "irb", "paused",
                 "initramfs.dev/requested-at=1700000000")
    wait_until(lambda: builds.get("paused")["status"].get("lastHandledRequestedAt") == "1700000000",
               what="the request handled")
    assert [j.metadata.name for j in builds.jobs("paused")] == [resumed["jobName"]]  # same digest and spec
    assert {"Suspended", "Resumed"} <= set(event_reasons(builds, "paused"))


def test_deleting_the_build_garbage_collects_its_job_and_pods(builds, start_operator):
    start_operator()
    builds.create("gone", {"image": PINNED, "output": NOWHERE, **UNSCHEDULABLE})
    job_name = builds.wait_reason("gone", "Unschedulable")["status"]["jobName"]
    wait_until(lambda: build_pods(builds, job_name), what="build pod")
    builds.delete("gone")
    wait_until(lambda: not builds.jobs(), what="job garbage-collected")
    wait_until(lambda: not build_pods(builds, job_name), what="pod garbage-collected")


# --- resolution failures: the operator's pod talks to the registries ---------------------------

def test_bad_reference_is_invalid_spec(builds, start_operator):
    start_operator()
    builds.create("badref", {"image": "registry.example.com/Bad_Repo//x:1",
                             "output": {"pvc": {"claimName": "c", "path": "x.img"}}})
    builds.wait_reason("badref", "InvalidSpec", timeout=60)
    assert "invalid image reference" in builds.condition("badref")["message"]
    assert not builds.jobs("badref")


def test_missing_image_is_image_pull_failed(builds, node_registry, start_operator):
    start_operator()
    ref = node_registry.ref(unique_repo("missing"), "v1")
    builds.create("missing", {"image": ref, "registry": {"insecure": True},
                              "output": {"pvc": {"claimName": "c", "path": "x.img"}}})
    builds.wait_reason("missing", "ImagePullFailed", timeout=60)
    assert "not found" in builds.condition("missing")["message"]
    # Retried with backoff: still Reconciling, and the message says when the next attempt is.
    assert "next attempt in" in builds.condition("missing", "Reconciling")["message"]
    assert event_reasons(builds, "missing") == ["ImagePullFailed"] and not builds.jobs("missing")


def test_unauthorized_reports_without_leaking_the_secret(builds, node_auth_registry, start_operator):
    start_operator()
    ref = node_auth_registry.ref(unique_repo("private"), "v1")
    wrong = "wrong-Pa55word-that-must-not-leak"
    docker_secret(builds, "creds", node_auth_registry.host, USER, wrong)
    builds.create("denied", {"image": ref, "registry": {"insecure": True}, "imagePullSecrets": [{"name": "creds"}],
                             "output": {"pvc": {"claimName": "c", "path": "x.img"}}})
    builds.wait_reason("denied", "Unauthorized", timeout=60)
    message = builds.condition("denied")["message"]
    assert "refused" in message and node_auth_registry.host in message
    texts = json.dumps(builds.get("denied")) + " ".join(e.message for e in builds.events("denied"))
    secret_forms = (wrong, base64.b64encode(f"{USER}:{wrong}".encode()).decode())
    assert not any(s in texts for s in secret_forms)


def test_missing_and_forbidden_references(builds, node_registry, image, start_operator):
    start_operator(rbac={"aggregateClusterRoles": False, "registrySecrets": False})
    ref, _ = image()
    output = {"pvc": {"claimName": "c", "path": "x.img"}}
    builds.create("no-configmap", {"image": ref, "registry": {"insecure": True, "caConfigMap": {"name": "absent"}},
                                   "output": output})
    builds.create("no-access", {"image": ref, "registry": {"insecure": True},
                                "imagePullSecrets": [{"name": "pull"}], "output": output})
    builds.wait_reason("no-configmap", "InvalidSpec")
    assert "configmap absent not found" in builds.condition("no-configmap")["message"]
    builds.wait_reason("no-access", "Forbidden")
    assert "rbac.registrySecrets" in builds.condition("no-access")["message"]
    assert not builds.jobs()


# --- builds that run on the node -----------------------------------------------------------------

def test_builds_to_a_pvc_that_a_pod_reads_and_qemu_boots(builds, node, image, volume, start_operator, kernel):
    op = start_operator()
    ref, digest = image(content=b"built on a real node\n")
    pv = volume("images")
    builds.create("app", {"image": ref, "registry": {"insecure": True},
                          "compression": {"format": "zstd", "level": 5},
                          "output": {"pvc": {"claimName": "images", "path": "boot/app.cpio.zst"}}})
    status = builds.wait_reason("app", "Succeeded")["status"]
    out = pv / "boot/app.cpio.zst"  # the directory is created on a fresh volume
    assert status["imageDigest"] == digest and status["shortDigest"] == digest[7:19]
    assert status["output"]["sha256"] == sha256(out) and status["output"]["size"] == out.stat().st_size
    assert status["output"]["sha512"] == hashlib.sha512(out.read_bytes()).hexdigest()
    assert status["output"]["path"] == "boot/app.cpio.zst" and status["output"]["compression"] == "zstd"
    assert status["output"]["claimUID"] == builds.core.read_namespaced_persistent_volume_claim(
        "images", builds.namespace).metadata.uid
    assert status["attempts"] == 1 and status["observedGeneration"] == 1
    assert status["startTime"] and status["completionTime"]
    # Written by the build pod's user into the volume the kubelet gave to its fsGroup.
    stat = out.stat()
    assert (stat.st_uid, stat.st_gid, stat.st_mode & 0o7777) == (BUILDER_UID, BUILDER_UID, 0o644)
    assert (pv.stat().st_gid, pv.stat().st_mode & 0o2070) == (BUILDER_UID, 0o2070)
    ready = builds.condition("app")
    assert ready["status"] == "True" and ready["observedGeneration"] == 1
    assert event_reasons(builds, "app") == ["Building", "Succeeded"]
    wait_until(lambda: 'initramfs_builds_total{result="Succeeded"} 1.0' in op.metrics(), what="build counter")
    assert 'initramfs_build_duration_seconds_count{result="Succeeded"} 1.0' in op.metrics()

    # Another pod mounting the claim reads the same bytes.
    assert consumer_sha256(builds, node, "images", "boot/app.cpio.zst") == status["output"]["sha256"]
    # And that very file boots.
    console = boot(kernel, out, MARKER)
    assert f"{MARKER} built on a real node" in console

    # Same inputs, output still there: a restarted operator does not build again.
    op.restart()
    time.sleep(3)
    assert len(builds.jobs("app")) == 1 and builds.get("app")["status"] == status


def consumer_sha256(builds, node, claim: str, path: str) -> str:
    name = "consumer"
    builds.core.create_namespaced_pod(builds.namespace, {"metadata": {"name": name}, "spec": {
        "restartPolicy": "Never", "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 1,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "read", "image": node.busybox,
                        "command": ["sh", "-c", f"sha256sum /data/{path} > /dev/termination-log"],
                        "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}}],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}]}})
    pod = wait_until(lambda: (p := builds.core.read_namespaced_pod(name, builds.namespace)).status.phase
                     in ("Succeeded", "Failed") and p, what="the consumer pod")
    terminated = pod.status.container_statuses[0].state.terminated
    assert pod.status.phase == "Succeeded", terminated.message
    return terminated.message.split()[0]


def test_pushes_to_a_registry_and_the_artifact_pulls_back(builds, node_registry, image, start_operator):
    start_operator()
    ref, digest = image()
    target = unique_repo("artifacts")
    builds.create("pushed", {"image": ref, "registry": {"insecure": True},
                             "output": {"oci": {"repository": f"{node_registry.host}/{target}", "tag": "boot"}}})
    status = builds.wait_reason("pushed", "Succeeded")["status"]
    with node_registry.client() as c:
        manifest = c.get(f"/v2/{target}/manifests/boot",
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert "sha256:" + hashlib.sha256(manifest.content).hexdigest() == status["output"]["digest"]
        layer = manifest.json()["layers"][0]
        blob = c.get(f"/v2/{target}/blobs/{layer['digest']}").content
    assert hashlib.sha256(blob).hexdigest() == status["output"]["sha256"] and len(blob) == status["output"]["size"]
    assert status["output"]["reference"] == f"{node_registry.host}/{target}@{status['output']['digest']}"
    assert status["imageDigest"] == digest


def test_private_registry_with_pull_and_push_secrets(builds, node_auth_registry, busybox_static, start_operator,
                                                    tmp_path):
    start_operator()
    layout = Layout(tmp_path / "layout")
    layout.tag(layout.image([busybox_entries(busybox_static, INIT, [E("etc/hello", data=b"secret app\n")])]), "v1")
    ref = node_auth_registry.push(layout.root, "v1", unique_repo("private"))
    docker_secret(builds, "pull", node_auth_registry.host, USER, PASSWORD)
    docker_secret(builds, "push", node_auth_registry.host, USER, PASSWORD)
    target = unique_repo("private-out")
    builds.create("private", {"image": ref, "registry": {"insecure": True}, "imagePullSecrets": [{"name": "pull"}],
                              "output": {"oci": {"repository": f"{node_auth_registry.host}/{target}", "tag": "v1",
                                                 "pushSecret": {"name": "push"}}}})
    status = builds.wait_reason("private", "Succeeded")["status"]
    # No copy of the credentials: the pod mounted the two Secrets themselves, push secret first.
    assert sorted(s.metadata.name for s in builds.core.list_namespaced_secret(builds.namespace).items
                  if s.type == "kubernetes.io/dockerconfigjson") == ["pull", "push"]
    pod = builds.batch.read_namespaced_job(status["jobName"], builds.namespace).spec.template.spec
    [registry] = [v for v in pod.volumes if v.name == "registry"]
    assert [s.secret.name for s in registry.projected.sources] == ["push", "pull"]
    with node_auth_registry.client() as c:
        assert c.head(f"/v2/{target}/manifests/v1", headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json"}).headers["docker-content-digest"] == \
            status["output"]["digest"]


def test_push_refused_is_reported_from_the_termination_message(builds, node_auth_registry, image, start_operator):
    start_operator()
    ref, _ = image()
    builds.create("refused", {"image": ref, "registry": {"insecure": True}, "backoffLimit": 0,
                              "output": {"oci": {"repository": f"{node_auth_registry.host}/{unique_repo('x')}",
                                                 "tag": "v1"}}})
    status = builds.wait_reason("refused", "Unauthorized")["status"]
    assert status["attempts"] == 1 and "output" not in status
    assert node_auth_registry.host in builds.condition("refused")["message"]


def test_image_without_the_platform_is_invalid_image(builds, node_registry, volume, start_operator, tmp_path):
    start_operator()
    layout = Layout(tmp_path / "layout")
    platforms = [layout.image([[E("init", data=INIT.encode(), mode=0o755)]], platform=("linux", arch, ""))
                 for arch in ("amd64", "arm64")]
    index = layout.tag(layout.index(platforms), "multi")
    ref = node_registry.push(layout.root, "multi", unique_repo("multi"))
    pv = volume("c")
    builds.create("arm", {"image": ref, "registry": {"insecure": True}, "platform": "linux/s390x",
                          "output": {"pvc": {"claimName": "c", "path": "x.img"}}})
    status = builds.wait_reason("arm", "InvalidImage")["status"]
    assert status["imageDigest"] == index["digest"]  # the tag resolves to the index; the pod finds no s390x in it
    assert "linux/amd64, linux/arm64" in builds.condition("arm")["message"]
    assert builds.get("arm")["status"]["attempts"] == 1  # not retried: a retry cannot fix it
    assert not list(pv.iterdir())


def built_generation(build: dict, generation: int) -> dict | None:
    """The status, once it says `generation` was built: read from one GET (status and conditions of two GETs
    may straddle the build's end, pairing the new condition with the output of the generation before)."""
    status = build.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
    done = status.get("observedGeneration") == generation == ready.get("observedGeneration") \
        and ready.get("reason") == "Succeeded"
    return status if done else None


def test_spec_edit_builds_the_new_generation(builds, node_registry, image, volume, start_operator):
    start_operator()
    ref, _ = image()
    pv = volume("images")
    builds.create("gen", {"image": ref, "registry": {"insecure": True},
                          "output": {"pvc": {"claimName": "images", "path": "a.cpio.gz"}}})
    first = builds.wait_reason("gen", "Succeeded")["status"]
    builds.patch_spec("gen", {"compression": {"format": "none"}, "output": {"pvc": {"path": "b.cpio"}}})
    second = wait_until(lambda: built_generation(builds.get("gen"), 2), what="generation 2 built")
    assert second["jobName"] != first["jobName"]
    assert second["output"]["sha256"] == sha256(pv / "b.cpio") != first["output"]["sha256"]
    assert [j.metadata.name for j in builds.jobs("gen")] == [second["jobName"]]

    # To a registry instead: the status output describes the artifact only, nothing of the volume.
    repository = f"{node_registry.host}/{unique_repo('gen')}"
    builds.patch_spec("gen", {"output": {"pvc": None, "oci": {"repository": repository, "tag": "v3"}}})
    third = wait_until(lambda: built_generation(builds.get("gen"), 3), what="generation 3 built")
    assert set(third["output"]) == {"reference", "digest", "tag", "sha256", "sha512", "size", "entries",
                                    "compression", "platform", "imageDigest"}
    assert third["output"]["reference"].startswith(f"{repository}@sha256:")


def test_moved_tag_is_rebuilt_after_refresh_interval(builds, image, volume, start_operator):
    start_operator()
    ref, first_digest = image("stable", b"one\n")
    pv = volume("images")
    builds.create("follow", {"image": ref, "registry": {"insecure": True}, "refreshInterval": "5s",
                             "output": {"pvc": {"claimName": "images", "path": "f.cpio.gz"}}})
    first = builds.wait_reason("follow", "Succeeded")["status"]
    assert first["imageDigest"] == first_digest
    time.sleep(6)
    assert builds.get("follow")["status"]["jobName"] == first["jobName"]  # same digest: nothing rebuilt

    _, second_digest = image("stable", b"two\n")
    # Meanwhile the first output stays Ready; the rebuild is done when nothing is Reconciling any more.
    second = wait_until(lambda: (s := builds.get("follow")["status"])["imageDigest"] == second_digest
                        and builds.condition("follow")["reason"] == "Succeeded"
                        and not builds.condition("follow", "Reconciling") and s, timeout=60,
                        what="rebuild of the moved tag")
    assert second["jobName"] != first["jobName"] and second["observedGeneration"] == 1
    assert second["output"]["sha256"] == sha256(pv / "f.cpio.gz") != first["output"]["sha256"]


def test_operator_pod_deleted_mid_build_is_replaced_and_adopts_the_job(builds, image, volume, slow_registry,
                                                                      start_operator):
    op = start_operator()
    ref, digest = image()
    pv = volume("images")
    hold_blob_download(slow_registry, repository(ref), seconds=10)
    builds.create("crash", {"image": proxied(slow_registry, ref), "registry": {"insecure": True},
                            "output": {"pvc": {"claimName": "images", "path": "x.img"}}})
    job_name = wait_until(lambda: builds.get("crash").get("status", {}).get("jobName"), what="the build job")
    wait_until(lambda: running_build_pods(builds) and slow_registry.blob_gets(), what="the build pod to download")

    op.kill()  # the Deployment replaces the pod; the new operator finds the running Job
    assert [j.metadata.name for j in builds.jobs("crash")] == [job_name]
    assert builds.condition("crash", "Reconciling")["reason"] == "Building"

    status = builds.wait_reason("crash", "Succeeded")["status"]
    assert (status["jobName"], status["attempts"], status["imageDigest"]) == (job_name, 1, digest)
    assert status["output"]["sha256"] == sha256(pv / "x.img")
    assert [j.metadata.name for j in builds.jobs("crash")] == [job_name]


def test_deadline_is_enforced_on_a_running_build(builds, image, slow_registry, start_operator):
    start_operator()
    ref, _ = image()
    hold_blob_download(slow_registry, repository(ref), seconds=50)
    builds.create("slow", {"image": proxied(slow_registry, ref), "registry": {"insecure": True},
                           "activeDeadlineSeconds": 5, "output": {"oci": {
                               "repository": f"{slow_registry.upstream.host}/{unique_repo('never')}",
                               "tag": "v1"}}})
    wait_until(lambda: running_build_pods(builds), what="the build pod to run")
    done = builds.wait_reason("slow", "DeadlineExceeded", timeout=60)
    ready = builds.condition("slow")
    assert ready["status"] == "False" and "deadline" in ready["message"].lower()
    assert builds.condition("slow", "Stalled")["reason"] == "DeadlineExceeded"
    assert not builds.condition("slow", "Reconciling")
    job_name = done["status"]["jobName"]
    wait_until(lambda: not running_build_pods(builds), what="the build pod to be stopped")
    assert [j.metadata.name for j in builds.jobs("slow")] == [job_name]
    assert "DeadlineExceeded" in event_reasons(builds, "slow")

    # Deleting the failed Job is the way to retry: the same build starts again.
    builds.batch.delete_namespaced_job(job_name, builds.namespace, propagation_policy="Background")
    wait_until(lambda: builds.condition("slow", "Reconciling").get("reason") == "Building", what="the retry")
    wait_until(lambda: [j.metadata.name for j in builds.jobs("slow")] == [job_name], what="the new job")


def test_fifty_builds_with_four_slots(builds, image, volume, start_operator):
    op = start_operator(max_concurrent=4)
    ref, _ = image()
    pv = volume("images")
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            samples.append(running_build_pods(builds))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    names = [f"many-{i:02d}" for i in range(50)]
    try:
        for name in names:
            builds.create(name, {"image": ref, "registry": {"insecure": True}, "compression": {"format": "none"},
                                 "output": {"pvc": {"claimName": "images", "path": f"{name}.cpio"}}})
        for name in names:
            builds.wait_reason(name, "Succeeded", timeout=600)
    finally:
        done.set()
        sampler.join()
    assert 2 <= max(samples) <= 4, samples
    assert len(list(pv.glob("many-*.cpio"))) == 50
    assert any("Queued" in event_reasons(builds, n) for n in names)
    assert 'initramfs_builds_total{result="Succeeded"} 50.0' in op.metrics()
    wait_until(lambda: "initramfs_build_queue_depth 0.0" in op.metrics(), what="empty queue")


# --- failures only a real node shows ------------------------------------------------------------

def test_builder_image_that_cannot_be_pulled(builds, node_registry, image, start_operator):
    absent = f"{node_registry.host}/initramfs-operator@sha256:{'0' * 64}"
    start_operator(builderImage=absent)
    ref, _ = image()
    builds.create("nopull", {"image": ref, "registry": {"insecure": True},
                             "output": {"oci": {"repository": f"{node_registry.host}/{unique_repo('x')}",
                                                "tag": "v1"}}})
    builds.wait_reason("nopull", "BuilderImagePullFailed")
    message = builds.condition("nopull")["message"]
    assert absent in message or "ImagePullBackOff" in message or "ErrImagePull" in message
    assert builds.condition("nopull", "Reconciling")["status"] == "True"


def test_build_oom_killed_under_a_small_memory_limit(builds, node_registry, image, start_operator):
    start_operator()
    ref, _ = image()
    builds.create("small", {"image": ref, "registry": {"insecure": True}, "backoffLimit": 0,
                            "resources": {"limits": {"memory": "16Mi"}},
                            "output": {"oci": {"repository": f"{node_registry.host}/{unique_repo('x')}",
                                               "tag": "v1"}}})
    status = builds.wait_reason("small", "OOMKilled")["status"]
    assert "limits.memory" in builds.condition("small")["message"]
    assert builds.condition("small", "Stalled")["reason"] == "OOMKilled" and status["attempts"] == 1


def test_claim_that_is_never_bound(builds, image, start_operator):
    start_operator()
    ref, _ = image()
    pvc(builds, "unbacked")  # no PersistentVolume can ever bind it
    builds.create("unbound", {"image": ref, "registry": {"insecure": True},
                              "output": {"pvc": {"claimName": "unbacked", "path": "x.img"}}})
    builds.wait_reason("unbound", "VolumeFailed")
    assert "persistent volume" in builds.condition("unbound")["message"].lower()
    assert builds.condition("unbound", "Reconciling")["status"] == "True"


def test_volume_that_cannot_be_mounted(builds, image, volume, start_operator):
    start_operator()
    ref, _ = image()
    volume("gone").rmdir()  # the volume's directory vanished from the node
    builds.create("unmountable", {"image": ref, "registry": {"insecure": True},
                                  "output": {"pvc": {"claimName": "gone", "path": "x.img"}}})
    builds.wait_reason("unmountable", "VolumeFailed", timeout=90)
    assert "FailedMount" in builds.condition("unmountable")["message"]
