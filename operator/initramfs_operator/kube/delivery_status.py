"""How many selected nodes hold a build's current output: the agents' reports summed into
`status.delivery` and the `Delivered` condition. Pure functions over what the indexes hold.

`desired` is every node the build's selector picks; a node that runs no agent never reports
and is counted as waiting. The message counts (it names only failed nodes, the news): a
message naming waiting nodes would change with every node's report, and every status write
is an event for every watcher of builds (users' tools, Argo CD). Writes are coalesced too, to at most one per build
per `WINDOW` seconds (a lone change is written at once). A report only counts for the build it
names by UID and for a node the selector picks now, so a node that leaves the selector stops
counting at once, whatever its agent has (or has not) cleaned up. When every failed node refuses the
build for one reason of the admin's rules (QuotaExceeded, DeliveryConflict, NamespaceNotAllowed), that
is the condition's reason.

A build of several platforms delivers each node its own platform's file (crd.file_for): a node counts as
ready when it holds that one. A selected node of no platform the build has (nor any label naming its platform)
is not desired: `desired` counts the nodes that can take the output, `withoutPlatform` the others, and the
condition's message says which platforms they are, counted, not named (it stays one size at any fleet).

The same pass keeps the build's InitramfsRelease (release.py), what the agents watch, current.
"""

import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import api, conditions, crd, rollout
from .cache import Cache, snapshot
from .informer import Informer, Key, Obj
from .release import Releases
from .selector import matches
from .workqueue import WorkQueue

log = logging.getLogger(__name__)

DELIVERED = "Delivered"
SHOWN_NODES = 5  # failed nodes named in a message; the rest are counted
NODES_PAGE = 500  # Nodes per page of the listing (client-go's informers list 500 at a time)
WINDOW = 3.0  # seconds: at most one status write per build in this time, the last one at most this late


@dataclass(frozen=True)
class Summary:
    desired: int
    ready: int
    failed: int
    condition: tuple[str, str, str]  # status, reason, message
    digest: str | None = None        # the output being delivered
    wave: str | None = None          # "2/5" while rolled out in waves
    without_platform: int = 0        # selected nodes of no platform the build has: not desired

    def status(self) -> dict[str, Any]:
        return {"desired": self.desired, "ready": self.ready, "failed": self.failed,
                "nodes": f"{self.ready}/{self.desired}", **{k: v for k, v in self._progress().items() if v}}

    def patch(self) -> dict[str, Any]:
        """status.delivery as a merge patch: a field it no longer has (a wave once the rollout is gone, no node
        without a platform) is removed, not left as it was."""
        return {**{k: None for k in self._progress()}, **self.status()}

    def _progress(self) -> dict[str, Any]:
        return {"digest": self.digest, "wave": self.wave, "withoutPlatform": self.without_platform}


def selected_nodes(build: Mapping[str, Any], node_labels: Mapping[str, Mapping[str, str]]) -> list[str]:
    delivery = build["spec"].get("delivery") or {}
    return sorted(n for n, labels in node_labels.items() if matches(delivery.get("nodeSelector"), labels))


