"""The operator's transport for `api.Kube`: the kubernetes client's authentication (client certificates,
refreshed ServiceAccount tokens, exec plugins) and TLS, under the project's plain-JSON requests."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kubernetes


class KubernetesReply:
    def __init__(self, response: Any):  # kubernetes.client.rest.RESTResponse
        self._response = response
        self.status, self.reason = response.status, response.reason

    def read(self) -> bytes:
        return self._response.read()

    def lines(self) -> Iterator[bytes]:
        # The REST client does not preload what it receives: the body is read line by line as it arrives.
        yield from self._response.response


class KubernetesTransport:
    def __init__(self, client: kubernetes.client.ApiClient):
        self.client = client

    @contextmanager
    def open(self, method: str, url: str, query: list[tuple[str, str]], headers: dict[str, str],
             body: dict[str, Any] | None, timeout: tuple[float, float]) -> Iterator[KubernetesReply]:
        request = self.client.param_serialize(method=method, resource_path=url, header_params=dict(headers),
                                              query_params=query, body=body, auth_settings=["BearerToken"])
        response = self.client.call_api(*request, _request_timeout=timeout)
        try:
            yield KubernetesReply(response)
        finally:
            response.response.close()
            response.response.release_conn()
