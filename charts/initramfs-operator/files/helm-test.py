"""`helm test`: the InitramfsBuild API is served, and every operator pod of the release answers /healthz.

Runs in the operator's image with its own ServiceAccount (list pods in the release's namespace); the
standard library only. The pods are reached on their IPs, not through a Service: the check is about
the operator, not about the cluster's Service routing.
"""

import json
import os
import ssl
import sys
import urllib.parse
import urllib.request
from typing import Any

ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def host_port(host: str, port: str | int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def fetch(request: urllib.request.Request | str, tls: ssl.SSLContext | None = None) -> bytes:
    url = request if isinstance(request, str) else request.full_url
    try:
        with urllib.request.urlopen(request, context=tls, timeout=10) as response:
            body: bytes = response.read()
            return body
    except OSError as e:  # HTTPError and URLError are OSErrors
        sys.exit(f"FAIL: {url}: {e}")


def api_get(path: str) -> dict[str, Any]:
    server = host_port(os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
    with open(f"{ACCOUNT}/token") as token:
        request = urllib.request.Request(f"https://{server}{path}",
                                         headers={"Authorization": f"Bearer {token.read().strip()}"})
    document: dict[str, Any] = json.loads(fetch(request, ssl.create_default_context(cafile=f"{ACCOUNT}/ca.crt")))
    return document


def check_api_served(group_version: str, plural: str) -> None:
    served = [r["name"] for r in api_get(f"/apis/{group_version}")["resources"]]
    if plural not in served:
        sys.exit(f"FAIL: {group_version} is served but without {plural} (it has {served})")
    print(f"ok: {plural}.{group_version} is served")


def check_operator_healthy(namespace: str, selector: str, port: str) -> None:
    query = urllib.parse.urlencode({"labelSelector": selector})
    pods = api_get(f"/api/v1/namespaces/{namespace}/pods?{query}")["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running" and p["status"].get("podIP")]
    if not running:
        sys.exit(f"FAIL: no running operator pod in {namespace} ({selector}); is replicaCount 0?")
    for pod in running:
        url = f"http://{host_port(pod['status']['podIP'], port)}/healthz"
        fetch(url)
        print(f"ok: {pod['metadata']['name']} answers {url}")


def main() -> None:
    env = os.environ
    check_api_served(env["API_GROUP_VERSION"], env["API_PLURAL"])
    check_operator_healthy(env["OPERATOR_NAMESPACE"], env["OPERATOR_SELECTOR"], env["OPERATOR_HEALTH_PORT"])


if __name__ == "__main__":
    main()
