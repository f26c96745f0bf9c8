#!/usr/bin/env python3
"""What one rollout to a fleet of VM hosts costs, with the real operator and real agents (issue 20, item 8;
issue 21: the time for a pin to reach every host).

Not a test: run it by hand (it starts a control plane: on a shared machine, under the cluster lock), e.g.
    flock /tmp/irb-cluster.lock python3 benchmarks/delivery_benchmark.py --hosts 200
    flock /tmp/irb-cluster.lock python3 benchmarks/delivery_benchmark.py --hosts 1000 --agents-per-process 100

It starts the test control plane (etcd, kube-apiserver with an audit log, kube-controller-manager, from
fleet_benchmark.py), a local registry, the operator as a process (`python -m
initramfs_operator.kube.command --delivery`, its own client certificate), and `--hosts` delivery agents:
real `Agent` objects, `--agents-per-process` of them in each agent_fleet.py process, each with its own
Node object, delivery root, API token (its own user in the audit log, in a group bound to the chart's
agent rules), informers, version store and registry pulls.

One InitramfsBuild selects every host. Rollout 1: the build is created; the operator resolves its
image, runs its build Job, records the output; the agents deliver it; the operator sums their reports
into `Delivered`. Rollout 2 (the roll forward): spec.image moves to a new tag, and the same happens
with a second artifact. Rollout 3 (the pin): spec.delivery.pinnedDigest names rollout 1's output, which
every host keeps (`keep` is 3), so each only re-points `current`: nothing is pulled. There is no
kubelet: the only simulated party is the build pod (bound and played to Succeeded by fleet_benchmark's
PodCompleter; it pushes a prepared `--size` artifact to the build's output tag, as the builder would, and
ends with the builder's JSON result as its termination message). The nodes have no kubelet either, and
kube-controller-manager runs without its node lifecycle controller (which would taint kubelet-less nodes
mid-run: events no real fleet sees).

Per rollout, printed with PASS/FAIL against the issue's budgets: the agents' API requests per host (audit
log, by user), the operator's status writes to the build and writes of its InitramfsRelease (audit log),
watch events handed to each agent's informers (counted in the agent processes, by resource: its Node and
the releases, which is all an agent watches), bytes each host read back from disk (the agent's
own counter of re-hashed bytes, and the processes' /proc read_bytes) beside the bytes each pulled from
the registry, and the time from the output appearing to Delivered N/N. Exit
status 1 if a budget fails or a host does not hold the artifact.
"""

import argparse
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import kubernetes

import _paths  # noqa: F401  (first: tests/ and operator/ on sys.path)
import fleet_benchmark as fleet
from fixtures.images import E, Layout
from fixtures.kube import Processes, wait_until
from fixtures.registry import start_registry
from initramfs_operator.kube import crd
from initramfs_operator.kube.delivery_status import DELIVERED
from initramfs_operator.oci.registry import RegistryOptions, push

HERE = Path(__file__).resolve().parent
AGENT_GROUP = "initramfs-delivery-agents"
AGENT_USER = "delivery-agent:"  # + the node's name
NAMESPACE, BUILD = "fleet", "vm-init"
OUTPUT_REPO, OUTPUT_TAG = "fleet/vm-init", "latest"
CPIO_GZ = "application/vnd.initramfs.v1.cpio+gzip"
SETTLE_SECONDS = 8.0  # after Delivered: the operator's last coalesced write (3 s window) and stragglers are counted

# Budgets of issue 20, item 8.
MAX_AGENT_REQUESTS_PER_HOST = 3
MAX_WATCH_EVENTS_PER_HOST = 5
MAX_DELIVERED_SECONDS = 60.0  # at 1,000 hosts, a 10 MB artifact, loopback

