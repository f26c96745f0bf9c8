"""Health as GitOps tools see it, asked of live InitramfsBuilds that the real operator (the chart's
Deployment, build pods on the real node) brought into each state.

Two judges read the same `kubectl get -o json` snapshot of each object:
- kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status, built from the Go module proxy into
  tests/tools/kstatus): what Flux's `wait`/`healthChecks`, kpt and cli-utils appliers compute;
- the chart's Argo CD health check (charts/initramfs-operator/health/initramfsbuild.lua), run by a
  Lua 5.1 interpreter the way Argo CD runs it: `obj` a global, the returned table read back.
Builds are held in flight by a registry proxy that answers a blob download slowly while the build
pod really runs. Status is only ever written by the operator; the tests wait the way the README
tells users to, with `kubectl wait --for=condition=...`.
"""

import base64
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixtures.images import E, Layout
from fixtures.kube import Cluster, wait_until
from fixtures.operator import Builds
from fixtures.registry import USER, FaultProxy, Registry, unique_repo
from fixtures.tools import REPO, need

HEALTH_LUA = REPO / "charts/initramfs-operator/health/initramfsbuild.lua"
INIT = b"#!/bin/sh\necho booted\n"
UNSCHEDULABLE = {"nodeSelector": {"initramfs.dev/test": "no-such-node"}}
HOLD_SECONDS = 40  # how long the proxy sits on a held blob download (the builder's read timeout is 60 s)
WAIT_SECONDS = 180  # for a state to show up on this (shared, 2-core) machine


# --- the two judges ---------------------------------------------------------------------------------------

