#!/usr/bin/env python3
"""What a fleet of InitramfsBuilds costs the API server, from its own audit log (issue 11, item 2).

Not a test: run it by hand, e.g.
    python3 benchmarks/fleet_benchmark.py --builds 1000
    python3 benchmarks/fleet_benchmark.py --builds 5000 --settle 60     # created, mostly queued
It starts the test control plane (etcd, kube-apiserver with an audit log of the operator's own
user, kube-controller-manager), a local registry holding a tiny image, and the operator as a
process with --slots build slots, then creates the builds across --namespaces namespaces.

There is no kubelet here: a *pod completer* (PodCompleter below, part of this script only and of no
test) stands in for one. It binds each build pod to a Node it registers, reports it Running,
and after --build-seconds reports it Succeeded with a termination message shaped like the
builder's JSON result, so the real Job controller completes the Job and the operator records the
output. What the operator reads and writes is therefore real API traffic; only the build itself
is skipped.

Printed: operator requests per completed build by verb and resource; request rate beside queue
length over time; status lag behind Job state (p50/p99, as seen by one watcher of both); the
operator's peak RSS and CPU; and PASS/FAIL per budget of issue 11 item 2. Exit status 1 if a
budget fails.
"""

import argparse
import hashlib
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import kubernetes
from kubernetes.client.rest import ApiException

import _paths  # noqa: F401  (first: tests/ and operator/ on sys.path)
from fixtures.images import E, Layout
from fixtures.kube import (
    Cluster,
    Processes,
    free_port,
    issue_cert,
    make_pki,
    start_etcd,
    wait_ready,
    wait_until,
    write_kubeconfig,
)
from fixtures.registry import start_registry
from fixtures.tools import REPO
from initramfs_operator.kube import buildjob, crd

OPERATOR_USER = "initramfs-operator"
GROUP, VERSION, PLURAL = crd.GROUP, crd.VERSION, crd.PLURAL
NODE = "bench-node"
BUCKET_SECONDS = 10

# Budgets of issue 11 item 2.
MAX_REQUESTS_PER_BUILD = 10
MAX_STATUS_LAG_SECONDS = 2.0
MAX_RSS_MIB = {1000: 150, 5000: 300}

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy",
    # One record per request, written when its response is complete (a watch: when it ends).
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [
        # With their bodies: which state each status write and each Event says.
        {"level": "Request", "users": [OPERATOR_USER], "verbs": ["patch"],
         "resources": [{"group": GROUP, "resources": [f"{PLURAL}/status"]}]},
        {"level": "Request", "users": [OPERATOR_USER], "verbs": ["create"],
         "resources": [{"group": "", "resources": ["events"]}]},
        {"level": "Metadata", "users": [OPERATOR_USER]},
        {"level": "None"},
    ],
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--builds", type=int, default=1000)
    p.add_argument("--slots", type=int, default=10, help="the operator's max concurrent builds")
    p.add_argument("--namespaces", type=int, default=10, help="spread the builds over this many namespaces")
    p.add_argument("--build-seconds", type=float, default=1.0, help="how long each build pod 'runs'")
    p.add_argument("--settle", type=float, default=None,
                   help="stop this many seconds after every build has a status instead of waiting for all "
                        "to complete (the created-mostly-queued run)")
    p.add_argument("--timeout", type=float, default=780, help="give up waiting after this many seconds")
    p.add_argument("--operator-path", type=Path,
                   help="run the operator from this source root instead (e.g. an older version, "
                        "`git archive HEAD operator | tar -x -C DIR`, then DIR/operator)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, audit log)")
    return p.parse_args()