# The chart's agent rules (README "Delivery to VM hosts"), for the agents' group: not system:masters, so
# their requests are authorized and queued by API Priority and Fairness as a real DaemonSet's would be.
AGENT_RULES = [
    {"apiGroups": [crd.GROUP], "resources": [crd.RELEASE_PLURAL], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [crd.GROUP], "resources": [crd.DELIVERY_PLURAL],
     "verbs": ["get", "list", "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["secrets", "configmaps"], "verbs": ["get"]},
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=200, help="VM hosts: Nodes, each with its own agent")
    p.add_argument("--agents-per-process", type=int, default=100, help="agents sharing one agent_fleet.py process")
    p.add_argument("--size", type=int, default=10_000_000, help="bytes of each initramfs artifact")
    p.add_argument("--build-seconds", type=float, default=1.0, help="how long each build pod 'runs'")
    p.add_argument("--timeout", type=float, default=600, help="seconds each rollout may take")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, audit log, roots)")
    return p.parse_args()


@dataclass
class Artifact:
    source: str  # the image digest whose build produces it
    path: Path
    size: int
    sha256: str
    sha512: str


# --- the build pod: the one simulated party -----------------------------------------------------------------

class BuildPods(fleet.PodCompleter):
    """fleet_benchmark's kubelet stand-in, whose build pods end as an OCI build does: the artifact
    prepared for the image digest the pod builds is pushed to the build's output tag, and the termination
    message is the builder's JSON result for it."""

    def __init__(self, client: kubernetes.client.ApiClient, build_seconds: float, artifacts: list[Artifact],
                 registry_host: str):
        super().__init__(client, build_seconds, image_digest="")
        self.artifacts, self.registry_host = artifacts, registry_host

    def result(self, pod: dict) -> str:
        args = " ".join(pod["spec"]["containers"][0].get("args") or [])
        art = next(a for a in self.artifacts if a.source in args)
        repository = f"{self.registry_host}/{OUTPUT_REPO}"
        digest = push.push_artifact(str(art.path), f"{repository}:{OUTPUT_TAG}", media_type=CPIO_GZ,
                                    annotations={}, subject=None,
                                    options=RegistryOptions(insecure=(self.registry_host,)))
        return json.dumps({"reference": f"{repository}@{digest}", "tag": OUTPUT_TAG, "digest": digest,
                           "size": art.size, "entries": 7, "sha256": art.sha256, "sha512": art.sha512,
                           "compression": "gzip", "platform": "linux/amd64", "imageDigest": art.source})


# --- what the build shows, from a watch ------------------------------------------------------------------------

DELIVERED_DIGEST = re.compile(r"hold sha256:([0-9a-f]{64})")


@dataclass
class BuildSeen:
    """When the watcher first saw each output (by sha256) and Delivered True for a digest (the output, or the
    one a pin names), at the build's generation."""
    output: dict[str, float] = field(default_factory=dict)
    delivered: dict[str, float] = field(default_factory=dict)
    nodes: str = "-"
    message: str = ""

    def on_build(self, kind: str, build: dict) -> None:
        if kind == "DELETED" or build["metadata"]["name"] != BUILD:
            return
        status = build.get("status") or {}
        sha256 = (status.get("output") or {}).get("sha256")
        if not sha256 or not (status.get("output") or {}).get("reference"):
            return
        now = time.time()
        self.output.setdefault(sha256, now)
        self.nodes = (status.get("delivery") or {}).get("nodes", "-")
        cond = next((c for c in status.get("conditions") or [] if c["type"] == DELIVERED), {})
        self.message = cond.get("message", "")
        held = DELIVERED_DIGEST.search(self.message)
        if cond.get("status") == "True" and held and cond.get("observedGeneration") == build["metadata"]["generation"]:
            self.delivered.setdefault(held.group(1), now)


# --- the agents, in a few processes ---------------------------------------------------------------------------

class AgentFleet:
    def __init__(self, work: Path, server: str, ca: Path, tokens: dict[str, str], per_process: int):
        self.work, self.procs, self.stats_files = work, [], []
        nodes = list(tokens)
        for i in range(0, len(nodes), per_process):
            n = i // per_process
            config = {"server": server, "ca": str(ca), "root": str(work / "roots"),
                      "stats": str(work / f"agents-{n}.json"),
                      "agents": [{"node": node, "token": tokens[node]} for node in nodes[i:i + per_process]]}
            path = work / f"agents-{n}.config.json"
            path.write_text(json.dumps(config))
            with open(work / f"agents-{n}.log", "ab") as log:
                self.procs.append(subprocess.Popen([sys.executable, str(HERE / "agent_fleet.py"), str(path)],
                                                   stdout=log, stderr=subprocess.STDOUT))
            self.stats_files.append(Path(config["stats"]))

    def stats(self, newer_than: float = 0.0) -> list[dict]:
        """Each process's latest stats, waiting until every one was written after `newer_than`."""
        def read() -> list[dict] | None:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"an agent process exited with {p.returncode}; logs in {self.work}")
            try:
                docs = [json.loads(f.read_text()) for f in self.stats_files]
            except (OSError, ValueError):
                return None
            return docs if all(d["t"] > newer_than for d in docs) else None
        # Generous: agent processes starved of CPU (1,000 agents on 2 cores) write their stats late.
        return wait_until(read, timeout=300, what="the agent processes' stats")

    def synced(self, hosts: int) -> bool:
        docs = self.stats()
        return sum(a["synced"] for d in docs for a in d["agents"].values()) == hosts

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@dataclass
class Snapshot:
    """Cumulative counters of every agent and agent process at one moment."""
    t: float
    events: dict[str, Counter]        # node -> watch events by resource
    bookmarks: dict[str, int]
    hashed: dict[str, int]            # node -> bytes re-read from disk to verify a file
    downloaded: dict[str, int]        # node -> bytes pulled from the registry into its store
    installs: dict[str, int]
    io: dict[int, dict[str, int]]     # pid -> /proc/PID/io
    agents: dict[int, int]            # pid -> agents in it
    rss: dict[int, tuple[float, float]]  # pid -> (VmRSS, VmHWM) MiB

    @classmethod
    def of(cls, docs: list[dict]) -> "Snapshot":
        return cls(min(d["t"] for d in docs),
                   {n: Counter(a["events"]) for d in docs for n, a in d["agents"].items()},
                   {n: a["bookmarks"] for d in docs for n, a in d["agents"].items()},
                   {n: a["bytes_hashed"] for d in docs for n, a in d["agents"].items()},
                   {n: a["downloaded"] for d in docs for n, a in d["agents"].items()},
                   {n: a["installs"] for d in docs for n, a in d["agents"].items()},
                   {d["pid"]: d["io"] for d in docs}, {d["pid"]: len(d["agents"]) for d in docs},
                   {d["pid"]: (d["rss_mib"], d["hwm_mib"]) for d in docs})


