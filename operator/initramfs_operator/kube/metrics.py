"""Prometheus metrics of the operator process, served on /metrics."""

from prometheus_client import Counter, Gauge, Histogram

from .buildjob import REASONS
from .conditions import SUCCEEDED

BUILDS = Counter("initramfs_builds", "Builds that reached a final state, by result (Succeeded or a failure reason)",
                 ["result"])
DURATION = Histogram("initramfs_build_duration_seconds", "Run time of finished build Jobs", ["result"],
                     buckets=(5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200))
QUEUE_DEPTH = Gauge("initramfs_build_queue_depth", "InitramfsBuilds waiting for a build slot")

# Known results start at 0, so rates and alerts work before the first build of each kind.
for result in (SUCCEEDED, "DeadlineExceeded", *sorted(REASONS)):
    BUILDS.labels(result)
    DURATION.labels(result)


def finished(result: str, seconds: float | None) -> None:
    BUILDS.labels(result).inc()
    if seconds is not None:
        DURATION.labels(result).observe(seconds)
