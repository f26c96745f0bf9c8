"""The delivery agent's /healthz, /readyz and /metrics, as the kubelet and Prometheus read them, while a real
agent delivers from the test registry into a directory of the test's. The API server is a stand-in of the
test's (the real one is in test_delivery_agent.py and test_delivery.py): it lists one Node and the releases of
two builds, keeps its watches quiet, and takes the agent's reports, holding the listing of releases or the
reports back when the test says.
"""

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fixtures.kube import wait_until
from fixtures.registry import Registry, unique_repo
from initramfs_operator.delivery import metrics
from initramfs_operator.delivery.agent import Agent
from initramfs_operator.kube import client, crd
from initramfs_operator.kube.release import release_spec
from initramfs_operator.oci.registry import push

NODE = "vm-host-1"


def release(name: str, output: dict, registry_host: str) -> dict:
    """The InitramfsRelease the operator writes for a build with this output."""
    meta = {"namespace": "team", "name": name, "uid": f"uid-{name}", "generation": 1, "resourceVersion": "1",
            "creationTimestamp": "2026-01-01T00:00:00Z"}
    build = {"metadata": meta,
             "spec": {"image": f"{registry_host}/src/app:1", "registry": {"insecure": True},
                      "output": {"oci": {"repository": f"{registry_host}/out/{name}", "tag": "v"}},
                      "delivery": {"nodeSelector": {"matchLabels": {"vm-host": "true"}}}},
             "status": {"output": output}}
    return {"apiVersion": crd.API_VERSION, "kind": crd.RELEASE_KIND, "metadata": meta, "spec": release_spec(build)}