def utc(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# --- the control plane, with an audit log -----------------------------------------------------------------

@dataclass
class ControlPlane:
    cluster: Cluster
    operator_kubeconfig: Path
    audit_log: Path
    apiserver_pid: int
    admin_cert: tuple[str, str]


@dataclass(frozen=True)
class Loopback:
    """The addresses make_pki puts in the API server's certificate: here it serves on loopback only,
    as no pod ever dials it (there is no node network)."""
    host_ip: str = "127.0.0.1"
    kubernetes_service_ip: str = "10.0.0.1"


def start_control_plane(bin_dir: Path, work: Path, procs: Processes, apiserver_args: tuple[str, ...] = (),
                        controllers: str = "*") -> ControlPlane:
    """etcd, kube-apiserver and kube-controller-manager as tests/fixtures/kube.py starts them, plus an
    audit log of the operator's requests and a client certificate naming the operator's user.
    `apiserver_args` are added to kube-apiserver's; `controllers` is kube-controller-manager's --controllers."""
    pki = work / "pki"
    make_pki(pki, Loopback())
    issue_cert(pki, "operator", f"/O=system:masters/CN={OPERATOR_USER}", "extendedKeyUsage=clientAuth\n")
    (work / "audit-policy.json").write_text(json.dumps(AUDIT_POLICY))
    audit_log = work / "audit.log"
    etcd_url = start_etcd(procs, bin_dir, work)
    api_port, kcm_port = free_port(), free_port()
    server = f"https://127.0.0.1:{api_port}"
    apiserver = procs.start("kube-apiserver", [
        str(bin_dir / "kube-apiserver"),
        f"--etcd-servers={etcd_url}", f"--cert-dir={work / 'certs'}",
        f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--secure-port={api_port}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
        "--service-cluster-ip-range=10.0.0.0/24", "--allow-privileged=true",
        "--authorization-mode=RBAC", "--disable-admission-plugins=ServiceAccount",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--audit-policy-file={work / 'audit-policy.json'}", f"--audit-log-path={audit_log}",
        "--audit-log-format=json", "--audit-log-maxsize=0", *apiserver_args])
    admin_cert = (str(pki / "admin.crt"), str(pki / "admin.key"))
    wait_ready(procs, "kube-apiserver", f"{server}/readyz", client_tls(pki / "ca.crt", admin_cert))

    kubeconfig = work / "admin.kubeconfig"
    write_kubeconfig(kubeconfig, server, pki / "ca.crt", "admin",
                     {"client-certificate": admin_cert[0], "client-key": admin_cert[1]})
    operator_kubeconfig = work / "operator.kubeconfig"
    write_kubeconfig(operator_kubeconfig, server, pki / "ca.crt", OPERATOR_USER,
                     {"client-certificate": str(pki / "operator.crt"), "client-key": str(pki / "operator.key")})
    cluster = Cluster(server, pki / "ca.crt", kubeconfig, work, bin_dir)
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/initramfsbuilds.initramfs.dev")
    procs.start("kube-controller-manager", [
        str(bin_dir / "kube-controller-manager"), f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
        f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
        f"--controllers={controllers}", "--leader-elect=false",
        "--bind-address=127.0.0.1", f"--secure-port={kcm_port}", f"--cert-dir={work / 'kcm-certs'}"])
    # Its serving certificate is self-signed on the fly; loopback, so not verifying it is harmless.
    wait_ready(procs, "kube-controller-manager", f"https://127.0.0.1:{kcm_port}/healthz",
               ssl._create_unverified_context())
    return ControlPlane(cluster, operator_kubeconfig, audit_log, apiserver.pid, admin_cert)


def client_tls(ca_file: Path, cert: tuple[str, str]) -> ssl.SSLContext:
    tls = ssl.create_default_context(cafile=ca_file)
    tls.load_cert_chain(*cert)
    return tls


def build_tools() -> Path:
    out = subprocess.run([str(REPO / "tests/tools/build-tools.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


# --- the operator, as a process -----------------------------------------------------------------------------

class OperatorProcess:
    """`python -m initramfs_operator.kube.command` with its own kubeconfig, so the audit log tells its
    requests apart; stopped with SIGTERM like a pod."""

    def __init__(self, kubeconfig: Path, slots: int, logfile: Path, pythonpath: Path | None):
        self.health_port = free_port()
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "INITRAMFS_MAX_CONCURRENT_BUILDS": str(slots),
                    "INITRAMFS_BUILDER_IMAGE": "registry.invalid/builder:bench",  # no pod runs it: see PodCompleter
                    "INITRAMFS_LEASE_NAMESPACE": "default",
                    "INITRAMFS_METRICS_PORT": str(free_port()), "INITRAMFS_HEALTH_PORT": str(self.health_port)}
        if pythonpath:
            self.env["PYTHONPATH"] = str(pythonpath.resolve())
        self.logfile = logfile
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "initramfs_operator.kube.command"],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self.healthy, timeout=60, what=f"the operator's /healthz (log: {self.logfile})")

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the operator exited with {self.proc.returncode}; log: {self.logfile}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- the stand-in for a kubelet ----------------------------------------------------------------------------

def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodCompleter:
    """Binds build pods to a registered Node and plays them to Succeeded, like a kubelet whose
    containers exit 0 after `build_seconds`. Benchmark machinery only: no test uses it."""

    def __init__(self, client: kubernetes.client.ApiClient, build_seconds: float, image_digest: str):
        self.core = kubernetes.client.CoreV1Api(client)
        self.leases = kubernetes.client.CoordinationV1Api(client)
        self.build_seconds = build_seconds
        self.image_digest = image_digest
        self.pool = ThreadPoolExecutor(32, thread_name_prefix="completer")
        self.seen: set[str] = set()
        self.stopping = threading.Event()

    def start(self, watcher: "Watcher") -> None:
        self.register_node()
        threading.Thread(target=self.heartbeat, daemon=True).start()
        watcher.watch(f"/api/v1/pods?labelSelector={buildjob.SELECTOR}", self.on_pod)

    def stop(self) -> None:
        self.stopping.set()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def register_node(self) -> None:
        self.core.create_node({"metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}}})
        self.core.patch_node_status(NODE, {"status": {
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "10000"},
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "10000"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "bench",
                            "lastHeartbeatTime": now_text(), "lastTransitionTime": now_text()}]}})
        self.leases.create_namespaced_lease("kube-node-lease", {"metadata": {"name": NODE}, "spec": {
            "holderIdentity": NODE, "leaseDurationSeconds": 40, "renewTime": self.micro_now()}})

    @staticmethod
    def micro_now() -> str:
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def heartbeat(self) -> None:
        # The node lifecycle controller taints a node whose Lease goes stale, and evicts its pods.
        while not self.stopping.wait(10):
            try:
                self.leases.patch_namespaced_lease(NODE, "kube-node-lease", {"spec": {"renewTime": self.micro_now()}})
            except Exception as e:  # the next beat may succeed; the lease lasts 40 s
                print(f"completer: node heartbeat failed: {e}", file=sys.stderr)

    def on_pod(self, kind: str, pod: dict) -> None:
        meta, uid = pod["metadata"], pod["metadata"]["uid"]
        if kind == "DELETED":
            return
        if meta.get("deletionTimestamp"):
            self.pool.submit(self.finalize, meta["namespace"], meta["name"], uid)
        elif uid not in self.seen and not pod["spec"].get("nodeName"):
            self.seen.add(uid)
            self.pool.submit(self.run, pod)

    def run(self, pod: dict) -> None:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        container = pod["spec"]["containers"][0]
        try:
            self.core.create_namespaced_pod_binding(name, ns, {
                "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                "target": {"apiVersion": "v1", "kind": "Node", "name": NODE}}, _preload_content=False)
            started = now_text()
            self.core.patch_namespaced_pod_status(name, ns, {"status": {
                "phase": "Running", "startTime": started, "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
                "conditions": [{"type": t, "status": "True", "lastTransitionTime": started}
                               for t in ("Initialized", "ContainersReady", "Ready")],
                "containerStatuses": [{"name": container["name"], "image": container["image"], "imageID": "",
                                       "ready": True, "started": True, "restartCount": 0,
                                       "state": {"running": {"startedAt": started}}}]}})
            if self.stopping.wait(self.build_seconds):
                return
            terminated = {"exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": now_text(),
                          "message": self.result(pod)}
            self.core.patch_namespaced_pod_status(name, ns, {"status": {
                "phase": "Succeeded",
                "conditions": [{"type": t, "status": "False", "reason": "PodCompleted",
                                "lastTransitionTime": terminated["finishedAt"]} for t in ("ContainersReady", "Ready")],
                "containerStatuses": [{"name": container["name"], "image": container["image"], "imageID": "",
                                       "ready": False, "started": False, "restartCount": 0,
                                       "state": {"terminated": terminated}}]}})
        except ApiException as e:
            if e.status not in (404, 409):  # deleted or superseded meanwhile
                print(f"completer: {ns}/{name}: {e.status} {e.reason}", file=sys.stderr)

    def result(self, pod: dict) -> str:
        """A termination message shaped like `initramfs-builder build --json`'s result."""
        uid = pod["metadata"]["uid"].encode()
        return json.dumps({"output": "/output/initramfs.cpio", "size": 4096, "entries": 7,
                           "sha256": hashlib.sha256(uid).hexdigest(), "sha512": hashlib.sha512(uid).hexdigest(),
                           "compression": "none", "platform": "linux/amd64", "imageDigest": self.image_digest})

    def finalize(self, ns: str, name: str, uid: str) -> None:
        try:
            self.core.delete_namespaced_pod(name, ns, body={"gracePeriodSeconds": 0, "preconditions": {"uid": uid}})
        except ApiException as e:
            if e.status not in (404, 409):
                raise


# --- watching what happens, from outside the operator -----------------------------------------------------

class Watcher:
    """List-then-watch streams over plain HTTP (lean on CPU), each calling back with (type, object)."""

    def __init__(self, plane: ControlPlane):
        self.plane = plane
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def watch(self, path: str, callback: Callable[[str, dict], None]) -> None:
        thread = threading.Thread(target=self.loop, args=(path, callback), daemon=True)
        thread.start()
        self.threads.append(thread)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.plane.cluster.server,
                            verify=client_tls(self.plane.cluster.ca_file, self.plane.admin_cert),
                            timeout=httpx.Timeout(30, read=None))

    def loop(self, path: str, callback) -> None:
        with self.client() as http:
            while not self.stopping.is_set():
                try:
                    self.follow(http, path, callback)
                except httpx.HTTPError as e:
                    if not self.stopping.is_set():
                        print(f"watch {path}: {e}; listing again", file=sys.stderr)
                        time.sleep(0.5)

    def follow(self, http: httpx.Client, path: str, callback) -> None:
        listed = http.get(path).raise_for_status().json()
        for item in listed["items"]:
            callback("ADDED", item)
        version = listed["metadata"]["resourceVersion"]
        sep = "&" if "?" in path else "?"
        while version and not self.stopping.is_set():
            version = self.stream(http, f"{path}{sep}watch=1&resourceVersion={version}"
                                        f"&allowWatchBookmarks=true&timeoutSeconds=60", callback)

    def stream(self, http: httpx.Client, url: str, callback) -> str | None:
        """Follow one watch; the resourceVersion to resume from, or None to relist (410 Gone)."""
        version = None
        with http.stream("GET", url) as response:
            for line in response.iter_lines():
                if self.stopping.is_set():
                    return None
                event = json.loads(line)
                if event["type"] == "ERROR":
                    return None
                version = event["object"]["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    callback(event["type"], event["object"])
        return version or url.split("resourceVersion=")[1].split("&")[0]


@dataclass
class BuildTimes:
    first: dict[str, float] = field(default_factory=dict)   # reason -> when the watcher first saw it
    reason: str | None = None


class Recorder:
    """When each build showed each reason and when its Job was created and finished, plus 1 s samples."""

    def __init__(self):
        self.builds: dict[tuple[str, str], BuildTimes] = defaultdict(BuildTimes)
        self.created: dict[tuple[str, str], float] = {}       # when the create call returned
        self.job_created: dict[tuple[str, str], float] = {}
        self.job_finished: dict[tuple[str, str], float] = {}
        self.unfinished_jobs: set[str] = set()
        self.samples: list[dict] = []
        self.lock = threading.Lock()

    def on_build(self, kind: str, build: dict) -> None:
        if kind == "DELETED":
            return
        ready = next((c for c in (build.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), None)
        if ready is None:
            return
        key = (build["metadata"]["namespace"], build["metadata"]["name"])
        reason = "Ready" if ready["status"] == "True" else ready["reason"]
        with self.lock:
            times = self.builds[key]
            times.reason = reason
            times.first.setdefault(reason, time.time())

    def on_job(self, kind: str, job: dict) -> None:
        meta = job["metadata"]
        key = (meta["namespace"], (meta.get("annotations") or {}).get(buildjob.BUILD_NAME, ""))
        finished = any(c["type"] in ("Complete", "Failed") and c["status"] == "True"
                       for c in (job.get("status") or {}).get("conditions") or [])
        with self.lock:
            self.job_created.setdefault(key, time.time())
            if finished or kind == "DELETED":
                self.unfinished_jobs.discard(meta["uid"])
                if finished:
                    self.job_finished.setdefault(key, time.time())
            else:
                self.unfinished_jobs.add(meta["uid"])

    def sample(self, operator_pid: int) -> dict:
        with self.lock:
            reasons = Counter(t.reason for t in self.builds.values())
            sample = {"t": time.time(), "resolving": reasons["Resolving"], "queued": reasons["Queued"],
                      "building": reasons["Building"],
                      "ready": reasons["Ready"], "with_status": len(self.builds),
                      "jobs_running": len(self.unfinished_jobs), "rss_mib": rss_mib(operator_pid)}
            self.samples.append(sample)
        return sample


def rss_mib(pid: int, field_name: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the run ----------------------------------------------------------------------------------------------

def push_tiny_image(work: Path, procs_stack: ExitStack) -> tuple[str, str]:
    registry, proc = start_registry(work / "registry")
    procs_stack.callback(lambda: (proc.terminate(), proc.wait(10)))
    layout = Layout(work / "layout")
    desc = layout.image([[E("init", data=b"#!/bin/sh\necho booted\n", mode=0o755)]])
    layout.tag(desc, "v1")
    return registry.push(layout.root, "v1", "bench/tiny"), desc["digest"]


def prepare_namespaces(client: kubernetes.client.ApiClient, names: list[str]) -> None:
    """Each namespace gets a claim bound to a static PersistentVolume, as a user's would be."""
    core = kubernetes.client.CoreV1Api(client)
    for ns in names:
        core.create_namespace({"metadata": {"name": ns}})
        core.create_persistent_volume({"metadata": {"name": f"images-{ns}"}, "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
            "hostPath": {"path": f"/nonexistent/{ns}"}, "persistentVolumeReclaimPolicy": "Retain"}})
        core.create_namespaced_persistent_volume_claim(ns, {"metadata": {"name": "images"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": f"images-{ns}",
            "resources": {"requests": {"storage": "1Gi"}}}})


def create_builds(client: kubernetes.client.ApiClient, image: str, namespaces: list[str], count: int,
                  recorder: Recorder) -> float:
    custom = kubernetes.client.CustomObjectsApi(client)

    def create(i: int) -> None:
        ns, name = namespaces[i % len(namespaces)], f"b{i:05d}"
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "InitramfsBuild", "metadata": {"name": name},
            "spec": {"image": image, "registry": {"insecure": True}, "compression": {"format": "none"},
                     "output": {"pvc": {"claimName": "images", "path": f"{name}.cpio"}}}})
        recorder.created[(ns, name)] = time.time()

    started = time.time()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(count)))
    return time.time() - started


