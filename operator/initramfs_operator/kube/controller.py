"""The operator process: kopf's watches feed indexes and a work queue; a few threads do the work.

- kopf indexes (cache.py) over InitramfsBuilds, build Jobs and build pods (label-selected by
  the API server) and the Warning Events that say why a pod is not created or started hold
  everything a pass reads;
- kopf event handlers only queue the build an event is about, and wake the admission (a
  Job or pod event may have freed a slot); kopf replays every object at startup, which is
  how a restarted operator adopts running Jobs;
- worker threads take builds from the queue and reconcile them (reconcile.py), the
  admitter thread creates Jobs in turn (admission.py), and a ticker refreshes the gauges;
- the Lease elector (leader.py) decides whether this replica does any of that: every
  replica watches and indexes, only the leader's workers, admitter and ticker act.
"""

import argparse
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import kopf
import kubernetes
import prometheus_client

from . import api, buildjob, cache, conditions, crd, delivery_status, diagnosis, metrics
from .leader import LeaderElector
from .reconcile import Reconciler, Settings
from .workqueue import Backoff, Retries, WorkQueue

log = logging.getLogger(__name__)

TICK_SECONDS = 2.0
WORKERS = 4
PASS_RETRY = Backoff(base=1.0, cap=300.0)  # a pass that failed (the API server erred): tried again after this
SERVICEACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class Operator:
    """The threads of a running operator, reachable from kopf's handlers through the memo."""

    def __init__(self, kube: api.Kube, settings: Settings, lease: tuple[str, str], lease_seconds: float,
                 deliveries: bool = False):
        self.cache = cache.Cache()
        self.queue = WorkQueue()
        self.reconciler = Reconciler(kube, self.cache, settings, self.queue)
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
        # status.delivery and Delivered, when the delivery agents run (register_delivery below).
        self.delivery = delivery_status.DeliveryStatus(kube, self.cache, lambda: self.leading) if deliveries else None
        if self.delivery is not None:
            self.threads.append(self.thread(partial(self.delivery.run, self.stopping), "delivery"))

    def thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        return threading.Thread(target=target, name=name, daemon=True)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.stopping.set()
        self.reconciler.lookups.shutdown()
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
                self.reconciler.reconcile(key)  # type: ignore[arg-type]
                self.failures.reset(key)
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


# --- kopf: indexes, and events that queue builds ----------------------------------------------

JOBS = ("batch", "v1", "jobs")
PODS = ("", "v1", "pods")
EVENTS = ("", "v1", "events")
BUILD_OBJECTS = {buildjob.MANAGED_BY: buildjob.OPERATOR}


@kopf.index(crd.GROUP, crd.VERSION, crd.PLURAL)
async def builds(body: kopf.Body, namespace: str | None, name: str, **_) -> dict:
    return {(namespace, name): cache.build_entry(body)}


@kopf.index(*JOBS, labels=BUILD_OBJECTS)
async def build_jobs(body: kopf.Body, labels: Mapping[str, str], **_) -> dict | None:
    uid = labels.get(crd.BUILD_UID_LABEL)
    return {uid: cache.job_entry(body)} if uid else None


@kopf.index(*PODS, labels=BUILD_OBJECTS)
async def build_pods(body: kopf.Body, labels: Mapping[str, str], **_) -> dict | None:
    uid = cache.job_uid_of_pod(labels)
    return {uid: cache.pod_entry(body)} if uid else None


@kopf.index(*EVENTS)
async def build_warnings(body: kopf.Body, **_) -> dict | None:
    found = cache.warning_entry(body, diagnosis.WARNING_REASONS)
    return {found[0]: found[1]} if found else None


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: Any, **indexes) -> None:
    settings.posting.enabled = False  # the reconciler posts one event per state change, kopf's would be noise
    # The CRD is installed before the operator, and namespaces are given by name: kopf's scans of CRDs
    # and namespaces would only need cluster-wide permissions the operator has no other use for.
    settings.scanning.disabled = True
    # Only the operator's own Jobs and pods travel: the API server filters them.
    settings.watching.label_selectors[JOBS] = buildjob.SELECTOR
    settings.watching.label_selectors[PODS] = buildjob.SELECTOR
    settings.watching.field_selectors[EVENTS] = "type=Warning"
    operator: Operator = memo.operator
    operator.cache.bind(indexes["builds"], indexes["build_jobs"], indexes["build_pods"], indexes["build_warnings"])
    if operator.delivery:
        operator.delivery.bind(indexes["delivery_reports"], indexes["node_labels"])
    operator.start()


@kopf.on.cleanup()
async def cleanup(memo: Any, **_) -> None:
    memo.operator.stop()


