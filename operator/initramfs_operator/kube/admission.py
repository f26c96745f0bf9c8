"""Build slots: at most `slots` build Jobs at once, handed out fairly. The one place Jobs are created.

Slots taken, counted from the indexes: every build Job not finished, every build pod still
running (a superseded Job's pod runs on until the kubelet stops it), and the Jobs this
process created that its watch has not shown yet.

Waiting: a pass that wants a Job for its build `offer`s it here and returns; a build of several platforms
offers one Job per platform, each waiting for a slot of its own like any other build's (so one build may
hold several slots; turns are still taken per namespace, oldest build first, its platforms in order). The admitter
thread wakes on every offer and every Job or pod event, fills the free slots taking turns
across namespaces (round robin) and oldest first within one (creationTimestamp), and tells
each build left waiting, once, so that its pass writes Queued. A build waits at no cost:
nothing is sent for it until its turn.
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Hashable, Iterator
from dataclasses import dataclass, field

from . import api, metrics
from .buildjob import finished, is_cleanup
from .cache import Cache

log = logging.getLogger(__name__)

UNSEEN_SECONDS = 60.0  # how long a created Job counts as taking a slot before the watch must have shown it


Slot = tuple[str, str | None]  # what waits for a slot: (build uid, its platform when it has Jobs per platform)


@dataclass(frozen=True)
class Candidate:
    namespace: str
    name: str            # of the InitramfsBuild
    uid: str
    generation: int
    created: str         # the build's creationTimestamp: the queue's order
    job_name: str
    manifest: Callable[[], dict] = field(compare=False)  # made when admitted: thousands may wait
    platform: str | None = None  # of a build of several platforms, the one its Job builds
    order: int = 0               # the platform's place in the spec: the order a build's Jobs are admitted in

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    @property
    def slot(self) -> Slot:
        return self.uid, self.platform


@dataclass(frozen=True)
class Rejection:
    job_name: str
    message: str         # the API server's


def take_turns(candidates: list[Candidate], turns: deque[str], count: int) -> tuple[list[Candidate], deque[str]]:
    """Up to `count` candidates, namespaces taking turns (round robin), oldest first within each; and the
    order of the namespaces' next turns: the ones served go to the back of the line, in the order served."""
    by_namespace: dict[str, list[Candidate]] = {}
    for c in sorted(candidates, key=lambda c: (c.created, c.name, c.order)):
        by_namespace.setdefault(c.namespace, []).append(c)
    line = deque(ns for ns in turns if ns in by_namespace)
    line.extend(ns for ns in by_namespace if ns not in line)
    picked: list[Candidate] = []
    while len(picked) < count and line:
        namespace = line.popleft()
        queue = by_namespace[namespace]
        picked.append(queue.pop(0))
        if queue:
            line.append(namespace)
    return picked, line