class StandIn(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    releases: list[dict] = []
    listing = threading.Event()   # set: the releases may be listed
    reporting = threading.Event()  # set: reports are taken
    closing = threading.Event()
    reports: dict[str, dict] = {}

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if "watch" in query:
            self._quiet_watch()
        elif url.path == "/api/v1/nodes":
            self._json({"metadata": {"resourceVersion": "1"}, "items": [
                {"metadata": {"name": NODE, "resourceVersion": "1", "labels": {"vm-host": "true"}}}]})
        elif url.path.endswith("/" + crd.RELEASE_PLURAL):
            self.listing.wait()
            self._json({"metadata": {"resourceVersion": "1"}, "items": self.releases})
        else:  # this node's reports, listed at start: none yet
            self._json({"metadata": {"resourceVersion": "1"}, "items": []})

    def do_PATCH(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.reporting.wait()
        self.reports[body["metadata"]["name"]] = body
        self._json(body)

    def _json(self, doc: dict) -> None:
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _quiet_watch(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        self.closing.wait()
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api_server() -> Iterator[type[StandIn]]:
    StandIn.releases, StandIn.reports = [], {}
    for event in (StandIn.listing, StandIn.reporting, StandIn.closing):
        event.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    StandIn.url = f"http://127.0.0.1:{server.server_port}"  # type: ignore[attr-defined]
    yield StandIn
    StandIn.closing.set()
    StandIn.listing.set()
    StandIn.reporting.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def agent(api_server: type[StandIn], tmp_path: Path) -> Iterator[tuple[Agent, str]]:
    """A running agent and the address of its endpoints."""
    (tmp_path / "root").mkdir()
    running = Agent(client.HttpxTransport(client.Config(api_server.url, None)),  # type: ignore[attr-defined]
                    NODE, str(tmp_path / "root"))
    endpoints = metrics.serve(0, running.metrics, running.alive, running.ready, host="127.0.0.1")
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    yield running, f"http://127.0.0.1:{endpoints.server_port}"
    running.stop()
    endpoints.shutdown()
    thread.join(10)


def artifact(registry: Registry, data: bytes, tmp_path: Path) -> dict:
    """An initramfs pushed to the registry, and the status.output the operator would write for it."""
    path = tmp_path / f"{hashlib.sha256(data).hexdigest()[:8]}.cpio.gz"
    path.write_bytes(data)
    repo = unique_repo("endpoints")
    digest = push.push_artifact(str(path), registry.ref(repo, "initramfs"),
                                media_type="application/vnd.initramfs.v1.cpio+gzip", annotations={}, subject=None,
                                options=registry.options())
    return {"reference": f"{registry.host}/{repo}@{digest}", "digest": digest, "compression": "gzip",
            "sha256": hashlib.sha256(data).hexdigest(), "sha512": hashlib.sha512(data).hexdigest(),
            "size": len(data)}


def scrape(endpoints: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed as Prometheus parses the text format: (name, labels) -> value."""
    text = httpx.get(f"{endpoints}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def probe(endpoints: str, path: str) -> tuple[int, str]:
    answer = httpx.get(endpoints + path)
    return answer.status_code, answer.text.strip()


def test_readiness_waits_for_the_first_listing(api_server: type[StandIn], agent: tuple[Agent, str]):
    running, endpoints = agent
    wait_until(lambda: running.nodes.synced.is_set(), timeout=10, what="the node listed")
    assert probe(endpoints, "/readyz") == (503, "waiting for the first listing of releases")
    assert probe(endpoints, "/healthz") == (200, "ok")
    api_server.listing.set()
    wait_until(lambda: probe(endpoints, "/readyz")[0] == 200, timeout=10, what="/readyz 200")
    assert probe(endpoints, "/readyz") == (200, "ok")


def test_liveness_fails_while_a_worker_is_stuck(api_server: type[StandIn], agent: tuple[Agent, str],
                                                monkeypatch: pytest.MonkeyPatch):
    """A worker held by a request that does not come back stops going round; the others still do."""
    monkeypatch.setattr(metrics, "STALLED_SECONDS", 1.0)
    running, endpoints = agent
    api_server.releases = [release("waiting", {}, "registry.invalid")]
    api_server.listing.set()  # the build has no output yet: the agent reports it Pending, and the report hangs
    wait_until(lambda: probe(endpoints, "/healthz")[0] == 503, timeout=10, what="/healthz 503")
    _, text = probe(endpoints, "/healthz")
    assert text.startswith("delivery ") and text.endswith("stalled for more than 1s") and text.count(",") == 0
    api_server.reporting.set()
    wait_until(lambda: probe(endpoints, "/healthz")[0] == 200, timeout=10, what="/healthz 200 again")
    assert "waiting.vm-host-1" in api_server.reports


def test_metrics_after_deliveries_a_reverification_and_a_failure(
        api_server: type[StandIn], agent: tuple[Agent, str], registry: Registry, tmp_path: Path):
    running, endpoints = agent
    data = os.urandom(300_000)
    good = artifact(registry, data, tmp_path)
    # The second release claims other bytes than its artifact holds: its pull must fail.
    wrong = {**artifact(registry, b"not what the status says", tmp_path), "sha256": "0" * 64}
    api_server.releases = [release("vm", good, registry.host), release("broken", wrong, registry.host)]
    api_server.reporting.set()
    api_server.listing.set()
    wait_until(lambda: scrape(endpoints)[("initramfs_deliveries_total", (("result", "Delivered"),))] == 1
               and scrape(endpoints)[("initramfs_deliveries_total", (("result", "Failed"),))] >= 1,
               timeout=30, what="one delivery and one failure")
    samples = scrape(endpoints)
    assert samples[("initramfs_delivery_pulled_bytes_total", ())] == len(data)
    assert samples[("initramfs_delivery_failures_total", (("stage", "pull"),))] >= 1
    assert samples[("initramfs_delivery_failures_total", (("stage", "verify"),))] == 0
    current = {labels: value for (name, labels), value in samples.items() if name == "initramfs_delivery_current"}
    assert current == {(("build", "vm"), ("digest", f"sha256:{good['sha256']}"), ("namespace", "team")): 1.0}
    assert samples[("initramfs_delivery_verify_seconds_count", ())] == 0  # verified as it streamed

    # The file is touched (its identity changes): the next pass hashes it again, and pulls nothing.
    held = tmp_path / "root" / "team" / "vm" / f"{good['sha256']}.cpio.gz"
    os.utime(held, (time.time() + 5, time.time() + 5))
    running.queue.add(("team", "vm"))
    wait_until(lambda: scrape(endpoints)[("initramfs_delivery_verify_seconds_count", ())] == 1, timeout=10,
               what="one re-verification")
    samples = scrape(endpoints)
    assert 0 < samples[("initramfs_delivery_verify_seconds_sum", ())] < 5
    assert samples[("initramfs_delivery_pulled_bytes_total", ())] == len(data)
    assert samples[("initramfs_deliveries_total", (("result", "Delivered"),))] == 1
