"""Registry credentials held in memory, by registry: what go-containerregistry calls a keychain.

A keychain is filled from a docker config.json document (read from a file, or a Kubernetes
Secret's `.dockerconfigjson` already in memory), or from an explicit user name and password.
The user's own docker config may also name credential helpers (`credHelpers` per registry,
`credsStore` for the rest): they are run as docker and crane run them, once per registry and
only for a registry actually contacted. Documents from anywhere else are read as the kubelet
reads a `.dockerconfigjson`, their `auths` only, so a Secret can never make the operator or a
build pod run a program.
Secrets live only in `Credentials`, whose repr hides them, and no message built here quotes one.
"""

import base64
import json
import os
import re
import subprocess
import threading
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field

from ...errors import AuthError, UsageError
from ..reference import DOCKER_HUB

DOCKER_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io", DOCKER_HUB)
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"  # how docker and its helpers name Docker Hub
HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # docker-credential-NAME, found on PATH
HELPER_SECONDS = 60      # ecr-login or gcloud may ask the network for a token
HELPER_OUTPUT = 1 << 20  # bytes of an answer read at most: a longer one is refused
TOKEN_USER = "<token>"   # a helper's user name for an identity token


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)  # OAuth2 refresh token some registries' logins store

    @property
    def has_password(self) -> bool:
        return bool(self.username or self.password)

    @property
    def is_empty(self) -> bool:
        return not (self.has_password or self.identity_token)


class Keychain:
    """Credentials by registry (`docker.io`, `quay.io`, `host:5000`); `fallback` answers for the others.
    `helpers` names the credential helper of some registries and `store` the one for every other: a
    helper's answer wins over the entry of `auths`, which answers when the helper has none."""

    def __init__(self, by_registry: Mapping[str, Credentials] | None = None, *,
                 fallback: Credentials | None = None, helpers: Mapping[str, str] | None = None,
                 store: str = "", source: str = ""):
        self._by_registry: dict[str, Credentials] = {}
        for key, credentials in (by_registry or {}).items():
            self._by_registry.setdefault(registry_of(key), credentials)  # the first spelling of a registry wins
        self._fallback = fallback
        self._helpers = {registry_of(key): name for key, name in (helpers or {}).items()}
        self._store = store
        self._source = source
        self._answers: dict[str, Credentials | None] = {}  # helpers' answers, by registry
        self._lock = threading.Lock()  # one helper run per registry, whichever thread asks first

    @classmethod
    def from_docker_config(cls, doc: object, source: str, helpers: bool = False) -> "Keychain":
        """A docker config.json document, parsed (a Secret's `.dockerconfigjson` has the same format);
        with `helpers` (the user's own docker config only), its credential helpers too.

        `source` names the document in errors ("auth file PATH", "secret NAME").
        """
        entries = (doc.get("auths") or {}) if isinstance(doc, dict) else None
        if not isinstance(entries, dict):
            raise UsageError(f"{source} is not a docker config.json ('auths' is not an object)")
        assert isinstance(doc, dict)
        by_registry = {key: _credentials(entry, key, source) for key, entry in entries.items()
                       if isinstance(entry, dict)}
        if not helpers:
            return cls(by_registry)
        per_registry = _object(doc, "credHelpers", source)
        return cls(by_registry, source=source,
                   helpers={key: _helper_name(name, source) for key, name in per_registry.items()},
                   store=_helper_name(doc["credsStore"], source) if doc.get("credsStore") else "")

    @classmethod
    def from_file(cls, path: str, helpers: bool = False) -> "Keychain":
        """Docker's config.json, or a Kubernetes `.dockerconfigjson` saved to a file; a file named
        `.dockercfg` (as a legacy kubernetes.io/dockercfg Secret mounts) has the entries without "auths".
        With `helpers` (the user's own docker config), its credential helpers are used too."""
        try:
            with open(path, "rb") as f:
                doc = json.load(f)
        except OSError as e:
            raise UsageError(f"cannot read auth file {path}: {e.strerror}") from None
        except ValueError as e:
            # The JSON decoder's message quotes the document, which holds secrets: keep only its type.
            raise UsageError(f"auth file {path} is not a docker config.json ({type(e).__name__})") from None
        if os.path.basename(path) == ".dockercfg" and isinstance(doc, dict):
            doc = {"auths": doc}
        return cls.from_docker_config(doc, f"auth file {path}", helpers)

    @classmethod
    def first_match(cls, keychains: Iterable["Keychain"]) -> "Keychain":
        """Several keychains as one: for each registry, the first that has credentials for it answers."""
        merged = cls()
        for keychain in keychains:
            for registry, credentials in keychain._by_registry.items():
                merged._by_registry.setdefault(registry, credentials)
        return merged

    def resolve(self, registry: str) -> Credentials | None:
        """The credentials for `registry` (as references spell it), or None for anonymous access."""
        host = registry_of(registry)
        helper = self._helpers.get(host) or self._store
        if helper:
            with self._lock:
                if host not in self._answers:
                    self._answers[host] = _from_helper(helper, host, self._source)
            if self._answers[host] is not None:
                return self._answers[host]
        return self._by_registry.get(host, self._fallback)

    def __repr__(self) -> str:
        fallback = ", with fallback credentials" if self._fallback else ""
        helpers = f", helpers {sorted(set(self._helpers.values()) | {self._store} - {''})}" \
            if self._helpers or self._store else ""
        return f"Keychain({sorted(self._by_registry)}{fallback}{helpers})"


