"""The delivery agent's informer over `api.Kube`: LIST, then WATCH from its resourceVersion with bookmarks,
relisting on 410 Gone. The API server here is a script of HTTP answers (the real one is in
test_delivery_agent.py); the client is the agent's own (kube/client.py), streaming newline-delimited JSON events."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from initramfs_operator.kube import api, client
from initramfs_operator.kube.informer import Informer


def node(name: str, version: str, labels: dict | None = None) -> dict:
    return {"kind": "Node", "metadata": {"name": name, "resourceVersion": version, "labels": labels or {}}}


# What the API server answers, in order: a LIST, a WATCH whose resourceVersion has become too old, the
# LIST that follows (a node deleted meanwhile), and then watches with nothing to say.
ANSWERS = [
    {"kind": "NodeList", "metadata": {"resourceVersion": "10"}, "items": [node("a", "5"), node("b", "7")]},
    [{"type": "MODIFIED", "object": node("a", "11", {"vm-host": "true"})},
     {"type": "BOOKMARK", "object": {"kind": "Node", "metadata": {"resourceVersion": "12"}}},
     {"type": "ADDED", "object": node("c", "13")},
     {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version: 12"}}],
    {"kind": "NodeList", "metadata": {"resourceVersion": "20"},
     "items": [node("a", "11", {"vm-host": "true"}), node("c", "13")]},
]


class Script(BaseHTTPRequestHandler):
    answers: list = []
    requests: list = []
    accepts: list = []

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.requests.append((url.path, {k: v[0] for k, v in parse_qs(url.query).items()}))
        self.accepts.append(self.headers.get("Accept"))
        answer = self.answers.pop(0) if self.answers else []
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if isinstance(answer, dict):
            body = json.dumps(answer).encode()
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in answer:  # one event a chunk, as the API server flushes them
            line = json.dumps(event).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
        if not answer:
            time.sleep(0.2)  # a quiet watch, ended by the server
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args) -> None:
        pass


def run(answers: list, requests: int, **options) -> tuple[Informer, list]:
    """An informer of Nodes against the script until it has sent `requests` requests; the changes it saw."""
    Script.answers, Script.requests, Script.accepts = list(answers), [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Script)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    changes: list = []
    transport = client.HttpxTransport(client.Config(f"http://127.0.0.1:{server.server_port}", None))
    informer = Informer("nodes", api.Kube(transport), api.path("v1", "nodes"),
                        lambda key, old, new: changes.append((key[1], old and old["metadata"]["resourceVersion"],
                                                              new and new["metadata"]["resourceVersion"])),
                        **options)
    try:
        informer.start()
        deadline = time.monotonic() + 10
        while len(Script.requests) < requests and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        informer.stop()
        server.shutdown()
    return informer, changes


def test_lists_watches_and_relists_after_410_gone():
    informer, changes = run(ANSWERS, 4, query={"fieldSelector": "metadata.name=a"})
    assert informer.synced.is_set()
    # The first listing, the watched changes (the bookmark is none), then the relisting's: b was deleted.
    assert changes == [("a", None, "5"), ("b", None, "7"), ("a", "5", "11"), ("c", None, "13"), ("b", "7", None)]
    assert sorted(key[1] for key in informer.objects) == ["a", "c"]
    selector = {"fieldSelector": "metadata.name=a"}
    watch = {**selector, "watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": "300"}
    assert Script.requests[:4] == [("/api/v1/nodes", selector), ("/api/v1/nodes", {**watch, "resourceVersion": "10"}),
                                   ("/api/v1/nodes", selector), ("/api/v1/nodes", {**watch, "resourceVersion": "20"})]


def test_a_metadata_only_informer_lists_in_pages_and_keeps_what_it_is_told():
    full = {**node("c", "13", {"zone": "a"}), "status": {"images": [{"names": ["x"] * 50}]}}
    full["metadata"]["managedFields"] = [{"manager": "kubelet"}]
    answers = [{"kind": "PartialObjectMetadataList", "metadata": {"resourceVersion": "10", "continue": "page-2"},
                "items": [node("a", "5")]},
               {"kind": "PartialObjectMetadataList", "metadata": {"resourceVersion": "10"}, "items": [node("b", "7")]},
               [{"type": "ADDED", "object": full}]]
    keep = lambda obj: {"metadata": {k: obj["metadata"][k] for k in ("name", "resourceVersion", "labels")}}  # noqa: E731
    informer, changes = run(answers, 3, page_size=1, metadata_only=True, keep=keep)
    assert changes == [("a", None, "5"), ("b", None, "7"), ("c", None, "13")]
    assert informer.objects[("", "c")] == {"metadata": {"name": "c", "resourceVersion": "13", "labels": {"zone": "a"}}}
    watch = {"watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": "300", "resourceVersion": "10"}
    assert Script.requests[:3] == [("/api/v1/nodes", {"limit": "1"}),
                                   ("/api/v1/nodes", {"limit": "1", "continue": "page-2"}), ("/api/v1/nodes", watch)]
    assert Script.accepts[:3] == [api.METADATA_LIST, api.METADATA_LIST, api.METADATA_WATCH]
    assert "as=PartialObjectMetadataList;g=meta.k8s.io;v=v1" in api.METADATA_LIST
