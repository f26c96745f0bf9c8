"""Leader election on a coordination.k8s.io Lease, the way client-go's leaderelection does it.

One replica holds the Lease and renews it every `retry` seconds; the others read it as often
and take it over once it has not changed for `duration` seconds, timed by their own clock
from when they saw it change (so clock skew between replicas does not matter). A leader
that cannot renew for `renew_deadline` seconds (< duration) stops leading before anyone
else may start. Every write is a PUT with the resourceVersion read, so two replicas
racing for the Lease cannot both win.
"""

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from . import api, metrics

log = logging.getLogger(__name__)


def micro_time(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, kube: api.Kube, namespace: str, name: str, identity: str, *, duration: float = 15.0,
                 renew_deadline: float = 10.0, retry: float = 2.0,
                 on_started: Callable[[], None], on_stopped: Callable[[], None]):
        if not retry < renew_deadline < duration:
            raise ValueError("leader election needs retry < renew deadline < lease duration")
        self.kube, self.identity = kube, identity
        self.url = api.path("coordination.k8s.io/v1", "leases", namespace, name)
        self.where = f"Lease {namespace}/{name}"
        self.duration, self.renew_deadline, self.retry = duration, renew_deadline, retry
        self.on_started, self.on_stopped = on_started, on_stopped
        self.leading = threading.Event()
        self.stopping = threading.Event()
        self._observed: tuple | None = None  # the Lease's holder and renewTime when last seen changing
        self._observed_at = 0.0              # time.monotonic() then
        self._renewed_at = 0.0
        self._held: dict | None = None      # the Lease as this replica last wrote it, while leading
        self.thread = threading.Thread(target=self.run, name="leader-election", daemon=True)

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                held = self.try_acquire_or_renew()
            except Exception as e:  # the API server may be away for a while: keep trying
                log.warning("%s: cannot acquire or renew: %s", self.where, e)
                held = False
            if held and not self.leading.is_set():
                log.info("%s: %s is the leader now", self.where, self.identity)
                self.leading.set()
                metrics.LEADER.set(1)
                self.on_started()
            elif not held and self.leading.is_set() and time.monotonic() - self._renewed_at > self.renew_deadline:
                log.error("%s: not renewed for %.0fs: no longer the leader", self.where, self.renew_deadline)
                self.leading.clear()
                metrics.LEADER.set(0)
                self.on_stopped()
            self.stopping.wait(self.retry)

    def try_acquire_or_renew(self) -> bool:
        now = datetime.now(UTC)
        # Renew what we wrote last: a PUT alone. A conflict means someone else wrote since: read it.
        if self._held and self.leading.is_set() and self._write(self.kube.replace, self.url, {
                **self._held, "spec": self._spec(self._held["spec"], now, acquired=False)}):
            return True
        try:
            lease = self.kube.get(self.url)
        except api.ApiError as e:
            if e.status != 404:
                raise
            return self._write(self.kube.create, self.url.rsplit("/", 1)[0], {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.url.rsplit("/", 1)[1]},
                "spec": self._spec({}, now, acquired=True)})
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"))
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        self._held = None
        duration = spec.get("leaseDurationSeconds") or self.duration
        if holder and holder != self.identity and time.monotonic() < self._observed_at + duration:
            return False  # held by someone who renewed it recently enough
        body = {**lease, "spec": self._spec(spec, now, acquired=holder != self.identity)}
        return self._write(self.kube.replace, self.url, body)

    def _spec(self, spec: dict, now: datetime, acquired: bool) -> dict:
        new = {**spec, "holderIdentity": self.identity, "leaseDurationSeconds": int(self.duration),
               "renewTime": micro_time(now)}
        if acquired:
            new["acquireTime"] = micro_time(now)
            new["leaseTransitions"] = (spec.get("leaseTransitions") or 0) + (1 if spec.get("holderIdentity") else 0)
        return new

    def _write(self, write: Callable[[str, dict], dict], url: str, body: dict) -> bool:
        try:
            written = write(url, body)
        except api.ApiError as e:
            if e.status == 409:  # another replica wrote it first
                return False
            raise
        spec = written["spec"]
        self._observed, self._observed_at = (spec["holderIdentity"], spec["renewTime"]), time.monotonic()
        self._renewed_at = time.monotonic()
        self._held = written
        return True

    def release(self) -> None:
        """On a clean shutdown: give the Lease up, so another replica takes over at once."""
        self.stopping.set()
        if not self.leading.is_set():
            return
        self.leading.clear()
        metrics.LEADER.set(0)
        try:
            lease = self.kube.get(self.url)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"].update(holderIdentity=None, leaseDurationSeconds=1,
                                     renewTime=micro_time(datetime.now(UTC)))
                self.kube.replace(self.url, lease)
        except Exception as e:
            log.warning("%s: cannot release: %s", self.where, e)