def lua_literal(value) -> str:
    """JSON-decoded data as a Lua table constructor (Argo CD hands the object to Lua as tables)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else f"\\{b:03d}"
                             for b in value.encode()) + '"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    return "{" + ", ".join(f"[{lua_literal(k)}] = {lua_literal(v)}" for k, v in value.items()) + "}"


def argocd_health(lua: str, obj: dict) -> tuple[str, str]:
    """Run the health check as Argo CD does: `obj` a global table, the script's returned table read back."""
    driver = (f"local check = assert(loadfile({lua_literal(str(HEALTH_LUA))}))\n"
              'obj = assert(loadstring("return " .. io.read("*a")))()\n'
              'local hs = check()\n'
              'io.write(hs.status, "\\n", hs.message or "")\n')
    done = subprocess.run([lua, "-e", driver], input=lua_literal(obj), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    status, _, message = done.stdout.partition("\n")
    return status, message


@dataclass(frozen=True)
class Health:
    obj: dict
    kstatus: tuple[str, str]   # (status, message) from kstatus
    argocd: tuple[str, str]    # (status, message) from the Lua health check

    def conditions(self) -> dict[str, tuple[str, str]]:
        return {c["type"]: (c["status"], c["reason"]) for c in self.obj["status"].get("conditions") or []}

    def message(self, type_: str) -> str:
        return next(c["message"] for c in self.obj["status"]["conditions"] if c["type"] == type_)

    def __str__(self) -> str:
        return (f"{self.obj['metadata']['name']}: conditions {self.conditions()}; kstatus {self.kstatus[0]} "
                f"{self.kstatus[1]!r}; Argo CD {self.argocd[0]} {self.argocd[1]!r}")


@pytest.fixture(scope="session")
def kstatus_bin() -> Path:
    need("go")
    out = subprocess.run([str(REPO / "tests/tools/build-kstatus.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def kstatus_of(kstatus_bin: Path, obj: dict) -> tuple[str, str]:
    verdict = json.loads(subprocess.run([str(kstatus_bin)], input=json.dumps(obj), capture_output=True, text=True,
                                        check=True).stdout)
    return verdict["status"], verdict["message"]


@pytest.fixture
def health(kube: Cluster, builds: Builds, kstatus_bin: Path) -> Callable[[str], Health]:
    """health(name) -> kstatus's and Argo CD's verdicts on one snapshot of the build."""
    lua = need("lua5.1")

    def judge(name: str) -> Health:
        snapshot = kube.kubectl("get", "initramfsbuild", name, "-n", builds.namespace, "-o", "json").stdout
        obj = json.loads(snapshot)
        found = Health(obj, kstatus_of(kstatus_bin, obj), argocd_health(lua, obj))
        print(found)  # the table of verdicts, with -s or on failure
        return found

    return judge


def assert_in_progress(h: Health, shown: str) -> None:
    """kstatus InProgress with Reconciling's message; Argo CD Progressing, saying `shown` (Ready's reason
    while there is no output, Reconciling's during a refresh rebuild)."""
    assert h.obj["status"]["observedGeneration"] == h.obj["metadata"]["generation"]
    assert h.conditions()["Reconciling"][0] == "True" and "Stalled" not in h.conditions()
    assert h.kstatus == ("InProgress", h.message("Reconciling"))
    shown_by = "Ready" if h.conditions()["Ready"][1] == shown else "Reconciling"
    assert h.argocd == ("Progressing", f"{shown}: {h.message(shown_by)}")


def assert_failed(h: Health, reason: str) -> None:
    assert h.obj["status"]["observedGeneration"] == h.obj["metadata"]["generation"]
    assert h.conditions() == {"Ready": ("False", reason), "Stalled": ("True", reason)}
    message = h.message("Stalled")
    assert message and h.kstatus == ("Failed", message)
    assert h.argocd == ("Degraded", f"{reason}: {message}")


# --- waiting, as users do -------------------------------------------------------------------------------------

def kubectl_wait(kube: Cluster, builds: Builds, name: str, condition: str, timeout: float = WAIT_SECONDS,
                 check: bool = True) -> subprocess.CompletedProcess:
    """`kubectl wait --for=condition=...`, as the README tells users to wait."""
    return kube.kubectl("wait", "-n", builds.namespace, f"--for=condition={condition}", f"--timeout={timeout:.0f}s",
                        f"initramfsbuild/{name}", check=check)


def wait_conditions(builds: Builds, name: str, want: dict[str, tuple[str, str]], timeout: float = WAIT_SECONDS):
    """Wait until the build's conditions are exactly `want` ({type: (status, reason)})."""
    def reached():
        obj = builds.get(name)
        got = {c["type"]: (c["status"], c["reason"]) for c in (obj.get("status") or {}).get("conditions") or []}
        return obj if got == want else None
    try:
        return wait_until(reached, timeout=timeout, what=f"{name} conditions {want}", interval=0.3)
    except AssertionError as e:
        raise AssertionError(f"{e}; its status: {json.dumps(builds.get(name).get('status'), indent=1)}") from None


# --- images, registries and volumes ---------------------------------------------------------------------------

@pytest.fixture
def image(node_registry, tmp_path):
    """image(tag, content, repo=None) -> (repo, manifest digest): a one-layer image in the node's registry."""
    def push(tag: str, content: bytes, repo: str | None = None) -> tuple[str, str]:
        repo = repo or unique_repo("health")
        layout = Layout(tmp_path / f"layout-{repo.replace('/', '-')}-{tag}-{content.hex()[:16]}")
        desc = layout.image([[E("etc", "dir"), E("etc/hello", data=content), E("init", data=INIT, mode=0o755)]])
        layout.tag(desc, tag)
        node_registry.push(layout.root, tag, repo)
        return repo, desc["digest"]
    return push


def hold_next_blob(proxy: FaultProxy, repo: str) -> None:
    """The next blob download from `repo` through the proxy waits HOLD_SECONDS: the build pod runs meanwhile
    (the operator only asks for manifests)."""
    proxy.inject("GET", f"/v2/{repo}/blobs/sha256:", "delay", seconds=HOLD_SECONDS)


def oci_output(registry: Registry) -> dict:
    return {"oci": {"repository": f"{registry.host}/{unique_repo('out')}", "tag": "v1"}}


def docker_secret(builds: Builds, name: str, host: str, password: str) -> None:
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    builds.core.create_namespaced_secret(builds.namespace, {
        "metadata": {"name": name}, "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": json.dumps({"auths": {host: {"auth": auth}}})}})


def claim(builds: Builds, name: str) -> None:
    builds.core.create_namespaced_persistent_volume_claim(builds.namespace, {
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                 "resources": {"requests": {"storage": "1Gi"}}}})


@pytest.fixture
def volume(builds, node, tmp_path):
    """volume(claim) -> the host directory of a `local` PersistentVolume on the node bound to a new claim."""
    made: list[str] = []

    def make(name: str) -> Path:
        directory = tmp_path / f"pv-{name}"
        made.append(node.local_volume(builds.namespace, name, directory))
        claim(builds, name)
        return directory

    yield make
    for pv in made:
        builds.core.delete_persistent_volume(pv)


# --- in flight, built, rebuilt ------------------------------------------------------------------------------

def test_queued_and_building_are_in_progress(builds, node_registry, start_operator, image, slow_registry, health):
    start_operator(max_concurrent=1)
    repo, _ = image("v1", b"held\n")
    hold_next_blob(slow_registry, repo)
    builds.create("holder", {"image": slow_registry.ref(repo, "v1"), "registry": {"insecure": True},
                             "output": oci_output(node_registry)})
    wait_conditions(builds, "holder", {"Ready": ("False", "Building"), "Reconciling": ("True", "Building")})
    builds.create("waiter", {"image": node_registry.ref(repo, "v1"), "registry": {"insecure": True},
                             "output": oci_output(node_registry)})
    wait_conditions(builds, "waiter", {"Ready": ("False", "Queued"), "Reconciling": ("True", "Queued")})

    wait_until(slow_registry.blob_gets, timeout=WAIT_SECONDS, what="the holder's pod to download")
    assert_in_progress(health("holder"), "Building")
    assert_in_progress(health("waiter"), "Queued")


def test_built_is_current_and_a_refresh_rebuild_stays_ready(kube, builds, node_registry, start_operator, image,
                                                             slow_registry, health):
    start_operator()
    repo, first_digest = image("stable", b"one\n")
    output = oci_output(node_registry)
    builds.create("follow", {"image": slow_registry.ref(repo, "stable"), "registry": {"insecure": True},
                             "refreshInterval": "5s", "output": output})
    kubectl_wait(kube, builds, "follow", "Ready")
    h = health("follow")
    first = h.obj["status"]
    assert first["imageDigest"] == first_digest and h.conditions() == {"Ready": ("True", "Succeeded")}
    assert h.kstatus == ("Current", "Resource is Ready")
    assert h.argocd == ("Healthy", f"Succeeded: {h.message('Ready')}")

    # The tag moves; the rebuild's download is held, so the refresh is caught in flight.
    hold_next_blob(slow_registry, repo)
    _, second_digest = image("stable", b"two\n", repo=repo)
    wait_conditions(builds, "follow", {"Ready": ("True", "Succeeded"), "Reconciling": ("True", "Refreshing")})
    h = health("follow")
    assert h.obj["status"]["output"] == first["output"]  # the previous output stays valid until the new one lands
    assert_in_progress(h, "Refreshing")

    rebuilt = wait_until(lambda: (o := builds.get("follow"))["status"]["imageDigest"] == second_digest
                         and [c["type"] for c in o["status"]["conditions"]] == ["Ready"] and o,
                         timeout=HOLD_SECONDS + WAIT_SECONDS, what="the refresh rebuild to land")
    assert rebuilt["status"]["output"]["digest"] != first["output"]["digest"]
    pushed = output["oci"]["repository"].split("/", 1)[1]
    with node_registry.client() as c:  # the registry now serves the new artifact under the tag
        assert c.head(f"/v2/{pushed}/manifests/v1", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
                      ).headers["docker-content-digest"] == rebuilt["status"]["output"]["digest"]
    assert health("follow").kstatus == ("Current", "Resource is Ready")


# --- failures: retried ones in progress, terminal ones Stalled ---------------------------------------------------

def an_index_without_the_platform(registry: Registry, tmp_path: Path) -> str:
    layout = Layout(tmp_path / "multi")
    platforms = [layout.image([[E("init", data=INIT, mode=0o755)]], platform=("linux", arch, ""))
                 for arch in ("amd64", "arm64")]
    layout.tag(layout.index(platforms), "multi")
    return registry.push(layout.root, "multi", unique_repo("multi"))


def test_failures(kube, builds, node_registry, node_auth_registry, start_operator, image, volume, health, tmp_path):
    """Every failure one operator can show on this cluster, each build in its own state at once."""
    start_operator()
    repo, _ = image("v1", b"fail\n")
    ref = node_registry.ref(repo, "v1")
    pv = volume("blocked")
    (pv / "blocker").write_text("a file where the build wants a directory\n")
    claim(builds, "unbacked")  # no PersistentVolume will ever bind it
    docker_secret(builds, "wrong", node_auth_registry.host, "wrong-password")
    pulled = {"registry": {"insecure": True}}
    specs = {
        "invalid-spec": {"image": "registry.example.com/Bad_Repo//x:1"},
        "unauthorized": {"image": node_auth_registry.ref(unique_repo("private"), "v1"), **pulled,
                         "imagePullSecrets": [{"name": "wrong"}]},
        "invalid-image": {"image": an_index_without_the_platform(node_registry, tmp_path), **pulled,
                          "platform": "linux/s390x"},
        "output-failed": {"image": ref, **pulled, "output": {"pvc": {"claimName": "blocked", "path": "blocker/x"}}},
        "oom-killed": {"image": ref, **pulled, "backoffLimit": 0, "resources": {"limits": {"memory": "16Mi"}}},
        "deadline": {"image": ref, **pulled, "activeDeadlineSeconds": 5, **UNSCHEDULABLE},
        "unschedulable": {"image": ref, **pulled, **UNSCHEDULABLE},
        "unbound-claim": {"image": ref, **pulled, "output": {"pvc": {"claimName": "unbacked", "path": "x"}}},
        "missing-image": {"image": node_registry.ref(unique_repo("missing"), "v1"), **pulled},
    }
    for name, spec in specs.items():
        builds.create(name, {"output": oci_output(node_registry), **spec})

    # Retried while they may still pass: in progress, the failure said.
    wait_conditions(builds, "missing-image", {"Ready": ("False", "ImagePullFailed"),
                                              "Reconciling": ("True", "Resolving")})
    h = health("missing-image")
    assert "next attempt in" in h.message("Reconciling")
    assert_in_progress(h, "ImagePullFailed")
    for name, reason in (("unschedulable", "Unschedulable"), ("unbound-claim", "VolumeFailed")):
        wait_conditions(builds, name, {"Ready": ("False", reason), "Reconciling": ("True", "Building")})
        assert_in_progress(health(name), reason)

    # Terminal: Stalled with the reason, kstatus Failed, Argo CD Degraded.
    for name, reason in (("invalid-spec", "InvalidSpec"), ("unauthorized", "Unauthorized"),
                         ("invalid-image", "InvalidImage"), ("output-failed", "OutputFailed"),
                         ("oom-killed", "OOMKilled"), ("deadline", "DeadlineExceeded"),
                         ("missing-image", "ImagePullFailed")):  # after its fifth failure in a row
        kubectl_wait(kube, builds, name, "Stalled")
        assert_failed(health(name), reason)


def test_refusals_of_the_api_server(kube, builds, node_registry, start_operator, image, health):
    """The operator runs with the chart's RBAC without access to Secrets (rbac.registrySecrets=false), and a
    ResourceQuota admits no Job: retried with backoff (in progress), then Stalled."""
    start_operator(rbac={"registrySecrets": False, "aggregateClusterRoles": False})
    repo, _ = image("v1", b"refused\n")
    docker_secret(builds, "creds", node_registry.host, "never-read")
    builds.create("secretive", {"image": node_registry.ref(repo, "v1"), "registry": {"insecure": True},
                                "imagePullSecrets": [{"name": "creds"}], "output": oci_output(node_registry)})
    kubectl_wait(kube, builds, "secretive", "Stalled")
    assert_failed(health("secretive"), "Forbidden")

    builds.core.create_namespaced_resource_quota(builds.namespace, {
        "metadata": {"name": "no-jobs"}, "spec": {"hard": {"count/jobs.batch": "0"}}})
    wait_until(lambda: (builds.core.read_namespaced_resource_quota("no-jobs", builds.namespace).status.hard
                        or {}).get("count/jobs.batch") == "0", what="the quota to be in force")
    builds.create("over-quota", {"image": node_registry.ref(repo, "v1"), "registry": {"insecure": True},
                                 "output": oci_output(node_registry)})
    wait_conditions(builds, "over-quota", {"Ready": ("False", "JobRejected"), "Reconciling": ("True", "Queued")})
    h = health("over-quota")
    assert "exceeded quota" in h.message("Reconciling") and "next attempt in" in h.message("Reconciling")
    assert_in_progress(h, "JobRejected")
    kubectl_wait(kube, builds, "over-quota", "Stalled")
    assert_failed(health("over-quota"), "JobRejected")


@pytest.fixture
def root_image(node_registry, tmp_path) -> str:
    """An image without initramfs-builder whose user is root."""
    layout = Layout(tmp_path / "root-image")
    desc = layout.tag(layout.image([[E("etc", "dir"), E("etc/hello", data=b"not a builder\n")]]), "v1")
    repo = unique_repo("root")
    node_registry.push(layout.root, "v1", repo)
    return node_registry.ref(repo, desc["digest"])


@pytest.mark.parametrize("problem", ["BuilderImagePullFailed", "CreateContainerConfigError", "BuildFailed"])
def test_builder_image_problems(problem, kube, builds, node, node_registry, root_image, start_operator, image,
                                health):
    """The build pod's own image: absent (retried: the kubelet keeps pulling), root where the pod must not
    run as root (retried: a fix to the image heals it), or without the builder (the build fails)."""
    values = {"BuilderImagePullFailed": {"builderImage": f"{node_registry.host}/absent@sha256:{'0' * 64}"},
              "CreateContainerConfigError": {"builderImage": root_image, "runAsUser": None, "runAsGroup": None},
              "BuildFailed": {"builderImage": node.busybox}}[problem]
    start_operator(**values)
    repo, _ = image("v1", b"builder\n")
    builds.create("b", {"image": node_registry.ref(repo, "v1"), "registry": {"insecure": True}, "backoffLimit": 0,
                        "output": oci_output(node_registry)})
    if problem == "BuildFailed":
        kubectl_wait(kube, builds, "b", "Stalled")
        assert_failed(health("b"), problem)
    else:
        wait_conditions(builds, "b", {"Ready": ("False", problem), "Reconciling": ("True", "Building")})
        assert_in_progress(health("b"), problem)


# --- before the operator has looked ----------------------------------------------------------------------------

def test_builds_the_operator_has_not_observed_are_in_progress(kube, builds, node_registry, start_operator, image,
                                                              health):
    """`kubectl apply` then Flux's `wait`: a build (or a spec change) the operator has not seen yet must not
    pass for Current."""
    repo, _ = image("v1", b"unseen\n")
    builds.create("unseen", {"image": node_registry.ref(repo, "v1"), "registry": {"insecure": True},
                             "output": oci_output(node_registry)})
    h = health("unseen")
    assert h.obj["status"] == {"observedGeneration": 0}  # the CRD's default: nothing written yet
    assert h.kstatus == ("InProgress", "InitramfsBuild generation is 1, but latest observed generation is 0")
    assert h.argocd == ("Progressing", "Waiting for the initramfs operator to observe generation 1")

    operator = start_operator()
    kubectl_wait(kube, builds, "unseen", "Ready")
    operator.scale(0)
    builds.patch_spec("unseen", {"compression": {"format": "zstd"}})
    h = health("unseen")
    assert h.kstatus == ("InProgress", "InitramfsBuild generation is 2, but latest observed generation is 1")
    assert h.argocd == ("Progressing", "Waiting for the initramfs operator to observe generation 2")
    assert h.conditions() == {"Ready": ("True", "Succeeded")}  # what generation 1 got, as it was
    # kubectl wait skips a condition whose observedGeneration is behind: generation 1's Ready does not count.
    assert kubectl_wait(kube, builds, "unseen", "Ready", timeout=3, check=False).returncode == 1

    operator.scale(1)
    kubectl_wait(kube, builds, "unseen", "Ready")
    h = health("unseen")
    assert h.obj["status"]["observedGeneration"] == 2 and h.obj["status"]["output"]["compression"] == "zstd"
    assert h.kstatus == ("Current", "Resource is Ready")


# --- suspended: the judges on the status the operator writes (no cluster: the verdicts read only the object) ---

def paused(ready: str, message: str) -> dict:
    """A suspended build as the operator writes it (conditions.suspended)."""
    return {"apiVersion": "initramfs.dev/v1alpha1", "kind": "InitramfsBuild",
            "metadata": {"name": "b", "namespace": "ns", "generation": 3},
            "spec": {"suspend": True},
            "status": {"observedGeneration": 3, "conditions": [
                {"type": "Ready", "status": ready, "reason": "Suspended", "message": message, "observedGeneration": 3,
                 "lastTransitionTime": "2024-01-01T00:00:00Z"}]}}


@pytest.mark.parametrize(("ready", "message", "kstatus"), [
    # An output stands: Current, so Flux's wait and kubectl wait --for=condition=Ready pass.
    ("True", "built reg.example/out:v1: 10 bytes", ("Current", "Resource is Ready")),
    # Nothing was built for this spec: not current, it has no output (it goes on once resumed).
    ("False", "paused before this spec was built", ("InProgress", "paused before this spec was built")),
])
def test_a_suspended_build_is_suspended_in_argocd(ready, message, kstatus, kstatus_bin):
    obj = paused(ready, message)
    assert kstatus_of(kstatus_bin, obj) == kstatus
    assert argocd_health(need("lua5.1"), obj) == ("Suspended", f"Suspended: {message}")
