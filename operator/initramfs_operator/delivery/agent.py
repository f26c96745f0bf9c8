"""The delivery agent: one per VM host (the chart's DaemonSet), `initramfs-delivery-agent`.

It follows the InitramfsBuilds whose `spec.delivery.nodeSelector` matches its own Node's
labels (both from watches: no request per pass), and for each one keeps
`<root>/<namespace>/<directory>/current` pointing at the build's latest output, pulled from
the registry by digest and verified against the layer digest and `status.output.sha512`
(see store.py for the placement rules). What it holds it reports in one small
InitramfsDelivery object per build, which only the operator reads.

An agent works on a build only when what its node should hold may have changed: the build's
generation (its spec: selector, keep, reclaim policy, directory, registry access), its output,
or the node's labels. The operator's status writes and annotation edits, seen by every agent,
cost a comparison each. A file once verified is not read again until its identity on disk
changes or it is due for its periodic re-verification (store.py).

A failed download or a mismatch leaves `current` where it was and is retried with
exponential backoff. Builds are delivered by a few workers, at most `Pulls.per_registry` of them
pulling from one registry, each pull bounded in time (`Pulls`): a registry that stalls holds up
its own builds only, and they fail and are retried. When the node stops matching (or the build
is deleted), the report is deleted and the files are kept or removed as `spec.delivery.reclaimPolicy` says.

It serves its probes and metrics on one port (metrics.py): alive while its workers go round, ready once
its informers have listed what they watch.
"""

import argparse
import dataclasses
import hashlib
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import BuildError, RegistryError, UsageError
from ..kube import api, client, conditions, crd, registry_access, selector
from ..kube.workqueue import Backoff, Retries, WorkQueue
from ..oci import reference
from ..oci.registry import RegistryOptions, artifact
from . import metrics
from .informer import Informer, Key, Obj
from .store import Expected, Readable, Verified, VersionStore

log = logging.getLogger(__name__)

FIELD_MANAGER = "initramfs-delivery-agent"
DEFAULT_KEEP = 3
DEFAULT_PORT = 8082  # of /healthz, /readyz and /metrics; the operator's are 8080 and 8081
BACKOFF = Backoff(base=5.0, cap=300.0)
MAX_NAME = 253
# The chart grants the agent get on both in the namespaces it serves (deliveryNamespacedRules).
READ_HINT = " (the chart's delivery agent Role allows get on secrets and configmaps in served namespaces)"
REGISTRY_BUSY_SECONDS = 2.0  # a build whose registry has every pull slot taken looks again after this


@dataclass(frozen=True)
class Pulls:
    """How the agent uses registries. Less patient than the CLI (60 s reads, 5 attempts): it has other
    builds to deliver, and retries a failed one with backoff anyway."""

    connect: float = 10.0       # seconds to connect
    read: float = 30.0          # seconds without a byte
    base: float = 60.0          # seconds an attempt may take, plus the artifact's size at `floor_rate`
    floor_rate: float = 1 << 20  # bytes per second: slower than this on average, an attempt is given up
    retries: int = 2            # of a transient failure within one delivery (the CLI: 4)
    workers: int = 4            # builds delivered at once
    per_registry: int = 2       # of them pulling from one registry

    def options(self, options: RegistryOptions) -> RegistryOptions:
        return dataclasses.replace(options, timeout=httpx.Timeout(self.read, connect=self.connect),
                                   retries=self.retries)

    def limit(self, size: int) -> float:
        """Seconds one attempt at pulling `size` bytes may take."""
        return self.base + size / self.floor_rate


@dataclass(frozen=True)
class Wanted:
    """What a node should hold for one build: where, which file, and how to fetch it."""

    directory: str
    keep: int
    reclaim: str  # "Retain" or "Delete"
    reference: str | None  # repository@digest of the artifact, once the build has an OCI output
    expected: Expected | None


