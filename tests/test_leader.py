"""Two operator replicas (issue 11, item 7), installed by the chart with replicaCount 2: they elect a
leader on a coordination.k8s.io Lease and only the leader acts. SIGKILL the leader's process in the
middle of 50 builds: a new leader takes over within the lease duration, never more build pods run than
there are slots, no build gets a second Job, and every build ends Ready with its output on the volume.

The new leader is whichever process asks first once the Lease runs out: the standby replica, or the
killed one restarted by the kubelet in the same pod (a new process, so a new identity). Both are right;
what must never happen is two leaders, or none."""

import os
import signal
import threading
import time
from contextlib import suppress
from datetime import datetime
from pathlib import Path

import httpx
import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from fixtures.fleet import Fleet
from fixtures.helm import Helm, find
from fixtures.kube import wait_until
from fixtures.operator import METRICS_PORT, RELEASE, operator_values

SLOTS = 4
LEASE_SECONDS, RETRY_SECONDS = 15, 2  # the operator's defaults (command.py, controller.py)
BUILD_PODS = "app.kubernetes.io/managed-by=initramfs-operator"
OPERATOR_PODS = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"


class PodWatch(threading.Thread):
    """The build pods of a namespace that are not done yet, as a watch of them sees it: the most at once."""

    def __init__(self, core, namespace: str):
        super().__init__(daemon=True)
        self.core, self.namespace = core, namespace
        self.live: set[str] = set()
        self.most = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        listed = self.core.list_namespaced_pod(self.namespace, label_selector=BUILD_PODS)
        for pod in listed.items:
            self.see("ADDED", pod)
        version = listed.metadata.resource_version
        while not self.stopping.is_set():
            try:
                for event in kubernetes.watch.Watch().stream(self.core.list_namespaced_pod, self.namespace,
                                                             label_selector=BUILD_PODS, resource_version=version,
                                                             timeout_seconds=5):
                    version = event["object"].metadata.resource_version
                    self.see(event["type"], event["object"])
            except ApiException as error:
                if error.status != 410:
                    raise
                # Too old to resume (etcd compacted): list again. A pod that ended unseen meanwhile
                # is dropped by the new list; the most-at-once seen so far stands.
                listed = self.core.list_namespaced_pod(self.namespace, label_selector=BUILD_PODS)
                self.live = {p.metadata.uid for p in listed.items if p.status.phase not in ("Succeeded", "Failed")}
                self.most = max(self.most, len(self.live))
                version = listed.metadata.resource_version

    def see(self, kind: str, pod) -> None:
        if kind == "DELETED" or pod.status.phase in ("Succeeded", "Failed"):
            self.live.discard(pod.metadata.uid)
        else:
            self.live.add(pod.metadata.uid)
        self.most = max(self.most, len(self.live))


def sigkill(pod) -> None:
    """SIGKILL the processes of the pod's container, from the host (the node shares its PID namespace):
    no shutdown, no Lease given back. (Deleting a pod, even with grace period 0, sends SIGTERM first.)"""
    container = pod.status.container_statuses[0].container_id.split("://", 1)[1]
    killed = []
    for cgroup in Path("/proc").glob("[0-9]*/cgroup"):
        try:
            if container in cgroup.read_text():
                os.kill(int(cgroup.parent.name), signal.SIGKILL)
                killed.append(cgroup.parent.name)
        except (OSError, ProcessLookupError):
            continue  # gone meanwhile
    assert killed, f"no process of container {container}"


def seconds(t) -> float:
    return t.timestamp() if isinstance(t, datetime) else datetime.fromisoformat(t).timestamp()


@pytest.mark.timeout(1800)
def test_the_other_replica_takes_over_when_the_leader_is_killed(kube, k8s_bin, project_image, fleet: Fleet,
                                                                 tmp_path: Path):
    core = fleet.builds.core
    values = {**operator_values(project_image, fleet.namespace, SLOTS), "replicaCount": 2}
    manifest = Helm(k8s_bin, tmp_path / "helm", kube).install(RELEASE, fleet.namespace, values)  # --wait: 2 Ready
    assert find(manifest, "PodDisruptionBudget")[0]["spec"]["minAvailable"] == 1
    leases = kubernetes.client.CoordinationV1Api(core.api_client)
    lease_name = next(d["metadata"]["name"] for d in manifest if d["kind"] == "Deployment")

    def lease() -> dict:
        return leases.read_namespaced_lease(lease_name, fleet.namespace).spec.to_dict()

    def leads(pod) -> bool:
        text = httpx.get(f"http://{pod.status.pod_ip}:{METRICS_PORT}/metrics", timeout=5).text
        return "initramfs_operator_leader 1.0" in text

    pods = {p.metadata.name: p for p in core.list_namespaced_pod(fleet.namespace, label_selector=OPERATOR_PODS).items}
    assert len(pods) == 2
    holder = wait_until(lambda: lease()["holder_identity"], what="a leader")
    leader = pods[holder.rsplit("_", 1)[0]]  # identities are POD-NAME_RANDOM
    [standby] = [p for name, p in pods.items() if name != leader.metadata.name]
    assert leads(leader) and not leads(standby)

    watch = PodWatch(core, fleet.namespace)
    watch.start()
    names = [f"b-{i:02d}" for i in range(50)]
    for name in names:
        fleet.builds.create(name, fleet.spec(name))
    done = lambda: [n for n in names if fleet.builds.condition(n).get("reason") == "Succeeded"]  # noqa: E731
    wait_until(lambda: len(done()) >= 10, timeout=600, what="10 builds done", interval=1)

    sigkill(leader)
    killed = time.time()
    wait_until(lambda: lease()["holder_identity"] != holder, timeout=LEASE_SECONDS * 3, what="a new leader")
    taken = lease()
    assert taken["lease_transitions"] >= 1
    winner = taken["holder_identity"].rsplit("_", 1)[0]
    print(f"new leader {taken['holder_identity']} ({'standby' if winner == standby.metadata.name else 'restarted'})")
    [new_leader] = [p for p in core.list_namespaced_pod(fleet.namespace, label_selector=OPERATOR_PODS).items
                    if p.metadata.name == winner]
    # The Lease runs out LEASE_SECONDS after the last renewal (before the kill), and candidates look
    # every RETRY_SECONDS.
    takeover = seconds(taken["acquire_time"]) - killed
    print(f"takeover {takeover:.1f} s after the kill")
    assert takeover <= LEASE_SECONDS + 2 * RETRY_SECONDS + 1
    wait_until(lambda: leads(new_leader), what="the new leader's metrics")
    # One leader: the other replica does not lead (the killed one may not answer yet while it restarts).
    other = leader if winner == standby.metadata.name else standby
    with suppress(httpx.TransportError):
        assert not leads(other)

    for name in names:
        status = fleet.builds.wait_reason(name, "Succeeded", timeout=900)["status"]
        assert status["output"]["sha256"] == fleet.sha256(name)
    watch.stopping.set()
    assert watch.most <= SLOTS
    # One Job per build, ever: the new leader adopted what the old one had started.
    assert len(fleet.builds.jobs()) == len(names) and all(len(fleet.builds.jobs(n)) == 1 for n in names)
