"""The `WWW-Authenticate` dance: Basic, and the Docker token flow.

Secrets go only into Authorization headers and token requests; no message built here
contains one.
"""

import base64
import re
import threading
from typing import Protocol

import httpx

from ...errors import AuthError
from .keychain import Credentials

CLIENT_ID = "initramfs-operator"


class TokenService(Protocol):
    """Sends a request to a token endpoint (with the caller's TLS, proxies and retries); returns it read."""

    def __call__(self, method: str, url: str, *, params: list[tuple[str, str]] | None = None,
                 data: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> httpx.Response: ...


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="https://auth",service="reg",scope="repository:x:pull"` -> ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): quoted or bare for k, quoted, bare in re.findall(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]*))', rest)}
    return scheme.lower(), params


class Authenticator:
    """Authorization headers for one registry, cached per token scope and renewed when refused.

    Shared by the download threads: a 401 makes one thread fetch a new token while the others
    wait, then reuse it.
    """

    def __init__(self, host: str, credentials: Credentials | None, token_service: TokenService):
        self._host = host
        self._credentials = credentials if credentials and not credentials.is_empty else None
        self._token_service = token_service
        self._headers: dict[str, str] = {}
        self._lock = threading.Lock()

    def header(self, scope: str) -> str | None:
        return self._headers.get(scope)

    def renew(self, scope: str, challenge: str, refused: str | None) -> str:
        """A header to retry with after a 401 that carried `challenge` (the request had `refused`)."""
        with self._lock:
            current = self._headers.get(scope)
            if current and current != refused:
                return current  # another thread already renewed it
            scheme, params = parse_challenge(challenge)
            if scheme == "basic":
                header = self._basic(scope)
            elif scheme == "bearer" and params.get("realm"):
                header = "Bearer " + self._token(scope, params)
            else:
                raise AuthError(f"{self._host}: unsupported authentication challenge {scheme or 'none'!r}")
            if header == refused:
                raise self.refused(scope)
            self._headers[scope] = header
            return header

    def refused(self, scope: str) -> AuthError:
        """The error for a 401 despite an Authorization header."""
        if self._credentials:
            return AuthError(f"{self._host}: access to {scope} refused: credentials rejected, or not allowed")
        return AuthError(f"{self._host}: access to {scope} refused to anonymous requests; credentials needed")

    def _basic(self, scope: str) -> str:
        c = self._credentials
        if not c or not c.has_password:
            raise AuthError(f"{self._host}: authentication required for {scope} and no credentials "
                            f"were given for {self._host}")
        return "Basic " + base64.b64encode(f"{c.username}:{c.password}".encode()).decode()

    def _token(self, scope: str, challenge: dict[str, str]) -> str:
        """The Docker token flow: https://distribution.github.io/distribution/spec/auth/token/."""
        scopes = [scope] + [s for s in challenge.get("scope", "").split(" ") if s and s != scope]
        realm = challenge["realm"]
        c = self._credentials
        if c and c.identity_token:
            # OAuth2 refresh-token grant: how `docker login` to an identity-token registry authenticates.
            form = {"grant_type": "refresh_token", "refresh_token": c.identity_token, "client_id": CLIENT_ID,
                    "scope": " ".join(scopes)}
            if "service" in challenge:
                form["service"] = challenge["service"]
            resp = self._token_service("POST", realm, data=form)
        else:
            params = [("scope", s) for s in scopes]
            if "service" in challenge:
                params.append(("service", challenge["service"]))
            # The registry's credentials go to its token service (wherever the realm is) and nowhere else.
            headers = {"Authorization": self._basic(scope)} if c and c.has_password else {}
            resp = self._token_service("GET", realm, params=params, headers=headers)
        where = f"{self._host}: token service {httpx.URL(realm).host}"
        if resp.status_code in (401, 403):
            raise AuthError(f"{where} refused the credentials for {scope}" if c
                            else f"{where} requires credentials for {scope}")
        if resp.status_code != 200:
            raise AuthError(f"{where} answered HTTP {resp.status_code}")
        return _token_of(resp, where)


def _token_of(resp: httpx.Response, where: str) -> str:
    try:
        body = resp.json()
        token = body.get("token") or body.get("access_token")
    except (ValueError, AttributeError):
        token = None
    if not isinstance(token, str) or not token:
        raise AuthError(f"{where} returned no token")
    return token
