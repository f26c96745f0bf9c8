"""A `docker save` archive (legacy layout or Docker 25+ OCI layout inside) as an image source."""

import json
import tarfile
from dataclasses import dataclass

from . import digests
from . import image as img
from .digests import VerifyingReader
from ..errors import InvalidImageError, UsageError


class _Slice:
    """One member of the outer tar, read in place: layers are never copied out."""

    def __init__(self, path: str, offset: int, size: int):
        self._file = open(path, "rb")
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

    def open(self):
        return VerifyingReader(_Slice(self.path, self.member.offset_data, self.member.size),
                               self.descriptor.digest, self.descriptor.size, "layer")


def split_ref(spec: str) -> tuple[str, str | None]:
    """`FILE` or `FILE:REPO:TAG` (the tag as `docker save` recorded it in RepoTags)."""
    path, sep, rest = spec.partition(":")
    return (path, rest) if sep else (spec, None)


def load(spec: str) -> img.Image:
    path, tag = split_ref(spec)
    name = f"docker-archive:{spec}"
    try:
        tar = tarfile.open(path, "r:")
    except FileNotFoundError:
        raise UsageError(f"{name}: no such file") from None
    except tarfile.TarError as e:
        raise InvalidImageError(f"{name}: not a docker save archive ({e})") from None
    with tar:
        members = {m.name.lstrip("./"): m for m in tar.getmembers() if m.isfile()}

        def read(member_name: str) -> bytes:
            member = members.get(member_name)
            if member is None:
                raise InvalidImageError(f"{name}: {member_name} is missing from the archive")
            return tar.extractfile(member).read()

        try:
            manifest = json.loads(read("manifest.json"))
        except ValueError as e:
            raise InvalidImageError(f"{name}: manifest.json is not valid JSON: {e}") from None
        if not isinstance(manifest, list) or not manifest:
            raise InvalidImageError(f"{name}: manifest.json lists no images")
        entry = _pick(name, manifest, tag)
        config_bytes = read(entry["Config"])
        config = img.Config.parse(config_bytes, f"{name}: {entry['Config']}")
        if len(config.diff_ids) != len(entry["Layers"]):
            raise InvalidImageError(f"{name}: {len(entry['Layers'])} layers but the config lists "
                                    f"{len(config.diff_ids)} diff_ids")
        layers = []
        for layer_name, diff_id in zip(entry["Layers"], config.diff_ids):
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
           "layers": [l.descriptor.to_json() for l in layers]}
    return img.Image(name, digest, doc, config, layers, [config.platform],
                     img.Descriptor(img.DOCKER_CONFIG, digest, len(config_bytes)))


def _pick(name: str, manifest: list[dict], tag: str | None) -> dict:
    tags = sorted(t for e in manifest for t in e.get("RepoTags") or [])
    if tag is None:
        if len(manifest) > 1:
            raise UsageError(f"{name}: the archive holds {len(manifest)} images; name one: {', '.join(tags)}")
        return manifest[0]
    for e in manifest:
        if tag in (e.get("RepoTags") or []) or any(t.endswith("/" + tag) for t in e.get("RepoTags") or []):
            return e
    raise UsageError(f"{name}: no image tagged {tag!r}; tags: {', '.join(tags) or 'none'}")