def statuses(build: Mapping[str, Any], selected: Iterable[str],
             reports: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """node -> its report's status, for the reports of this build (by UID) from selected nodes."""
    chosen = set(selected)
    return {spec["nodeName"]: report.get("status") or {} for report in reports
            if (spec := report.get("spec") or {}).get("buildUID") == build["metadata"]["uid"]
            and spec.get("nodeName") in chosen}


def summarize(build: Mapping[str, Any], node_labels: Mapping[str, Mapping[str, str]],
              reports: Iterable[Mapping[str, Any]], plan: rollout.Plan | None = None) -> Summary | None:
    """None for a build without spec.delivery. `plan`: which output the hosts may take (rollout.py), by default
    the build's latest."""
    delivery = build["spec"].get("delivery")
    if delivery is None:
        return None
    plan = plan or rollout.Plan(rollout.released_output(build))
    chosen = selected_nodes(build, node_labels)
    selected = rollout.takers(plan.output, {n: node_labels[n] for n in chosen})
    takes = set(selected)
    without = [n for n in chosen if n not in takes]
    digest = rollout.digest_of(plan.output)
    phases: dict[str, tuple[str, str, str]] = {}  # node -> phase, message, reason
    for node, status in statuses(build, selected, reports).items():
        phase = status.get("phase") or "Pending"
        if phase == "Ready" and status.get("digest") != rollout.expected(plan.output, node_labels[node]):
            phase = "Pending"  # holds an older output: the new one is on its way
        phases[node] = (phase, status.get("message") or "", status.get("reason") or "")
    ready = [n for n in selected if phases.get(n, ("",))[0] == "Ready"]
    failed = [n for n in selected if phases.get(n, ("",))[0] == "Failed"]
    waiting = [n for n in selected if n not in ready and n not in failed]
    held = f"their platform's file of {digest}" if plan.output and "platforms" in plan.output else digest
    condition = _condition(selected, ready, failed, len(waiting), phases, held)
    if without:
        condition = _without_platform(condition, plan.output or {}, [node_labels[n] for n in without])
    wave = f"{plan.wave}/{plan.waves}" if plan.waves else None
    if plan.missing_pin:
        condition = ("False", "PinNotFound", f"spec.delivery.pinnedDigest {plan.missing_pin} is none of the outputs "
                     "this build's release has named (kubectl get initramfsrelease NAME -o yaml: output, history); "
                     "the hosts keep what they hold")
    elif plan.halted and condition[0] != "True":
        shown = "; ".join(f"{n}: {phases[n][1]}" for n in plan.halted[:SHOWN_NODES])
        condition = ("False", "RolloutHalted", f"rollout of {digest} halted in wave {wave}: {len(plan.halted)} "
                     f"failed, more than spec.delivery.rollout.maxFailures: {shown}")
    elif delivery.get("paused") and condition[0] != "True":
        condition = ("False", "RolloutPaused", f"spec.delivery.paused: {condition[2]}")
    return Summary(len(selected), len(ready), len(failed), condition, digest, wave, len(without))


def _without_platform(condition: tuple[str, str, str], output: Mapping[str, Any],
                      labels: list[Mapping[str, str]]) -> tuple[str, str, str]:
    """The condition, telling of the selected nodes the build has no platform for: how many of each platform
    (at most SHOWN_NODES platforms named). With no other node selected, that is why nothing is delivered."""
    counts = Counter(crd.node_platform(node) for node in labels)
    shown = ", ".join(f"{platform}: {n}" for platform, n in sorted(counts.items())[:SHOWN_NODES])
    more = f" (and {len(counts) - SHOWN_NODES} more platforms)" if len(counts) > SHOWN_NODES else ""
    has = ", ".join(crd.platform_name(p) for p in crd.platforms_of(output))
    told = (f"{len(labels)} selected nodes are of no platform the build has ({has}; by their kubernetes.io/os and "
            f"kubernetes.io/arch labels) and take nothing: {shown}{more}")
    if condition[1] == "NoNodes":
        return "False", "NoPlatform", told
    return condition[0], condition[1], f"{condition[2]}; {told}"


def _selects(build: Mapping[str, Any], labels: Mapping[str, str] | None) -> bool:
    """Whether the build delivers to a node with these labels (None: no such node)."""
    delivery = build["spec"].get("delivery")
    return delivery is not None and labels is not None and matches(delivery.get("nodeSelector"), labels)


def _condition(selected: list[str], ready: list[str], failed: list[str], waiting: int,
               phases: Mapping[str, tuple[str, str, str]], digest: str | None) -> tuple[str, str, str]:
    """`digest`: what a node that is done holds."""
    if not selected:
        return "False", "NoNodes", "no node matches spec.delivery.nodeSelector"
    if digest is None:
        return "False", "WaitingForOutput", f"{len(selected)} nodes selected; waiting for the build's OCI output"
    if len(ready) == len(selected):
        return "True", DELIVERED, f"all {len(selected)} selected nodes hold {digest}"
    held = f"{len(ready)}/{len(selected)} nodes hold {digest}; {waiting} waiting"
    if failed:
        shown = "; ".join(f"{n}: {phases[n][1]}" for n in failed[:SHOWN_NODES])
        more = f" (and {len(failed) - SHOWN_NODES} more)" if len(failed) > SHOWN_NODES else ""
        reasons = {phases[n][2] for n in failed}
        reason = reasons.pop() if len(reasons) == 1 and "" not in reasons else "DeliveryFailed"
        return "False", reason, f"{held}; {len(failed)} failed: {shown}{more}"
    return "False", "Delivering", held


class Coalescer:
    """When each build's status may be written: at once if its last write is a `window` or more ago, else
    when that window ends, as it is by then. A lone change is written without delay; N changes within a
    window cost at most two writes; two writes of a build are at least `window` apart, and no change waits
    longer than `window`."""

    def __init__(self, window: float = WINDOW, clock: Callable[[], float] = time.monotonic):
        self.window, self._clock = window, clock
        self._written: dict[Hashable, float] = {}  # build -> when its status was last written

    def wait(self, key: Hashable) -> float:
        """Seconds until `key` may be written; 0 when it may be now (which counts as its write)."""
        now = self._clock()
        last = self._written.get(key)
        if last is not None and now - last < self.window:
            return last + self.window - now
        self._written[key] = now
        return 0.0

    def forget(self, key: Hashable) -> None:
        """The build went, or delivers nothing any more."""
        self._written.pop(key, None)


class DeliveryStatus:
    """Keeps `status.delivery` and the `Delivered` condition of every build with spec.delivery current.

    Fed by a kopf index of the agents' reports by build UID (handlers.py registers it when delivery
    is on), and by an informer of every Node's labels: metadata-only, paged, holding a label map per
    node (at 5,000 nodes the whole Node objects would be hundreds of MiB to list and hold). A report
    or a build changing queues that build; a node queues the builds whose selector it enters or
    leaves. Nothing is written until the nodes are listed. One worker writes a
    build's status only when the summary changed, as `coalesce` allows, with the resourceVersion
    it read (a conflict is retried on the next event).
    """

    def __init__(self, kube: api.Kube, builds: Cache, leading: Callable[[], bool],
                 coalesce: Coalescer | None = None):
        self.kube, self.builds, self.leading = kube, builds, leading
        self.coalesce = coalesce or Coalescer()
        self.releases = Releases(kube)
        self.queue = WorkQueue()
        self._reports: Mapping[Hashable, Any] = {}
        self.nodes = Informer("nodes", kube, api.path("v1", "nodes"), self.node_changed, page_size=NODES_PAGE,
                              metadata_only=True, keep=labels_only)

    def bind(self, reports: Mapping[Hashable, Any], releases: Mapping[Hashable, Any]) -> None:
        self._reports = reports
        self.releases.bind(releases)

    def node_changed(self, node: Key, old: Obj | None, new: Obj | None) -> None:
        """A Node listed, changed or deleted (None). Only labels feed the selectors: a status update (kubelet
        heartbeats) queues nothing, a node added, deleted or relabelled queues the builds whose selector it
        enters or leaves, or that select it while its platform changes (which of their files it takes)."""
        before, after = _labels(old), _labels(new)
        if before == after:
            return
        replatformed = crd.node_platform(before or {}) != crd.node_platform(after or {})
        for key in self.builds.build_keys():
            build = self.builds.build(*key)  # type: ignore[misc]  # keys are (namespace, name)
            if build is None:
                continue
            was, now = _selects(build, before), _selects(build, after)
            if was != now or (replatformed and now):
                self.queue.add(key)

    def run(self, stopping: Any) -> None:
        while not stopping.is_set():
            key = self.queue.get(timeout=1.0)
            if key is None:
                continue
            try:
                if not self.nodes.synced.is_set():
                    self.queue.add_after(key, 1.0)  # a summary over a partial node list would be wrong
                elif self.leading():
                    self.sync(key)
            except Exception:
                log.exception("delivery status of %s failed", key)
                self.queue.add_after(key, 5.0)
            finally:
                self.queue.done(key)

    def node_labels(self) -> dict[str, Mapping[str, str]]:
        return {name: _labels(node) or {} for (_, name), node in snapshot(lambda: self.nodes.objects.items())}

    def _all(self, key: Hashable) -> list[Any]:
        store = self._reports.get(key)
        return snapshot(lambda: store) if store is not None else []

    def sync(self, key: Hashable) -> None:
        namespace, name = str(key[0]), str(key[1])  # type: ignore[index]
        build = self.builds.build(namespace, name)
        if build is None or build["spec"].get("delivery") is None:
            self.releases.sync(namespace, name, build)  # deleted with it, or deleted now
            self.coalesce.forget(key)
            return  # deleted, or nothing to deliver: no need to read every node's labels
        labels, reports = self.node_labels(), self._all(build["metadata"]["uid"])
        selected = selected_nodes(build, labels)
        plan = rollout.plan(build, self.releases.held(namespace, name), {n: labels[n] for n in selected},
                            {n: rollout.report_of(s) for n, s in statuses(build, selected, reports).items()},
                            conditions.now())
        self.releases.sync(namespace, name, build, plan)
        if plan.requeue_after is not None:
            self.queue.add_after(key, plan.requeue_after)  # a pause between waves ends
        summary = summarize(build, labels, reports, plan)
        assert summary is not None  # it has spec.delivery
        status = build.get("status") or {}
        generation = build["metadata"]["generation"]
        state, reason, message = summary.condition
        before = conditions.find(status, DELIVERED)
        unchanged = before.get("status") == state and before.get("reason") == reason and \
            before.get("message") == message and before.get("observedGeneration") == generation
        if unchanged and status.get("delivery") == summary.status():
            return
        wait = self.coalesce.wait(key)
        if wait > 0:
            self.queue.add_after(key, wait)  # then summed again: the write has the latest reports
            return
        condition = {"type": DELIVERED, "status": state, "reason": reason, "message": message,
                     "observedGeneration": generation,
                     "lastTransitionTime": conditions.transition_time(before, state,
                                                                      conditions.timestamp(conditions.now()))}
        others = [c for c in status.get("conditions") or [] if c.get("type") != DELIVERED]
        body = {"metadata": {"resourceVersion": build["metadata"]["resourceVersion"]},
                "status": {"delivery": summary.patch(), "conditions": [*others, condition]}}
        try:
            self.kube.merge_patch(api.path(crd.API_VERSION, crd.PLURAL, namespace, name, "status"), body)
        except api.ApiError as e:
            if e.status not in (404, 409):
                raise


def labels_only(node: Obj) -> Obj:
    """What the operator keeps of a Node: its name, resourceVersion and labels."""
    meta = node["metadata"]
    return {"metadata": {k: meta[k] for k in ("name", "resourceVersion", "labels") if k in meta}}


def _labels(node: Obj | None) -> dict[str, str] | None:
    return dict(node["metadata"].get("labels") or {}) if node is not None else None
