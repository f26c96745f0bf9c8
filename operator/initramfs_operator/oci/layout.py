"""An OCI image layout directory (`index.json` + `blobs/<alg>/<hex>`) as an image source."""

import json
import os
from dataclasses import dataclass

from ..errors import InvalidImageError, LimitExceeded, UsageError
from . import image as img
from .digests import VerifyingReader

REF_NAME = "org.opencontainers.image.ref.name"


def _blob_path(root: str, d: img.Descriptor) -> str:
    alg, hex_ = d.digest.split(":", 1)
    return os.path.join(root, "blobs", alg, hex_)


@dataclass
class LayoutLayer:
    root: str
    descriptor: img.Descriptor

    def open(self) -> VerifyingReader:
        path = _blob_path(self.root, self.descriptor)
        try:
            blob = open(path, "rb")  # noqa: SIM115 (the caller closes the reader, which closes the file)
        except FileNotFoundError:
            raise InvalidImageError(f"layer {self.descriptor.digest}: blob missing from {self.root}") from None
        except OSError as e:
            raise InvalidImageError(f"layer {self.descriptor.digest}: cannot read {path}: {e.strerror}") from None
        return VerifyingReader(blob, self.descriptor.digest, self.descriptor.size, "layer")

    def prefetch(self) -> None:
        """Nothing to fetch: the blob is on local disk."""


def read_blob(root: str, d: img.Descriptor) -> bytes:
    """A manifest, index or config blob, whole: refused before reading if its descriptor is too large."""
    if d.size > img.MAX_DOCUMENT:
        raise LimitExceeded(f"blob {d.digest}: {d.size} bytes is over the {img.MAX_DOCUMENT >> 20} MiB allowed "
                            f"for a manifest, index or config")
    try:
        with open(_blob_path(root, d), "rb") as f:
            r = VerifyingReader(f, d.digest, d.size)
            data = r.read(d.size + 1)
            r.verify()
            return data
    except FileNotFoundError:
        raise InvalidImageError(f"blob {d.digest}: missing from {root}") from None
    except OSError as e:
        raise InvalidImageError(f"blob {d.digest}: cannot read it from {root}: {e.strerror}") from None


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
    root, top = _top(spec)
    return img.for_platform(f"oci:{spec}", top, read_blob(root, top), lambda d: read_blob(root, d),
                            platform, lambda d: LayoutLayer(root, d))


def platforms(spec: str) -> list[img.Platform]:
    """The platforms of the layout's image (`image.offered`)."""
    root, top = _top(spec)
    return img.offered(f"oci:{spec}", top, read_blob(root, top), lambda d: read_blob(root, d))


def _top(spec: str) -> tuple[str, img.Descriptor]:
    """The layout's root and the descriptor `spec` names in its index.json."""
    root, ref = split_ref(spec)
    try:
        with open(os.path.join(root, "index.json"), "rb") as f:
            index = img.parse_json(f.read(img.MAX_DOCUMENT + 1), f"{root}/index.json")
    except FileNotFoundError:
        raise UsageError(f"oci:{spec}: {root} is not an OCI image layout (no index.json)") from None
    except OSError as e:
        raise UsageError(f"oci:{spec}: cannot read {root}/index.json: {e.strerror}") from None
    try:
        with open(os.path.join(root, "oci-layout"), "rb") as f:
            version = json.loads(f.read(1024)).get("imageLayoutVersion")
    except (OSError, ValueError, AttributeError, RecursionError):
        version = None
    if version != "1.0.0":
        raise InvalidImageError(f"oci:{spec}: missing or unsupported oci-layout file (want imageLayoutVersion 1.0.0)")
    manifests = index.get("manifests") or []
    if not isinstance(manifests, list):
        raise InvalidImageError(f"oci:{spec}: {root}/index.json: manifests must be a list")
    entries = [img.Descriptor.parse(m, f"{root}/index.json") for m in manifests]
    return root, _pick(spec, entries, ref)


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
