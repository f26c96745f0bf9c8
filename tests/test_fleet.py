"""Issue 11 on the real node, the operator installed by its chart: one registry that never answers
holds up only its own build; stuck builds say why, and none holds its slot forever; finished Jobs go
while their results stay; build pods mount the registry Secrets themselves, and the operator's RBAC
cannot create any."""

import base64
import contextlib
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fixtures.fleet import Fleet, push_tiny_image
from fixtures.images import busybox_entries
from fixtures.kube import wait_until
from fixtures.node import push_image
from fixtures.registry import PASSWORD, USER

NOWHERE = {"nodeSelector": {"initramfs.dev/test": "no-such-node"}}


def conditions_of(build: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (build.get("status") or {}).get("conditions") or []}


def wait_for(fleet: Fleet, name: str, reason: str, timeout: float = 120) -> dict:
    """The build once Ready has `reason` (whatever else happens meanwhile)."""
    def reached() -> dict | None:
        build = fleet.builds.get(name)
        return build if conditions_of(build).get("Ready", {}).get("reason") == reason else None
    return wait_until(reached, timeout=timeout, what=f"{name} to be {reason}", interval=0.5)


def warnings(fleet: Fleet, name: str) -> dict[str, str]:
    return {e.reason: e.message for e in fleet.builds.events(name) if e.type == "Warning"}


def seconds_of(timestamp) -> float:
    return timestamp.timestamp() if isinstance(timestamp, datetime) else datetime.fromisoformat(timestamp).timestamp()


# --- one bad registry (item 3) -----------------------------------------------------------------

@pytest.fixture
def silent_registry(cluster_network) -> Iterator[str]:
    """host:port on the host's end of the node's network that accepts connections and never says a word."""
    server = socket.create_server((cluster_network.host_ip, 0))
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"{cluster_network.host_ip}:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for connection in held:
        connection.close()
    server.close()


def test_a_registry_that_never_answers_holds_up_only_its_own_build(fleet: Fleet, silent_registry: str):
    op = fleet.operator(slots=2)
    fleet.builds.create("silent", {**fleet.spec("silent"), "image": f"{silent_registry}/never/answers:1"})
    names = [f"ok-{i}" for i in range(6)]
    for name in names:
        fleet.builds.create(name, fleet.spec(name))
    for name in names:
        status = fleet.builds.wait_reason(name, "Succeeded", timeout=300)["status"]
        assert status["output"]["sha256"] == fleet.sha256(name)
    wait_for(fleet, "silent", "ImagePullFailed")

    # The others were admitted while the silent registry's lookup hung: before its first failure.
    failed = [e for e in fleet.builds.events("silent") if e.reason == "ImagePullFailed"]
    assert failed and failed[0].type == "Warning"
    jobs = sorted(seconds_of(j.metadata.creation_timestamp) for j in fleet.builds.jobs())
    assert len(jobs) == len(names) and jobs[1] < seconds_of(failed[0].first_timestamp)
    assert not fleet.builds.jobs("silent")

    # It says why, and when it tries again: a backoff that grows, counted from the end of each attempt.
    pattern = r"next attempt in (\d+)s \((\d+) failed in a row\)"
    first = re.search(pattern, fleet.builds.condition("silent")["message"])
    assert first, fleet.builds.condition("silent")
    later = wait_until(lambda: (m := re.search(pattern, fleet.builds.condition("silent")["message"]))
                       and int(m[2]) > int(first[2]) and m, timeout=120, what="the next failed attempt")
    assert int(later[1]) > int(first[1])
    build = fleet.builds.get("silent")
    found = conditions_of(build)
    assert found["Ready"]["status"] == "False" and found["Ready"]["reason"] == "ImagePullFailed"
    assert silent_registry in found["Ready"]["message"] and "Stalled" not in found
    assert found["Reconciling"]["reason"] == "Resolving"  # still being retried: kstatus InProgress

    # Item 8: the fleet's gauges and counters, and the operator's API latency by verb.
    text = op.metrics()
    assert 'initramfs_builds_total{result="Succeeded"} 6.0' in text
    assert "initramfs_reconcile_errors_total 0.0" in text
    for gauge in ("initramfs_builds_running", "initramfs_build_queue_depth", "initramfs_operator_leader"):
        assert f"# TYPE {gauge} gauge\n" in text
    assert "initramfs_operator_leader 1.0" in text
    latency = {(s.labels["verb"], s.labels["code"]): s.value for family in text_string_to_metric_families(text)
               if family.name == "initramfs_api_request_duration_seconds" for s in family.samples
               if s.name.endswith("_count")}
    assert latency[("create", "201")] > 0 and latency[("patch", "200")] > 0


