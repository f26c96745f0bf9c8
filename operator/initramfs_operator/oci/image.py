"""The one shape every image source has: an `Image` is a manifest, a config and `Layer`s.

Sources (an OCI layout, a `docker save` archive, a registry) only know how to fetch
bytes by descriptor; manifest parsing, index traversal and platform selection live
here so every transport behaves the same.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import InvalidImageError, LimitExceeded
from . import digests

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join(MANIFEST_TYPES + INDEX_TYPES)
# Manifests, indexes and configs are read whole into memory: none is allowed more (distribution's own
# limit for manifests). Blob sizes beyond JSON's exact integers are nonsense whatever the blob.
MAX_DOCUMENT = 4 << 20
MAX_BLOB_SIZE = (1 << 53) - 1
PLATFORM_FIELDS = ("os", "architecture", "variant")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: dict[str, Any] | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    artifact_type: str | None = None

    @classmethod
    def parse(cls, raw: dict[str, Any], where: str = "descriptor") -> "Descriptor":
        if not isinstance(raw, dict):
            raise InvalidImageError(f"{where}: a descriptor must be a JSON object")
        try:
            size = raw["size"]
            if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_BLOB_SIZE:
                raise InvalidImageError(f"{where}: invalid size {str(size)[:40]}")
            platform, annotations = raw.get("platform"), raw.get("annotations") or {}
            if not isinstance(platform, dict | None) or not isinstance(annotations, dict):
                raise InvalidImageError(f"{where}: platform and annotations must be JSON objects")
            media_type, artifact_type = raw.get("mediaType", ""), raw.get("artifactType")
            if not (isinstance(media_type, str) and isinstance(artifact_type, str | None)
                    and all(isinstance(v, str) for v in annotations.values())
                    and all(isinstance(v, str) for k, v in (platform or {}).items() if k in PLATFORM_FIELDS)):
                raise InvalidImageError(f"{where}: mediaType, artifactType, annotation values and platform "
                                        f"os/architecture/variant must be strings")
            return cls(media_type, digests.validate(raw["digest"]), size, platform, annotations, artifact_type)
        except (KeyError, TypeError) as e:
            raise InvalidImageError(f"{where}: missing or malformed field {e}") from None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.platform:
            out["platform"] = self.platform
        if self.annotations:
            out["annotations"] = self.annotations
        return out


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> "Platform":
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"invalid platform {text!r}: expected os/arch[/variant], e.g. linux/arm64")
        return cls(*parts).normalized()

    @classmethod
    def of(cls, raw: dict[str, Any]) -> "Platform":
        return cls(raw.get("os", ""), raw.get("architecture", ""), raw.get("variant", "")).normalized()

    def normalized(self) -> "Platform":
        # containerd's platforms.Normalize: the spellings people use for the same machine.
        arch, variant = self.architecture.lower(), self.variant.lower()
        arch = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "i386": "386"}.get(arch, arch)
        if arch == "arm64" and variant in ("8", "v8"):
            variant = ""
        if arch == "arm" and variant in ("", "7"):
            variant = "v7"
        if arch == "arm" and variant in ("5", "6", "8"):
            variant = "v" + variant
        if arch == "amd64" and variant == "v1":
            variant = ""
        return Platform(self.os.lower(), arch, variant)

    def matches(self, want: "Platform") -> bool:
        """A single-platform image's config often omits os or variant: only what it says must agree."""
        return all(not have or have == wanted for have, wanted in
                   ((self.os, want.os), (self.architecture, want.architecture), (self.variant, want.variant)))

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def expand(self, template: str) -> str:
        """A name for this platform's output: {platform} becomes os-arch[-variant], {arch} arch[variant]."""
        return template.replace("{platform}", str(self).replace("/", "-")).replace(
            "{arch}", self.architecture + self.variant)


DEFAULT_PLATFORM = Platform("linux", "amd64")