# --- one rollout ---------------------------------------------------------------------------------------------

@dataclass
class Rollout:
    name: str
    trigger: str  # what started it
    artifact: Artifact
    pin: bool = False  # a pin to an output the hosts keep: timed from the patch, and nothing may be pulled
    started: float = 0.0
    ended: float = 0.0
    output_at: float | None = None
    delivered_at: float | None = None
    before: Snapshot | None = None
    after: Snapshot | None = None


def wait_delivered(rollout: Rollout, seen: BuildSeen, timeout: float, check) -> None:
    sha = rollout.artifact.sha256
    last = 0.0
    while time.time() - rollout.started < timeout:
        check()
        if sha in seen.delivered:
            break
        if time.time() - last >= 5:
            last = time.time()
            state = "output recorded" if sha in seen.output else "building"
            print(f"  {rollout.name}: {time.time() - rollout.started:5.1f} s  {state}, nodes {seen.nodes}",
                  file=sys.stderr, flush=True)
        time.sleep(0.2)
    rollout.output_at = rollout.started if rollout.pin else seen.output.get(sha)
    rollout.delivered_at = seen.delivered.get(sha)


# --- the report --------------------------------------------------------------------------------------------

def read_audit(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def in_window(e: dict, rollout: Rollout) -> bool:
    return rollout.started <= fleet.utc(e["requestReceivedTimestamp"]) < rollout.ended


def resource(e: dict) -> str:
    ref = e.get("objectRef") or {}
    return ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")


@dataclass
class Measured:
    hosts: int
    size: int
    seconds_from_output: float | None
    seconds_from_start: float | None
    agent_requests: Counter              # (verb, resource) -> n
    requests_by_host: Counter            # node -> n
    status_writes: int
    status_writes_delivery: int          # of them, writes carrying status.delivery
    release_writes: int                  # the operator's writes of the build's InitramfsRelease
    events: Counter                      # resource -> n, all agents
    events_by_host: Counter
    bookmarks: int
    hashed_by_host: dict[str, int]
    downloaded_by_host: dict[str, int]
    installs: int
    read_bytes: int                      # block-device reads of the agent processes
    lines: list[str] = field(default_factory=list)


def measure(rollout: Rollout, audit: list[dict], hosts: int) -> Measured:
    assert rollout.before is not None and rollout.after is not None
    b, a = rollout.before, rollout.after
    agent_requests, by_host = Counter(), Counter()
    writes = delivery_writes = release_writes = 0
    for e in audit:
        if not in_window(e, rollout):
            continue
        user = e.get("user", {}).get("username", "")
        if user.startswith(AGENT_USER):
            agent_requests[(e["verb"], resource(e))] += 1
            by_host[user[len(AGENT_USER):]] += 1
        elif user == fleet.OPERATOR_USER and e["verb"] == "patch" and resource(e) == f"{crd.PLURAL}/status" \
                and (e.get("objectRef") or {}).get("name") == BUILD:
            writes += 1
            delivery_writes += "delivery" in ((e.get("requestObject") or {}).get("status") or {})
        elif user == fleet.OPERATOR_USER and e["verb"] in ("create", "update", "patch", "delete") \
                and resource(e) == crd.RELEASE_PLURAL:
            release_writes += 1
    events, events_by_host = Counter(), Counter()
    for node, after in a.events.items():
        diff = after - b.events.get(node, Counter())
        events.update(diff)
        events_by_host[node] = sum(diff.values())
    bookmarks = sum(a.bookmarks.values()) - sum(b.bookmarks.values())
    hashed = {node: a.hashed[node] - b.hashed.get(node, 0) for node in a.hashed}
    downloaded = {node: a.downloaded[node] - b.downloaded.get(node, 0) for node in a.downloaded}
    installs = sum(a.installs.values()) - sum(b.installs.values())
    read_bytes = sum(a.io[pid]["read_bytes"] - b.io[pid]["read_bytes"] for pid in a.io)
    from_output = rollout.delivered_at - rollout.output_at if rollout.delivered_at and rollout.output_at else None
    from_start = rollout.delivered_at - rollout.started if rollout.delivered_at else None
    return Measured(hosts, rollout.artifact.size, from_output, from_start, agent_requests, by_host, writes,
                    delivery_writes, release_writes, events, events_by_host, bookmarks, hashed, downloaded, installs,
                    read_bytes)


def print_rollout(rollout: Rollout, m: Measured) -> list[tuple[str, bool]]:
    n, size = m.hosts, m.size
    window = rollout.ended - rollout.started
    print(f"\n-- {rollout.name} ({rollout.artifact.size / 1e6:.0f} MB artifact, window {window:.0f} s) --")
    if m.seconds_from_output is not None:
        print(f"Delivered {n}/{n}: {m.seconds_from_output:.1f} s after the output was recorded, "
              f"{m.seconds_from_start:.1f} s after the {rollout.trigger}")
    else:
        print("Delivered N/N: NOT REACHED")
    total = sum(m.agent_requests.values())
    print(f"agent requests: {total} ({total / n:.2f} per host, max {max(m.requests_by_host.values(), default=0)} "
          f"per host, {n - len(m.requests_by_host)} hosts made none):")
    for (verb, res), count in sorted(m.agent_requests.items(), key=lambda kv: -kv[1]):
        print(f"  {verb:8} {res:28} {count:7}  {count / n:.2f} per host")
    print(f"operator status writes to the build: {m.status_writes} ({m.status_writes_delivery} with status.delivery)")
    print(f"operator writes of the build's release (what the agents watch): {m.release_writes}")
    ev = sum(m.events.values())
    most = max(m.events_by_host.values(), default=0)
    print(f"watch events handed to agents: {ev} ({ev / n:.2f} per host, max {most}; "
          f"by resource: {dict(m.events)}; bookmarks {m.bookmarks})")
    hashed = sum(m.hashed_by_host.values())
    pulled = sum(m.downloaded_by_host.values())
    print(f"bytes read back from disk: re-hashed by the stores {hashed / n / size:.3f} x the file per host "
          f"(max {max(m.hashed_by_host.values(), default=0) / size:.2f}); block reads of the agent processes "
          f"(read_bytes) {m.read_bytes / n / size:.3f} x per host")
    print(f"pulled from the registry: {pulled / n / size:.2f} x the file per host "
          f"(max {max(m.downloaded_by_host.values(), default=0) / size:.2f}); {m.installs} installs")
    per_host_requests = total / n
    worst = max(m.requests_by_host.values(), default=0)
    limit = n / 10 + 10
    disk = (hashed + m.read_bytes) / n
    pin = [(f"{rollout.name}: pulled from the registry {pulled} bytes = 0 (every host keeps the pinned version)",
            pulled == 0)] if rollout.pin else []
    return pin + [
        (f"{rollout.name}: Delivered {n}/{n} reached", m.seconds_from_output is not None),
        (f"{rollout.name}: agent API requests per host: mean {per_host_requests:.2f}, max {worst} "
         f"<= {MAX_AGENT_REQUESTS_PER_HOST}", worst <= MAX_AGENT_REQUESTS_PER_HOST),
        (f"{rollout.name}: operator status writes {m.status_writes} <= N/10 + 10 = {limit:.0f}",
         m.status_writes <= limit),
        (f"{rollout.name}: watch events per host: mean {ev / n:.2f}, max {most} <= {MAX_WATCH_EVENTS_PER_HOST}",
         most <= MAX_WATCH_EVENTS_PER_HOST),
        (f"{rollout.name}: bytes read per host: from disk {disk / size:.3f} + pulled {pulled / n / size:.2f} "
         f"x the file <= 1 + 1 (its verification at install, and the download)",
         disk <= size and max(m.downloaded_by_host.values(), default=0) <= size),
        (f"{rollout.name}: time to Delivered {n}/{n} "
         + (f"{m.seconds_from_output:.1f} s" if m.seconds_from_output is not None else "never")
         + f" <= {MAX_DELIVERED_SECONDS:.0f} s (the budget is for 1,000 hosts and 10 MB)",
         m.seconds_from_output is not None and m.seconds_from_output <= MAX_DELIVERED_SECONDS),
    ]


def check_hosts(roots: Path, nodes: list[str], art: Artifact, sample: int = 10) -> tuple[int, int]:
    """Hosts whose `current` does not name the artifact (all checked), and of a sample whose file does not
    hash to its sha512 (hashing every host's file would read N x size more here)."""
    wrong = sum(os.readlink(roots / n / NAMESPACE / BUILD / "current") != f"{art.sha256}.cpio.gz"
                if (roots / n / NAMESPACE / BUILD / "current").is_symlink() else 1 for n in nodes)
    step = max(1, len(nodes) // sample)
    bad = sum(hashlib.sha512((roots / n / NAMESPACE / BUILD / "current").read_bytes()).hexdigest() != art.sha512
              for n in nodes[::step] if (roots / n / NAMESPACE / BUILD / "current").exists())
    return wrong, bad


# --- the run ------------------------------------------------------------------------------------------------

def prepare_artifacts(work: Path, registry, size: int) -> list[Artifact]:
    """Two source images (tags 1 and 2, the roll forward moves spec.image from one to the other), and for each
    the initramfs its build pod will push."""
    layout = Layout(work / "layout")
    artifacts = []
    for version in ("1", "2"):
        desc = layout.image([[E("init", data=f"#!/bin/sh\necho version {version}\n".encode(), mode=0o755)]])
        layout.tag(desc, version)
        registry.push(layout.root, version, "src/app")
        path = work / f"initramfs-{version}.cpio.gz"
        data = os.urandom(size)
        path.write_bytes(data)
        artifacts.append(Artifact(desc["digest"], path, size, hashlib.sha256(data).hexdigest(),
                                  hashlib.sha512(data).hexdigest()))
    return artifacts


def create_nodes(client: kubernetes.client.ApiClient, nodes: list[str]) -> None:
    core = kubernetes.client.CoreV1Api(client)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda name: core.create_node({"metadata": {"name": name, "labels": {"vm-host": "true"}}},
                                                    _preload_content=False), nodes))


