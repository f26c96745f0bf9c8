"""Requests to the API server, of the operator and of the delivery agent: plain JSON in and out, timed by verb.

The generated client's models would convert every object into pydantic classes and back;
both programs only move JSON between the API and their pure functions (buildjob.py), so they
send and receive the API's documents as they are. Authentication and TLS are a transport's
(`Transport`): the operator's wraps the kubernetes client (kubernetes_transport.py), the agent's is
the project's own (client.py), so the agent's process never loads the kubernetes package. Either
way a refused request raises `ApiError`.
"""

import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol
from urllib.parse import quote

TIMEOUT = (5.0, 30.0)  # connect, read: a request that hangs must not hold a worker for long
WATCH_SLACK = 30.0     # a watch is quiet until its timeoutSeconds at most: silent longer, the connection is dead
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
JSON = "application/json"
# Metadata only (PartialObjectMetadata), as client-go's metadata informers ask: a Node's status, images and
# conditions never travel. A server that cannot convert answers with whole objects (the plain JSON fallback).
METADATA_LIST = f"{JSON};as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,{JSON}"
METADATA_WATCH = f"{JSON};as=PartialObjectMetadata;g=meta.k8s.io;v=v1,{JSON}"

# Told of every request: its verb, its HTTP status code ("error" if none came back) and its duration in seconds.
Observer = Callable[[str, str, float], None]


class ApiError(Exception):
    """The API server refused a request: its HTTP status, reason phrase, and body (a Status document)."""

    def __init__(self, status: int | None, reason: str | None, body: str = ""):
        super().__init__(f"HTTP {status} {reason}")
        self.status, self.reason, self.body = status, reason, body


class Reply(Protocol):
    status: int
    reason: str

    def read(self) -> bytes: ...

    def lines(self) -> Iterator[bytes]: ...


class Transport(Protocol):
    def open(self, method: str, url: str, query: list[tuple[str, str]], headers: dict[str, str],
             body: dict[str, Any] | None, timeout: tuple[float, float]) -> AbstractContextManager[Reply]:
        """Sends one request (`url` a path on the API server, `body` a JSON document) and gives its answer,
        unread; closes the connection's use (without draining it) when the context ends."""
        ...


def path(group_version: str, plural: str, namespace: str | None = None, name: str | None = None,
         subresource: str | None = None) -> str:
    """`/api/v1/...` for the core group ("v1"), `/apis/GROUP/VERSION/...` for the others."""
    parts = ["/api/v1" if group_version == "v1" else f"/apis/{group_version}"]
    if namespace:
        parts.append(f"namespaces/{quote(namespace, safe='')}")
    parts.append(plural)
    if name:
        parts.append(quote(name, safe=""))
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


def verb(method: str, named: bool) -> str:
    """The Kubernetes verb of a request, as the API server's audit log names it."""
    if method == "GET":
        return "get" if named else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]


class Kube:
    def __init__(self, transport: Transport, observe: Observer | None = None):
        self.transport = transport
        self.observe = observe

    def get(self, url: str, query: dict | None = None, accept: str = JSON) -> dict:
        return self.call("GET", url, query=query, accept=accept)

    def create(self, url: str, body: dict) -> dict:
        return self.call("POST", url, body=body)

    def replace(self, url: str, body: dict) -> dict:
        return self.call("PUT", url, body=body)

    def merge_patch(self, url: str, body: dict) -> dict:
        return self.call("PATCH", url, body=body, content_type=MERGE_PATCH)

    def delete(self, url: str, body: dict | None = None) -> dict:
        return self.call("DELETE", url, body=body)

    def apply(self, url: str, body: dict, field_manager: str) -> dict:
        """Server-side apply of the whole object as `field_manager` owns it (a field it stops sending is removed)."""
        return self.call("PATCH", url, query={"fieldManager": field_manager, "force": "true"}, body=body,
                         content_type=APPLY_PATCH)

    def watch(self, url: str, resource_version: str, timeout_seconds: int, query: dict | None = None,
              accept: str = JSON) -> Iterator[dict]:
        """The events of a collection from `resource_version` on, bookmarks included, as the API server streams
        them ({"type": ADDED, MODIFIED, DELETED, BOOKMARK or ERROR, "object": ...}), until it ends the watch
        after `timeout_seconds`. Not observed: a watch's duration says nothing of the API server's speed."""
        query = {**(query or {}), "watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(timeout_seconds)}
        with self.transport.open("GET", url, list(query.items()), {"Accept": accept}, None,
                                 (TIMEOUT[0], timeout_seconds + WATCH_SLACK)) as reply:
            if not 200 <= reply.status <= 299:
                raise ApiError(reply.status, reply.reason, reply.read().decode())
            for line in reply.lines():  # one JSON event a line, read as it arrives
                if line.strip():
                    yield json.loads(line)

    def call(self, method: str, url: str, *, query: dict | None = None, body: dict | None = None,
             content_type: str = JSON, accept: str = JSON) -> dict:
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
        started = time.perf_counter()
        code = "error"
        try:
            with self.transport.open(method, url, list((query or {}).items()), headers, body, TIMEOUT) as reply:
                text = reply.read().decode()
                status, reason = reply.status, reply.reason
            code = str(status)
        finally:
            if self.observe is not None:
                self.observe(verb(method, _named(url)), code, time.perf_counter() - started)
        if not 200 <= status <= 299:
            raise ApiError(status, reason, text)
        return json.loads(text) if text else {}


def _named(url: str) -> bool:
    """Whether the path names one object (a get) rather than a collection (a list)."""
    parts = url.strip("/").split("/")
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    return len(rest) >= 2


def message_of(e: ApiError) -> str:
    """The API server's own words for a refused request (its Status message), else the HTTP reason."""
    try:
        return json.loads(e.body)["message"]
    except (TypeError, ValueError, KeyError):
        return f"HTTP {e.status} {e.reason}"