def wait_for_the_fleet(args, recorder: Recorder, operator: OperatorProcess, started: float) -> str:
    """Sample every second until done; returns how the run ended."""
    settled_at = None
    last_print = 0.0
    while True:
        time.sleep(1)
        if operator.proc.poll() is not None:
            return f"the operator exited with {operator.proc.returncode}"
        s = recorder.sample(operator.proc.pid)
        elapsed = s["t"] - started
        if s["t"] - last_print >= BUCKET_SECONDS:
            last_print = s["t"]
            print(f"  {elapsed:5.0f} s: {s['with_status']} with status, {s['queued']} queued, "
                  f"{s['building']} building, {s['ready']} ready, {s['rss_mib']:.0f} MiB", file=sys.stderr)
        if args.settle is None and s["ready"] >= args.builds:
            return "all builds completed"
        if args.settle is not None and s["with_status"] >= args.builds:
            settled_at = settled_at or s["t"]
            if s["t"] - settled_at >= args.settle:
                return f"every build had a status; stopped {args.settle:.0f} s later"
        if elapsed > args.timeout:
            return f"timed out after {args.timeout:.0f} s"


# --- the report -------------------------------------------------------------------------------------------

def read_audit(path: Path) -> list[dict]:
    events = []
    with open(path) as f:
        for line in f:
            e = json.loads(line)
            if e.get("user", {}).get("username") == OPERATOR_USER:
                events.append(e)
    return events


