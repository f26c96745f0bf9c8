"""One repository's HTTP channel: authorized requests, retries, redirects, and errors that say what failed.

- Authorization: whatever the registry's challenge asks for (see `auth`), cached per scope and
  renewed once when refused; a second refusal is an `AuthError`.
- Retries: a broken connection, 429 and 5xx are retried with exponential backoff, or after the
  `Retry-After` the registry asked for (up to `MAX_RETRY_AFTER`).
- Redirects: GET and HEAD follow them, but the Authorization header only ever goes to the
  registry itself: blob redirects lead to storage (S3, a CDN) that must not see it.
- Errors: `RegistryError`/`AuthError` naming the registry and what was asked for, never a secret.
"""

import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from time import sleep
from types import TracebackType
from typing import NoReturn, TypeVar

import httpx

from ...errors import AuthError, RegistryError
from ..reference import Reference
from .auth import Authenticator
from .options import RETRIES, RegistryOptions, plain_http, ssl_context  # noqa: F401  (RETRIES: the default, here too)

log = logging.getLogger(__name__)

BACKOFF = 0.5             # doubled each retry: 0.5 + 1 + 2 + 4 s for the default RETRIES (4)
MAX_RETRY_AFTER = 60.0    # a registry asking for longer is better reported than waited for
RETRY_STATUSES = (429, 500, 502, 503, 504)
MAX_REDIRECTS = 5
READ_SIZE = 1 << 20
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=15.0)  # RegistryOptions.timeout None: the CLI is patient

T = TypeVar("T")
# A request body: bytes, or a callable returning a fresh stream for each attempt.
Content = bytes | Callable[[], Iterable[bytes]] | None


