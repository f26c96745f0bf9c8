"""The delivery agent against a real API server and a real registry: what lands on the host's disk.

The InitramfsBuild's status is written here the way the operator writes it after a build, and its
InitramfsRelease with the operator's own code (the operator and the agent meet only through the release);
the end-to-end path, with the operator building and the agent running as the chart's DaemonSet on the
real node, is test_delivery.py.
"""

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest

from fixtures.kube import Cluster, wait_until
from fixtures.registry import FaultProxy, unique_repo
from initramfs_operator.delivery.agent import Agent, Pulls, report_name
from initramfs_operator.delivery.store import OWNER, Verified
from initramfs_operator.delivery.tenancy import Tenancy
from initramfs_operator.kube import api, client, crd
from initramfs_operator.kube.release import Releases
from initramfs_operator.oci.registry import push

CPIO_GZ = "application/vnd.initramfs.v1.cpio+gzip"


class Host:
    """One VM host: a Node object with labels, an agent process-equivalent, and its delivery root."""

    def __init__(self, kube: Cluster, root: Path, labels: dict[str, str], **agent_options):
        self.kube, self.root = kube, root
        self.name = f"vm-host-{uuid.uuid4().hex[:6]}"
        self.core = kubernetes.client.CoreV1Api(kube.api_client())
        self.core.create_node({"metadata": {"name": self.name, "labels": labels}})
        transport = client.HttpxTransport(client.from_kubeconfig(kube.kubeconfig))
        self.agent = Agent(transport, self.name, str(root), **agent_options)
        self.thread = threading.Thread(target=self.agent.run, daemon=True)
        self.thread.start()

    def relabel(self, labels: dict[str, str | None]) -> None:
        self.core.patch_node(self.name, {"metadata": {"labels": labels}})

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(10)
        self.core.delete_node(self.name)


@pytest.fixture
def host(kube: Cluster, tmp_path: Path) -> Iterator[Host]:
    (tmp_path / "root").mkdir()
    h = Host(kube, tmp_path / "root", {"vm-host": "true"})
    yield h
    h.stop()


def pushed(registry, repo: str, data: bytes, tmp_path: Path) -> dict:
    """An initramfs artifact in the registry, and the status.output the operator would write for it."""
    path = tmp_path / f"{hashlib.sha256(data).hexdigest()[:8]}.cpio.gz"
    path.write_bytes(data)
    digest = push.push_artifact(str(path), registry.ref(repo, "initramfs"), media_type=CPIO_GZ, annotations={},
                                subject=None, options=registry.options())
    return {"reference": f"{registry.host}/{repo}@{digest}", "digest": digest, "compression": "gzip",
            "sha256": hashlib.sha256(data).hexdigest(), "sha512": hashlib.sha512(data).hexdigest(),
            "size": len(data)}