@kopf.on.event(crd.GROUP, crd.VERSION, crd.PLURAL)
async def build_event(namespace: str | None, name: str, memo: Any, **_) -> None:
    memo.operator.synced.set()
    memo.operator.queue.add((namespace, name))
    if memo.operator.delivery:
        memo.operator.delivery.queue.add((namespace, name))


@kopf.on.event(*JOBS, labels=BUILD_OBJECTS)
async def job_event(namespace: str | None, annotations: Mapping[str, str], memo: Any, **_) -> None:
    dependent_event(memo.operator, namespace, annotations)


@kopf.on.event(*PODS, labels=BUILD_OBJECTS)
async def pod_event(namespace: str | None, annotations: Mapping[str, str], memo: Any, **_) -> None:
    dependent_event(memo.operator, namespace, annotations)


@kopf.on.event(*EVENTS)
async def warning_event(body: kopf.Body, memo: Any, **_) -> None:
    """A Warning that may say why a build is stuck: its build needs a pass."""
    found = cache.warning_entry(body, diagnosis.WARNING_REASONS)
    build = memo.operator.cache.build_of(found[0]) if found else None
    if build:
        memo.operator.queue.add(build)


def dependent_event(operator: Operator, namespace: str | None, annotations: Mapping[str, str]) -> None:
    """A build Job or pod changed: its build needs a pass, and a slot may have been freed."""
    operator.synced.set()
    name = cache.build_name_of(annotations)
    if name and namespace:
        operator.queue.add((namespace, name), urgent=True)
    operator.reconciler.admission.wake()


# --- delivery: the agents' reports and the nodes' labels, only when the agents run -------------

DELIVERIES = (crd.GROUP, crd.VERSION, crd.DELIVERY_PLURAL)
NODES = ("", "v1", "nodes")


async def delivery_reports(body: kopf.Body, **_) -> dict | None:
    spec, meta = body.get("spec") or {}, body["metadata"]
    entry = {"spec": dict(spec), "status": dict(body.get("status") or {}), "metadata": {"name": meta["name"]}}
    return {spec["buildUID"]: entry} if spec.get("buildUID") else None


async def node_labels(name: str, labels: Mapping[str, str], **_) -> dict:
    return {name: dict(labels)}


async def report_event(namespace: str | None, body: kopf.Body, memo: Any, **_) -> None:
    build = (body.get("spec") or {}).get("buildName")
    if memo.operator.delivery and namespace and build:
        memo.operator.delivery.queue.add((namespace, build))


async def node_event(name: str, labels: Mapping[str, str], event: Mapping[str, Any], memo: Any, **_) -> None:
    """Every Node event, status updates included: delivery sorts out the few that change labels."""
    if memo.operator.delivery:
        memo.operator.delivery.node_changed(name, None if event.get("type") == "DELETED" else labels)


def register_delivery() -> None:
    """Watches that cost nothing unless delivery is on (and need RBAC on nodes and reports then)."""
    kopf.index(*DELIVERIES)(delivery_reports)
    kopf.index(*NODES)(node_labels)
    kopf.on.event(*DELIVERIES)(report_event)
    kopf.on.event(*NODES)(node_event)


# --- the command ------------------------------------------------------------------------------

def pod_id(text: str) -> int | None:
    """A user or group ID for the build pods; empty: none (the platform assigns one)."""
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive user or group ID (or empty for none)")
    return int(text)


