"""The operator's own requests to the API server: plain JSON in and out, timed by verb.

The generated client's models would convert every object into pydantic classes and back;
the operator only moves JSON between the API and its pure functions (buildjob.py), so it
sends and receives the API's documents as they are. The kubernetes client still does the
authentication (client certificates, refreshed ServiceAccount tokens) and TLS.
"""

import json
import time
from collections.abc import Callable
from urllib.parse import quote

import kubernetes
from kubernetes.client.rest import ApiException

TIMEOUT = (5.0, 30.0)  # connect, read: a request that hangs must not hold a worker for long
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