def resource_of(e: dict) -> str:
    ref = e.get("objectRef") or {}
    if not ref:
        return e.get("requestURI", "?").split("?")[0]
    name = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    scope = "" if ref.get("namespace") or ref.get("name") or e["verb"] not in ("list", "watch") else " (all ns)"
    return name + scope


def waiting_cost(events: list[dict], recorder: Recorder) -> tuple[int, int]:
    """Requests naming a build while it waited in the queue: after the watcher saw it Queued, until
    2 s before its Job appeared (its admission pass may read it just before creating the Job)."""
    naming: dict[tuple[str, str], list[float]] = defaultdict(list)
    for e in events:
        ref = e.get("objectRef") or {}
        if ref.get("resource") == PLURAL and ref.get("name"):
            naming[(ref.get("namespace"), ref["name"])].append(utc(e["requestReceivedTimestamp"]))
    waited = cost = 0
    for key, times in recorder.builds.items():
        queued = times.first.get("Queued")
        if queued is None:
            continue
        until = recorder.job_created.get(key, float("inf")) - 2.0
        if until > queued:
            waited += 1
            cost += sum(queued < t < until for t in naming[key])
    return waited, cost


def what_was_written(events: list[dict]) -> tuple[Counter, Counter]:
    """The Ready reason each status write set ("-" when it left the conditions alone), and Events by reason."""
    writes, posted = Counter(), Counter()
    for e in events:
        body = e.get("requestObject") or {}
        resource = (e.get("objectRef") or {}).get("resource")
        if resource == PLURAL and e["verb"] == "patch":
            conditions = (body.get("status") or {}).get("conditions") or []
            writes[next((c["reason"] for c in conditions if c["type"] == "Ready"), "-")] += 1
        elif resource == "events" and e["verb"] == "create":
            posted[body.get("reason", "?")] += 1
    return writes, posted


