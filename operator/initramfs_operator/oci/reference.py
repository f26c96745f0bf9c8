"""Image references (`[host[:port]/]repo/path[:tag][@digest]`), normalised the way Docker does.

The grammar is distribution's `reference` package: a first component that looks like a
host (has a `.` or `:`, or is `localhost`) names the registry, anything else is on Docker
Hub, where single-component names live under `library/`.
"""

import re
from dataclasses import dataclass

from ..errors import InvalidImageError, UsageError
from . import digests

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"  # docker.io itself serves a website, not the registry API
DEFAULT_TAG = "latest"

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_HOST = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                   r"|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_MAX_NAME = 255


@dataclass(frozen=True)
class Reference:
    registry: str     # as written by users: "docker.io", "quay.io", "127.0.0.1:5000"
    repository: str   # "library/alpine"
    tag: str | None
    digest: str | None

    @property
    def host(self) -> str:
        """Where the registry API is served."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def identifier(self) -> str:
        """What goes after /manifests/: the digest wins over the tag, as in Docker."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse(text: str) -> Reference:
    def bad(why: str) -> UsageError:
        return UsageError(f"invalid image reference {text!r}: {why}")

    if not text:
        raise bad("empty")
    name, at, digest = text.partition("@")
    if at:
        try:
            digests.validate(digest)
        except InvalidImageError:
            raise bad("digest must be sha256:<64 hex> or sha512:<128 hex>") from None
    tag = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
        if not _TAG.fullmatch(tag):
            raise bad("tag must be up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'")
    registry, repository = _split_registry(name)
    if not _HOST.fullmatch(registry):
        raise bad(f"invalid registry host {registry!r}")
    for component in repository.split("/"):
        if not _COMPONENT.fullmatch(component):
            if component.lower() != component and _COMPONENT.fullmatch(component.lower()):
                raise bad("repository name must be lowercase")
            raise bad(f"invalid repository path component {component!r}")
    if len(f"{registry}/{repository}") > _MAX_NAME:
        raise bad(f"name longer than {_MAX_NAME} characters")
    return Reference(registry, repository, tag if tag or at else DEFAULT_TAG, digest or None)


def _split_registry(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    if not slash or not ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        first, rest = DOCKER_HUB, name
    if first in ("index.docker.io", DOCKER_HUB_API):
        first = DOCKER_HUB
    if first == DOCKER_HUB and "/" not in rest:
        rest = "library/" + rest
    return first, rest
