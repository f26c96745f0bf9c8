"""Registry credentials and the `WWW-Authenticate` dance (Basic, and the Docker token flow).

Secrets live only in `Credentials` (whose repr hides them) and in Authorization headers;
no message built here contains either.
"""

import base64
import binascii
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Callable

import httpx

from ...errors import AuthError, UsageError
from ..reference import DOCKER_HUB

CLIENT_ID = "initramfs-operator"


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)  # OAuth2 refresh token some registries' logins store


def lookup(registry: str, auth_file: str | None, username: str | None, password: str | None) -> Credentials | None:
    """Explicit username/password win; otherwise the auth file's entry for this registry, if any."""
    if username is not None or password is not None:
        return Credentials(username or "", password or "")
    if not auth_file:
        return None
    return _from_config(auth_file).get(registry)


def _from_config(path: str) -> dict[str, Credentials]:
    """Docker's config.json, or the `.dockerconfigjson` key of a Kubernetes Secret (same format)."""
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
        entries = doc.get("auths") or {}
        if not isinstance(entries, dict):
            raise ValueError("'auths' is not an object")
    except OSError as e:
        raise UsageError(f"cannot read auth file {path}: {e.strerror}") from None
    except (ValueError, AttributeError) as e:
        # The JSON decoder's message quotes the document, which holds secrets: keep only its type.
        raise UsageError(f"auth file {path} is not a docker config.json ({type(e).__name__})") from None
    found = {}
    for key, entry in entries.items():
        if not isinstance(entry, dict):
            continue
        user, secret = entry.get("username") or "", entry.get("password") or ""
        if entry.get("auth"):
            try:
                user, _, secret = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise UsageError(f"auth file {path}: the 'auth' of {key!r} is not base64 of user:password") from None
        found.setdefault(_registry_of(key), Credentials(user, secret, entry.get("identitytoken") or ""))
    return found


def _registry_of(key: str) -> str:
    """`https://index.docker.io/v1/` -> `docker.io`; `https://host:5000/v2/` -> `host:5000`."""
    host = re.sub(r"^[a-z]+://", "", key.strip().lower()).split("/", 1)[0]
    return DOCKER_HUB if host in ("index.docker.io", "registry-1.docker.io", DOCKER_HUB) else host


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

    def __init__(self, host: str, credentials: Credentials | None, http: Callable[..., httpx.Response]):
        self._host = host
        self._credentials = credentials
        self._http = http  # sends a request to the token endpoint with the caller's TLS/proxy/retry settings
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
        c = self._credentials
        if c and (c.username or c.password or c.identity_token):
            return AuthError(f"{self._host}: access to {scope} refused: credentials rejected, or not allowed")
        return AuthError(f"{self._host}: access to {scope} refused to anonymous requests; credentials needed")

    def _basic(self, scope: str) -> str:
        c = self._credentials
        if not c or not (c.username or c.password):
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
            resp = self._http("POST", realm, data=form)
        else:
            params = [("scope", s) for s in scopes]
            if "service" in challenge:
                params.append(("service", challenge["service"]))
            auth = self._basic(scope) if c and (c.username or c.password) else None
            resp = self._http("GET", realm, params=params, headers={"Authorization": auth} if auth else {})
        where = f"{self._host}: token service {httpx.URL(realm).host}"
        if resp.status_code in (401, 403):
            raise AuthError(f"{where} refused the credentials for {scope}" if c
                            else f"{where} requires credentials for {scope}")
        if resp.status_code != 200:
            raise AuthError(f"{where} answered HTTP {resp.status_code}")
        try:
            body = resp.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise AuthError(f"{where} returned no token")
        return token
