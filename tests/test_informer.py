"""The delivery agent's informer over `api.Kube`: LIST, then WATCH from its resourceVersion with bookmarks,
relisting on 410 Gone. The API server here is a script of HTTP answers (the real one is in
test_delivery_agent.py); the client is the agent's own (kube/client.py), streaming newline-delimited JSON events."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from initramfs_operator.delivery.informer import Informer
from initramfs_operator.kube import api, client


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

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.requests.append((url.path, {k: v[0] for k, v in parse_qs(url.query).items()}))
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


def test_lists_watches_and_relists_after_410_gone():
    Script.answers, Script.requests = list(ANSWERS), []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Script)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    changes = []
    transport = client.HttpxTransport(client.Config(f"http://127.0.0.1:{server.server_port}", None))
    informer = Informer("nodes", api.Kube(transport), api.path("v1", "nodes"),
                        lambda key, old, new: changes.append((key[1], old and old["metadata"]["resourceVersion"],
                                                              new and new["metadata"]["resourceVersion"])),
                        {"fieldSelector": "metadata.name=a"})
    try:
        informer.start()
        deadline = time.monotonic() + 10
        while len(Script.requests) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        informer.stop()
        server.shutdown()
    assert informer.synced.is_set()
    # The first listing, the watched changes (the bookmark is none), then the relisting's: b was deleted.
    assert changes == [("a", None, "5"), ("b", None, "7"), ("a", "5", "11"), ("c", None, "13"), ("b", "7", None)]
    assert sorted(key[1] for key in informer.objects) == ["a", "c"]
    selector = {"fieldSelector": "metadata.name=a"}
    watch = {**selector, "watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": "300"}
    assert Script.requests[:4] == [("/api/v1/nodes", selector), ("/api/v1/nodes", {**watch, "resourceVersion": "10"}),
                                   ("/api/v1/nodes", selector), ("/api/v1/nodes", {**watch, "resourceVersion": "20"})]