def registry_of(key: str) -> str:
    """`https://index.docker.io/v1/` -> `docker.io`; `https://host:5000/v2/` -> `host:5000`."""
    host = re.sub(r"^[a-z]+://", "", key.strip().lower()).split("/", 1)[0]
    return DOCKER_HUB if host in DOCKER_HUB_ALIASES else host


def _from_helper(name: str, host: str, source: str) -> Credentials | None:
    """`docker-credential-NAME get` as docker runs it: the server on stdin, JSON on stdout; None when the
    helper has no credentials for it. Neither its answer nor anything it printed goes into a message."""
    program = f"docker-credential-{name}"
    server = DOCKER_HUB_SERVER if host == DOCKER_HUB else host
    answer, status = _run_helper(program, server, source)
    if len(answer) > HELPER_OUTPUT:
        raise AuthError(f"credential helper {program} answered for {server} with more than "
                        f"{HELPER_OUTPUT >> 20} MiB")
    if status:
        if b"credentials not found" in answer.lower():  # docker-credential-helpers' words, on stdout
            return None
        raise AuthError(f"credential helper {program} failed for {server} (exit status {status})")
    try:
        parsed = json.loads(answer)
        user, secret = parsed["Username"], parsed["Secret"]
        if not (isinstance(user, str) and isinstance(secret, str)):
            raise ValueError
    except (ValueError, TypeError, KeyError):
        raise AuthError(f"credential helper {program} did not answer for {server} with a Username and a "
                        f"Secret") from None
    if user == TOKEN_USER:
        return Credentials(identity_token=secret)
    return Credentials(user, secret) if user or secret else None


def _run_helper(program: str, server: str, source: str) -> tuple[bytes, int]:
    """(what `PROGRAM get` printed, its exit status), reading at most HELPER_OUTPUT + 1 bytes (then it is
    killed) and waiting at most HELPER_SECONDS."""
    try:
        proc = subprocess.Popen([program, "get"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
    except FileNotFoundError:
        raise AuthError(f"{source} names the credential helper {program}, which is not on PATH") from None
    except OSError as e:
        raise AuthError(f"cannot run credential helper {program}: {e.strerror}") from None
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(HELPER_SECONDS, expire)
    timer.start()
    try:
        with proc:  # waits for it on the way out
            assert proc.stdin is not None and proc.stdout is not None
            with suppress(BrokenPipeError):  # a helper may exit without reading
                proc.stdin.write(server.encode())
                proc.stdin.close()
            answer = proc.stdout.read(HELPER_OUTPUT + 1)
            if len(answer) > HELPER_OUTPUT:
                proc.kill()
    finally:
        timer.cancel()
    if expired.is_set():
        raise AuthError(f"credential helper {program} gave no answer for {server} in {HELPER_SECONDS} s")
    return answer, proc.returncode


def _helper_name(name: object, source: str) -> str:
    if not isinstance(name, str) or not HELPER_NAME.fullmatch(name):
        raise UsageError(f"{source}: {str(name)[:60]!r} is not a credential helper name "
                         f"(docker-credential-NAME, NAME of letters, digits, '.', '_' and '-')")
    return name


def _object(doc: dict[str, object], name: str, source: str) -> dict[str, object]:
    value = doc.get(name) or {}
    if not isinstance(value, dict):
        raise UsageError(f"{source}: {name!r} is not an object")
    return value


def _credentials(entry: dict[str, object], key: str, source: str) -> Credentials:
    user, secret = _text(entry, "username", key, source), _text(entry, "password", key, source)
    if encoded := _text(entry, "auth", key, source):
        try:
            user, _, secret = base64.b64decode(encoded, validate=True).decode().partition(":")
        except ValueError:  # binascii.Error, UnicodeDecodeError, or non-ASCII text
            raise UsageError(f"{source}: the 'auth' of {key!r} is not base64 of user:password") from None
    return Credentials(user, secret, _text(entry, "identitytoken", key, source))


def _text(entry: dict[str, object], name: str, key: str, source: str) -> str:
    value = entry.get(name) or ""
    if not isinstance(value, str):
        raise UsageError(f"{source}: the {name!r} of {key!r} is not a string")
    return value
