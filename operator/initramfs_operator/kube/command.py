"""`initramfs-operator`: the command line, and the process it starts (kopf, and the Operator's threads)."""

import argparse
import json
import logging
import os

import kopf
import kubernetes
import prometheus_client

from . import api, buildjob, conditions, diagnosis, handlers, metrics, verifyjob
from .controller import Operator
from .kubernetes_transport import KubernetesTransport
from .settings import Settings

SERVICEACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


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


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


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
    p.add_argument("--build-cache-claim", default=env("INITRAMFS_BUILD_CACHE_CLAIM", ""), metavar="PVC",
                   help="layer cache of build pods that do not name their own (spec.cache): the PVC of this name in "
                        "each build's namespace ($INITRAMFS_BUILD_CACHE_CLAIM; default: none)")
    p.add_argument("--build-cache-max-size", default=env("INITRAMFS_BUILD_CACHE_MAX_SIZE", ""), metavar="SIZE",
                   help="its size bound, a quantity such as 20Gi ($INITRAMFS_BUILD_CACHE_MAX_SIZE; default: none)")
    p.add_argument("--build-image-pull-secrets", default=env("INITRAMFS_BUILD_IMAGE_PULL_SECRETS", ""),
                   metavar="NAMES", help="comma-separated Secrets the build pods pull the builder image with, in "
                                         "each build's namespace ($INITRAMFS_BUILD_IMAGE_PULL_SECRETS)")
    p.add_argument("--build-resources", type=json_object, default=env("INITRAMFS_BUILD_RESOURCES", "{}"),
                   metavar="JSON", help="resources of build pods that set none (spec.resources), as a container's "
                                        "resources in JSON ($INITRAMFS_BUILD_RESOURCES)")
    p.add_argument("--delivery", action="store_true", default=env("INITRAMFS_DELIVERY", "") == "true",
                   help="write each delivering build's InitramfsRelease for the delivery agents, and sum their "
                        "reports into status.delivery and the Delivered condition "
                        "($INITRAMFS_DELIVERY=true; the chart sets it with delivery.enabled)")
    p.add_argument("--verifier-image", default=env("INITRAMFS_VERIFIER_IMAGE") or None,
                   help="image of the verification pods, with initramfs-builder and qemu on PATH "
                        "($INITRAMFS_VERIFIER_IMAGE; default: the builder image)")
    p.add_argument("--verify-default", type=json_object, default=env("INITRAMFS_VERIFY_DEFAULT") or None,
                   metavar="JSON", help="spec.verify of every build that sets none, e.g. "
                   "'{\"kernel\": {\"image\": \"registry.example/kernel:6.1\"}}' ($INITRAMFS_VERIFY_DEFAULT)")
    p.add_argument("--kvm-resource", default=env("INITRAMFS_KVM_RESOURCE", verifyjob.Settings.kvm_resource),
                   help="the extended resource a KVM device plugin offers /dev/kvm as, asked for by verification "
                        f"pods of builds with spec.verify.kvm ($INITRAMFS_KVM_RESOURCE, default "
                        f"{verifyjob.Settings.kvm_resource})")
    p.add_argument("--verbose", action="store_true")
    return p


def pod_defaults(args: argparse.Namespace) -> buildjob.PodDefaults:
    cache = buildjob.BuildCache(args.build_cache_claim, args.build_cache_max_size or None) \
        if args.build_cache_claim else None
    secrets = tuple(name.strip() for name in args.build_image_pull_secrets.split(",") if name.strip())
    return buildjob.PodDefaults(cache, secrets, args.build_resources or None)


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
                        buildjob.Limits(args.build_deadline, args.job_ttl), pod_defaults(args),
                        verify=verifyjob.Settings(args.verifier_image, args.verify_default, args.kvm_resource))
    metrics.known_results((conditions.SUCCEEDED, *sorted(buildjob.REASONS | diagnosis.REASONS | verifyjob.REASONS)))
    operator = Operator(api.Kube(KubernetesTransport(kubernetes.client.ApiClient()), metrics.observe_request), settings,
                        (args.lease_namespace, args.lease_name), args.lease_duration, deliveries=args.delivery)
    if args.delivery:
        handlers.register_delivery()
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
