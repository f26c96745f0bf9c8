"""The project's own way to the API server: httpx, the cluster's CA, and a bearer token or a client certificate.

`api.Kube` sends its requests through a transport; this is the one the delivery agent uses, so that a
process on every VM host does not load the kubernetes package (most of the agent's memory). It knows the
two places a program finds its cluster, as `kubernetes.config.load_config` does:

- in a pod: the ServiceAccount's projected token and CA under /var/run/secrets/kubernetes.io/serviceaccount
  and the API server at $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT. The kubelet replaces the token
  before it expires (by swapping a symlink), so the file is read again whenever its identity changes;
- elsewhere: the current context of the kubeconfig at $KUBECONFIG (its first file) or ~/.kube/config, with
  its server, its certificate-authority(-data), and a token, a tokenFile, or client-certificate(-data) and
  client-key(-data). Exec and auth-provider plugins are not supported: that is the laptop's kubectl's business.
"""

import base64
import json
import os
import ssl
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

SERVICEACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ConfigError(Exception):
    """No usable cluster configuration: what is missing or unsupported, and where."""


class TokenFile:
    """A bearer token kept in a file that is replaced while the program runs; read again when it changes."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._identity: tuple[int, ...] | None = None
        self._token = ""

    def token(self) -> str:
        st = os.stat(self.path)  # follows the kubelet's ..data symlink: a new token is a new inode
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if identity != self._identity:
                self._token, self._identity = self.path.read_text().strip(), identity
            return self._token


@dataclass(frozen=True)
class Config:
    """Where the API server is and how to prove who we are to it."""

    server: str
    tls: ssl.SSLContext | None  # None for a plain-HTTP server (a test's stand-in)
    token: TokenFile | str | None = None

    def authorization(self) -> dict[str, str]:
        token = self.token.token() if isinstance(self.token, TokenFile) else self.token
        return {"Authorization": f"Bearer {token}"} if token else {}


def in_cluster(serviceaccount: Path = SERVICEACCOUNT) -> Config:
    """The pod's own ServiceAccount and the cluster's `kubernetes` Service."""
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    tls = ssl.create_default_context(cafile=str(serviceaccount / "ca.crt"))
    return Config(f"https://{_bracketed(host)}:{port}", tls, TokenFile(serviceaccount / "token"))


def from_kubeconfig(path: Path) -> Config:
    """The current context of a kubeconfig file; relative file names in it are relative to the file."""
    doc = yaml.safe_load(path.read_text()) or {}
    current = doc.get("current-context")
    if not current:
        raise ConfigError(f"{path}: no current-context")
    context = _named(doc, "contexts", current, path)["context"]
    cluster = _named(doc, "clusters", context["cluster"], path)["cluster"]
    user = _named(doc, "users", context["user"], path)["user"] if context.get("user") else {}
    if "exec" in user or "auth-provider" in user:
        raise ConfigError(f"{path}: user {context['user']} authenticates through a plugin, which is not supported")
    server = cluster["server"].rstrip("/")
    tls = None
    if server.startswith("https://"):
        tls = ssl.create_default_context(cafile=_file(cluster.get("certificate-authority"), path),
                                         cadata=_data(cluster.get("certificate-authority-data")))
        certificate = _pem(user, "client-certificate", path)
        if certificate is not None:
            key = _pem(user, "client-key", path)
            if key is None:
                raise ConfigError(f"{path}: user {context['user']} has a client certificate but no client key")
            _load_cert_chain(tls, certificate, key)
    token: TokenFile | str | None = user.get("token")
    if token is None and user.get("tokenFile"):
        token = TokenFile(Path(_file(user["tokenFile"], path) or ""))
    return Config(server, tls, token)


def load() -> Config:
    """In a pod, its ServiceAccount; elsewhere the kubeconfig at $KUBECONFIG or ~/.kube/config."""
    if os.environ.get("KUBERNETES_SERVICE_HOST") and (SERVICEACCOUNT / "token").exists():
        return in_cluster()
    paths = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    return from_kubeconfig(Path(paths[0]) if paths else Path.home() / ".kube" / "config")


class HttpxReply:
    """One answer of the API server, read whole or line by line (a watch)."""

    def __init__(self, response: httpx.Response):
        self._response = response
        self.status = response.status_code
        self.reason = response.reason_phrase

    def read(self) -> bytes:
        return self._response.read()

    def lines(self) -> Iterator[bytes]:
        buffered = b""
        for chunk in self._response.iter_bytes():
            buffered += chunk
            *complete, buffered = buffered.split(b"\n")
            yield from complete
        if buffered:
            yield buffered


class HttpxTransport:
    """`api.Kube`'s transport over one pooled httpx client."""

    def __init__(self, config: Config):
        self.config = config
        # Not through $HTTPS_PROXY, nor with the environment's CA bundle: the API server is reached directly
        # (as the kubernetes client does) and trusted by the configured CA alone.
        self._client = httpx.Client(base_url=config.server, verify=config.tls or False, trust_env=False)

    @contextmanager
    def open(self, method: str, url: str, query: list[tuple[str, str]], headers: dict[str, str],
             body: dict[str, Any] | None, timeout: tuple[float, float]) -> Iterator[HttpxReply]:
        request = self._client.build_request(
            method, url, params=tuple(query), headers={**headers, **self.config.authorization()},
            content=json.dumps(body).encode() if body is not None else None,
            timeout=httpx.Timeout(timeout[1], connect=timeout[0]))
        response = self._client.send(request, stream=True)
        try:
            yield HttpxReply(response)
        finally:
            response.close()  # closed, not drained: a watch left early would otherwise be read to its end

    def close(self) -> None:
        self._client.close()


def _named(doc: dict[str, Any], section: str, name: str, path: Path) -> dict[str, Any]:
    for entry in doc.get(section) or []:
        if entry.get("name") == name:
            return entry
    raise ConfigError(f"{path}: no {section[:-1]} named {name!r}")


def _file(name: str | None, kubeconfig: Path) -> str | None:
    return str(kubeconfig.parent / name) if name else None


def _data(encoded: str | None) -> str | None:
    return base64.b64decode(encoded).decode() if encoded else None


def _pem(user: dict[str, Any], field: str, kubeconfig: Path) -> bytes | None:
    """A user's client certificate or key, from its -data field or from the file it names."""
    if user.get(f"{field}-data"):
        return base64.b64decode(user[f"{field}-data"])
    name = _file(user.get(field), kubeconfig)
    return Path(name).read_bytes() if name else None


def _load_cert_chain(tls: ssl.SSLContext, certificate: bytes, key: bytes) -> None:
    """ssl reads a certificate and its key only from files: both are written to a private temporary
    directory, loaded, and removed at once."""
    with tempfile.TemporaryDirectory(prefix="kubeconfig-") as directory:
        for name, pem in (("cert.pem", certificate), ("key.pem", key)):
            fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
        tls.load_cert_chain(os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem"))


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