def seconds(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return int(text)


def own_namespace() -> str:
    """Where the operator's Lease lives: its pod's namespace in a cluster, else "default"."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        with open(SERVICEACCOUNT_NAMESPACE) as f:
            return f.read().strip()
    except OSError:
        return "default"


def parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="initramfs-operator", description="Kubernetes operator for InitramfsBuilds.")
    p.add_argument("--builder-image", default=env("INITRAMFS_BUILDER_IMAGE"),
                   help="image of the build pods, with initramfs-builder on PATH ($INITRAMFS_BUILDER_IMAGE)")
    p.add_argument("--max-concurrent-builds", type=int, default=int(env("INITRAMFS_MAX_CONCURRENT_BUILDS", "4")),
                   help="build Jobs running at once in the served namespaces ($INITRAMFS_MAX_CONCURRENT_BUILDS, "
                        "default 4)")
    p.add_argument("--namespaces", default=env("INITRAMFS_WATCH_NAMESPACES", ""),
                   help="comma-separated namespaces to serve ($INITRAMFS_WATCH_NAMESPACES; default: all)")
    p.add_argument("--build-deadline", type=seconds, default=env("INITRAMFS_BUILD_DEADLINE_SECONDS", "3600"),
                   metavar="SECONDS", help="activeDeadlineSeconds of build Jobs whose build sets none: a build "
                   "that cannot start fails then, freeing its slot ($INITRAMFS_BUILD_DEADLINE_SECONDS, default 3600)")
    p.add_argument("--job-ttl", type=seconds, default=env("INITRAMFS_JOB_TTL_SECONDS", "3600"), metavar="SECONDS",
                   help="ttlSecondsAfterFinished of build Jobs: finished Jobs and their pods are deleted this long "
                        "after, the result stays in the build's status ($INITRAMFS_JOB_TTL_SECONDS, default 3600)")
    p.add_argument("--lease-name", default=env("INITRAMFS_LEASE_NAME", "initramfs-operator"),
                   help="the coordination.k8s.io Lease replicas elect their leader with ($INITRAMFS_LEASE_NAME)")
    p.add_argument("--lease-namespace", default=env("INITRAMFS_LEASE_NAMESPACE") or own_namespace(),
                   help="its namespace ($INITRAMFS_LEASE_NAMESPACE; default: the operator pod's)")
    p.add_argument("--lease-duration", type=seconds, default=env("INITRAMFS_LEASE_DURATION_SECONDS", "15"),
                   metavar="SECONDS", help="how long a leader that stopped renewing keeps the Lease "
                                           "($INITRAMFS_LEASE_DURATION_SECONDS, default 15)")
    p.add_argument("--metrics-port", type=int, default=int(env("INITRAMFS_METRICS_PORT", "8080")),
                   help="port of /metrics ($INITRAMFS_METRICS_PORT, default 8080)")
    p.add_argument("--health-port", type=int, default=int(env("INITRAMFS_HEALTH_PORT", "8081")),
                   help="port of kopf's liveness endpoint /healthz ($INITRAMFS_HEALTH_PORT, default 8081)")
    default_id = str(buildjob.UID)
    p.add_argument("--build-run-as-user", type=pod_id, default=env("INITRAMFS_BUILD_RUN_AS_USER", default_id),
                   help="runAsUser of the build pods; empty: not set ($INITRAMFS_BUILD_RUN_AS_USER, default 65532)")
    p.add_argument("--build-run-as-group", type=pod_id, default=env("INITRAMFS_BUILD_RUN_AS_GROUP", default_id),
                   help="runAsGroup of the build pods; empty: not set ($INITRAMFS_BUILD_RUN_AS_GROUP, default 65532)")
    p.add_argument("--build-fs-group", type=pod_id, default=env("INITRAMFS_BUILD_FS_GROUP", default_id),
                   help="fsGroup of the build pods; empty: not set ($INITRAMFS_BUILD_FS_GROUP, default 65532)")
    p.add_argument("--delivery", action="store_true", default=env("INITRAMFS_DELIVERY", "") == "true",
                   help="sum the delivery agents' reports into status.delivery and the Delivered condition "
                        "($INITRAMFS_DELIVERY=true; the chart sets it with delivery.enabled)")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    if not args.builder_image:
        p.error("--builder-image or INITRAMFS_BUILDER_IMAGE is required")
    if args.max_concurrent_builds < 1:
        p.error("--max-concurrent-builds must be at least 1")
    if args.lease_duration < 3:
        p.error("--lease-duration must be at least 3 seconds")

    kopf.configure(verbose=args.verbose)
    if not args.verbose:
        # kopf says "Handler ... succeeded" for every event: at a thousand builds, noise and CPU.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kubernetes.config.load_config()
    namespaces = tuple(n.strip() for n in args.namespaces.split(",") if n.strip())
    settings = Settings(args.builder_image, args.max_concurrent_builds,
                        buildjob.PodIds(args.build_run_as_user, args.build_run_as_group, args.build_fs_group),
                        buildjob.Limits(args.build_deadline, args.job_ttl))
    metrics.known_results((conditions.SUCCEEDED, *sorted(buildjob.REASONS | diagnosis.REASONS)))
    operator = Operator(api.Kube(kubernetes.client.ApiClient(), metrics.observe_request), settings,
                        (args.lease_namespace, args.lease_name), args.lease_duration, deliveries=args.delivery)
    if args.delivery:
        register_delivery()
    prometheus_client.disable_created_metrics()  # *_created series only double what the counters say
    prometheus_client.start_http_server(args.metrics_port)
    # Replicas elect a leader on a Lease (leader.py); kopf's own peering is not needed.
    # kopf's identity (its documented POD_ID) defaults to the Lease's: otherwise kopf asks the passwd
    # database for the user's name, which a platform-assigned UID (OpenShift's, say) is missing from.
    os.environ.setdefault("POD_ID", operator.elector.identity)
    kopf.run(clusterwide=not namespaces, namespaces=namespaces, standalone=True,
             liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz", memo=kopf.Memo(operator=operator))


if __name__ == "__main__":
    main()
