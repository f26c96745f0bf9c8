"""Waves, a halt, a resume and a pin with the operator process and real agents (issue 21, items 2 and 3).

The hosts are the benchmark's kind: API-only Node objects, each with a real `Agent` (its own client,
informers, version store, pulls from the test registry). The operator runs as its own process with
delivery on; the build is suspended, so it starts no build Job, and its `status.output` is written here as
the operator writes it after a build. Everything between (the release, the waves, the summary) is the
operator's.
"""

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fixtures.kube import Cluster, free_port, wait_until
from fixtures.registry import unique_repo
from test_delivery_agent import Builds, Host, pushed

REPO = Path(__file__).resolve().parent.parent
HOSTS = 5  # waves: canary n0 | n1 n2 | n3 n4


@pytest.fixture
def operator_process(kube: Cluster, namespace: str, tmp_path: Path) -> Iterator[Path]:
    """`initramfs-operator --delivery` serving the test's namespace; yields its log."""
    health = free_port()
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig), "INITRAMFS_DELIVERY": "true",
           "INITRAMFS_WATCH_NAMESPACES": namespace, "INITRAMFS_LEASE_NAMESPACE": namespace,
           "INITRAMFS_BUILDER_IMAGE": "registry.invalid/builder:unused", "INITRAMFS_METRICS_PORT": str(free_port()),
           "INITRAMFS_HEALTH_PORT": str(health), "PYTHONPATH": str(REPO / "operator")}
    log = tmp_path / "operator.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "initramfs_operator.kube.command"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)

    def healthy() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(f"http://127.0.0.1:{health}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False
    try:
        wait_until(healthy, timeout=60, what="the operator's /healthz")
        yield log
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        print(log.read_text()[-4000:])


@pytest.fixture
def hosts(kube: Cluster, tmp_path: Path) -> Iterator[tuple[str, list[Host]]]:
    """HOSTS hosts under one label unique to the test; their Node names sort as their index."""
    label = f"fleet-{uuid.uuid4().hex[:6]}"
    made = []
    for i in range(HOSTS):
        root = tmp_path / f"root{i}"
        root.mkdir()
        host = Host(kube, root, {"rollout-test": label})
        made.append(host)
    made.sort(key=lambda h: h.name)
    yield label, made
    for host in made:
        host.stop()


def current(host: Host, namespace: str) -> str | None:
    link = host.root / namespace / "vm" / "current"
    return os.readlink(link).split(".", 1)[0] if link.is_symlink() else None


def condition(builds: Builds, name: str) -> dict:
    status = builds.custom.get_namespaced_custom_object("initramfs.dev", "v1alpha1", builds.namespace,
                                                        "initramfsbuilds", name).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == "Delivered"), {})


def pulled_bytes(host: Host) -> float | None:
    return host.agent.metrics.registry.get_sample_value("initramfs_delivery_pulled_bytes_total")


def ready_since(builds: Builds, host: Host) -> str:
    return builds.report("vm", host.name)["status"]["lastTransitionTime"]


def test_canary_then_waves_a_halt_a_fix_and_a_pin(kube, namespace, registry, hosts, operator_process, tmp_path):
    label, fleet = hosts
    builds = Builds(kube, namespace, registry.host, publish=False)
    repo = unique_repo("waves")
    builds.create("vm", {"nodeSelector": {"matchLabels": {"rollout-test": label}}, "keep": 3,
                         "rollout": {"canary": 1, "waveSize": 2, "pauseSeconds": 2, "maxFailures": 0}},
                  suspend=True)

    def delivered(output: dict):
        def check():
            c = condition(builds, "vm")
            return c if c.get("status") == "True" and output["sha256"] in c.get("message", "") else None
        return check

    # 1. The first output goes out canary first, then wave by wave, a wave after the one before holds it.
    first = pushed(registry, repo, os.urandom(50_000), tmp_path)
    builds.built("vm", first)
    wait_until(delivered(first), timeout=120, what="the first output delivered to every host")
    assert [current(h, namespace) for h in fleet] == [first["sha256"]] * HOSTS
    times = [ready_since(builds, h) for h in fleet]
    assert times[0] <= min(times[1:3]) and max(times[1:3]) <= min(times[3:]), times

    # 2. A digest the canary refuses (its sha512 is not the file's): the rollout halts at the canary, whose
    # current stays; no other host is even asked.
    bad = {**pushed(registry, repo, os.urandom(50_000), tmp_path), "sha512": "0" * 128}
    builds.built("vm", bad)
    halted = wait_until(lambda: (c := condition(builds, "vm")).get("reason") == "RolloutHalted" and c,
                        timeout=90, what="the rollout halted")
    assert fleet[0].name in halted["message"] and "sha512 mismatch" in halted["message"]
    time.sleep(3)  # longer than the pause: still no second wave
    assert [current(h, namespace) for h in fleet] == [first["sha256"]] * HOSTS
    waiting = builds.report("vm", fleet[1].name)["status"]
    assert waiting["phase"] == "Pending" and waiting["message"].startswith("waiting for its wave")

    # 3. The fix (a new output) starts over with the canary and reaches every host.
    fixed = pushed(registry, repo, os.urandom(50_000), tmp_path)
    builds.built("vm", fixed)
    wait_until(delivered(fixed), timeout=120, what="the fixed output delivered to every host")
    assert [current(h, namespace) for h in fleet] == [fixed["sha256"]] * HOSTS

    # 4. A pin back to the first output: every host keeps it, so each only re-points current, all at once.
    pulled = [pulled_bytes(h) for h in fleet]
    started = time.monotonic()
    builds.patch_spec("vm", {"delivery": {"pinnedDigest": f"sha256:{first['sha256']}"}})
    wait_until(lambda: [current(h, namespace) for h in fleet] == [first["sha256"]] * HOSTS, timeout=60,
               what="every host pinned")
    print(f"pin to a kept version on {HOSTS} hosts: {time.monotonic() - started:.1f}s")
    wait_until(delivered(first), timeout=60, what="Delivered for the pinned output")
    assert [pulled_bytes(h) for h in fleet] == pulled  # nothing downloaded
