"""Delivery to VM hosts end to end, on the real node: the chart installed with `helm install` and
delivery.enabled into a namespace labelled `restricted` (as the README installs it), its agent
DaemonSet in the privileged namespace the chart creates for it, writing into a host directory the test
owns, the operator summing the agent's report into status.delivery; the file `current` points at is
the registry's artifact, has the status's hashes, and boots in qemu. The agent's probes pass, its
/metrics (read on the pod's IP) count the delivery, and the idle agent's memory is read from /proc.
A build of two platforms gives the real (amd64) node and an arm64 API-only node with an agent process
each its own file, and a riscv64 one nothing.
"""

import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fixtures.boot import boot
from fixtures.helm import Helm
from fixtures.images import E, Layout, busybox_entries
from fixtures.kube import RESTRICTED, Cluster, fresh_namespace, wait_until, write_kubeconfig
from fixtures.node import Node
from fixtures.operator import RELEASE, Builds, operator_values
from fixtures.registry import Registry, unique_repo
from test_delivery_agent import Host
from test_operator_platforms import MARKER as PLATFORM_MARKER
from test_operator_platforms import push_two_platforms

MARKER = "initramfs-delivered-booted"
# The marker is split so that the script itself does not show it on the console.
INIT = f'#!/bin/sh\nmount -t proc proc /proc\necho "{MARKER[:10]}""{MARKER[10:]} $(cat /etc/hello)"\npoweroff -f\n'
AGENT = "app.kubernetes.io/component=delivery-agent"
IDLE_RSS_LIMIT = 40 << 20


@pytest.fixture
def release_namespace(kube: Cluster, namespace: str) -> Iterator[str]:
    """Where the release goes: `restricted`, and warning of anything that is not, as the README installs it."""
    with fresh_namespace(kube, f"{namespace}-system", {**RESTRICTED, "pod-security.kubernetes.io/warn": "restricted"}
                         ) as name:
        yield name


def agent_namespace(release_namespace: str) -> str:
    """The chart's default: <release namespace>-delivery."""
    return f"{release_namespace}-delivery"


@pytest.fixture
def delivering_operator(kube: Cluster, crd: None, node: Node, project_image: str, namespace: str,
                        release_namespace: str, k8s_bin: Path, tmp_path: Path) -> Iterator[Path]:
    """The chart with delivery enabled, serving `namespace`, its agent writing under a host directory of
    the test's; yields that directory. Uninstalled afterwards (the chart's ClusterRoles are cluster-wide)."""
    host_root = tmp_path / "host-root"
    host_root.mkdir(mode=0o755)
    helm = Helm(k8s_bin, tmp_path / "helm", kube)
    values = {**operator_values(project_image, namespace, 2),
              "delivery": {"enabled": True, "hostRoot": str(host_root)}}
    try:
        helm.install(RELEASE, release_namespace, values)
        apps = kubernetes.client.AppsV1Api(kube.api_client())
        wait_until(lambda: (ds := apps.list_namespaced_daemon_set(agent_namespace(release_namespace),
                                                                  label_selector=AGENT).items)
                   and ds[0].status.number_ready == 1, timeout=120, what="the delivery agent pod Ready")
        yield host_root
    finally:
        for component, where in (("operator", release_namespace),
                                 ("delivery-agent", agent_namespace(release_namespace))):
            print(kube.kubectl("logs", "-n", where, "-l", f"app.kubernetes.io/component={component}",
                               "--tail=60", check=False).stdout)
        helm.uninstall(RELEASE, release_namespace)


@pytest.fixture
def node_label(kube: Cluster, node: Node) -> Iterator[Callable[[str | None], str]]:
    """label(value) sets a label unique to the test on the node (None removes it); removed afterwards."""
    key = f"initramfs.dev/delivery-test-{uuid.uuid4().hex[:8]}"
    core = kubernetes.client.CoreV1Api(kube.api_client())

    def label(value: str | None) -> str:
        core.patch_node(node.name, {"metadata": {"labels": {key: value}}})
        return key

    yield label
    label(None)


def push_image(node_registry: Registry, busybox_static: Path, root: Path, content: bytes) -> str:
    layout = Layout(root)
    layout.tag(layout.image([busybox_entries(busybox_static, INIT, [E("etc/hello", data=content)])]), "v1")
    return str(node_registry.push(layout.root, "v1", unique_repo("delivery")))


