"""The operator's threads: kopf's watches feed indexes and a work queue (handlers.py); a few threads do the work.

- worker threads take builds from the queue and reconcile them (reconcile.py), each pass saying
  when it wants its build looked at again, the admitter thread creates Jobs in turn
  (admission.py), and a ticker refreshes the gauges;
- the Lease elector (leader.py) decides whether this replica does any of that: every
  replica watches and indexes, only the leader's workers, admitter and ticker act.
"""

import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable
from functools import partial

from . import api, cache, delivery_status, metrics
from .leader import LeaderElector
from .reconcile import Reconciler
from .settings import Settings
from .workqueue import Backoff, Retries, WorkQueue

log = logging.getLogger(__name__)

TICK_SECONDS = 2.0
WORKERS = 4
PASS_RETRY = Backoff(base=1.0, cap=300.0)  # a pass that failed (the API server erred): tried again after this


class Operator:
    """The threads of a running operator, reachable from kopf's handlers (handlers.py) through the memo."""

    def __init__(self, kube: api.Kube, settings: Settings, lease: tuple[str, str], lease_seconds: float,
                 deliveries: bool = False):
        self.cache = cache.Cache()
        self.queue = WorkQueue()
        self.reconciler = Reconciler(kube, self.cache, settings, self.queue.add)
        self.failures = Retries(PASS_RETRY)
        self.stopping = threading.Event()
        # kopf calls event handlers only once every index is filled from its initial listing: until the
        # first call, the slots taken are not known yet.
        self.synced = threading.Event()
        self.elector = LeaderElector(kube, *lease, f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}",
                                     duration=lease_seconds, renew_deadline=lease_seconds * 2 / 3,
                                     retry=min(2.0, lease_seconds / 5),
                                     on_started=self.queue_everything, on_stopped=self.step_down)
        self.threads = [self.elector.thread] + \
            [self.thread(self.work, f"worker-{i}") for i in range(WORKERS)] + \
            [self.thread(self.admit, "admitter"), self.thread(self.tick, "ticker")]
        # status.delivery and Delivered, when the delivery agents run (handlers.register_delivery).
        self.delivery = delivery_status.DeliveryStatus(kube, self.cache, lambda: self.leading) if deliveries else None
        if self.delivery is not None:
            self.threads.append(self.thread(partial(self.delivery.run, self.stopping), "delivery"))

    def thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        return threading.Thread(target=target, name=name, daemon=True)

    def start(self) -> None:
        for t in self.threads:
            t.start()
        if self.delivery is not None:
            self.delivery.nodes.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.delivery is not None:
            self.delivery.nodes.stop()
        self.reconciler.lookups.shutdown()
        self.reconciler.cleanup.lookups.shutdown()
        self.reconciler.indexes.shutdown()
        self.elector.release()

    @property
    def leading(self) -> bool:
        return self.elector.leading.is_set() and self.synced.is_set() and not self.stopping.is_set()

    def wait_to_lead(self) -> None:
        (self.synced if self.elector.leading.is_set() else self.elector.leading).wait(1.0)

    def queue_everything(self) -> None:
        """On becoming the leader: every build gets a pass (the queue has them already unless events were
        missed; queueing twice costs nothing)."""
        for key in self.cache.build_keys():
            self.queue.add(key)

    def step_down(self) -> None:
        """Lost the Lease: another replica may be acting already. Stop at once; the Deployment restarts us."""
        self.stopping.set()
        os.kill(os.getpid(), signal.SIGTERM)

    def work(self) -> None:
        while not self.stopping.is_set():
            if not self.leading:
                self.wait_to_lead()
                continue
            key = self.queue.get(timeout=1.0)
            if key is None:
                continue
            try:
                result = self.reconciler.reconcile(key)  # type: ignore[arg-type]
                self.failures.reset(key)
                if result.requeue_after is not None:
                    self.queue.add_after(key, result.requeue_after)
            except Exception:
                retry = self.failures.failed(key)
                metrics.RECONCILE_ERRORS.inc()
                log.exception("pass over %s failed (%d in a row); next in %.0fs", key, retry.failures, retry.delay)
                self.queue.add_after(key, retry.delay)
            finally:
                self.queue.done(key)

    def admit(self) -> None:
        admission = self.reconciler.admission
        while not self.stopping.is_set():
            admission.wait(TICK_SECONDS)
            if self.leading:
                try:
                    admission.round()
                except Exception:
                    log.exception("admission round failed")

    def tick(self) -> None:
        """What no event announces: gauges, and state the watches have caught up with."""
        while not self.stopping.wait(TICK_SECONDS):
            if self.leading:
                self.reconciler.admission.wake()
                self.reconciler.admission.gauges()
                self.reconciler.prune()
