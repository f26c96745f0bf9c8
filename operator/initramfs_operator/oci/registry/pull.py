"""Pulling: an image by reference, and the descriptor a reference points at now.

Manifests and configs are read into memory (bounded by `DOCUMENT_LIMIT`) and checked against
their digests; index traversal and platform selection are `image.for_platform`'s, as for every
source. Layers are lazy (see `downloads`): loading an image fetches no layer blob.
"""

from collections.abc import Iterator
from contextlib import closing, contextmanager

from ...errors import InvalidImageError
from .. import digests, image
from ..digests import VerifyingReader
from ..reference import parse as parse_reference
from .downloads import Downloads
from .options import RegistryOptions
from .transport import READ_SIZE, Body, Transport, fail

DOCUMENT_LIMIT = 8 << 20  # manifests and configs are held in memory: refuse absurd ones


@contextmanager
def load(reference: str, platform: image.Platform, options: RegistryOptions) -> Iterator[image.Image]:
    """The image for `platform`, for the duration of the `with` block.

    Its layers download when prefetched or opened; leaving the block removes the downloaded
    files (unless they are in the cache) and closes the connections.
    """
    ref = parse_reference(reference)
    with Transport(ref, options) as transport, Downloads(transport, options) as downloads:
        data, media_type = manifest(transport, ref.identifier, ref.digest)
        top = image.Descriptor(media_type, digest_of(data, ref.digest), len(data))
        yield image.for_platform(str(ref), top, data, lambda d: fetch(transport, d), platform, downloads.layer)


def platforms(reference: str, options: RegistryOptions) -> list[image.Platform]:
    """The platforms of the image (`image.offered`); no layer is fetched."""
    ref = parse_reference(reference)
    with Transport(ref, options) as transport:
        data, media_type = manifest(transport, ref.identifier, ref.digest)
        top = image.Descriptor(media_type, digest_of(data, ref.digest), len(data))
        return image.offered(str(ref), top, data, lambda d: fetch(transport, d))


def current_digest(reference: str, options: RegistryOptions) -> str:
    """The digest the reference points at now (an index's, for multi-platform images)."""
    return head(reference, options).digest


def head(reference: str, options: RegistryOptions) -> image.Descriptor:
    """The descriptor of the manifest or index the reference points at (e.g. for `subject`)."""
    ref = parse_reference(reference)
    with Transport(ref, options) as transport:
        found = head_manifest(transport, ref.identifier)
        if found and (not ref.digest or found.digest == ref.digest):
            return found
        # Not every registry sends Docker-Content-Digest and Content-Length on HEAD: fetch and hash.
        data, media_type = manifest(transport, ref.identifier, ref.digest)
        return image.Descriptor(media_type, digest_of(data, ref.digest), len(data))


def manifest(transport: Transport, identifier: str, expect: str | None) -> tuple[bytes, str]:
    """A manifest or index and its media type (empty when the registry's is not one we know)."""
    data, media_type = _document(transport, f"manifests/{identifier}", transport.label(identifier), "manifest",
                                 expect, None)
    return data, known_type(media_type)


def head_manifest(transport: Transport, identifier: str) -> image.Descriptor | None:
    """The manifest's descriptor from a HEAD request, if the registry tells all of it."""
    what = transport.label(identifier)
    resp = transport.request("HEAD", f"manifests/{identifier}", what, headers={"Accept": image.ACCEPT})
    if resp.status_code != 200:
        fail(resp, what)
    media_type = known_type(resp.headers.get("content-type", "").split(";")[0].strip())
    try:
        return image.Descriptor(media_type, digests.validate(resp.headers.get("docker-content-digest", "")),
                                int(resp.headers["content-length"]))
    except (InvalidImageError, KeyError, ValueError):
        return None


def fetch(transport: Transport, d: image.Descriptor) -> bytes:
    """A child manifest or a config, checked against its descriptor (`image.Fetch`)."""
    if known_type(d.media_type):
        path, label = f"manifests/{d.digest}", "manifest"
    else:
        path, label = f"blobs/{d.digest}", "config"
    what = transport.label(d.digest)
    if d.size > DOCUMENT_LIMIT:
        raise InvalidImageError(f"{what}: {d.size} bytes is too large for a {label}")
    return _document(transport, path, what, label, d.digest, d.size)[0]


def _document(transport: Transport, path: str, what: str, label: str, digest: str | None,
              size: int | None) -> tuple[bytes, str]:
    """A small JSON document and its content type, in memory, verified when its digest is known."""
    def once() -> tuple[bytes, str]:
        with closing(transport.send("GET", transport.base.join(path), headers={"Accept": image.ACCEPT},
                                    stream=True)) as resp:
            if resp.status_code != 200:
                fail(resp, what)
            body = VerifyingReader(Body(resp), digest, size, label) if digest else Body(resp)
            data = bytearray()
            while chunk := body.read(READ_SIZE):
                data += chunk
                if len(data) > DOCUMENT_LIMIT:
                    raise InvalidImageError(f"{what}: larger than {DOCUMENT_LIMIT} bytes, not a {label}")
            return bytes(data), resp.headers.get("content-type", "").split(";")[0].strip()

    return transport.attempts(what, once)


def known_type(media_type: str) -> str:
    """The media type if it is a manifest or index type; else "" so `image.kind` looks at the document."""
    return media_type if media_type in image.MANIFEST_TYPES + image.INDEX_TYPES else ""


def digest_of(data: bytes, expect: str | None) -> str:
    """The digest of a manifest, in the algorithm of the digest it was asked by, checked against it."""
    h = digests.hasher(expect or "sha256:")
    h.update(data)
    found = f"{h.name}:{h.hexdigest()}"
    if expect and found != expect:
        raise InvalidImageError(f"manifest {expect}: the registry served content with digest {found}")
    return found