def reports(builds: Builds, name: str) -> list[dict[str, Any]]:
    """The InitramfsDelivery objects (one per node) that the agents wrote for build `name`."""
    items = builds.custom.list_namespaced_custom_object("initramfs.dev", "v1alpha1", builds.namespace,
                                                        "initramfsdeliveries")["items"]
    return [r for r in items if r["spec"]["buildName"] == name]


def agent_pod(kube: Cluster, release_namespace: str) -> kubernetes.client.V1Pod:
    core = kubernetes.client.CoreV1Api(kube.api_client())
    [pod] = core.list_namespaced_pod(agent_namespace(release_namespace), label_selector=AGENT).items
    return pod


def assert_least_privilege(pod: kubernetes.client.V1Pod, host_root: Path) -> None:
    """The agent's pod as the chart made it: no capability, read-only root, RuntimeDefault seccomp, no host
    volume but the delivery root."""
    [container] = pod.spec.containers
    assert container.security_context.read_only_root_filesystem
    assert container.security_context.capabilities.drop == ["ALL"] and not container.security_context.capabilities.add
    assert not container.security_context.allow_privilege_escalation
    assert pod.spec.security_context.seccomp_profile.type == "RuntimeDefault"
    assert [v.host_path.path for v in pod.spec.volumes if v.host_path] == [str(host_root)]


