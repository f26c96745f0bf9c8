"""The operator's own requests to the API server: plain JSON in and out, timed by verb.

The generated client's models would convert every object into pydantic classes and back;
the operator only moves JSON between the API and its pure functions (buildjob.py), so it
sends and receives the API's documents as they are. The kubernetes client still does the
authentication (client certificates, refreshed ServiceAccount tokens) and TLS.
"""

import json
import time
from collections.abc import Callable, Iterator
from urllib.parse import quote

import kubernetes
from kubernetes.client.rest import ApiException

TIMEOUT = (5.0, 30.0)  # connect, read: a request that hangs must not hold a worker for long
WATCH_SLACK = 30.0     # a watch is quiet until its timeoutSeconds at most: silent longer, the connection is dead
MERGE_PATCH = "application/merge-patch+json"

# Told of every request: its verb, its HTTP status code ("error" if none came back) and its duration in seconds.
Observer = Callable[[str, str, float], None]


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
    def __init__(self, client: kubernetes.client.ApiClient, observe: Observer | None = None):
        self.client = client
        self.observe = observe

    def get(self, url: str, query: dict | None = None) -> dict:
        return self.call("GET", url, query=query)

    def create(self, url: str, body: dict) -> dict:
        return self.call("POST", url, body=body)

    def replace(self, url: str, body: dict) -> dict:
        return self.call("PUT", url, body=body)

    def merge_patch(self, url: str, body: dict) -> dict:
        return self.call("PATCH", url, body=body, content_type=MERGE_PATCH)

    def delete(self, url: str, body: dict | None = None) -> dict:
        return self.call("DELETE", url, body=body)

    def watch(self, url: str, resource_version: str, timeout_seconds: int, query: dict | None = None) -> Iterator[dict]:
        """The events of a collection from `resource_version` on, bookmarks included, as the API server streams
        them ({"type": ADDED, MODIFIED, DELETED, BOOKMARK or ERROR, "object": ...}), until it ends the watch
        after `timeout_seconds`. Not observed: a watch's duration says nothing of the API server's speed."""
        query = {**(query or {}), "watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(timeout_seconds)}
        request = self.client.param_serialize(method="GET", resource_path=url,
                                              header_params={"Accept": "application/json"},
                                              query_params=list(query.items()), auth_settings=["BearerToken"])
        # The REST client does not preload what it receives: the body is read line by line as it arrives.
        response = self.client.call_api(*request, _request_timeout=(TIMEOUT[0], timeout_seconds + WATCH_SLACK))
        try:
            if not 200 <= response.status <= 299:
                raise ApiException(http_resp=response, body=response.read().decode())
            for line in response.response:  # one JSON event a line
                if line.strip():
                    yield json.loads(line)
        finally:
            # Closed, not drained: a watch left early would otherwise be read to its end first.
            response.response.close()
            response.response.release_conn()

    def call(self, method: str, url: str, *, query: dict | None = None, body: dict | None = None,
             content_type: str = "application/json") -> dict:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self.client.param_serialize(method=method, resource_path=url, header_params=headers,
                                              query_params=list((query or {}).items()), body=body,
                                              auth_settings=["BearerToken"])
        started = time.perf_counter()
        code = "error"
        try:
            response = self.client.call_api(*request, _request_timeout=TIMEOUT)
            response.read()
            code = str(response.status)
        finally:
            if self.observe is not None:
                self.observe(verb(method, _named(url)), code, time.perf_counter() - started)
        text = response.data.decode()
        if not 200 <= response.status <= 299:
            raise ApiException(http_resp=response, body=text)
        return json.loads(text) if text else {}


def _named(url: str) -> bool:
    """Whether the path names one object (a get) rather than a collection (a list)."""
    parts = url.strip("/").split("/")
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    return len(rest) >= 2


def message_of(e: ApiException) -> str:
    """The API server's own words for a refused request (its Status message), else the HTTP reason."""
    try:
        return json.loads(e.body)["message"]
    except (TypeError, ValueError, KeyError):
        return f"HTTP {e.status} {e.reason}"