class Admission:
    def __init__(self, kube: api.Kube, cache: Cache, slots: int, requeue: Callable[[Hashable], None],
                 monotonic: Callable[[], float] = time.monotonic):
        self.kube, self.cache, self.slots, self.requeue = kube, cache, slots, requeue
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._wake = threading.Event()
        # By build uid, then platform (None: the build's one Job): a build's own few are found without a scan.
        self._candidates: dict[str, dict[str | None, Candidate]] = {}
        self._offered_at: dict[Slot, float] = {}      # when it began to wait, while it waits
        self._told: set[Slot] = set()                 # candidates whose pass was told they wait
        self._turns: deque[str] = deque()             # namespaces, in the order of their next turn
        self._unseen: dict[str, float] = {}           # uid -> time.monotonic() of Jobs created, not yet watched
        self._rejections: dict[str, dict[str | None, Rejection]] = {}  # as candidates, until its pass takes it

    # --- what passes use --------------------------------------------------------------------

    def offer(self, candidate: Candidate) -> None:
        slot = candidate.slot
        with self._lock:
            mine = self._candidates.setdefault(candidate.uid, {})
            before = mine.get(candidate.platform)
            mine[candidate.platform] = candidate
            self._offered_at.setdefault(slot, self.monotonic())
            if before is None or before.job_name != candidate.job_name:
                self._told.discard(slot)
            if candidate.namespace not in self._turns:
                self._turns.append(candidate.namespace)
        self._wake.set()

    def offered(self, uid: str, platform: str | None = None) -> Candidate | None:
        with self._lock:
            return self._candidates.get(uid, {}).get(platform)

    def waiting(self, uid: str, platform: str | None = None) -> bool:
        """Offered, and no slot was free for it: its pass says Queued."""
        with self._lock:
            return (uid, platform) in self._told and platform in self._candidates.get(uid, {})

    def withdraw(self, uid: str, platforms: Collection[str | None] | None = None) -> None:
        """The build's candidates (of `platforms`; None: all of them) no longer wait."""
        with self._lock:
            candidates, rejections = self._candidates.get(uid, {}), self._rejections.get(uid, {})
            for platform in {*candidates, *rejections} if platforms is None else platforms:
                candidates.pop(platform, None)
                rejections.pop(platform, None)
                self._offered_at.pop((uid, platform), None)
                self._told.discard((uid, platform))
            if not candidates:
                self._candidates.pop(uid, None)
            if not rejections:
                self._rejections.pop(uid, None)

    def withdraw_build(self, key: tuple[str, str]) -> None:
        with self._lock:
            uids = {c.uid for c in self._waiting() if c.key == key}
        for uid in uids:
            self.withdraw(uid)

    def take_rejection(self, uid: str, platform: str | None = None) -> Rejection | None:
        with self._lock:
            rejections = self._rejections.get(uid, {})
            rejection = rejections.pop(platform, None)
            if not rejections:
                self._rejections.pop(uid, None)
            return rejection

    def wake(self) -> None:
        self._wake.set()

    def depth(self) -> int:
        with self._lock:
            return sum(map(len, self._candidates.values()))

    def oldest_wait(self) -> float:
        """Seconds the build waiting longest for a slot has waited (0: none waits)."""
        with self._lock:
            return self.monotonic() - min(self._offered_at.values()) if self._offered_at else 0.0

    # --- the admitter thread ----------------------------------------------------------------

    def wait(self, timeout: float) -> None:
        self._wake.wait(timeout)
        self._wake.clear()

    def taken(self) -> int:
        """Slots in use: build Jobs not finished, Jobs with a pod still running, Jobs created but not yet seen.
        Verification Jobs count too (a TCG boot is as heavy as a build), though they are not queued: one starts
        as its build Job ends, in the slot that Job frees."""
        jobs = self.cache.all_jobs()
        cleanups = {job["metadata"]["uid"] for job in jobs if is_cleanup(job)}  # a few seconds each, no build
        holding = {job["metadata"]["uid"] for job in jobs if not finished(job)} - cleanups
        holding |= {job_uid for job_uid, pods in self.cache.pods_by_job() if job_uid not in cleanups and
                    any((p.get("status") or {}).get("phase") not in ("Succeeded", "Failed") for p in pods)}
        with self._lock:
            if self._unseen:
                cutoff = time.monotonic() - UNSEEN_SECONDS
                seen = {job["metadata"]["uid"] for job in jobs}
                for uid, created in list(self._unseen.items()):
                    if uid in seen or created < cutoff:
                        del self._unseen[uid]
                holding |= set(self._unseen)
        return len(holding)

    def gauges(self) -> None:
        metrics.RUNNING.set(self.taken())
        metrics.QUEUE_DEPTH.set(self.depth())
        metrics.QUEUE_OLDEST.set(self.oldest_wait())

    def round(self) -> None:
        """Create Jobs for as many waiting builds as slots are free, in turn; tell the others they wait."""
        if not self.depth():
            return
        free = self.slots - self.taken()
        with self._lock:
            picked = self._pick(free) if free > 0 else []
        for candidate in picked:
            self._create(candidate)
        with self._lock:
            untold = [c for c in self._waiting() if c.slot not in self._told]
            self._told.update(c.slot for c in untold)
        for candidate in untold:
            self.requeue(candidate.key)

    def _waiting(self) -> Iterator[Candidate]:
        """Every candidate (under the lock)."""
        for mine in self._candidates.values():
            yield from mine.values()

    def _pick(self, count: int) -> list[Candidate]:
        picked, self._turns = take_turns(list(self._waiting()), self._turns, count)
        for c in picked:
            mine = self._candidates[c.uid]
            del mine[c.platform]
            if not mine:
                del self._candidates[c.uid]
            self._offered_at.pop(c.slot, None)  # a Job that cannot be created yet waits again from now
            self._told.discard(c.slot)
        return picked

    def _create(self, candidate: Candidate) -> None:
        build = self.cache.build(candidate.namespace, candidate.name)
        if build is None or build["metadata"]["uid"] != candidate.uid or \
                build["metadata"]["generation"] != candidate.generation:
            return  # deleted or edited meanwhile; its next pass offers what it wants now
        if any(j["metadata"]["name"] == candidate.job_name for j in self.cache.jobs_of(candidate.uid)):
            return  # created already (by a replica that lost the lead, or before a restart)
        url = api.path("batch/v1", "jobs", candidate.namespace)
        try:
            created = self.kube.create(url, candidate.manifest())
        except api.ApiError as e:
            if e.status == 409:
                return  # created before (by a replica that lost the lead, or before a restart): the watch shows it
            if e.status in (400, 403, 422):  # quota, admission, validation: the API server's word is final
                with self._lock:
                    self._rejections.setdefault(candidate.uid, {})[candidate.platform] = Rejection(
                        candidate.job_name, api.message_of(e))
                self.requeue(candidate.key)
                return
            self._retry_later(candidate, e)
            return
        except OSError as e:  # no answer: try again on the next round
            self._retry_later(candidate, e)
            return
        with self._lock:
            self._unseen[created["metadata"]["uid"]] = time.monotonic()
        log.info("created build job %s/%s", candidate.namespace, candidate.job_name)

    def _retry_later(self, candidate: Candidate, error: Exception) -> None:
        log.warning("cannot create build job %s/%s, will retry: %s", candidate.namespace, candidate.job_name, error)
        with self._lock:
            self._candidates.setdefault(candidate.uid, {}).setdefault(candidate.platform, candidate)
            if candidate.namespace not in self._turns:
                self._turns.appendleft(candidate.namespace)