def first_writes(events: list[dict], recorder: Recorder) -> list[float]:
    """Seconds from each build's creation (the create call returning) to the operator's first status write."""
    first: dict[tuple[str, str], float] = {}
    for e in events:
        ref = e.get("objectRef") or {}
        if ref.get("resource") == PLURAL and ref.get("subresource") == "status" and e["verb"] == "patch":
            key = (ref.get("namespace"), ref.get("name"))
            first.setdefault(key, utc(e["requestReceivedTimestamp"]))
    return [max(0.0, t - recorder.created[key]) for key, t in first.items() if key in recorder.created]


def lags(recorder: Recorder) -> tuple[list[float], list[float]]:
    """Seconds from a Job's creation to its build showing Building, and from the Job finishing to the
    build showing Ready: both seen by the same watcher, so watch delivery delays cancel out."""
    started, finished = [], []
    for key, created in recorder.job_created.items():
        building = recorder.builds[key].first.get("Building")
        if building is not None:
            started.append(max(0.0, building - created))
        ready, done = recorder.builds[key].first.get("Ready"), recorder.job_finished.get(key)
        if ready is not None and done is not None:
            finished.append(max(0.0, ready - done))
    return started, finished


def print_requests(events: list[dict], completed: int, created: int) -> None:
    latencies: dict[tuple[str, str], list[float]] = defaultdict(list)
    for e in events:
        latencies[(e["verb"], resource_of(e))].append(utc(e["stageTimestamp"]) - utc(e["requestReceivedTimestamp"]))
    print(f"\noperator requests: {len(events)} total, {len(events) / max(completed, 1):.2f} per completed build "
          f"({completed} completed), {len(events) / created:.2f} per created build ({created})")
    print(f"  {'verb':<8} {'resource':<40} {'count':>7} {'/completed':>10} {'/created':>9} {'p99 ms':>7}")
    for (verb, resource), values in sorted(latencies.items(), key=lambda kv: -len(kv[1])):
        p99 = "-" if verb == "watch" else f"{percentile(values, 99) * 1000:.0f}"
        print(f"  {verb:<8} {resource:<40} {len(values):>7} {len(values) / max(completed, 1):>10.2f} "
              f"{len(values) / created:>9.2f} {p99:>7}")