def wanted(build: Obj) -> Wanted:
    spec, output = build["spec"], (build.get("status") or {}).get("output") or {}
    delivery = spec.get("delivery") or {}
    # Always under the build's namespace: one namespace's builds can never overwrite another's files.
    directory = f"{build['metadata']['namespace']}/{delivery.get('directory') or build['metadata']['name']}"
    expected = reference = None
    if output.get("reference") and output.get("sha256") and output.get("sha512"):
        reference = output["reference"]
        expected = Expected(output["sha256"], output["sha512"], int(output["size"]),
                            output.get("compression", "gzip"))
    return Wanted(directory, int(delivery.get("keep", DEFAULT_KEEP)), delivery.get("reclaimPolicy", "Retain"),
                  reference, expected)


def holding(build: Obj) -> tuple[Any, ...]:
    """What, of a build, decides what a node holds and reports: its spec (by generation) and its output."""
    output = (build.get("status") or {}).get("output") or {}
    return (build["metadata"]["uid"], build["metadata"].get("generation"),
            *(output.get(k) for k in ("reference", "sha256", "sha512", "size", "compression")))


def report_name(build_name: str, node: str) -> str:
    name = f"{build_name}.{node}"
    if len(name) <= MAX_NAME:
        return name
    suffix = "-" + hashlib.sha256(name.encode()).hexdigest()[:10]
    return name[: MAX_NAME - len(suffix)].rstrip("-.") + suffix