# --- stuck builds say why (item 5) ---------------------------------------------------------------

def assert_stuck(fleet: Fleet, name: str, reason: str, words: str) -> None:
    build = wait_for(fleet, name, reason, timeout=90)
    found = conditions_of(build)
    assert words in found["Ready"]["message"], found["Ready"]
    # Still in flight (the kubelet or scheduler keeps trying): InProgress for kstatus, until the deadline.
    assert found["Reconciling"]["reason"] == "Building" and "Stalled" not in found
    assert words in warnings(fleet, name).get(reason, ""), warnings(fleet, name)


def test_a_stuck_build_says_why_in_kubernetes_words(fleet: Fleet):
    fleet.operator(slots=4)
    fleet.builds.create("nowhere", fleet.spec("nowhere", **NOWHERE))
    claimless = fleet.spec("claimless")
    claimless["output"]["pvc"]["claimName"] = "absent"
    fleet.builds.create("claimless", claimless)
    # Nothing the operator reads: only the kubelet finds out, and says so in an Event.
    fleet.builds.create("initless", fleet.spec("initless", init={"configMapKeyRef": {"name": "absent-init",
                                                                                     "key": "init"}}))
    assert_stuck(fleet, "nowhere", "Unschedulable", "didn't match Pod's node affinity/selector")
    assert_stuck(fleet, "claimless", "VolumeFailed", 'persistentvolumeclaim "absent" not found')
    assert_stuck(fleet, "initless", "VolumeFailed", 'configmap "absent-init" not found')


@pytest.fixture
def root_builder(node_registry, busybox_static, tmp_path) -> str:
    """An image whose user is root: the restricted pods the operator makes cannot run it without an ID."""
    return push_image(node_registry, tmp_path / "root-builder", busybox_entries(busybox_static, None),
                      {"Entrypoint": ["/bin/sh"]}, "fleet/root-builder")


def test_a_build_pod_whose_image_runs_as_root_without_an_id_says_why(fleet: Fleet, root_builder: str):
    # As on a platform that assigns IDs itself (the chart's runAsUser: null), with an image that sets none.
    fleet.operator(builderImage=root_builder, runAsUser=None, runAsGroup=None, fsGroup=None)
    fleet.builds.create("rootly", fleet.spec("rootly"))
    assert_stuck(fleet, "rootly", "CreateContainerConfigError", "image will run as root")


def test_a_job_refused_by_quota_is_retried_with_backoff(fleet: Fleet):
    core = fleet.builds.core
    core.create_namespaced_resource_quota(fleet.namespace, {"metadata": {"name": "no-jobs"},
                                                            "spec": {"hard": {"count/jobs.batch": "0"}}})
    wait_until(lambda: (core.read_namespaced_resource_quota("no-jobs", fleet.namespace).status.hard or {}),
               what="the quota controller to count the namespace")
    fleet.operator()
    fleet.builds.create("refused", fleet.spec("refused"))
    found = conditions_of(wait_for(fleet, "refused", "JobRejected"))
    assert "exceeded quota: no-jobs" in found["Ready"]["message"] and "next attempt in" in found["Ready"]["message"]
    assert found["Reconciling"]["reason"] == "Queued" and "exceeded quota" in warnings(fleet, "refused")["JobRejected"]
    core.delete_namespaced_resource_quota("no-jobs", fleet.namespace)
    status = fleet.builds.wait_reason("refused", "Succeeded", timeout=180)["status"]
    assert status["output"]["sha256"] == fleet.sha256("refused")


def test_the_default_deadline_frees_the_slot_of_a_build_that_cannot_start(fleet: Fleet):
    fleet.operator(slots=1, buildDeadlineSeconds=15)
    fleet.builds.create("nowhere", fleet.spec("nowhere", **NOWHERE))
    wait_for(fleet, "nowhere", "Unschedulable")
    fleet.builds.create("next", fleet.spec("next"))
    wait_for(fleet, "next", "Queued")
    found = conditions_of(wait_for(fleet, "nowhere", "DeadlineExceeded", timeout=90))
    assert found["Stalled"]["reason"] == "DeadlineExceeded" and "Reconciling" not in found
    # What held it up is still said.
    assert "(it was Unschedulable: 0/1 nodes are available" in found["Ready"]["message"]
    job = fleet.builds.batch.read_namespaced_job(fleet.builds.get("nowhere")["status"]["jobName"], fleet.namespace)
    assert job.spec.active_deadline_seconds == 15
    fleet.builds.wait_reason("next", "Succeeded", timeout=180)