@dataclass(frozen=True)
class Config:
    """The parts of the image config an initramfs cares about."""

    entrypoint: list[str]
    cmd: list[str]
    env: list[str]
    working_dir: str
    user: str
    platform: Platform
    diff_ids: list[str]
    raw: dict[str, Any]

    @classmethod
    def parse(cls, data: bytes, where: str) -> "Config":
        raw = parse_json(data, where)
        c, rootfs = raw.get("config") or {}, raw.get("rootfs") or {}
        if not isinstance(c, dict) or not isinstance(rootfs, dict):
            raise InvalidImageError(f"{where}: config and rootfs must be JSON objects")
        for field_name in PLATFORM_FIELDS:
            _string(raw, field_name, where)
        return cls(_strings(c, "Entrypoint", where), _strings(c, "Cmd", where), _strings(c, "Env", where),
                   _string(c, "WorkingDir", where), _string(c, "User", where), Platform.of(raw),
                   _strings(rootfs, "diff_ids", where), raw)


def _string(doc: dict[str, Any], key: str, where: str) -> str:
    value = doc.get(key) or ""
    if not isinstance(value, str):
        raise InvalidImageError(f"{where}: {key} must be a string, not {type(value).__name__}")
    return value


def _strings(doc: dict[str, Any], key: str, where: str) -> list[str]:
    value = doc.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidImageError(f"{where}: {key} must be a list of strings")
    return value


class Layer(Protocol):
    descriptor: Descriptor

    def open(self) -> digests.VerifyingReader:
        """The layer blob as stored (compressed), as a stream that raises if its digest or size is wrong."""

    def prefetch(self) -> None:
        """Start fetching the blob in the background if it is remote (`build` does, for all layers at once)."""


@dataclass
class Image:
    name: str                 # what the user asked for, for messages
    digest: str               # digest of the selected manifest
    manifest: dict[str, Any]
    config: Config
    layers: list[Layer]
    platforms: list[Platform]  # what the source offers, for `inspect`
    descriptor: Descriptor     # of the selected manifest: an artifact's `subject`
    index_digest: str | None = None  # the index the manifest was chosen from, if any

    @property
    def pinned(self) -> str:
        """The name with the manifest digest, for messages that must say exactly which image."""
        return at_digest(self.name, self.digest)


Fetch = Callable[[Descriptor], bytes]


def at_digest(name: str, digest: str) -> str:
    """`name@digest`, once: a name already pinned (`app@sha256:...`, as the operator passes them) has its
    own digest replaced, so a message shows the document it is about and no digest twice."""
    base, at, pin = name.rpartition("@")
    if at and pin.partition(":")[0] in ("sha256", "sha512"):
        name = base
    return f"{name}@{digest}"


