"""An OCI image layout directory (`index.json` + `blobs/<alg>/<hex>`) as an image source."""

import json
import os
from dataclasses import dataclass

from . import image as img
from .digests import VerifyingReader
from ..errors import InvalidImageError, UsageError

REF_NAME = "org.opencontainers.image.ref.name"


def _blob_path(root: str, d: img.Descriptor) -> str:
    alg, hex_ = d.digest.split(":", 1)
    return os.path.join(root, "blobs", alg, hex_)


@dataclass
class LayoutLayer:
    root: str
    descriptor: img.Descriptor

    def open(self):
        path = _blob_path(self.root, self.descriptor)
        try:
            return VerifyingReader(open(path, "rb"), self.descriptor.digest, self.descriptor.size, "layer")
        except FileNotFoundError:
            raise InvalidImageError(f"layer {self.descriptor.digest}: blob missing from {self.root}") from None


def read_blob(root: str, d: img.Descriptor) -> bytes:
    try:
        with open(_blob_path(root, d), "rb") as f:
            r = VerifyingReader(f, d.digest, d.size)
            data = r.read(d.size + 1)
            r.verify()
            return data
    except FileNotFoundError:
        raise InvalidImageError(f"blob {d.digest}: missing from {root}") from None


def split_ref(spec: str) -> tuple[str, str | None]:
    """`DIR`, `DIR:TAG` or `DIR@sha256:...` (a DIR containing ':' needs the trailing form)."""
    if "@" in spec:
        root, _, ref = spec.rpartition("@")
        return root, ref
    root, sep, tag = spec.rpartition(":")
    if sep and "/" not in tag and os.path.isdir(root):
        return root, tag
    return spec, None


def load(spec: str, platform: img.Platform = img.DEFAULT_PLATFORM) -> img.Image:
    root, ref = split_ref(spec)
    try:
        with open(os.path.join(root, "index.json"), "rb") as f:
            index = img.parse_json(f.read(), f"{root}/index.json")
    except FileNotFoundError:
        raise UsageError(f"oci:{spec}: {root} is not an OCI image layout (no index.json)") from None
    try:
        with open(os.path.join(root, "oci-layout")) as f:
            version = json.load(f).get("imageLayoutVersion")
    except (FileNotFoundError, ValueError):
        version = None
    if version != "1.0.0":
        raise InvalidImageError(f"oci:{spec}: missing or unsupported oci-layout file (want imageLayoutVersion 1.0.0)")
    entries = [img.Descriptor.parse(m, f"{root}/index.json") for m in index.get("manifests") or []]
    top = _pick(spec, entries, ref)
    return img.for_platform(f"oci:{spec}", top, read_blob(root, top), lambda d: read_blob(root, d),
                       platform, lambda d: LayoutLayer(root, d))


def _pick(spec: str, entries: list[img.Descriptor], ref: str | None) -> img.Descriptor:
    tags = sorted({d.annotations[REF_NAME] for d in entries if REF_NAME in d.annotations})
    if ref and ref.startswith("sha256:"):
        matches = [d for d in entries if d.digest == ref]
    elif ref:
        matches = [d for d in entries if d.annotations.get(REF_NAME) == ref]
    else:
        matches = entries
    if ref and not matches:
        raise UsageError(f"oci:{spec}: no image {ref!r} in the layout; tags: {', '.join(tags) or 'none'}")
    if not ref and len(matches) != 1:
        raise UsageError(f"oci:{spec}: the layout holds {len(matches)} images; name one with :TAG or @DIGEST "
                         f"(tags: {', '.join(tags) or 'none'})")
    return matches[0]