def test_finished_jobs_are_cleaned_up_and_their_results_stay(fleet: Fleet):
    fleet.operator(jobTTLSeconds=3)
    fleet.builds.create("good", fleet.spec("good"))
    fleet.builds.create("bad", fleet.spec("bad", platform="linux/s390x", backoffLimit=0))
    good = fleet.builds.wait_reason("good", "Succeeded", timeout=180)["status"]
    bad = fleet.builds.wait_reason("bad", "InvalidImage", timeout=180)["status"]
    wait_until(lambda: not fleet.builds.jobs(), timeout=60, what="the TTL controller to delete the Jobs")
    time.sleep(5)  # passes have seen the deletions
    # Neither built again nor retried: the status is the record.
    assert not fleet.builds.jobs()
    assert fleet.builds.get("good")["status"] == good and fleet.builds.get("bad")["status"] == bad
    assert good["output"]["sha256"] == fleet.sha256("good")


# --- registry credentials: mounted, never copied (item 6) --------------------------------------

def docker_secret(name: str, host: str, password: str) -> dict:
    config = json.dumps({"auths": {host: {"auth": base64.b64encode(f"{USER}:{password}".encode()).decode()}}})
    return {"metadata": {"name": name}, "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": config}}


def test_build_pods_mount_the_registry_secrets_and_the_operator_cannot_create_any(
        kube, fleet: Fleet, node_auth_registry, tmp_path: Path):
    op = fleet.operator()
    account = f"system:serviceaccount:{fleet.namespace}:{op.ready_pod().spec.service_account_name}"
    for verb in ("get", "create"):  # the Secrets a build names, by name; nothing else
        allowed = kube.kubectl("auth", "can-i", verb, "secrets", "-n", fleet.namespace, "--as", account,
                               check=False).stdout.strip()
        assert allowed == ("yes" if verb == "get" else "no"), verb
    core, host = fleet.builds.core, node_auth_registry.host
    source = push_tiny_image(node_auth_registry, tmp_path / "private", b"private\n")
    for name in ("pull", "push"):
        core.create_namespaced_secret(fleet.namespace, docker_secret(name, host, PASSWORD))
    target = f"{host}/fleet/out-{uuid.uuid4().hex[:6]}"
    fleet.builds.create("private", {"image": source, "registry": {"insecure": True},
                                    "imagePullSecrets": [{"name": "pull"}],
                                    "output": {"oci": {"repository": target, "tag": "v1",
                                                       "pushSecret": {"name": "push"}}}})
    status = fleet.builds.wait_reason("private", "Succeeded", timeout=180)["status"]
    with node_auth_registry.client() as c:
        pushed = c.head(f"/v2/{target.split('/', 1)[1]}/manifests/v1",
                        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert pushed.headers["docker-content-digest"] == status["output"]["digest"]
    # No copy: the namespace holds the two Secrets it had, and the pod mounted them, push secret first.
    secrets = [s.metadata.name for s in core.list_namespaced_secret(fleet.namespace).items
               if s.type != "helm.sh/release.v1"]  # the operator's release is in this namespace too
    assert sorted(secrets) == ["pull", "push"]
    pod = fleet.builds.batch.read_namespaced_job(status["jobName"], fleet.namespace).spec.template.spec
    [registry] = [v for v in pod.volumes if v.name == "registry"]
    assert [s.secret.name for s in registry.projected.sources] == ["push", "pull"]

    # A rotated Secret reaches the next build pod as it is now (here: a wrong password).
    core.replace_namespaced_secret("push", fleet.namespace, docker_secret("push", host, "rotated-wrongly"))
    fleet.builds.patch_spec("private", {"output": {"oci": {"tag": "v2"}}})
    refused = conditions_of(wait_for(fleet, "private", "Unauthorized", timeout=180))
    assert refused["Stalled"]["reason"] == "Unauthorized" and host in refused["Ready"]["message"]
    assert "rotated-wrongly" not in json.dumps(fleet.builds.get("private"))