def scrape(pod: kubernetes.client.V1Pod) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The agent's /metrics, read on the pod's IP (the node does not forward to Service endpoints), parsed."""
    text = httpx.get(f"http://{pod.status.pod_ip}:8082/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def resident_bytes(pod: kubernetes.client.V1Pod) -> int:
    """VmRSS of the agent's process, found on this machine by the pod's UID in its cgroup path."""
    uid = pod.metadata.uid
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cgroup = Path(f"/proc/{pid}/cgroup").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:  # gone meanwhile
            continue
        if (uid in cgroup or uid.replace("-", "_") in cgroup) and b"initramfs-delivery-agent" in cmdline:
            found.append(int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) << 10)
    assert len(found) == 1, f"expected one agent process of pod {uid}, found {len(found)}"
    return found[0]


def test_delivers_to_the_selected_node_and_qemu_boots_current(
        builds: Builds, node: Node, node_registry: Registry, busybox_static: Path, delivering_operator: Path,
        node_label: Callable[[str | None], str], kube: Cluster, kernel: Path, tmp_path: Path) -> None:
    host_root = delivering_operator
    # The operator's namespace is restricted; the agent runs, ready, in the privileged one the chart made.
    core = kubernetes.client.CoreV1Api(kube.api_client())
    assert core.read_namespace(f"{builds.namespace}-system").metadata.labels[
        "pod-security.kubernetes.io/enforce"] == "restricted"
    pod = agent_pod(kube, f"{builds.namespace}-system")
    assert pod.status.phase == "Running" and all(c.ready for c in pod.status.container_statuses)
    assert_least_privilege(pod, host_root)
    idle = resident_bytes(pod)
    print(f"idle delivery agent: VmRSS {idle / (1 << 20):.1f} MiB")
    assert idle <= IDLE_RSS_LIMIT
    key = node_label("yes")
    ref = push_image(node_registry, busybox_static, tmp_path / "layout", b"delivered to the node\n")
    target = unique_repo("delivered")
    builds.create("vm", {"image": ref, "registry": {"insecure": True},
                         "output": {"oci": {"repository": f"{node_registry.host}/{target}", "tag": "boot"}},
                         "delivery": {"nodeSelector": {"matchLabels": {key: "yes"}}}})

    waited = kube.kubectl("wait", "-n", builds.namespace, "--for=condition=Delivered", "--timeout=240s",
                          "initramfsbuild/vm", check=False)
    status = builds.get("vm")["status"]
    assert waited.returncode == 0, f"{waited.stderr}\nstatus: {json.dumps(status, indent=1)}"
    assert status["delivery"] == {"desired": 1, "ready": 1, "failed": 0, "nodes": "1/1",
                                  "digest": f"sha256:{status['output']['sha256']}"}

    current = host_root / builds.namespace / "vm" / "current"
    assert current.is_symlink()
    delivered = current.resolve()
    assert delivered.parent == current.parent and delivered.name.startswith(status["output"]["sha256"])
    data = delivered.read_bytes()
    assert hashlib.sha256(data).hexdigest() == status["output"]["sha256"]
    assert hashlib.sha512(data).hexdigest() == status["output"]["sha512"]
    with node_registry.client() as c:
        manifest = c.get(f"/v2/{target}/manifests/{status['output']['digest']}",
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
        assert c.get(f"/v2/{target}/blobs/{manifest['layers'][0]['digest']}").content == data
    # What the agent acted on: the operator's release of the build, owned by it.
    release = builds.custom.get_namespaced_custom_object("initramfs.dev", "v1alpha1", builds.namespace,
                                                         "initramfsreleases", "vm")
    assert release["spec"]["output"]["sha512"] == status["output"]["sha512"]
    assert release["metadata"]["ownerReferences"][0]["uid"] == builds.get("vm")["metadata"]["uid"]
    [report] = reports(builds, "vm")
    assert report["spec"]["nodeName"] == node.name and report["status"]["phase"] == "Ready"
    assert report["status"]["path"] == str(current)
    assert "delivered to the node" in boot(kernel, current, MARKER)
    samples = scrape(pod)
    assert samples[("initramfs_deliveries_total", (("result", "Delivered"),))] == 1
    assert samples[("initramfs_delivery_pulled_bytes_total", ())] == len(data)
    assert samples[("initramfs_delivery_current", (("build", "vm"), ("digest", f"sha256:{status['output']['sha256']}"),
                                                   ("namespace", builds.namespace)))] == 1

    # The node leaves the selector: it stops counting and its report goes; the files stay (Retain).
    node_label("no")
    wait_until(lambda: (builds.get("vm")["status"].get("delivery") or {}).get("desired") == 0, timeout=60,
               what="status.delivery.desired 0")
    wait_until(lambda: not reports(builds, "vm"), timeout=60, what="the node's report to be deleted")
    after = builds.get("vm")["status"]
    assert after["delivery"] == {"desired": 0, "ready": 0, "failed": 0, "nodes": "0/0",
                                 "digest": f"sha256:{after['output']['sha256']}"}
    assert builds.condition("vm", "Delivered")["reason"] == "NoNodes"
    assert os.path.realpath(current) == str(delivered) and delivered.read_bytes() == data
    assert not [sample for sample in scrape(pod) if sample[0] == "initramfs_delivery_current"]


def test_two_platforms_deliver_each_host_its_own(
        builds: Builds, node: Node, node_registry: Registry, busybox_static: Path, busybox_arm64: Path,
        delivering_operator: Path, node_label: Callable[[str | None], str], kube: Cluster, kernel: Path,
        tmp_path: Path) -> None:
    """One build of linux/amd64 and linux/arm64 delivered to the real node (the kubelet labels it linux/amd64;
    the chart's agent), an arm64-labelled API-only node and a riscv64 one (each with an agent process): each of
    the first two holds its own platform's file, the riscv64 one reports NoPlatform, holds nothing and does not
    keep the build from Delivered."""
    host_root = delivering_operator
    key = node_label("yes")
    assert kubernetes.client.CoreV1Api(kube.api_client()).read_node(node.name).metadata.labels[
        "kubernetes.io/arch"] == "amd64"
    source, _ = push_two_platforms(node_registry, busybox_static, busybox_arm64, tmp_path)
    target = unique_repo("platforms-delivered")
    builds.create("both", {"image": source, "platforms": ["linux/amd64", "linux/arm64"],
                           "registry": {"insecure": True},
                           "output": {"oci": {"repository": f"{node_registry.host}/{target}", "tag": "boot"}},
                           "delivery": {"nodeSelector": {"matchLabels": {key: "yes"}}}})
    # The API-only nodes join once the build pod ran: none runs a kubelet, and the scheduler could pick one.
    assert len(builds.wait_reason("both", "Succeeded", timeout=240)["status"]["outputs"]) == 2
    hosts: dict[str, Host] = {}
    try:
        for arch in ("arm64", "riscv64"):
            (tmp_path / f"root-{arch}").mkdir()
            hosts[arch] = Host(kube, tmp_path / f"root-{arch}",
                               {key: "yes", "kubernetes.io/os": "linux", "kubernetes.io/arch": arch})

        def delivered() -> dict[str, Any] | None:
            status = builds.get("both")["status"]
            done = status.get("delivery") == {"desired": 2, "ready": 2, "failed": 0, "nodes": "2/2",
                                              "digest": status["output"]["digest"], "withoutPlatform": 1}
            return status if done and builds.condition("both", "Delivered").get("status") == "True" else None
        try:
            status = wait_until(delivered, timeout=180, what="Delivered 2/2, one node without a platform")
        finally:
            print(json.dumps(builds.get("both")["status"], indent=1))
        message = builds.condition("both", "Delivered")["message"]
        assert message.startswith(f"all 2 selected nodes hold their platform's file of {status['output']['digest']}")
        assert message.endswith("take nothing: linux/riscv64: 1")
        files = {o["architecture"]: o for o in status["outputs"]}
        for root, arch in ((host_root, "amd64"), (hosts["arm64"].root, "arm64")):
            data = (root / builds.namespace / "both" / "current").read_bytes()
            assert (hashlib.sha256(data).hexdigest(), hashlib.sha512(data).hexdigest(), len(data)) == \
                (files[arch]["sha256"], files[arch]["sha512"], files[arch]["size"]), arch
        [riscv] = [r for r in reports(builds, "both") if r["spec"]["nodeName"] == hosts["riscv64"].name]
        assert (riscv["status"]["phase"], riscv["status"]["reason"]) == ("Failed", "NoPlatform")
        assert "linux/riscv64, only for linux/amd64, linux/arm64" in riscv["status"]["message"]
        assert not (hosts["riscv64"].root / builds.namespace).exists()
        # The real node's file is the amd64 one: it boots on amd64.
        console = boot(kernel, host_root / builds.namespace / "both" / "current", f"{PLATFORM_MARKER} amd64")
        assert f"{PLATFORM_MARKER} amd64 x86_64" in console
    finally:
        for host in hosts.values():
            host.stop()


def probe_report(node_name: str, label: str | None = None) -> str:
    """An InitramfsDelivery naming a node (its label may name another)."""
    return yaml.safe_dump({"apiVersion": "initramfs.dev/v1alpha1", "kind": "InitramfsDelivery",
                           "metadata": {"name": f"probe.{node_name}",
                                        "labels": {"initramfs.dev/node": label or node_name}},
                           "spec": {"buildName": "probe", "buildUID": "probe-uid", "nodeName": node_name}})


def test_an_agent_writes_only_its_own_nodes_reports(builds: Builds, node: Node, delivering_operator: Path,
                                                    kube: Cluster, tmp_path: Path) -> None:
    """With a token bound to the agent's pod, as the kubelet's projected token is, the API server names the
    pod's node in the token's user info, and the chart's ValidatingAdmissionPolicy holds the agent to it."""
    agents = agent_namespace(f"{builds.namespace}-system")
    core = kubernetes.client.CoreV1Api(kube.api_client())
    [pod] = core.list_namespaced_pod(agents, label_selector=AGENT).items
    account = pod.spec.service_account_name
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"expirationSeconds": 600, "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                                                                     "name": pod.metadata.name,
                                                                     "uid": pod.metadata.uid}}}
    token = core.create_namespaced_service_account_token(account, agents, request).status.token
    agent = tmp_path / "agent.kubeconfig"
    write_kubeconfig(agent, kube.server, kube.ca_file, "agent", {"token": token}, builds.namespace)
    whoami = json.loads(kube.kubectl("auth", "whoami", "-o", "json", kubeconfig=agent).stdout)["status"]["userInfo"]
    print("the agent's token:", json.dumps(whoami))
    assert whoami["extra"]["authentication.kubernetes.io/node-name"] == [node.name]

    own = f"initramfsdelivery/probe.{node.name}"
    kube.kubectl("create", "-f", "-", kubeconfig=agent, input=probe_report(node.name))
    kube.kubectl("label", own, "example.com/edited=yes", kubeconfig=agent)
    refused = kube.kubectl("create", "-f", "-", kubeconfig=agent, input=probe_report("other-node"), check=False)
    assert refused.returncode != 0 and "(Forbidden)" in refused.stderr, refused.stderr
    assert f"the delivery agent of node {node.name} may write only that node's reports, not one of node " \
        "other-node" in refused.stderr, refused.stderr
    # Its own node in the label is not enough.
    assert kube.kubectl("create", "-f", "-", kubeconfig=agent, input=probe_report("other-node", label=node.name),
                        check=False).returncode != 0
    # Another node's report, as that node's agent (here the admin) wrote it: the agent may not delete it.
    kube.kubectl("create", "-n", builds.namespace, "-f", "-", input=probe_report("other-node"))
    refused = kube.kubectl("delete", "initramfsdelivery/probe.other-node", kubeconfig=agent, check=False)
    assert refused.returncode != 0 and "may write only that node's reports" in refused.stderr, refused.stderr
    # The same ServiceAccount's token bound to no pod names no node.
    unbound = kube.serviceaccount_kubeconfig(agents, account, tmp_path / "unbound.kubeconfig")
    refused = kube.kubectl("delete", own, "-n", builds.namespace, kubeconfig=unbound, check=False)
    assert refused.returncode != 0 and "the delivery agent's token names no node" in refused.stderr, refused.stderr
    kube.kubectl("delete", own, kubeconfig=agent)
