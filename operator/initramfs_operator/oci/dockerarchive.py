"""A `docker save` archive (legacy layout or Docker 25+ OCI layout inside) as an image source."""

import json
import tarfile
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidImageError, LimitExceeded, UsageError, shown
from . import digests
from . import image as img
from .digests import VerifyingReader
from .layer import SafeTarInfo

MAX_MEMBERS = 100_000


class _Slice:
    """One member of the outer tar, read in place: layers are never copied out."""

    def __init__(self, path: str, offset: int, size: int):
        self._file = open(path, "rb")  # noqa: SIM115 (closed by close(), as the reader above it is)
        self._file.seek(offset)
        self._left = size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._file.read(n)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._file.close()


@dataclass
class ArchiveLayer:
    path: str
    member: tarfile.TarInfo
    descriptor: img.Descriptor

    def open(self) -> VerifyingReader:
        return VerifyingReader(_Slice(self.path, self.member.offset_data, self.member.size),
                               self.descriptor.digest, self.descriptor.size, "layer")

    def prefetch(self) -> None:
        """Nothing to fetch: the blob is in the local archive."""


def split_ref(spec: str) -> tuple[str, str | None]:
    """`FILE` or `FILE:REPO:TAG` (the tag as `docker save` recorded it in RepoTags)."""
    path, sep, rest = spec.partition(":")
    return (path, rest) if sep else (spec, None)


def load(spec: str) -> img.Image:
    path, tag = split_ref(spec)
    name = f"docker-archive:{spec}"
    with _open(path, name) as tar:
        members = {m.name.lstrip("./"): m for m in _members(tar, name) if m.isfile()}

        def read(member_name: str) -> bytes:
            member = members.get(member_name)
            file = tar.extractfile(member) if member else None
            if member is None or file is None:
                raise InvalidImageError(f"{name}: {member_name} is missing from the archive")
            if member.size > img.MAX_DOCUMENT:
                raise LimitExceeded(f"{name}: {member_name} is {member.size} bytes, over the "
                                    f"{img.MAX_DOCUMENT >> 20} MiB allowed for a manifest or config")
            return file.read(img.MAX_DOCUMENT)

        try:
            manifest = json.loads(read("manifest.json"))
        except ValueError as e:
            raise InvalidImageError(f"{name}: manifest.json is not valid JSON: {e}") from None
        except RecursionError:
            raise InvalidImageError(f"{name}: manifest.json is nested too deeply") from None
        if not isinstance(manifest, list) or not manifest or not all(isinstance(e, dict) for e in manifest):
            raise InvalidImageError(f"{name}: manifest.json lists no images")
        config_name, layer_names = _entry(name, _pick(name, manifest, tag))
        config_bytes = read(config_name)
        config = img.Config.parse(config_bytes, f"{name}: {config_name}")
        if len(config.diff_ids) != len(layer_names):
            raise InvalidImageError(f"{name}: {len(layer_names)} layers but the config lists "
                                    f"{len(config.diff_ids)} diff_ids")
        layers: list[img.Layer] = []
        for layer_name, diff_id in zip(layer_names, config.diff_ids, strict=True):
            member = members.get(layer_name)
            if member is None:
                raise InvalidImageError(f"{name}: layer {layer_name} is missing from the archive")
            # Docker 25+ stores layers as content-addressed blobs; older saves as uncompressed
            # tars whose digest is the config's diff_id.
            blob = layer_name.removeprefix("blobs/sha256/")
            d = f"sha256:{blob}" if blob != layer_name else diff_id
            layers.append(ArchiveLayer(path, member, img.Descriptor("", digests.validate(d), member.size)))
    digest = digests.of(config_bytes)  # the image ID, as docker names it: a save holds no manifest
    doc = {"schemaVersion": 2, "config": {"digest": digest, "size": len(config_bytes)},
           "layers": [layer.descriptor.to_json() for layer in layers]}
    return img.Image(name, digest, doc, config, layers, [config.platform],
                     img.Descriptor(img.DOCKER_CONFIG, digest, len(config_bytes)))


class _SaveTarInfo(SafeTarInfo):
    """`docker save` writes no sparse members: refuse them rather than read their maps into memory."""

    def _proc_sparse(self, archive: tarfile.TarFile) -> "_SaveTarInfo":
        raise ValueError(f"sparse member {shown(self.name)!r}")

    def _proc_gnusparse_10(self, next: tarfile.TarInfo, pax_headers: dict[str, str], archive: tarfile.TarFile) -> None:
        raise ValueError(f"sparse member {shown(next.name)!r}")


def _open(path: str, name: str) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:", tarinfo=_SaveTarInfo)
    except FileNotFoundError:
        raise UsageError(f"{name}: no such file") from None
    except OSError as e:
        raise UsageError(f"{name}: cannot read it: {e.strerror}") from None
    except (tarfile.TarError, ValueError, UnicodeError) as e:
        raise InvalidImageError(f"{name}: not a docker save archive ({e})") from None


def _members(tar: tarfile.TarFile, name: str) -> list[tarfile.TarInfo]:
    """The archive's members, at most MAX_MEMBERS (a save has a few per layer), with malformed headers refused."""
    members = []
    try:
        while (member := tar.next()) is not None:
            members.append(member)
            if len(members) > MAX_MEMBERS:
                raise LimitExceeded(f"{name}: more than {MAX_MEMBERS} members: not a docker save archive")
    except (tarfile.TarError, ValueError, OSError, IndexError, OverflowError) as e:
        raise InvalidImageError(f"{name}: not a docker save archive ({e})") from None
    return members


def _repo_tags(entry: dict[str, Any]) -> list[str]:
    tags = entry.get("RepoTags") or []
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def _entry(name: str, entry: dict[str, Any]) -> tuple[str, list[str]]:
    """The config's and the layers' member names of one manifest.json entry."""
    config, layers = entry.get("Config"), entry.get("Layers")
    if not isinstance(config, str) or not isinstance(layers, list) or not all(isinstance(n, str) for n in layers):
        raise InvalidImageError(f"{name}: manifest.json entry needs Config (a member name) and Layers (a list of them)")
    return config, layers


def _pick(name: str, manifest: list[dict[str, Any]], tag: str | None) -> dict[str, Any]:
    tags = sorted(t for e in manifest for t in _repo_tags(e))
    if tag is None:
        if len(manifest) > 1:
            raise UsageError(f"{name}: the archive holds {len(manifest)} images; name one: {', '.join(tags)}")
        return manifest[0]
    for e in manifest:
        if any(t == tag or t.endswith("/" + tag) for t in _repo_tags(e)):
            return e
    raise UsageError(f"{name}: no image tagged {tag!r}; tags: {', '.join(tags) or 'none'}")
