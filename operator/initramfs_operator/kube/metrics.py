"""Prometheus metrics of the operator process, served on /metrics.

Nothing of the domain is imported here: the operator names the label values it knows at start-up
(`known_results`), and the API client reports its requests through `observe_request`.
"""

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

BUILDS = Counter("initramfs_builds", "Builds that reached a final state, by result (Succeeded or a failure reason)",
                 ["result"])
DURATION = Histogram("initramfs_build_duration_seconds", "Run time of finished build Jobs", ["result"],
                     buckets=(5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200))
QUEUE_DEPTH = Gauge("initramfs_build_queue_depth", "InitramfsBuilds waiting for a build slot")
QUEUE_OLDEST = Gauge("initramfs_build_queue_oldest_seconds",
                     "How long the InitramfsBuild waiting longest for a build slot has waited (0: none waits)")
RUNNING = Gauge("initramfs_builds_running", "Build slots taken: build Jobs not finished, or whose pods still run")
RECONCILE_ERRORS = Counter("initramfs_reconcile_errors", "Passes over a build that failed and will be retried")
API_LATENCY = Histogram("initramfs_api_request_duration_seconds",
                        "The operator's requests to the Kubernetes API (its watches excluded), by verb and HTTP code",
                        ["verb", "code"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
LEADER = Gauge("initramfs_operator_leader", "1 while this replica holds the leader Lease, else 0")


def known_results(results: Iterable[str]) -> None:
    """Starts each result's series at 0, so rates and alerts work before the first build of each kind."""
    for result in results:
        BUILDS.labels(result)
        DURATION.labels(result)


def observe_request(verb: str, code: str, seconds: float) -> None:
    """One request of the operator to the API server (an `api.Kube` observer)."""
    API_LATENCY.labels(verb, code).observe(seconds)


def finished(result: str, seconds: float | None) -> None:
    BUILDS.labels(result).inc()
    if seconds is not None:
        DURATION.labels(result).observe(seconds)