def parse_json(data: bytes, where: str) -> dict[str, Any]:
    if len(data) > MAX_DOCUMENT:
        raise LimitExceeded(f"{where}: {len(data)} bytes is over the {MAX_DOCUMENT >> 20} MiB allowed for a "
                            f"manifest, index or config")
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise InvalidImageError(f"{where}: not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidImageError(f"{where}: JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise InvalidImageError(f"{where}: not a JSON object")
    return doc


def kind(doc: dict[str, Any], media_type: str) -> str:
    """The manifest kind, also when `mediaType` is absent (allowed by the OCI spec; umoci omits it)."""
    mt = doc.get("mediaType") or media_type
    if mt in INDEX_TYPES or (not mt and "manifests" in doc):
        return "index"
    if mt in MANIFEST_TYPES or (not mt and "layers" in doc):
        return "manifest"
    if doc.get("schemaVersion") == 1:
        raise InvalidImageError("Docker schema 1 manifests are deprecated and not supported; re-push the image")
    raise InvalidImageError(f"unsupported manifest media type {mt!r}")


def pick_platform(entries: list[Descriptor], want: Platform, where: str) -> Descriptor:
    candidates = [d for d in entries if d.platform and Platform.of(d.platform) == want]
    if not candidates:
        offered = sorted({str(Platform.of(d.platform)) for d in entries if d.platform
                          and d.platform.get("os") != "unknown"})
        raise InvalidImageError(
            f"{where}: no manifest for platform {want}; available: {', '.join(offered) or 'none'}")
    return candidates[0]


def for_platform(name: str, top: Descriptor, top_bytes: bytes, fetch: Fetch, platform: Platform,
            layer: Callable[[Descriptor], Layer]) -> Image:
    """Walk from a top-level descriptor through (nested) indexes to the platform's manifest."""
    desc, data, index_digest = top, top_bytes, None
    offered: list[Platform] = []
    for _ in range(8):  # nesting bound: an index pointing at itself must not loop forever
        doc = parse_json(data, at_digest(name, desc.digest))
        if kind(doc, desc.media_type) == "manifest":
            break
        index_digest = index_digest or desc.digest
        manifests = doc.get("manifests") or []
        if not isinstance(manifests, list):
            raise InvalidImageError(f"{at_digest(name, desc.digest)}: manifests must be a list")
        entries = [Descriptor.parse(m, f"{name}: index entry") for m in manifests]
        offered = offered or [Platform.of(d.platform) for d in entries if d.platform]
        desc = pick_platform(entries, platform, at_digest(name, desc.digest))
        data = fetch(_document(desc, f"{name}: manifest"))
    else:
        raise InvalidImageError(f"{name}: image index nested too deeply")
    where = at_digest(name, desc.digest)
    if not isinstance(doc.get("config"), dict) or not isinstance(doc.get("layers"), list):
        raise InvalidImageError(f"{where}: manifest has no config or layers")
    config_desc = Descriptor.parse(doc["config"], f"{where}: config")
    layer_descs = [Descriptor.parse(raw, f"{where}: layer") for raw in doc["layers"]]
    config = Config.parse(fetch(_document(config_desc, f"{where}: config")), f"{where}: config {config_desc.digest}")
    if not offered:
        offered = [config.platform]
        if not config.platform.matches(platform):
            raise InvalidImageError(f"{where}: the image is for {config.platform}, not {platform}; "
                                    f"pass --platform {config.platform} to build it")
    media_type = doc.get("mediaType") or desc.media_type or OCI_MANIFEST
    return Image(name, desc.digest, doc, config, [layer(d) for d in layer_descs], offered,
                 Descriptor(media_type, desc.digest, len(data)), index_digest)


def offered(name: str, top: Descriptor, top_bytes: bytes, fetch: Fetch) -> list[Platform]:
    """The platforms an image has, in its index's order (what `--platform all` builds): an index's entries
    but attestations (`unknown/unknown`), or a single image's own, from its config."""
    where = at_digest(name, top.digest)
    doc = parse_json(top_bytes, where)
    if kind(doc, top.media_type) == "manifest":
        if not isinstance(doc.get("config"), dict):
            raise InvalidImageError(f"{where}: manifest has no config")
        config_desc = Descriptor.parse(doc["config"], f"{where}: config")
        return [Config.parse(fetch(_document(config_desc, f"{where}: config")), f"{where}: config").platform]
    manifests = doc.get("manifests") or []
    if not isinstance(manifests, list):
        raise InvalidImageError(f"{where}: manifests must be a list")
    found: list[Platform] = []
    for raw in manifests:
        d = Descriptor.parse(raw, f"{name}: index entry")
        platform = Platform.of(d.platform) if d.platform else None
        if platform and platform.os not in ("", "unknown") and platform not in found:
            found.append(platform)
    if not found:
        raise InvalidImageError(f"{where}: the index names no platform")
    return found


def _document(d: Descriptor, where: str) -> Descriptor:
    """`d`, if what it describes may be read into memory: checked before the fetch, not after."""
    if d.size > MAX_DOCUMENT:
        raise LimitExceeded(f"{where} {d.digest}: {d.size} bytes is over the {MAX_DOCUMENT >> 20} MiB allowed "
                            f"for a manifest, index or config")
    return d
