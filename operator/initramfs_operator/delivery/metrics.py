"""What a delivery agent tells the kubelet and Prometheus, on one port: /healthz, /readyz and /metrics.

/healthz (the liveness probe) answers 200 while every worker has gone round its loop, or moved bytes
of a pull, within `STALLED_SECONDS`: a worker stuck anywhere else gets the container restarted.
/readyz (the readiness probe) answers 200 once the agent's informers have listed what they watch.
/metrics is the Prometheus text format, in the style of the operator's (kube/metrics.py); each agent
has its own registry, so that tests can hold several agents in one process.
"""

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import prometheus_client
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..errors import InvalidImageError, OutputError

DELIVERED, FAILED = "Delivered", "Failed"
# Why a delivery failed, as the failures counter says it.
PULL, VERIFY, DISK, REPORT = "pull", "verify", "disk", "report"
# Longer than any single wait of a worker that is not stuck: an API request (api.TIMEOUT), a registry read
# (Pulls.read), hashing a large file already on disk.
STALLED_SECONDS = 300.0


def stage_of(error: Exception) -> str:
    """Where a delivery failed: the verification of the bytes, the host's disk, or else the pull (the
    registry, access to it, a layer that is not the build's output)."""
    if isinstance(error, InvalidImageError):
        return VERIFY
    if isinstance(error, OSError | OutputError):
        return DISK
    return PULL


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.deliveries = Counter("initramfs_deliveries", "Passes over a build that placed a new version "
                                  "(Delivered: verified, and current points at it) or failed (Failed)", ["result"],
                                  registry=self.registry)
        self.failures = Counter("initramfs_delivery_failures", "Failed deliveries and reports, by stage: pull, "
                                "verify, disk, or report (the API server refused the InitramfsDelivery)", ["stage"],
                                registry=self.registry)
        self.pulled = Counter("initramfs_delivery_pulled_bytes", "Bytes read from registries", registry=self.registry)
        self.verify = Histogram("initramfs_delivery_verify_seconds", "Hashing a version already on disk against "
                                "the build's digests (a download is verified as it streams)",
                                buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=self.registry)
        self.current = Gauge("initramfs_delivery_current", "1 for the version `current` points at, per build",
                             ["namespace", "build", "digest"], registry=self.registry)
        self._held: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        for result in (DELIVERED, FAILED):
            self.deliveries.labels(result)
        for stage in (PULL, VERIFY, DISK, REPORT):
            self.failures.labels(stage)

    def holds(self, namespace: str, build: str, digest: str | None) -> None:
        """What `current` of a build points at now (None: nothing, or the build is no longer served)."""
        with self._lock:
            previous = self._held.pop((namespace, build), None)
            if previous is not None and previous != digest:
                self.current.remove(namespace, build, previous)
            if digest is not None:
                self._held[(namespace, build)] = digest
                self.current.labels(namespace, build, digest).set(1)

    def text(self) -> bytes:
        return generate_latest(self.registry)


def serve(port: int, metrics: Metrics, alive: Callable[[], str | None], ready: Callable[[], str | None],
          host: str = "") -> ThreadingHTTPServer:
    """Serves the three endpoints from a daemon thread; `alive` and `ready` say what is wrong, or None.
    Port 0 picks a free one (server.server_port)."""
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created only doubles the counters

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._answer(200, metrics.text(), CONTENT_TYPE_LATEST)
            elif self.path in ("/healthz", "/readyz"):
                problem = (alive if self.path == "/healthz" else ready)()
                self._answer(503 if problem else 200, (problem or "ok").encode() + b"\n", "text/plain")
            else:
                self._answer(404, b"not found\n", "text/plain")

        def _answer(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass  # a probe every few seconds: not worth a line

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="probes and metrics", daemon=True).start()
    return server