def grant_agents(client: kubernetes.client.ApiClient) -> None:
    rbac = kubernetes.client.RbacAuthorizationV1Api(client)
    rbac.create_cluster_role({"metadata": {"name": "bench-delivery-agent"}, "rules": AGENT_RULES})
    rbac.create_cluster_role_binding({
        "metadata": {"name": "bench-delivery-agent"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "bench-delivery-agent"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": AGENT_GROUP}]})


def main() -> int:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="delivery-bench-"))
    print(f"work directory: {work}", file=sys.stderr)
    fleet.AUDIT_POLICY["rules"] = [
        {"level": "Request", "users": [fleet.OPERATOR_USER], "verbs": ["patch"],
         "resources": [{"group": crd.GROUP, "resources": [f"{crd.PLURAL}/status"]}]},
        {"level": "Metadata", "users": [fleet.OPERATOR_USER]},
        {"level": "Metadata", "userGroups": [AGENT_GROUP]},
        {"level": "None"},
    ]
    nodes = [f"vm-host-{i:04d}" for i in range(args.hosts)]
    tokens = {node: secrets.token_hex(16) for node in nodes}
    (work / "tokens.csv").write_text("".join(f'{t},{AGENT_USER}{n},{n},"{AGENT_GROUP}"\n' for n, t in tokens.items()))
    ok = True
    with ExitStack() as stack:
        procs = Processes(work)
        stack.callback(procs.stop)
        plane = fleet.start_control_plane(fleet.build_tools(), work, procs,
                                          apiserver_args=(f"--token-auth-file={work / 'tokens.csv'}",),
                                          controllers="*,-node-lifecycle-controller")
        plane.cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                              "crd/initramfsdeliveries.initramfs.dev")
        registry, registry_proc = start_registry(work / "registry")
        stack.callback(registry_proc.terminate)
        artifacts = prepare_artifacts(work, registry, args.size)
        client = plane.cluster.api_client()
        core, custom = kubernetes.client.CoreV1Api(client), kubernetes.client.CustomObjectsApi(client)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        grant_agents(client)
        create_nodes(client, nodes)

        watcher = fleet.Watcher(plane)
        stack.callback(watcher.stopping.set)
        seen = BuildSeen()
        watcher.watch(f"/apis/{crd.GROUP}/{crd.VERSION}/namespaces/{NAMESPACE}/{crd.PLURAL}", seen.on_build)
        pods = BuildPods(client, args.build_seconds, artifacts, registry.host)
        pods.start(watcher)
        stack.callback(pods.stop)
        operator = fleet.OperatorProcess(plane.operator_kubeconfig, 4, work / "operator.log", None)
        operator.env["INITRAMFS_DELIVERY"] = "true"
        operator.start()
        stack.callback(operator.stop)

        started = time.time()
        agents = AgentFleet(work, plane.cluster.server, plane.cluster.ca_file, tokens, args.agents_per_process)
        stack.callback(agents.stop)
        wait_until(lambda: agents.synced(args.hosts), timeout=300, what="every agent's informers synced")
        print(f"{args.hosts} agents in {len(agents.procs)} processes synced in {time.time() - started:.0f} s",
              file=sys.stderr)
        time.sleep(3)  # their start-up requests are over: what follows is the rollouts

        def alive() -> None:
            if operator.proc.poll() is not None:
                raise RuntimeError(f"the operator exited with {operator.proc.returncode}")
            procs.check_alive()

        cpu_before = {"operator": fleet.cpu_seconds(operator.proc.pid),
                      "agents": sum(fleet.cpu_seconds(p.pid) for p in agents.procs),
                      "kube-apiserver": fleet.cpu_seconds(plane.apiserver_pid)}
        rollouts = [Rollout("rollout 1 (new build)", "build was created", artifacts[0]),
                    Rollout("rollout 2 (roll forward)", "spec.image moved to tag 2", artifacts[1]),
                    Rollout("rollout 3 (pin to 1)", "pinnedDigest was set", artifacts[0], pin=True)]
        for i, rollout in enumerate(rollouts):
            rollout.before = Snapshot.of(agents.stats(newer_than=time.time()))
            rollout.started = time.time()
            if i == 0:
                custom.create_namespaced_custom_object(crd.GROUP, crd.VERSION, NAMESPACE, crd.PLURAL, {
                    "apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": BUILD},
                    "spec": {"image": f"{registry.host}/src/app:1", "registry": {"insecure": True},
                             "output": {"oci": {"repository": f"{registry.host}/{OUTPUT_REPO}", "tag": OUTPUT_TAG}},
                             "delivery": {"nodeSelector": {"matchLabels": {"vm-host": "true"}}}}})
            elif rollout.pin:
                seen.delivered.pop(rollout.artifact.sha256, None)  # delivered in rollout 1: wait for it again
                custom.patch_namespaced_custom_object(
                    crd.GROUP, crd.VERSION, NAMESPACE, crd.PLURAL, BUILD,
                    {"spec": {"delivery": {"pinnedDigest": f"sha256:{rollout.artifact.sha256}"}}})
            else:
                custom.patch_namespaced_custom_object(crd.GROUP, crd.VERSION, NAMESPACE, crd.PLURAL, BUILD,
                                                      {"spec": {"image": f"{registry.host}/src/app:2"}})
            wait_delivered(rollout, seen, args.timeout, alive)
            time.sleep(SETTLE_SECONDS)
            rollout.ended = time.time()
            rollout.after = Snapshot.of(agents.stats(newer_than=rollout.ended))
            if rollout.delivered_at is None:
                print(f"{rollout.name}: not delivered within {args.timeout:.0f} s ({seen.nodes}: {seen.message})",
                      file=sys.stderr)
                break
        cpu = {"operator": fleet.cpu_seconds(operator.proc.pid) - cpu_before["operator"],
               "agents": sum(fleet.cpu_seconds(p.pid) for p in agents.procs) - cpu_before["agents"],
               "kube-apiserver": fleet.cpu_seconds(plane.apiserver_pid) - cpu_before["kube-apiserver"]}
        last = next((r.after for r in reversed(rollouts) if r.after is not None), None)
        agents.stop()
        operator.stop()
        time.sleep(1)  # the audit log has every request that ended
        audit = read_audit(plane.audit_log)

        print(f"\n== delivery benchmark: {args.hosts} hosts ({len(agents.procs)} agent processes of up to "
              f"{args.agents_per_process} agents), one build selecting all, {args.size / 1e6:.0f} MB artifacts ==")
        print("real: kube-apiserver, etcd, kube-controller-manager (Jobs), the operator process (--delivery), "
              "every agent (its own Node, token, informers, store, pulls), the registry (loopback). "
              "simulated: only the kubelet running the build pod (it pushes a prepared artifact and reports the "
              "builder's JSON result); the nodes run no kubelet.")
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; CPU seconds over the rollouts: "
              + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()))
        checks: list[tuple[str, bool]] = []
        measured = []
        for rollout in rollouts:
            if rollout.after is None:
                continue
            m = measure(rollout, audit, args.hosts)
            measured.append((rollout, m))
            checks += print_rollout(rollout, m)
        if last is not None:
            rss = sum(r for r, _ in last.rss.values())
            hwm = max(h for _, h in last.rss.values())
            print(f"\nagent processes: RSS {rss:.0f} MiB in all, {rss / args.hosts:.1f} MiB per agent instance "
                  f"(peak process {hwm:.0f} MiB for {max(last.agents.values())} agents)")
        wrong, bad = check_hosts(work / "roots", nodes, rollouts[-1].artifact)
        print(f"hosts whose current is not {rollouts[-1].name}'s artifact: {wrong}; of a sample of 10, files not "
              f"matching its sha512: {bad}")
        checks.append((f"every host's current is the last artifact ({wrong} not)", wrong == 0 and bad == 0))

        print("\nside by side:")
        print(f"  {'':34} " + "  ".join(f"{r.name:>26}" for r, _ in measured))
        rows = [
            ("time to Delivered N/N (s)", lambda m: f"{m.seconds_from_output:.1f}" if m.seconds_from_output else "-"),
            ("agent requests per host", lambda m: f"{sum(m.agent_requests.values()) / m.hosts:.2f}"),
            ("operator status writes (N/10+10)", lambda m: f"{m.status_writes} ({m.hosts / 10 + 10:.0f})"),
            ("operator release writes", lambda m: f"{m.release_writes}"),
            ("watch events per host", lambda m: f"{sum(m.events.values()) / m.hosts:.2f}"),
            ("disk bytes read per host / file",
             lambda m: f"{(sum(m.hashed_by_host.values()) + m.read_bytes) / m.hosts / m.size:.3f}"),
            ("pulled per host / file", lambda m: f"{sum(m.downloaded_by_host.values()) / m.hosts / m.size:.2f}"),
        ]
        for label, fmt in rows:
            print(f"  {label:34} " + "  ".join(f"{fmt(m):>26}" for _, m in measured))

        print("\nbudgets (issue 20, item 8; the pin: issue 21):")
        for text, passed in checks:
            print(f"  {'PASS' if passed else 'FAIL'}  {text}")
        ok = all(passed for _, passed in checks) and len(measured) == len(rollouts)
    if not args.keep:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
