"""The delivery agent: one per VM host (the chart's DaemonSet), `initramfs-delivery-agent`.

It follows the InitramfsReleases whose `spec.delivery.nodeSelector` matches its own Node's
labels (both from watches: no request per pass), and for each one keeps
`<root>/<namespace>/<directory>/current` pointing at the release's output, pulled from
the registry by digest and verified against the layer digest and its sha512
(see store.py for the placement rules). What it holds it reports in one small
InitramfsDelivery object per build, which only the operator reads.

A release is the operator's digest of one InitramfsBuild (kube/release.py): exactly what hosts act on,
written only when that changes. The agent never reads builds: their status writes and edits of fields
hosts do not use reach no agent. So every release event is work, and the only other work is the
node's labels changing. A file once verified is not read again until its identity on disk changes or
it is due for its periodic re-verification (store.py).

Before it writes anything it applies the admin's rules (tenancy.py): the build's namespace may
deliver, the directory is the build's (not another build's of the namespace), and the namespace's
versions on this host stay within its quota. A build refused by one of them is reported Failed with
the rule as its reason, and nothing of it is written.

A build of several platforms has one file per platform: the agent takes its own Node's (by its
kubernetes.io/os and kubernetes.io/arch labels, crd.file_for, the rule the operator counts by); a build of
one platform has one file, for nodes of that platform (and nodes without the labels). A node of no platform
the build has pulls and writes nothing, and reports Failed with reason NoPlatform, naming the build's
platforms; the operator does not count it as desired.

The registry credentials are the chart's delivery pull Secret when there is one, else the build's push
Secret (the release names it): the agent reads only Secrets and ConfigMaps the admin named in the chart's values.

A failed download or a mismatch leaves `current` where it was and is retried with
exponential backoff. Builds are delivered by a few workers, at most `Pulls.per_registry` of them
pulling from one registry, each pull bounded in time (`Pulls`): a registry that stalls holds up
its own builds only, and they fail and are retried. When the node stops matching (or the build
is deleted), the report is deleted and the files are kept or removed as its reclaimPolicy says.

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
from ..kube.informer import Informer, Key, Obj
from ..kube.workqueue import Backoff, Retries, WorkQueue
from ..oci import reference
from ..oci.registry import RegistryOptions, artifact
from . import metrics
from .store import Expected, Readable, Verified, VersionStore, namespace_bytes
from .tenancy import (
    DELIVERY_CONFLICT,
    NAMESPACE_NOT_ALLOWED,
    QUOTA_EXCEEDED,
    Claimant,
    Tenancy,
    bytes_after,
    directory_owner,
)

log = logging.getLogger(__name__)

FIELD_MANAGER = "initramfs-delivery-agent"
DEFAULT_PORT = 8082  # of /healthz, /readyz and /metrics; the operator's are 8080 and 8081
BACKOFF = Backoff(base=5.0, cap=300.0)
MAX_NAME = 253
# The chart lets the agent read only the objects its values name, by name.
READ_HINTS = {"secrets": " (the agents may read only the chart's delivery.pullSecret and the Secrets "
                         "delivery.readableSecrets lists)",
              "configmaps": " (the agents may read only the ConfigMaps the chart's delivery.readableConfigMaps lists)"}
NO_PLATFORM = "NoPlatform"  # the reason of a build with no file for this node's platform
REGISTRY_BUSY_SECONDS = 2.0  # a build whose registry has every pull slot taken looks again after this
QUOTA_RECHECK_SECONDS = 60.0  # a build over its namespace's quota looks again after this (others may shrink)


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
    reference: str | None  # repository@digest of the artifact, once the release has an output
    expected: Expected | None
    now: bool = True  # whether this node may take it now (not while waiting for its wave)
    no_platform: str | None = None  # why the output has no file for this node


def wanted(release: Obj, node: str = "", labels: dict[str, str] | None = None) -> Wanted:
    """What `node`, with these labels (its platform), should hold of the release."""
    spec = release["spec"]
    delivery, output = spec["delivery"], spec.get("output")
    # Always under the build's namespace: one namespace's builds can never overwrite another's files.
    directory = f"{release['metadata']['namespace']}/{delivery['directory']}"
    expected = reference = no_platform = None
    file = crd.file_for(output, labels or {}) if output else None
    if file:
        reference = file["reference"]
        expected = Expected(file["sha256"], file["sha512"], int(file["size"]), file.get("compression", "gzip"))
    elif output:
        no_platform = _no_platform(output, labels or {})
    waves = spec.get("rollout")
    return Wanted(directory, int(delivery["keep"]), delivery["reclaimPolicy"], reference, expected,
                  waves is None or node in (waves.get("nodes") or []), no_platform)


def _no_platform(output: Obj, labels: dict[str, str]) -> str:
    has = ", ".join(crd.platform_name(p) for p in crd.platforms_of(output))
    missing = [label for label in (crd.OS_LABEL, crd.ARCH_LABEL) if not labels.get(label)]
    if missing:
        return f"this node has no {' and no '.join(missing)} label, so none of the build's platforms ({has}) is its own"
    return f"the build has no file for this node's platform {crd.node_platform(labels)}, only for {has}"


def _selects(release: Obj, labels: dict[str, str]) -> bool:
    return selector.matches(release["spec"]["delivery"]["nodeSelector"], labels)


def _claimant(release: Obj) -> Claimant:
    spec = release["spec"]
    return Claimant(spec["buildCreationTimestamp"], release["metadata"]["name"], spec["buildUID"])


def report_name(build_name: str, node: str) -> str:
    name = f"{build_name}.{node}"
    if len(name) <= MAX_NAME:
        return name
    suffix = "-" + hashlib.sha256(name.encode()).hexdigest()[:10]
    return name[: MAX_NAME - len(suffix)].rstrip("-.") + suffix


class Agent:
    def __init__(self, transport: api.Transport, node: str, root: str, namespaces: tuple[str, ...] = (),
                 verified: Verified | None = None, pulls: Pulls = Pulls(), tenancy: Tenancy | None = None,
                 pull_secret: tuple[str, str] | None = None):
        self.kube = api.Kube(transport)  # the one client style of this process: the API's JSON as it is
        self.metrics = metrics.Metrics()
        self.read = registry_access.ObjectReader(self.kube.get, "the delivery agent", READ_HINTS)
        self.node, self.root, self.namespaces = node, root, namespaces
        self.tenancy, self.pull_secret = tenancy or Tenancy(), pull_secret  # pull_secret: (namespace, name)
        self.queue = WorkQueue()
        self.retries = Retries(BACKOFF)
        self.node_labels: dict[str, str] = {}
        # What each of this node's reports says now (its status, and its name), to write only changes
        # and to find the reports of builds this node no longer serves; seeded by one LIST at start.
        self.reported: dict[Key, dict[str, Any]] = {}
        self.last_seen: dict[Key, Obj] = {}  # releases as last seen, for their reclaim policy after deletion
        # files hashed lately, for every build's store
        self.verified = verified or Verified(observe=self.metrics.verify.observe)
        self.pulls = pulls
        self._registry_slots: dict[str, threading.Semaphore] = {}
        self._slots_lock = threading.Lock()
        # Directory claims are decided one at a time (an owner mark read, then written); bytes being pulled
        # count against their namespace's quota until they are on disk.
        self._claims_lock = threading.Lock()
        self._quota_lock = threading.Lock()
        self._pulling: dict[str, int] = {}
        self.stopping = threading.Event()
        self._beats: dict[str, float] = {}  # worker thread name -> when it last went round or moved bytes
        self.releases = self._release_informers(namespaces)
        self.nodes = Informer("node", self.kube, api.path("v1", "nodes"), self._node_changed,
                              {"fieldSelector": f"metadata.name={node}"}, metadata_only=True)
        # The namespaces the admin's selector picks (a namespace leaving it is a deletion to this watch).
        chosen = self.tenancy.namespace_selector
        self.selected = Informer("namespaces", self.kube, api.path("v1", "namespaces"), self._namespace_changed,
                                 {"labelSelector": chosen}) if chosen else None
        self.informers = [self.nodes, *([self.selected] if self.selected else []), *self.releases]

    def _release_informers(self, namespaces: tuple[str, ...]) -> list[Informer]:
        """One watch over the cluster, or one per served namespace (all a namespaced install may do). The
        operator writes a release only when what it says changes: every event is work."""
        def changed(key: Key, old: Obj | None, new: Obj | None) -> None:
            self.queue.add(key)
            if old is None or new is None or wanted(old).directory != wanted(new).directory:
                # A claimant came or went: the directory may be another build's now.
                for release in (old, new):
                    if release is not None:
                        self._queue_claimants(wanted(release).directory)
        if not namespaces:
            return [Informer("releases", self.kube, api.path(crd.API_VERSION, crd.RELEASE_PLURAL), changed)]
        return [Informer(f"releases in {ns}", self.kube, api.path(crd.API_VERSION, crd.RELEASE_PLURAL, ns), changed)
                for ns in namespaces]

    def release(self, key: Key) -> Obj | None:
        return next((i.objects[key] for i in self.releases if key in i.objects), None)

    def _namespace_releases(self, namespace: str) -> list[Obj]:
        return [release for informer in self.releases for (ns, _), release in list(informer.objects.items())
                if ns == namespace]

    def _queue_claimants(self, directory: str) -> None:
        namespace = directory.split("/", 1)[0]
        for release in self._namespace_releases(namespace):
            if wanted(release).directory == directory:
                self.queue.add((namespace, release["metadata"]["name"]))

    def _namespace_changed(self, key: Key, old: Obj | None, new: Obj | None) -> None:
        """A namespace entered or left the admin's selector: its builds may deliver now, or not."""
        for release in self._namespace_releases(key[1]):
            self.queue.add((key[1], release["metadata"]["name"]))

    def _node_changed(self, key: Key, old: Obj | None, new: Obj | None) -> None:
        """Only labels feed the selectors: the kubelet's status updates queue nothing."""
        labels = dict(((new or {}).get("metadata") or {}).get("labels") or {})
        if labels == self.node_labels and old is not None:
            return
        self.node_labels = labels
        for informer in self.releases:
            for key in list(informer.objects):
                self.queue.add(key)

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
        for informer in self.informers:
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
        waiting = [i.name for i in self.informers if not i.synced.is_set()]
        return f"waiting for the first listing of {', '.join(waiting)}" if waiting else None

    def stop(self) -> None:
        self.stopping.set()
        for informer in self.informers:
            informer.stop()

    # --- one build ------------------------------------------------------------------------------

    def sync(self, key: Hashable) -> None:
        assert isinstance(key, tuple)
        if not all(informer.synced.is_set() for informer in self.informers):
            self.queue.add_after(key, 1.0)  # labels, namespaces and claimants decide everything: wait for them
            return
        release = self.release(key)
        if release is not None and _selects(release, self.node_labels):
            self.last_seen[key] = release
            self.deliver(key, release)
        elif key in self.last_seen or key in self.reported:
            self.leave(key, release or self.last_seen.get(key))
            self.last_seen.pop(key, None)

    def deliver(self, key: Key, release: Obj) -> None:
        want = wanted(release, self.node, self.node_labels)
        path = os.path.join(self.root, want.directory, "current")
        if want.no_platform is not None:
            # Nothing on this host is touched (not even the build's directory made); looked at again when the
            # release or the node's labels change, nothing to retry meanwhile.
            self.report(key, release, "Failed", f"{want.no_platform}; nothing was pulled", path=path,
                        reason=NO_PLATFORM)
            return
        store = VersionStore(self.root, want.directory, self.verified)
        try:
            refused = self._refused(key[0], release, want, store)
            if refused is not None:
                # Looked at again when what decided it changes (a claimant, the namespace's labels).
                reason, message = refused
                self.report(key, release, "Failed", f"{message}; nothing was written", path=path, reason=reason)
                return
            if want.reference is None or want.expected is None:
                self.report(key, release, "Pending", "waiting for the build's first OCI output", path=path)
                return
            if store.current() != want.expected.filename and not want.now:
                # Rolled out in waves, and this node's has not started: it keeps what it holds.
                self.report(key, release, "Pending", f"waiting for its wave of {want.reference}", path=path,
                            digest=self._held(store))
                return
            kept = store.has(want.expected)
            if kept and store.current() != want.expected.filename:
                store.activate(want.expected.filename)  # a version it keeps (a pin, a rollback): no download
            elif not kept:
                held = self._reserve(key[0], want, store)
                if held is not None:
                    self.report(key, release, "Failed", f"namespace {key[0]} would hold {held} bytes on this node, "
                                f"more than its quota of {self.tenancy.quota} (the chart's "
                                "delivery.namespaceQuotaBytes); nothing was written", path=path,
                                reason=QUOTA_EXCEEDED, digest=self._held(store))
                    self.queue.add_after(key, QUOTA_RECHECK_SECONDS)
                    return
                try:
                    name = self._pull(key, release, want, store, path)
                finally:
                    self._unreserve(key[0], want.expected.size)
                if name is None:
                    return  # every pull slot of its registry is taken: looked at again shortly
                store.activate(name)
                self.metrics.deliveries.labels(metrics.DELIVERED).inc()
            store.prune(want.keep)
        except (BuildError, OSError) as e:
            self.metrics.deliveries.labels(metrics.FAILED).inc()
            self.metrics.failures.labels(metrics.stage_of(e)).inc()
            current = self._held(store)
            self.metrics.holds(*key, current)
            retry = self.retries.failed(key)
            self.queue.add_after(key, retry.delay)
            message = f"{e}; current is unchanged; retrying in {retry.delay:.0f}s (attempt {retry.failures})"
            log.warning("%s/%s: %s", *key, message)
            self.report(key, release, "Failed", message, attempts=retry.failures, path=path, digest=current)
            return
        self.retries.reset(key)
        self.metrics.holds(*key, f"sha256:{want.expected.sha256}")
        # Due once the file's verification has expired (jittered, so a fleet's disks are not read at once).
        self.queue.add_after(key, self.verified.max_age * (1 + 0.1 * random.random()))
        self.report(key, release, "Ready", f"current is {want.expected.filename}", path=path,
                    digest=f"sha256:{want.expected.sha256}")

    def _refused(self, namespace: str, release: Obj, want: Wanted, store: VersionStore) -> tuple[str, str] | None:
        """Why the admin's rules refuse the build on this node, as (reason, message), or None; claims the
        directory for the build when it is the build's (tenancy.py)."""
        selected = [name for _, name in list(self.selected.objects)] if self.selected else []
        if not self.tenancy.may_deliver(namespace, selected):
            return NAMESPACE_NOT_ALLOWED, (f"namespace {namespace} may not deliver to this node (the chart's "
                                           "delivery.namespaces and delivery.namespaceSelector)")
        uid = release["spec"]["buildUID"]
        others = [r for r in self._namespace_releases(namespace) if r["spec"]["buildUID"] != uid]
        claimants = [_claimant(release)] + [
            _claimant(r) for r in others if wanted(r).directory == want.directory and _selects(r, self.node_labels)]
        with self._claims_lock:
            mark = store.owner()
            owner = directory_owner(mark, claimants, [uid, *(r["spec"]["buildUID"] for r in others)])
            if owner == uid:
                if mark != uid:
                    store.claim(uid)
                return None
        name = next(r["metadata"]["name"] for r in others if r["spec"]["buildUID"] == owner)
        return DELIVERY_CONFLICT, (f"{want.directory} on this node belongs to build {name}, the first to claim it "
                                   "(give this build another spec.delivery.directory)")

    def _reserve(self, namespace: str, want: Wanted, store: VersionStore) -> int | None:
        """Counts a download against its namespace's quota (`_unreserve` it once the file is in place or given
        up); or, when it would not fit, counts nothing and returns what the namespace would hold."""
        assert want.expected is not None
        size = want.expected.size
        with self._quota_lock:  # pulls of one namespace at once must fit together
            if self.tenancy.quota:
                held = bytes_after(namespace_bytes(self.root, namespace) + self._pulling.get(namespace, 0),
                                   store.version_sizes(), want.keep, size)
                if self.tenancy.over_quota(held):
                    return held
            self._pulling[namespace] = self._pulling.get(namespace, 0) + size
        return None

    def _unreserve(self, namespace: str, size: int) -> None:
        with self._quota_lock:
            self._pulling[namespace] -= size

    def _pull(self, key: Key, release: Obj, want: Wanted, store: VersionStore, path: str) -> str | None:
        """The new version, verified and in place (not yet current); None when its registry has no pull slot
        free (the build is queued again)."""
        assert want.reference is not None
        registry = reference.parse(want.reference).registry
        slot = self._registry_slot(registry)
        if slot is None:
            self.report(key, release, "Pending",
                        f"waiting for one of {registry}'s {self.pulls.per_registry} pull slots", path=path)
            self.queue.add_after(key, REGISTRY_BUSY_SECONDS)
            return None
        try:
            self.report(key, release, "Pending", f"pulling {want.reference}", path=path)
            return self.fetch(release, want, store)
        finally:
            slot.release()

    def _registry_slot(self, registry: str) -> threading.Semaphore | None:
        """One of the registry's pull slots, taken (release it), or None if all are."""
        with self._slots_lock:
            slots = self._registry_slots.setdefault(registry, threading.Semaphore(self.pulls.per_registry))
        return slots if slots.acquire(blocking=False) else None

    def fetch(self, release: Obj, want: Wanted, store: VersionStore) -> str:
        assert want.reference is not None and want.expected is not None
        options = self.pulls.options(registry_access.access_options(
            self.read, release["metadata"]["namespace"], release["spec"]["registry"],
            [reference.parse(want.reference).registry], self._credentials(release)))
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

    def _credentials(self, release: Obj) -> list[tuple[str, str]]:
        """The docker config Secrets of the agent's pulls: the chart's delivery pull Secret, else the build's push
        Secret (which pushed the artifact), as (namespace, name); none for anonymous pulls."""
        if self.pull_secret is not None:
            return [self.pull_secret]
        push = release["spec"]["registry"].get("pullSecret")
        return [(release["metadata"]["namespace"], push)] if push else []

    def leave(self, key: Key, release: Obj | None) -> None:
        """The node no longer serves the build: delete the report; keep or remove the files as the release's
        reclaimPolicy says (a build deleted while the agent was down leaves its files: its policy is gone).
        Only a directory the build owns is emptied: another build's files stay, whatever this one's policy."""
        if release is not None and (want := wanted(release)).reclaim == "Delete":
            try:
                store = VersionStore(self.root, want.directory)
                with self._claims_lock:
                    if store.owner() == release["spec"]["buildUID"]:
                        store.remove_all()
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

    def report(self, key: Key, release: Obj, phase: str, message: str, *, path: str, attempts: int = 0,
               digest: str | None = None, reason: str | None = None) -> None:
        """Server-side apply of this node's InitramfsDelivery; only when something changed. `reason`: the rule
        that refuses the build (tenancy.py), if one does."""
        status: dict[str, Any] = {"phase": phase, "message": message[:2048], "attempts": attempts, "path": path,
                                  "observedReleaseGeneration": release["metadata"]["generation"]}
        if digest:
            status["digest"] = digest
        if reason:
            status["reason"] = reason
        meta, uid = release["metadata"], release["spec"]["buildUID"]
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
                         "labels": {crd.BUILD_UID_LABEL: uid, crd.NODE_LABEL: self.node},
                         "ownerReferences": [{"apiVersion": crd.API_VERSION, "kind": crd.KIND, "name": meta["name"],
                                              "uid": uid}]},
            "spec": {"buildName": meta["name"], "buildUID": uid, "nodeName": self.node},
            "status": status,
        }
        try:
            self.kube.apply(api.path(crd.API_VERSION, crd.DELIVERY_PLURAL, meta["namespace"], name), body,
                            FIELD_MANAGER)
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
    p.add_argument("--delivery-namespaces", default=env("INITRAMFS_DELIVERY_NAMESPACES", ""),
                   help="comma-separated namespaces that may deliver ($INITRAMFS_DELIVERY_NAMESPACES); with no "
                        "--delivery-namespace-selector either, every served namespace may")
    p.add_argument("--delivery-namespace-selector", default=env("INITRAMFS_DELIVERY_NAMESPACE_SELECTOR", ""),
                   help="label selector of further namespaces that may deliver "
                        "($INITRAMFS_DELIVERY_NAMESPACE_SELECTOR)")
    p.add_argument("--namespace-quota-bytes", type=int,
                   default=int(env("INITRAMFS_DELIVERY_NAMESPACE_QUOTA_BYTES", "0")),
                   help="bytes of versions one namespace may hold on this node "
                        "($INITRAMFS_DELIVERY_NAMESPACE_QUOTA_BYTES; default 0: no limit)")
    p.add_argument("--pull-secret", default=env("INITRAMFS_DELIVERY_PULL_SECRET", ""),
                   help="NAMESPACE/NAME of the docker config Secret to pull every build with, instead of the build's "
                        "push Secret ($INITRAMFS_DELIVERY_PULL_SECRET)")
    p.add_argument("--port", type=int, default=int(env("INITRAMFS_DELIVERY_PORT", DEFAULT_PORT)),
                   help=f"port of /healthz, /readyz and /metrics ($INITRAMFS_DELIVERY_PORT, default {DEFAULT_PORT}; "
                   "0: any free one)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if not args.node_name:
        p.error("--node-name or NODE_NAME is required")
    if not os.path.isdir(args.root):
        p.error(f"delivery root {args.root} is not a directory")
    if args.pull_secret and args.pull_secret.count("/") != 1:
        p.error(f"--pull-secret {args.pull_secret!r} is not NAMESPACE/NAME")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request, watches and pulls alike
    tenancy = Tenancy(frozenset(_names(args.delivery_namespaces)), args.delivery_namespace_selector,
                      args.namespace_quota_bytes)
    pull_secret = tuple(args.pull_secret.split("/")) if args.pull_secret else None
    agent = Agent(client.HttpxTransport(client.load()), args.node_name, args.root, _names(args.namespaces),
                  tenancy=tenancy, pull_secret=pull_secret)
    metrics.serve(args.port, agent.metrics, agent.alive, agent.ready)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop())
    agent.run()


def _names(text: str) -> tuple[str, ...]:
    """Names from a comma-separated list."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


if __name__ == "__main__":
    main()