class Transient(Exception):
    """A failure worth retrying: the connection broke, or the registry said 429/5xx."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class NotFound(RegistryError):
    """The registry answered 404 for what was asked."""


class Transport:
    """One repository of one registry, with the access it needs (pull; pull and push; or those and delete)."""

    def __init__(self, ref: Reference, options: RegistryOptions, push: bool = False, delete: bool = False):
        self.ref = ref
        scheme = "http" if plain_http(ref, options.insecure) else "https"
        self.base = httpx.URL(f"{scheme}://{ref.host}/v2/{ref.repository}/")
        actions = ["pull"] + (["push"] if push or delete else []) + (["delete"] if delete else [])
        self.scope = f"repository:{ref.repository}:{','.join(actions)}"
        self._owns_connections = options.transport is None
        self.retries = options.retries
        self.http = _client(options)
        self.auth = Authenticator(ref.registry, options.keychain.resolve(ref.registry), self._token_request)

    def close(self) -> None:
        if self._owns_connections:
            self.http.close()

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def label(self, identifier: str) -> str:
        """`host/repo:tag` or `host/repo@digest`, for messages."""
        return f"{self.ref.name}{'@' if ':' in identifier else ':'}{identifier}"

    def request(self, method: str, path: str | httpx.URL, what: str, *, headers: dict[str, str] | None = None,
                content: Content = None) -> httpx.Response:
        """A complete (read) response for a path under the repository, or a URL; transient failures are retried."""
        return self.attempts(what, lambda: self.send(method, self.base.join(path), headers=headers, content=content))

    def attempts(self, what: str, once: Callable[[], T]) -> T:
        """Run `once`, retrying transient failures with exponential backoff (or as Retry-After says)."""
        attempt = 0
        while True:
            try:
                return once()
            except Transient as e:
                if attempt >= self.retries:
                    raise RegistryError(f"{what}: {e} (gave up after {attempt + 1} attempts)") from None
                delay = e.retry_after if e.retry_after is not None else BACKOFF * 2 ** attempt
                log.info("%s: %s; retrying in %.1fs", what, e, delay)
                sleep(delay)
                attempt += 1

    def send(self, method: str, url: httpx.URL, *, headers: dict[str, str] | None = None, content: Content = None,
             stream: bool = False) -> httpx.Response:
        """One attempt, authorized (renewed once on 401) and following GET and HEAD redirects."""
        for _ in range(MAX_REDIRECTS + 1):
            own = _same_origin(url, self.base)
            sent = self.auth.header(self.scope) if own else None
            resp = self._exchange(method, url, headers, content, sent, stream)
            if resp.status_code == 401 and own:
                challenge = resp.headers.get("www-authenticate", "")
                resp.close()
                sent = self.auth.renew(self.scope, challenge, sent)
                resp = self._exchange(method, url, headers, content, sent, stream)
                if resp.status_code == 401:
                    resp.close()
                    raise self.auth.refused(self.scope)
            if not (resp.is_redirect and method in ("GET", "HEAD")):
                return resp
            resp.close()
            try:
                url = url.join(resp.headers["location"])
            except httpx.InvalidURL:
                raise RegistryError(f"{self.ref.registry}: redirected to an invalid URL from {url.path}") from None
        raise RegistryError(f"{self.ref.registry}: more than {MAX_REDIRECTS} redirects for {url.path}")

    def _exchange(self, method: str, url: httpx.URL, headers: dict[str, str] | None, content: Content,
                  authorization: str | None, stream: bool) -> httpx.Response:
        headers = dict(headers or {})
        if authorization:
            headers["Authorization"] = authorization
        body = content() if callable(content) else content
        try:
            resp = self.http.send(self.http.build_request(method, url, headers=headers, content=body), stream=stream)
        except httpx.TransportError as e:
            raise _classify(e, self.ref.registry) from None
        log.debug("%s %s -> %d", method, url.copy_with(query=None), resp.status_code)
        if resp.status_code in RETRY_STATUSES:
            resp.close()
            raise Transient(f"HTTP {resp.status_code} from {url.host}", _retry_after(resp))
        return resp

    def _token_request(self, method: str, url: str, *, params: list[tuple[str, str]] | None = None,
                       data: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
        """For the token endpoint: same TLS, proxies and retries; no redirects, no registry Authorization."""
        def once() -> httpx.Response:
            try:
                resp = self.http.request(method, url, params=tuple(params or ()), data=data, headers=headers)
            except httpx.InvalidURL:
                raise AuthError(f"{self.ref.registry}: the token realm is not a valid URL") from None
            except httpx.TransportError as e:
                raise _classify(e, httpx.URL(url).host) from None
            if resp.status_code in RETRY_STATUSES:
                raise Transient(f"HTTP {resp.status_code} from {resp.url.host}", _retry_after(resp))
            return resp

        return self.attempts(f"{self.ref.registry}: token service", once)


def _client(options: RegistryOptions) -> httpx.Client:
    timeout = options.timeout or DEFAULT_TIMEOUT
    if options.transport is not None:
        return httpx.Client(transport=options.transport, trust_env=False, timeout=timeout)
    # trust_env: proxies from HTTP(S)_PROXY/NO_PROXY.
    return httpx.Client(verify=ssl_context(options.ca_certs), trust_env=True, timeout=timeout,
                        limits=httpx.Limits(max_connections=max(1, options.jobs) + 2))


class Body:
    """The `read()` VerifyingReader needs, over a streamed response (chunks of any size)."""

    def __init__(self, resp: httpx.Response):
        self._chunks: Iterator[bytes] = resp.iter_bytes(READ_SIZE)

    def read(self, n: int = -1) -> bytes:
        try:
            return next(self._chunks, b"")
        except httpx.TransportError as e:
            raise Transient(f"connection broken mid-transfer ({type(e).__name__})") from None

    def close(self) -> None:
        pass


def fail(resp: httpx.Response, what: str) -> NoReturn:
    """Turn an unexpected status into an error naming `what`, with the registry's error codes."""
    try:
        resp.read()
        detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in resp.json().get("errors") or []
                           if isinstance(e, dict))[:300]
    except (httpx.HTTPError, ValueError, AttributeError, TypeError):
        detail = ""
    status = f"HTTP {resp.status_code}" + (f", {detail}" if detail else "")
    if resp.status_code in (401, 403):
        raise AuthError(f"{what}: access denied ({status})")
    if resp.status_code == 404:
        raise NotFound(f"{what}: not found ({status})")
    raise RegistryError(f"{what}: unexpected {status}")


def _classify(e: httpx.TransportError, host: str) -> Exception:
    """Certificate problems will not fix themselves: fail at once, with a hint. The rest is retried."""
    text = str(e)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        reason = re.search(r"certificate verify failed: ([^(]*)", text)
        return RegistryError(f"{host}: TLS certificate verification failed ({reason[1].strip() if reason else text}); "
                             "pass the registry's CA bundle, or list the registry as insecure if it speaks plain HTTP")
    if "WRONG_VERSION_NUMBER" in text or "RECORD_LAYER_FAILURE" in text:  # as OpenSSL versions word it
        return RegistryError(f"{host}: TLS handshake failed; if the registry speaks plain HTTP, list it as insecure")
    return Transient(f"{type(e).__name__} talking to {host}: {text or 'no detail'}")


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER) if math.isfinite(seconds) else None


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)
