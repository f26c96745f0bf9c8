"""Registry credentials held in memory, by registry: what go-containerregistry calls a keychain.

A keychain is filled from a docker config.json document (read from a file, or a Kubernetes
Secret's `.dockerconfigjson` already in memory), or from an explicit user name and password.
Secrets live only in `Credentials`, whose repr hides them, and no message built here quotes one.
"""

import base64
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ...errors import UsageError
from ..reference import DOCKER_HUB

DOCKER_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io", DOCKER_HUB)


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
    """Credentials by registry (`docker.io`, `quay.io`, `host:5000`); `fallback` answers for the others."""

    def __init__(self, by_registry: Mapping[str, Credentials] | None = None, *,
                 fallback: Credentials | None = None):
        self._by_registry: dict[str, Credentials] = {}
        for key, credentials in (by_registry or {}).items():
            self._by_registry.setdefault(registry_of(key), credentials)  # the first spelling of a registry wins
        self._fallback = fallback

    @classmethod
    def from_docker_config(cls, doc: object, source: str) -> "Keychain":
        """A docker config.json document, parsed (a Secret's `.dockerconfigjson` has the same format).

        `source` names the document in errors ("auth file PATH", "secret NAME").
        """
        entries = (doc.get("auths") or {}) if isinstance(doc, dict) else None
        if not isinstance(entries, dict):
            raise UsageError(f"{source} is not a docker config.json ('auths' is not an object)")
        return cls({key: _credentials(entry, key, source) for key, entry in entries.items()
                    if isinstance(entry, dict)})

    @classmethod
    def from_file(cls, path: str) -> "Keychain":
        """Docker's config.json, or a Kubernetes `.dockerconfigjson` saved to a file; a file named
        `.dockercfg` (as a legacy kubernetes.io/dockercfg Secret mounts) has the entries without "auths"."""
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
        return cls.from_docker_config(doc, f"auth file {path}")

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
        return self._by_registry.get(registry_of(registry), self._fallback)

    def __repr__(self) -> str:
        fallback = ", with fallback credentials" if self._fallback else ""
        return f"Keychain({sorted(self._by_registry)}{fallback})"


def registry_of(key: str) -> str:
    """`https://index.docker.io/v1/` -> `docker.io`; `https://host:5000/v2/` -> `host:5000`."""
    host = re.sub(r"^[a-z]+://", "", key.strip().lower()).split("/", 1)[0]
    return DOCKER_HUB if host in DOCKER_HUB_ALIASES else host


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