class Agent:
    def __init__(self, transport: api.Transport, node: str, root: str, namespaces: tuple[str, ...] = (),
                 verified: Verified | None = None, pulls: Pulls = Pulls()):
        self.kube = api.Kube(transport)  # the one client style of this process: the API's JSON as it is
        self.metrics = metrics.Metrics()
        self.read = registry_access.ObjectReader(self.kube.get, "the delivery agent",
                                                 {"secrets": READ_HINT, "configmaps": READ_HINT})
        self.node, self.root, self.namespaces = node, root, namespaces
        self.queue = WorkQueue()
        self.retries = Retries(BACKOFF)
        self.node_labels: dict[str, str] = {}
        # What each of this node's reports says now (its status, and its name), to write only changes
        # and to find the reports of builds this node no longer serves; seeded by one LIST at start.
        self.reported: dict[Key, dict[str, Any]] = {}
        self.last_seen: dict[Key, Obj] = {}  # builds as last seen, for their reclaim policy after deletion
        # files hashed lately, for every build's store
        self.verified = verified or Verified(observe=self.metrics.verify.observe)
        self.pulls = pulls
        self._registry_slots: dict[str, threading.Semaphore] = {}
        self._slots_lock = threading.Lock()
        self.stopping = threading.Event()
        self._beats: dict[str, float] = {}  # worker thread name -> when it last went round or moved bytes
        self.builds = self._build_informers(namespaces)
        self.nodes = Informer("node", self.kube, api.path("v1", "nodes"), self._node_changed,
                              {"fieldSelector": f"metadata.name={node}"})

    def _build_informers(self, namespaces: tuple[str, ...]) -> list[Informer]:
        """One watch over the cluster, or one per served namespace (all a namespaced install may do)."""
        def changed(key: Key, old: Obj | None, new: Obj | None) -> None:
            if old is None or new is None or holding(old) != holding(new):
                self.queue.add(key)
        if not namespaces:
            return [Informer("builds", self.kube, api.path(crd.API_VERSION, crd.PLURAL), changed)]
        return [Informer(f"builds in {ns}", self.kube, api.path(crd.API_VERSION, crd.PLURAL, ns), changed)
                for ns in namespaces]

    def build(self, key: Key) -> Obj | None:
        return next((i.objects[key] for i in self.builds if key in i.objects), None)

    def _node_changed(self, key: Key, old: Obj | None, new: Obj | None) -> None:
        """Only labels feed the selectors: the kubelet's status updates queue nothing."""
        labels = dict(((new or {}).get("metadata") or {}).get("labels") or {})
        if labels == self.node_labels and old is not None:
            return
        self.node_labels = labels
        for informer in self.builds:
            for build in list(informer.objects):
                self.queue.add(build)

    def load_reports(self) -> None:
        """This node's reports as they are, so a restarted agent neither rewrites nor forgets them."""
        query = {"labelSelector": f"{crd.NODE_LABEL}={self.node}"}
        items = [item for namespace in self.namespaces or (None,)
                 for item in self.kube.get(api.path(crd.API_VERSION, crd.DELIVERY_PLURAL, namespace), query)["items"]]
        for item in items:
            key = (item["metadata"]["namespace"], item["spec"]["buildName"])
            self.reported[key] = {**(item.get("status") or {}), "name": item["metadata"]["name"]}
            self.queue.add(key)

    def run(self) -> None:
        self.load_reports()
        self.nodes.start()
        for informer in self.builds:
            informer.start()
        workers = [threading.Thread(target=self._work, name=f"delivery {i}", daemon=True)
                   for i in range(self.pulls.workers)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    def _work(self) -> None:
        """One worker: the queue hands a build to one worker at a time."""
        while not self.stopping.is_set():
            self._beat()
            key = self.queue.get(timeout=1.0)
            if key is None:
                continue
            try:
                self.sync(key)
            except Exception:  # a bug in one build's pass must not end the worker
                log.exception("%s: delivery failed", key)
                self.queue.add_after(key, BACKOFF.delay(1))
            finally:
                self.queue.done(key)

    def _beat(self) -> None:
        self._beats[threading.current_thread().name] = time.monotonic()

    def alive(self) -> str | None:
        """What is stuck (the liveness probe's answer), or None."""
        now = time.monotonic()
        stalled = sorted(name for name, beat in list(self._beats.items()) if now - beat > metrics.STALLED_SECONDS)
        return f"{', '.join(stalled)} stalled for more than {metrics.STALLED_SECONDS:.0f}s" if stalled else None

    def ready(self) -> str | None:
        """What has not been listed yet (the readiness probe's answer), or None."""
        waiting = [i.name for i in (self.nodes, *self.builds) if not i.synced.is_set()]
        return f"waiting for the first listing of {', '.join(waiting)}" if waiting else None

    def stop(self) -> None:
        self.stopping.set()
        self.nodes.stop()
        for informer in self.builds:
            informer.stop()

    # --- one build ------------------------------------------------------------------------------

    def sync(self, key: Hashable) -> None:
        assert isinstance(key, tuple)
        if not self.nodes.synced.is_set():
            self.queue.add_after(key, 1.0)  # a node's labels decide everything: wait for them
            return
        build = self.build(key)
        if build is not None and selector.matches((build["spec"].get("delivery") or {}).get("nodeSelector"),
                                                  self.node_labels):
            self.last_seen[key] = build
            self.deliver(key, build)
        elif key in self.last_seen or key in self.reported:
            self.release(key, build or self.last_seen.get(key))
            self.last_seen.pop(key, None)

    def deliver(self, key: Key, build: Obj) -> None:
        want = wanted(build)
        store = VersionStore(self.root, want.directory, self.verified)
        path = os.path.join(self.root, want.directory, "current")
        if want.reference is None or want.expected is None:
            self.report(key, build, "Pending", "waiting for the build's first OCI output", path=path)
            return
        try:
            if store.current() != want.expected.filename or not store.has(want.expected):
                registry = reference.parse(want.reference).registry
                slot = self._registry_slot(registry)
                if slot is None:
                    self.report(key, build, "Pending", f"waiting for one of {registry}'s "
                                f"{self.pulls.per_registry} pull slots", path=path)
                    self.queue.add_after(key, REGISTRY_BUSY_SECONDS)
                    return
                try:
                    self.report(key, build, "Pending", f"pulling {want.reference}", path=path)
                    name = self.fetch(build, want, store)
                finally:
                    slot.release()
                store.activate(name)
                self.metrics.deliveries.labels(metrics.DELIVERED).inc()
            store.prune(want.keep)
        except (BuildError, OSError) as e:
            self.metrics.deliveries.labels(metrics.FAILED).inc()
            self.metrics.failures.labels(metrics.stage_of(e)).inc()
            held = self._held(store)
            self.metrics.holds(*key, held)
            retry = self.retries.failed(key)
            self.queue.add_after(key, retry.delay)
            message = f"{e}; current is unchanged; retrying in {retry.delay:.0f}s (attempt {retry.failures})"
            log.warning("%s/%s: %s", *key, message)
            self.report(key, build, "Failed", message, attempts=retry.failures, path=path, digest=held)
            return
        self.retries.reset(key)
        self.metrics.holds(*key, f"sha256:{want.expected.sha256}")
        # Due once the file's verification has expired (jittered, so a fleet's disks are not read at once).
        self.queue.add_after(key, self.verified.max_age * (1 + 0.1 * random.random()))
        self.report(key, build, "Ready", f"current is {want.expected.filename}", path=path,
                    digest=f"sha256:{want.expected.sha256}")

    def _registry_slot(self, registry: str) -> threading.Semaphore | None:
        """One of the registry's pull slots, taken (release it), or None if all are."""
        with self._slots_lock:
            slots = self._registry_slots.setdefault(registry, threading.Semaphore(self.pulls.per_registry))
        return slots if slots.acquire(blocking=False) else None

    def fetch(self, build: Obj, want: Wanted, store: VersionStore) -> str:
        assert want.reference is not None and want.expected is not None
        options = self.pulls.options(
            registry_access.registry_options(self.read, build["metadata"]["namespace"], build["spec"]))
        layer = artifact.layer_of(want.reference, options)
        if layer.digest != f"sha256:{want.expected.sha256}" or layer.size != want.expected.size:
            raise UsageError(f"{want.reference}: its layer {layer.digest} ({layer.size} bytes) is not the build's "
                             f"output sha256:{want.expected.sha256} ({want.expected.size} bytes)")
        expected, limit = want.expected, self.pulls.limit(layer.size)
        return artifact.read_layer(want.reference, layer, options, lambda stream: store.install(
            _Deadline(stream, limit, want.reference, self._pulled), expected))

    def _pulled(self, size: int) -> None:
        self.metrics.pulled.inc(size)
        self._beat()  # a long pull is progress, not a stuck worker

    def release(self, key: Key, build: Obj | None) -> None:
        """The node no longer serves the build: delete the report; keep or remove the files as the build's
        reclaimPolicy says (a build deleted while the agent was down leaves its files: its policy is gone)."""
        want = wanted(build) if build is not None else None
        if want is not None and want.reclaim == "Delete":
            try:
                VersionStore(self.root, want.directory).remove_all()
            except (BuildError, OSError) as e:
                log.warning("%s/%s: cannot remove %s: %s", *key, want.directory, e)
        self.retries.reset(key)
        self.metrics.holds(*key, None)
        reported = self.reported.pop(key, None)
        if reported is not None:
            try:
                self.kube.delete(api.path(crd.API_VERSION, crd.DELIVERY_PLURAL, key[0], reported["name"]))
            except api.ApiError as e:
                if e.status != 404:
                    raise

    def report(self, key: Key, build: Obj, phase: str, message: str, *, path: str, attempts: int = 0,
               digest: str | None = None) -> None:
        """Server-side apply of this node's InitramfsDelivery; only when something changed."""
        status: dict[str, Any] = {"phase": phase, "message": message[:2048], "attempts": attempts, "path": path,
                                  "observedBuildGeneration": build["metadata"]["generation"]}
        if digest:
            status["digest"] = digest
        meta = build["metadata"]
        name = report_name(meta["name"], self.node)
        previous = self.reported.get(key) or {}
        unchanged = {k: v for k, v in previous.items() if k not in ("lastTransitionTime", "name")} == status
        if unchanged and previous.get("name") == name:
            return
        # Applied every time: a field this manager stops sending would be removed.
        now = conditions.timestamp(conditions.now())
        status["lastTransitionTime"] = conditions.transition_time(previous, phase, now, key="phase")
        body = {
            "apiVersion": crd.API_VERSION, "kind": crd.DELIVERY_KIND,
            "metadata": {"name": name, "namespace": meta["namespace"],
                         "labels": {crd.BUILD_UID_LABEL: meta["uid"], crd.NODE_LABEL: self.node},
                         "ownerReferences": [{"apiVersion": crd.API_VERSION, "kind": crd.KIND, "name": meta["name"],
                                              "uid": meta["uid"]}]},
            "spec": {"buildName": meta["name"], "buildUID": meta["uid"], "nodeName": self.node},
            "status": status,
        }
        try:
            self.kube.call("PATCH", api.path(crd.API_VERSION, crd.DELIVERY_PLURAL, meta["namespace"], name),
                           query={"fieldManager": FIELD_MANAGER, "force": "true"}, body=body,
                           content_type="application/apply-patch+yaml")
        except api.ApiError as e:
            log.warning("%s/%s: cannot report %s: %s", *key, phase, api.message_of(e))
            self.metrics.failures.labels(metrics.REPORT).inc()
            self.queue.add_after(key, BACKOFF.delay(1))
            return
        self.reported[key] = {**status, "name": name}

    @staticmethod
    def _held(store: VersionStore) -> str | None:
        current = store.current()
        return f"sha256:{current.split('.', 1)[0]}" if current else None


class _Deadline:
    """A transfer that must be over within `seconds` of its start (checked between reads, each of which the
    read timeout bounds): a registry trickling a byte now and then is given up too. `pulled` is told the
    size of each read."""

    def __init__(self, stream: Readable, seconds: float, what: str | None, pulled: Callable[[int], None]):
        self._stream, self._seconds, self._what, self._pulled = stream, seconds, what, pulled
        self._end = time.monotonic() + seconds

    def read(self, n: int = -1, /) -> bytes:
        if time.monotonic() > self._end:
            raise RegistryError(f"{self._what}: the transfer took more than {self._seconds:.0f}s")
        chunk = self._stream.read(n)
        self._pulled(len(chunk))
        return chunk


def main(argv: list[str] | None = None) -> None:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="initramfs-delivery-agent",
                                description="Places the InitramfsBuilds selected for this node on its disk.")
    p.add_argument("--node-name", default=env("NODE_NAME"), help="this node's name ($NODE_NAME, from the Downward API)")
    p.add_argument("--root", default=env("INITRAMFS_DELIVERY_ROOT", "/var/lib/initramfs"),
                   help="host directory holding every delivery ($INITRAMFS_DELIVERY_ROOT, default /var/lib/initramfs)")
    p.add_argument("--namespaces", default=env("INITRAMFS_WATCH_NAMESPACES", ""),
                   help="comma-separated namespaces to serve ($INITRAMFS_WATCH_NAMESPACES; default: all)")
    p.add_argument("--port", type=int, default=int(env("INITRAMFS_DELIVERY_PORT", DEFAULT_PORT)),
                   help=f"port of /healthz, /readyz and /metrics ($INITRAMFS_DELIVERY_PORT, default {DEFAULT_PORT}; "
                   "0: any free one)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if not args.node_name:
        p.error("--node-name or NODE_NAME is required")
    if not os.path.isdir(args.root):
        p.error(f"delivery root {args.root} is not a directory")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request, watches and pulls alike
    namespaces = tuple(n.strip() for n in args.namespaces.split(",") if n.strip())
    agent = Agent(client.HttpxTransport(client.load()), args.node_name, args.root, namespaces)
    metrics.serve(args.port, agent.metrics, agent.alive, agent.ready)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop())
    agent.run()


if __name__ == "__main__":
    main()