class Builds:
    """Builds, and their releases as the operator writes them (release.py, after every change of a build:
    with no index to compare with, every write is applied, and an unchanged release stays unchanged)."""

    def __init__(self, kube: Cluster, namespace: str, registry_host: str, publish: bool = True):
        self.custom = kubernetes.client.CustomObjectsApi(kube.api_client())
        self.namespace, self.registry_host = namespace, registry_host
        # publish False: the operator runs, and writes the releases itself.
        self.releases = Releases(api.Kube(client.HttpxTransport(client.from_kubeconfig(kube.kubeconfig)))) \
            if publish else None

    def publish(self, build: dict) -> dict:
        if self.releases is not None:
            self.releases.sync(self.namespace, build["metadata"]["name"], build)
        return build

    def create(self, name: str, delivery: dict, **spec) -> dict:
        return self.publish(self.custom.create_namespaced_custom_object(
            crd.GROUP, crd.VERSION, self.namespace, crd.PLURAL, {
                "apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": name},
                "spec": {"image": f"{self.registry_host}/src/app:1", "registry": {"insecure": True},
                         "output": {"oci": {"repository": f"{self.registry_host}/out/{name}", "tag": "v"}},
                         "delivery": delivery, **spec}}))

    def annotate(self, name: str, annotations: dict) -> None:
        self.publish(self.custom.patch_namespaced_custom_object(crd.GROUP, crd.VERSION, self.namespace, crd.PLURAL,
                                                                name, {"metadata": {"annotations": annotations}}))

    def patch_spec(self, name: str, spec: dict) -> dict:
        return self.publish(self.custom.patch_namespaced_custom_object(crd.GROUP, crd.VERSION, self.namespace,
                                                                       crd.PLURAL, name, {"spec": spec}))

    def built(self, name: str, output: dict) -> None:
        self.patch_status(name, {"output": output})

    def patch_status(self, name: str, status: dict) -> None:
        self.publish(self.custom.patch_namespaced_custom_object_status(crd.GROUP, crd.VERSION, self.namespace,
                                                                       crd.PLURAL, name, {"status": status}))

    def delete(self, name: str) -> None:
        """The build, and its release as the garbage collector deletes it (here at once, unless the cluster's
        garbage collector, which runs too, was first)."""
        self.custom.delete_namespaced_custom_object(crd.GROUP, crd.VERSION, self.namespace, crd.PLURAL, name)
        if self.releases is not None:
            try:
                self.custom.delete_namespaced_custom_object(crd.GROUP, crd.VERSION, self.namespace,
                                                            crd.RELEASE_PLURAL, name)
            except kubernetes.client.ApiException as e:
                if e.status != 404:
                    raise

    def release(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(crd.GROUP, crd.VERSION, self.namespace, crd.RELEASE_PLURAL,
                                                        name)

    def report(self, name: str, node: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(crd.GROUP, crd.VERSION, self.namespace,
                                                            crd.DELIVERY_PLURAL, report_name(name, node))
        except kubernetes.client.ApiException as e:
            if e.status == 404:
                return None
            raise


def ready_with(builds: Builds, name: str, node: str, output: dict):
    def check():
        report = builds.report(name, node)
        status = (report or {}).get("status") or {}
        return report if status.get("phase") == "Ready" and status.get("digest") == f"sha256:{output['sha256']}" \
            else None
    return check


def refused(builds: Builds, name: str, node: str, reason: str):
    def check():
        status = (builds.report(name, node) or {}).get("status") or {}
        return status if status.get("phase") == "Failed" and status.get("reason") == reason else None
    return check


def test_delivers_verifies_rolls_forward_and_prunes(kube, namespace, registry, host, tmp_path):
    builds = Builds(kube, namespace, registry.host)
    repo = unique_repo("deliver")
    builds.create("app", {"nodeSelector": {"matchLabels": {"vm-host": "true"}}, "keep": 2})
    first = pushed(registry, repo, os.urandom(300_000), tmp_path)
    builds.built("app", first)
    report = wait_until(ready_with(builds, "app", host.name, first), timeout=60, what="first delivery")
    directory = host.root / namespace / "app"
    current = directory / "current"
    assert os.readlink(current) == f"{first['sha256']}.cpio.gz"
    data = current.read_bytes()
    assert hashlib.sha256(data).hexdigest() == first["sha256"] and hashlib.sha512(data).hexdigest() == first["sha512"]
    assert report["status"]["path"] == str(current)
    assert report["metadata"]["ownerReferences"][0]["kind"] == crd.KIND

    # A rebuild rolls forward; the previous version stays for a rollback, older ones go.
    second = pushed(registry, repo, os.urandom(200_000), tmp_path)
    builds.built("app", second)
    wait_until(ready_with(builds, "app", host.name, second), timeout=60, what="second delivery")
    assert os.readlink(current) == f"{second['sha256']}.cpio.gz"
    third = pushed(registry, repo, os.urandom(100_000), tmp_path)
    builds.built("app", third)
    wait_until(ready_with(builds, "app", host.name, third), timeout=60, what="third delivery")
    assert sorted(os.listdir(directory)) == sorted([OWNER, "current", f"{third['sha256']}.cpio.gz",
                                                    f"{second['sha256']}.cpio.gz", f"{third['sha256']}.sha512",
                                                    f"{second['sha256']}.sha512"])
    assert (directory / f"{third['sha256']}.sha512").read_text() == third["sha512"] + "\n"


def test_unrelated_events_do_not_reach_the_agent(kube, namespace, registry, host, tmp_path):
    """The operator's status writes and annotation edits change the build, not its release: no agent hears
    of them (its release keeps its resourceVersion, though written again after each), and the delivered file
    is not read. A change of what the node should hold (here `keep`) looks at it again, by identity."""
    builds = Builds(kube, namespace, registry.host)
    builds.create("app", {"nodeSelector": {"matchLabels": {"vm-host": "true"}}})
    output = pushed(registry, unique_repo("deliver"), os.urandom(1 << 20), tmp_path)
    builds.built("app", output)
    wait_until(ready_with(builds, "app", host.name, output), timeout=60, what="delivery")
    hashed, version = host.agent.verified.bytes_hashed, builds.release("app")["metadata"]["resourceVersion"]
    for i in range(10):  # 20 edits of the build, as the operator's summary writes and a user's edits make them
        builds.annotate("app", {"example.com/edit": str(i)})
        builds.patch_status("app", {"delivery": {"desired": 1, "ready": 1, "failed": 0, "nodes": f"1/{i + 1}"}})
    assert builds.release("app")["metadata"]["resourceVersion"] == version
    # A change the node must act on, after the others: its report shows it was handled.
    builds.patch_spec("app", {"delivery": {"keep": 2}})
    generation = builds.release("app")["metadata"]["generation"]
    wait_until(lambda: (builds.report("app", host.name) or {}).get("status", {}).get("observedReleaseGeneration")
               == generation, timeout=30, what="the keep change handled")
    assert host.agent.verified.bytes_hashed - hashed <= output["size"]  # at most one read of the file
    print(f"bytes hashed for 20 unrelated edits and 1 keep change: {host.agent.verified.bytes_hashed - hashed}")


def test_a_file_changed_on_disk_is_found_and_replaced(kube, namespace, registry, tmp_path):
    (tmp_path / "root").mkdir()
    host = Host(kube, tmp_path / "root", {"vm-host": "true"}, verified=Verified(max_age=2.0))  # re-verified every ~2s
    try:
        builds = Builds(kube, namespace, registry.host)
        builds.create("app", {"nodeSelector": {"matchLabels": {"vm-host": "true"}}})
        data = os.urandom(100_000)
        output = pushed(registry, unique_repo("deliver"), data, tmp_path)
        builds.built("app", output)
        wait_until(ready_with(builds, "app", host.name, output), timeout=60, what="delivery")
        version = host.root / namespace / "app" / f"{output['sha256']}.cpio.gz"
        damaged = bytes([data[0] ^ 0xFF]) + data[1:]  # same size, other bytes, a new mtime: no event at all
        with open(version, "r+b") as f:
            f.write(damaged[:1])
        wait_until(lambda: version.read_bytes() == data, timeout=30, what="the damaged file replaced")
        assert os.readlink(host.root / namespace / "app" / "current") == version.name
    finally:
        host.stop()


def test_a_mismatch_is_refused_and_current_stays(kube, namespace, registry, host, tmp_path):
    builds = Builds(kube, namespace, registry.host)
    repo = unique_repo("deliver")
    builds.create("app", {"nodeSelector": {}})
    good = pushed(registry, repo, os.urandom(50_000), tmp_path)
    builds.built("app", good)
    wait_until(ready_with(builds, "app", host.name, good), timeout=60, what="first delivery")
    # The status claims a sha512 the registry's bytes do not have (a tampered blob looks the same).
    bad = {**pushed(registry, repo, os.urandom(50_000), tmp_path), "sha512": hashlib.sha512(b"other").hexdigest()}
    builds.built("app", bad)

    def failed():
        status = (builds.report("app", host.name) or {}).get("status") or {}
        return status if status.get("phase") == "Failed" else None
    status = wait_until(failed, timeout=60, what="a refused delivery")
    assert "sha512 mismatch" in status["message"] and "current is unchanged" in status["message"]
    assert status["digest"] == f"sha256:{good['sha256']}"
    directory = host.root / namespace / "app"
    assert os.readlink(directory / "current") == f"{good['sha256']}.cpio.gz"
    assert not [n for n in os.listdir(directory) if n.endswith(".tmp") or n.startswith(bad["sha256"])]


def test_registry_down_then_up_is_retried(kube, namespace, registry, host, tmp_path):
    proxy = FaultProxy(registry)
    try:
        builds = Builds(kube, namespace, proxy.host)
        repo = unique_repo("deliver")
        builds.create("app", {"nodeSelector": {"matchLabels": {"vm-host": "true"}}})
        output = pushed(registry, repo, os.urandom(80_000), tmp_path)
        # Every blob GET fails for a while: more than one attempt's worth of retries.
        fault = proxy.inject("GET", f"/v2/{repo}/blobs/", "status", times=None, status=503)
        builds.built("app", {**output, "reference": output["reference"].replace(registry.host, proxy.host)})

        def failed():
            status = (builds.report("app", host.name) or {}).get("status") or {}
            return status if status.get("phase") == "Failed" else None
        status = wait_until(failed, timeout=90, what="a failed attempt")
        assert "retrying in" in status["message"] and status["attempts"] >= 1
        fault.times = 0  # the registry is back
        wait_until(ready_with(builds, "app", host.name, output), timeout=60, what="delivery after the outage")
        assert (host.root / namespace / "app/current").read_bytes() == \
            (tmp_path / f"{output['sha256'][:8]}.cpio.gz").read_bytes()
    finally:
        proxy.close()


@pytest.mark.parametrize("policy", ["Retain", "Delete"])
def test_a_node_leaving_the_selector_is_counted_out(kube, namespace, registry, host, tmp_path, policy):
    builds = Builds(kube, namespace, registry.host)
    builds.create("app", {"nodeSelector": {"matchLabels": {"vm-host": "true"}}, "reclaimPolicy": policy})
    output = pushed(registry, unique_repo("deliver"), os.urandom(10_000), tmp_path)
    builds.built("app", output)
    wait_until(ready_with(builds, "app", host.name, output), timeout=60, what="delivery")
    host.relabel({"vm-host": None})
    wait_until(lambda: builds.report("app", host.name) is None, timeout=30, what="the report to go")
    directory = host.root / namespace / "app"
    if policy == "Retain":
        assert os.readlink(directory / "current") == f"{output['sha256']}.cpio.gz"
    else:
        assert os.listdir(directory) == []


def test_a_stalled_registry_holds_up_only_its_own_builds(kube, namespace, registry, tmp_path):
    """A registry that sends a blob's headers and then nothing: the builds it serves fail after the agent's
    bounded timeouts and are retried; a build from another registry is delivered meanwhile, at once."""
    (tmp_path / "root").mkdir()
    proxy = FaultProxy(registry)
    # 10 s without a byte, two attempts: the stalled delivery fails after about 20 s.
    host = Host(kube, tmp_path / "root", {"vm-host": "true"}, pulls=Pulls(read=10.0, retries=1))
    try:
        builds, stalled_builds = Builds(kube, namespace, registry.host), Builds(kube, namespace, proxy.host)
        selector = {"nodeSelector": {"matchLabels": {"vm-host": "true"}}}
        slow_repo = unique_repo("stalled")
        slow = pushed(registry, slow_repo, os.urandom(100_000), tmp_path)
        stall = proxy.inject("GET", f"/v2/{slow_repo}/blobs/", "stall", times=None)
        stalled_builds.create("slow", selector)
        builds.built("slow", {**slow, "reference": slow["reference"].replace(registry.host, proxy.host)})
        wait_until(lambda: "pulling" in ((builds.report("slow", host.name) or {}).get("status") or {})
                   .get("message", ""), timeout=30, what="the stalled pull to start")

        fast = pushed(registry, unique_repo("deliver"), os.urandom(100_000), tmp_path)
        builds.create("fast", selector)
        started = time.monotonic()
        builds.built("fast", fast)
        wait_until(ready_with(builds, "fast", host.name, fast), timeout=8, what="the other registry's build")
        print(f"delivered beside the stalled pull in {time.monotonic() - started:.1f}s")
        assert builds.report("slow", host.name)["status"]["phase"] == "Pending"  # still stalled, not failed yet

        def failed():
            status = (builds.report("slow", host.name) or {}).get("status") or {}
            return status if status.get("phase") == "Failed" else None
        status = wait_until(failed, timeout=40, what="the stalled build to fail")
        print(f"stalled build failed after {time.monotonic() - started:.1f}s: {status['message']}")
        assert "ReadTimeout" in status["message"] and "gave up after 2 attempts" in status["message"]
        assert "retrying in" in status["message"] and not (host.root / namespace / "slow" / "current").exists()
        stall.times = 0  # the registry recovers: the retry delivers
        wait_until(ready_with(builds, "slow", host.name, slow), timeout=30, what="the retried delivery")
    finally:
        host.stop()
        proxy.close()


def test_a_second_build_claiming_a_directory_is_refused_and_the_first_untouched(kube, namespace, registry, host,
                                                                               tmp_path):
    builds = Builds(kube, namespace, registry.host)
    shared = {"nodeSelector": {"matchLabels": {"vm-host": "true"}}, "directory": "shared"}
    first_uid = builds.create("first", shared)["metadata"]["uid"]
    first = pushed(registry, unique_repo("deliver"), os.urandom(50_000), tmp_path)
    builds.built("first", first)
    wait_until(ready_with(builds, "first", host.name, first), timeout=60, what="the first build delivered")
    directory = host.root / namespace / "shared"
    held = sorted(os.listdir(directory))
    assert held == sorted([OWNER, "current", f"{first['sha256']}.cpio.gz", f"{first['sha256']}.sha512"])
    assert (directory / OWNER).read_text() == first_uid + "\n"

    # Later, with a policy that would empty the directory when it goes.
    builds.create("second", {**shared, "reclaimPolicy": "Delete"})
    builds.built("second", pushed(registry, unique_repo("deliver"), os.urandom(50_000), tmp_path))
    status = wait_until(refused(builds, "second", host.name, "DeliveryConflict"), timeout=60,
                        what="the second build refused")
    assert f"{namespace}/shared on this node belongs to build first" in status["message"]
    assert "digest" not in status  # what current holds is the first build's, not this one's
    assert sorted(os.listdir(directory)) == held and os.readlink(directory / "current") == f"{first['sha256']}.cpio.gz"
    assert (directory / f"{first['sha256']}.cpio.gz").read_bytes() == \
        (tmp_path / f"{first['sha256'][:8]}.cpio.gz").read_bytes()
    builds.delete("second")
    wait_until(lambda: builds.report("second", host.name) is None, timeout=30, what="the second build's report to go")
    assert sorted(os.listdir(directory)) == held and (directory / OWNER).read_text() == first_uid + "\n"

    # The first build deleted (its files retained): the directory goes to the next build claiming it.
    third_uid = builds.create("third", shared)["metadata"]["uid"]
    third = pushed(registry, unique_repo("deliver"), os.urandom(50_000), tmp_path)
    builds.built("third", third)
    wait_until(refused(builds, "third", host.name, "DeliveryConflict"), timeout=60, what="the third build refused")
    builds.delete("first")
    wait_until(ready_with(builds, "third", host.name, third), timeout=60, what="the third build delivered")
    assert (directory / OWNER).read_text() == third_uid + "\n"


def test_a_namespace_over_its_quota_gets_nothing_written(kube, namespace, registry, tmp_path):
    (tmp_path / "root").mkdir()
    host = Host(kube, tmp_path / "root", {"vm-host": "true"}, tenancy=Tenancy(quota=150_000))
    try:
        builds = Builds(kube, namespace, registry.host)
        selector = {"nodeSelector": {"matchLabels": {"vm-host": "true"}}}
        builds.create("fits", selector)
        fits = pushed(registry, unique_repo("deliver"), os.urandom(100_000), tmp_path)
        builds.built("fits", fits)
        wait_until(ready_with(builds, "fits", host.name, fits), timeout=60, what="the first build delivered")

        builds.create("too-much", selector)
        builds.built("too-much", pushed(registry, unique_repo("deliver"), os.urandom(100_000), tmp_path))
        status = wait_until(refused(builds, "too-much", host.name, "QuotaExceeded"), timeout=60,
                            what="the build over the quota refused")
        assert f"namespace {namespace} would hold 200000 bytes on this node, more than its quota of 150000" \
            in status["message"]
        assert not [n for n in os.listdir(host.root / namespace / "too-much") if n != OWNER]
        # A rebuild of the build that fits replaces its version (keep 1): it still fits.
        builds.patch_spec("fits", {"delivery": {"keep": 1}})
        smaller = pushed(registry, unique_repo("deliver"), os.urandom(90_000), tmp_path)
        builds.built("fits", smaller)
        wait_until(ready_with(builds, "fits", host.name, smaller), timeout=60, what="the rebuild delivered")
    finally:
        host.stop()


def platform_labels(selected: str, arch: str | None) -> dict[str, str]:
    return {"platform-test": selected, **({"kubernetes.io/os": "linux", "kubernetes.io/arch": arch} if arch else {})}


def test_each_host_takes_its_own_platforms_file(kube, namespace, registry, tmp_path):
    """A build of two platforms: an amd64 and an arm64 host each hold their own platform's file; a riscv64 host
    and one without platform labels pull and write nothing and say why, until a relabel makes one arm64."""
    hosts, selected = {}, uuid.uuid4().hex[:8]
    for arch in ("amd64", "arm64", "riscv64", None):
        (tmp_path / f"root-{arch}").mkdir()
        hosts[arch] = Host(kube, tmp_path / f"root-{arch}", platform_labels(selected, arch))
    try:
        builds = Builds(kube, namespace, registry.host)
        builds.create("app", {"nodeSelector": {"matchLabels": {"platform-test": selected}}},
                      platforms=["linux/amd64", "linux/arm64"])
        repo = unique_repo("platforms")
        files = {arch: pushed(registry, repo, os.urandom(60_000), tmp_path) for arch in ("amd64", "arm64")}
        index = "sha256:" + hashlib.sha256(b"the index").hexdigest()  # hosts never read the index itself
        builds.patch_status("app", {
            "output": {"reference": f"{registry.host}/{repo}@{index}", "digest": index, "tag": "v",
                       "platforms": "linux/amd64,linux/arm64"},
            "outputs": [{**files[arch], "platform": f"linux/{arch}", "os": "linux", "architecture": arch}
                        for arch in ("amd64", "arm64")]})
        for arch in ("amd64", "arm64"):
            wait_until(ready_with(builds, "app", hosts[arch].name, files[arch]), timeout=60, what=f"the {arch} host")
            data = (hosts[arch].root / namespace / "app" / "current").read_bytes()
            assert hashlib.sha256(data).hexdigest() == files[arch]["sha256"]
        riscv = wait_until(refused(builds, "app", hosts["riscv64"].name, "NoPlatform"), timeout=30,
                           what="the riscv64 host's NoPlatform")
        assert riscv["message"] == ("the build has no file for this node's platform linux/riscv64, only for "
                                    "linux/amd64, linux/arm64; nothing was pulled") and "digest" not in riscv
        bare = wait_until(refused(builds, "app", hosts[None].name, "NoPlatform"), timeout=30,
                          what="the unlabelled host's NoPlatform")
        assert bare["message"].startswith("this node has no kubernetes.io/os and no kubernetes.io/arch label")
        for arch in ("riscv64", None):
            # At most the directory's claim (tenancy.py), made while the release had no output yet: no version, no
            # current.
            directory = hosts[arch].root / namespace / "app"
            assert not directory.exists() or os.listdir(directory) == [OWNER]
            assert pulled_bytes(hosts[arch]) == 0
        # Relabelled (as after a reinstall on other hardware), the host takes that platform's file.
        hosts["riscv64"].relabel({"kubernetes.io/arch": "arm64"})
        wait_until(ready_with(builds, "app", hosts["riscv64"].name, files["arm64"]), timeout=60,
                   what="the relabelled host")
        assert (hosts["riscv64"].root / namespace / "app" / "current").read_bytes() == \
            (hosts["arm64"].root / namespace / "app" / "current").read_bytes()
    finally:
        for host in hosts.values():
            host.stop()


def test_a_one_platform_build_goes_to_hosts_of_its_platform(kube, namespace, registry, tmp_path):
    """A build of linux/arm64 alone: the arm64 host and a host without platform labels take its file; the amd64
    host, which could not boot it, pulls nothing and says why."""
    hosts, selected = {}, uuid.uuid4().hex[:8]
    for arch in ("amd64", "arm64", None):
        (tmp_path / f"root-{arch}").mkdir()
        hosts[arch] = Host(kube, tmp_path / f"root-{arch}", platform_labels(selected, arch))
    try:
        builds = Builds(kube, namespace, registry.host)
        builds.create("app", {"nodeSelector": {"matchLabels": {"platform-test": selected}}}, platform="linux/arm64")
        file = pushed(registry, unique_repo("platform"), os.urandom(60_000), tmp_path)
        builds.patch_status("app", {"output": {**file, "platform": "linux/arm64"},
                                    "outputs": [{**file, "platform": "linux/arm64", "os": "linux",
                                                 "architecture": "arm64"}]})
        for arch in ("arm64", None):
            wait_until(ready_with(builds, "app", hosts[arch].name, file), timeout=60, what=f"the {arch} host")
            data = (hosts[arch].root / namespace / "app" / "current").read_bytes()
            assert hashlib.sha256(data).hexdigest() == file["sha256"]
        amd64 = wait_until(refused(builds, "app", hosts["amd64"].name, "NoPlatform"), timeout=30,
                           what="the amd64 host's NoPlatform")
        assert amd64["message"] == ("the build has no file for this node's platform linux/amd64, only for "
                                    "linux/arm64; nothing was pulled") and "digest" not in amd64
        assert pulled_bytes(hosts["amd64"]) == 0
        directory = hosts["amd64"].root / namespace / "app"
        assert not directory.exists() or os.listdir(directory) == [OWNER]
    finally:
        for host in hosts.values():
            host.stop()


def pulled_bytes(host: Host) -> float:
    return host.agent.metrics.registry.get_sample_value("initramfs_delivery_pulled_bytes_total") or 0.0