def timeline(events: list[dict], recorder: Recorder, started: float) -> list[dict]:
    """Per bucket: operator requests, completions, and the mean queue length."""
    buckets: dict[int, dict] = defaultdict(lambda: {"requests": 0, "completed": 0, "queued": [], "resolving": []})
    for e in events:
        buckets[int((utc(e["requestReceivedTimestamp"]) - started) // BUCKET_SECONDS)]["requests"] += 1
    for times in recorder.builds.values():
        if "Ready" in times.first:
            buckets[int((times.first["Ready"] - started) // BUCKET_SECONDS)]["completed"] += 1
    for s in recorder.samples:
        bucket = buckets[int((s["t"] - started) // BUCKET_SECONDS)]
        bucket["queued"].append(s["queued"])
        bucket["resolving"].append(s["resolving"])
    rows = []
    for i in sorted(b for b in buckets if b >= 0):
        b = buckets[i]
        rows.append({"t": i * BUCKET_SECONDS, "resolving": statistics.mean(b["resolving"]) if b["resolving"] else 0.0,
                     "queued": statistics.mean(b["queued"]) if b["queued"] else 0.0,
                     "completed": b["completed"], "requests": b["requests"]})
    return rows


def print_timeline(rows: list[dict]) -> None:
    print(f"\nrequest rate vs queue length ({BUCKET_SECONDS} s buckets, t from the first create; resolving and "
          "queued: mean of 1 s samples):")
    print(f"  {'t(s)':>5} {'resolving':>9} {'queued':>7} {'completed':>9} {'requests':>8} {'req/s':>6} "
          f"{'req/completed':>13}")
    for r in rows:
        per = f"{r['requests'] / r['completed']:.1f}" if r["completed"] else "-"
        print(f"  {r['t']:>5} {r['resolving']:>9.0f} {r['queued']:>7.0f} {r['completed']:>9} {r['requests']:>8} "
              f"{r['requests'] / BUCKET_SECONDS:>6.1f} {per:>13}")


def report(args, ended: str, plane: ControlPlane, recorder: Recorder, started: float, created_in: float,
           peak_rss: float, cpu: dict[str, float], load: tuple[float, float]) -> bool:
    events = read_audit(plane.audit_log)
    completed = sum("Ready" in t.first for t in recorder.builds.values())
    duration = max(s["t"] for s in recorder.samples) - started
    print(f"\n== fleet benchmark: {args.builds} builds, {args.slots} slots, {args.namespaces} namespaces, "
          f"build pods succeed after {args.build_seconds} s ==")
    print(f"{ended}; {completed} completed in {duration:.0f} s ({completed / duration:.2f}/s); "
          f"created in {created_in:.0f} s; load average {load[0]:.1f} at the start, {load[1]:.1f} at the end "
          f"({os.cpu_count()} CPUs)")
    print_requests(events, completed, args.builds)
    writes, posted = what_was_written(events)
    print("  status writes by the Ready reason they set: " + ", ".join(f"{r} {n}" for r, n in writes.most_common()))
    print("  Events by reason: " + ", ".join(f"{r} {n}" for r, n in posted.most_common()))
    rows = timeline(events, recorder, started)
    print_timeline(rows)
    started_lag, finished_lag = lags(recorder)
    waited, wait_requests = waiting_cost(events, recorder)
    print("\nstatus lag (the Job rows: watch-observed, budgeted; the first row: from the audit log):")
    for what, values in (("build created -> first status write", first_writes(events, recorder)),
                         ("Job created -> build Building", started_lag), ("Job finished -> build Ready", finished_lag)):
        if values:
            print(f"  {what:<32} n={len(values):<5} p50 {percentile(values, 50):.2f} s  "
                  f"p99 {percentile(values, 99):.2f} s  max {max(values):.2f} s")
    print(f"\nrequests naming a build while it waited in the queue: {wait_requests} (over {waited} builds that waited)")
    print(f"operator peak RSS {peak_rss:.0f} MiB (VmHWM); CPU seconds: "
          + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()))
    steady = steady_buckets(rows, recorder, started, args.builds)
    return budgets(args, events, completed, steady, started_lag + finished_lag, wait_requests, peak_rss)


def steady_buckets(rows: list[dict], recorder: Recorder, started: float, builds: int) -> list[dict]:
    """Buckets after every build had its first status (so the one write that says a build is queued is
    behind us), with at least 5 completions: there the rate must follow completions, whatever the queue."""
    statused = next((s["t"] for s in recorder.samples if s["with_status"] >= builds), None)
    if statused is None:
        return []
    return [r for r in rows if r["t"] >= statused - started and r["completed"] >= 5]


def budgets(args, events, completed, steady, lag_values, wait_requests, peak_rss) -> bool:
    checks = []
    if args.settle is None:
        checks.append((f"every build completed ({completed}/{args.builds})", completed == args.builds))
        per_build = len(events) / max(completed, 1)
        checks.append((f"operator requests per completed build {per_build:.2f} <= {MAX_REQUESTS_PER_BUILD}",
                       per_build <= MAX_REQUESTS_PER_BUILD))
    worst = max((r["requests"] / r["completed"] for r in steady), default=0.0)
    checks.append((f"request rate follows completions, not the queue: once every build has a status, worst "
                   f"{BUCKET_SECONDS} s bucket {worst:.1f} requests per completed build <= {MAX_REQUESTS_PER_BUILD} "
                   f"({len(steady)} buckets)", bool(steady) and worst <= MAX_REQUESTS_PER_BUILD))
    checks.append((f"a queued build costs no request while it waits ({wait_requests})", wait_requests == 0))
    if lag_values:
        p99 = percentile(lag_values, 99)
        checks.append((f"status within {MAX_STATUS_LAG_SECONDS:.0f} s of the Job's state (p99 {p99:.2f} s)",
                       p99 <= MAX_STATUS_LAG_SECONDS))
    limit = next((mib for n, mib in sorted(MAX_RSS_MIB.items()) if args.builds <= n), None)
    if limit is not None:
        checks.append((f"operator peak RSS {peak_rss:.0f} MiB <= {limit} MiB at {args.builds} builds",
                       peak_rss <= limit))
    print("\nbudgets (issue 11, item 2):")
    for text, ok in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")
    return all(ok for _, ok in checks)


def main() -> int:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    print(f"work directory: {work}", file=sys.stderr)
    with ExitStack() as stack:
        procs = Processes(work)
        stack.callback(procs.stop)
        plane = start_control_plane(build_tools(), work, procs)
        image, digest = push_tiny_image(work, stack)
        client = plane.cluster.api_client()
        namespaces = [f"fleet-{i}" for i in range(args.namespaces)]
        prepare_namespaces(client, namespaces)

        watcher = Watcher(plane)
        stack.callback(watcher.stopping.set)
        recorder = Recorder()
        watcher.watch(f"/apis/{GROUP}/{VERSION}/{PLURAL}", recorder.on_build)
        watcher.watch(f"/apis/batch/v1/jobs?labelSelector={buildjob.SELECTOR}", recorder.on_job)
        completer = PodCompleter(client, args.build_seconds, digest)
        completer.start(watcher)
        stack.callback(completer.stop)

        operator = OperatorProcess(plane.operator_kubeconfig, args.slots, work / "operator.log", args.operator_path)
        operator.start()
        stack.callback(operator.stop)
        load_before = os.getloadavg()[0]
        started = time.time()
        created_in = create_builds(client, image, namespaces, args.builds, recorder)
        ended = wait_for_the_fleet(args, recorder, operator, started)
        peak_rss = rss_mib(operator.proc.pid, "VmHWM")
        cpu = {"operator": cpu_seconds(operator.proc.pid), "kube-apiserver": cpu_seconds(plane.apiserver_pid)}
        operator.stop()  # its watches end, so the audit log holds every request it made
        time.sleep(1)
        ok = report(args, ended, plane, recorder, started, created_in, peak_rss, cpu,
                    (load_before, os.getloadavg()[0]))
    if not args.keep:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
