"""The operator process: thin kopf handlers that hand InitramfsBuilds to the reconciler.

Every trigger leads to the same level-triggered pass (reconcile.py):
- any event of an InitramfsBuild (kopf also replays every object at startup, which is how
  a restarted operator adopts running Jobs);
- any event of a build Job (progress, completion, deletion);
- a ticker for what no event announces: queued builds waiting for a slot, refreshInterval,
  and retries of images that failed to resolve. It is one cluster-wide list every few
  seconds rather than per-object kopf timers, which would put a finalizer on every object.
"""

import argparse
import logging
import os
import threading

import kopf
import kubernetes
import prometheus_client

from . import buildjob, conditions, crd, metrics
from .reconcile import Reconciler, Settings, due

log = logging.getLogger(__name__)

TICK_SECONDS = 2.0


class Ticker:
    """Passes over builds that are due without an event, oldest first (a FIFO queue for slots)."""

    def __init__(self, reconciler: Reconciler, interval: float = TICK_SECONDS):
        self.reconciler = reconciler
        self.interval = interval
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, name="ticker", daemon=True)

    def loop(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.tick()
            except Exception:
                log.exception("ticker pass failed")

    def tick(self) -> None:
        builds = sorted(self.reconciler.list_builds(), key=lambda b: b["metadata"]["creationTimestamp"])
        metrics.QUEUE_DEPTH.set(sum(conditions.reason(b.get("status") or {}) == conditions.QUEUED for b in builds))
        now = conditions.now()
        for build in builds:
            if self.stopping.is_set():
                return
            if due(build, now, self.reconciler.settings):
                try:
                    self.reconciler.reconcile(build["metadata"]["namespace"], build["metadata"]["name"])
                except Exception:
                    log.exception("pass over %s/%s failed", build["metadata"]["namespace"], build["metadata"]["name"])


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_) -> None:
    settings.posting.enabled = False  # the reconciler posts one event per state change, kopf's would be noise
    # The CRD is installed before the operator, and namespaces are given by name: kopf's scans of CRDs
    # and namespaces would only need cluster-wide permissions the operator has no other use for.
    settings.scanning.disabled = True
    settings.execution.max_workers = 8
    memo.ticker.thread.start()


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_) -> None:
    memo.ticker.stopping.set()


@kopf.on.event(crd.GROUP, crd.VERSION, crd.PLURAL)
def build_event(type: str, name: str, namespace: str, memo: kopf.Memo, **_) -> None:
    if type != "DELETED":  # deletion needs nothing: the garbage collector removes the Jobs
        memo.reconciler.reconcile(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={buildjob.MANAGED_BY: buildjob.OPERATOR})
def job_event(namespace: str, annotations: dict, memo: kopf.Memo, **_) -> None:
    if buildjob.BUILD_NAME in annotations:
        memo.reconciler.reconcile(namespace, annotations[buildjob.BUILD_NAME])


def main(argv: list[str] | None = None) -> None:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="initramfs-operator", description="Kubernetes operator for InitramfsBuilds.")
    p.add_argument("--builder-image", default=env("INITRAMFS_BUILDER_IMAGE"),
                   help="image of the build pods, with initramfs-builder on PATH ($INITRAMFS_BUILDER_IMAGE)")
    p.add_argument("--max-concurrent-builds", type=int, default=int(env("INITRAMFS_MAX_CONCURRENT_BUILDS", "4")),
                   help="build Jobs running at once in the served namespaces ($INITRAMFS_MAX_CONCURRENT_BUILDS, "
                        "default 4)")
    p.add_argument("--namespaces", default=env("INITRAMFS_WATCH_NAMESPACES", ""),
                   help="comma-separated namespaces to serve ($INITRAMFS_WATCH_NAMESPACES; default: all)")
    p.add_argument("--metrics-port", type=int, default=int(env("INITRAMFS_METRICS_PORT", "8080")),
                   help="port of /metrics ($INITRAMFS_METRICS_PORT, default 8080)")
    p.add_argument("--health-port", type=int, default=int(env("INITRAMFS_HEALTH_PORT", "8081")),
                   help="port of kopf's liveness endpoint /healthz ($INITRAMFS_HEALTH_PORT, default 8081)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if not args.builder_image:
        p.error("--builder-image or INITRAMFS_BUILDER_IMAGE is required")
    if args.max_concurrent_builds < 1:
        p.error("--max-concurrent-builds must be at least 1")

    kopf.configure(verbose=args.verbose)
    kubernetes.config.load_config()
    namespaces = tuple(n.strip() for n in args.namespaces.split(",") if n.strip())
    reconciler = Reconciler(kubernetes.client.ApiClient(),
                            Settings(args.builder_image, args.max_concurrent_builds, namespaces))
    prometheus_client.disable_created_metrics()  # *_created series only double what the counters say
    prometheus_client.start_http_server(args.metrics_port)
    # One replica is the deployment model: no peering needed.
    kopf.run(clusterwide=not namespaces, namespaces=namespaces, standalone=True,
             liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz",
             memo=kopf.Memo(reconciler=reconciler, ticker=Ticker(reconciler)))


if __name__ == "__main__":
    main()
