"""Pushing the built initramfs as an OCI 1.1 artifact.

- manifest `application/vnd.oci.image.manifest.v1+json` with
  `artifactType: application/vnd.initramfs.v1`;
- config: the empty descriptor (`application/vnd.oci.empty.v1+json`, the 2-byte `{}`);
- one layer, the file as written, typed by the caller:
  `application/vnd.initramfs.v1.cpio` (uncompressed newc cpio),
  `application/vnd.initramfs.v1.cpio+gzip`, `+zstd`, `+lz4` or `+xz`;
  it carries `org.opencontainers.image.title` (the file name) so `oras pull` restores it;
- manifest annotations: the caller's (`org.opencontainers.image.base.name`/`.base.digest`, ...),
  plus `org.opencontainers.image.title` and `org.opencontainers.image.created`
  (from SOURCE_DATE_EPOCH when set) unless given;
- `subject`, when given (`Image.descriptor`, or `pull.head()`), points at the source image's
  manifest, which must be in the same repository. For registries without the referrers API
  the tag `sha256-<hex>` holds an OCI index listing the referrers of `<hex>`, updated on each
  push: the referrers tag schema of the OCI distribution spec;
- several platforms: each platform's artifact is pushed by digest, then one OCI image index
  (`artifactType` as above) at the tag lists them, each entry with its `platform`, as a
  multi-platform image's index lists its images: clients pick their platform as they do for images.
  The operator builds each platform in a Job of its own (`--push-by-digest`) and pushes their index
  itself (`push_index_of`): each manifest read back, the index created as of the newest of them, so
  pushing it again for the same artifacts pushes the same bytes (the same digest).
"""

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, BinaryIO

import httpx

from ...errors import InvalidImageError, OutputError, RegistryError, UsageError
from .. import digests, image
from ..reference import Reference
from ..reference import parse as parse_reference
from .options import RegistryOptions
from .pull import manifest
from .transport import READ_SIZE, NotFound, Transport, fail

log = logging.getLogger(__name__)

ARTIFACT_TYPE = "application/vnd.initramfs.v1"
EMPTY_CONFIG = b"{}"
TITLE = "org.opencontainers.image.title"
CREATED = "org.opencontainers.image.created"
CREATED_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
CHUNK = 16 << 20          # upload chunk; smaller blobs go in one request

# `chunks(offset, length)`: a slice of a blob, as a stream.
Chunks = Callable[[int, int], Iterable[bytes]]


def push_target(reference: str | Reference) -> Reference:
    """Where an artifact can go: `reference` (parsed if it is text) naming a tag, as the digest of a manifest
    is not known before it is pushed. UsageError otherwise."""
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    if ref.digest or not ref.tag:
        raise UsageError(f"{ref}: push to a tag; the digest of the pushed manifest is not known in advance")
    return ref


def push_artifact(path: str, reference: str | Reference, *, media_type: str, annotations: dict[str, str],
                  subject: image.Descriptor | None, options: RegistryOptions) -> str:
    """Push the file at `path` as an initramfs artifact (see the module docstring) to `reference` (text, or
    a Reference from push_target); returns its manifest digest."""
    ref = push_target(reference)
    return push_manifest(path, ref, media_type=media_type, annotations=annotations, subject=subject,
                         options=options, tag=ref.tag).digest


def push_manifest(path: str, ref: Reference, *, media_type: str, annotations: dict[str, str],
                  subject: image.Descriptor | None, options: RegistryOptions, tag: str | None) -> image.Descriptor:
    """`push_artifact`, to `tag`, or by digest only when `tag` is None (one platform of an index); returns
    the descriptor of the manifest pushed."""
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            file_digest = _hash_file(f)
    except OSError as e:
        raise OutputError(f"cannot read {path}: {e.strerror}") from None
    layer = image.Descriptor(media_type, file_digest, size, annotations={TITLE: name})
    config = image.Descriptor(image.OCI_EMPTY, digests.of(EMPTY_CONFIG), len(EMPTY_CONFIG))
    manifest_annotations = {TITLE: name, CREATED: _created(), **annotations}
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": image.OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
                           "config": config.to_json(), "layers": [layer.to_json()],
                           "annotations": manifest_annotations}
    if subject:
        doc["subject"] = image.Descriptor(subject.media_type, subject.digest, subject.size).to_json()
    data = json.dumps(doc, indent=2).encode()
    with Transport(ref, options, push=True) as transport:
        _upload(transport, layer, lambda offset, length: _file_chunks(path, offset, length, options.on_bytes))
        _upload(transport, config, lambda offset, length: [EMPTY_CONFIG[offset:offset + length]])
        pushed, referrers_api = _put_manifest(transport, tag or digests.of(data), data, image.OCI_MANIFEST)
        if subject and not referrers_api:
            _add_referrer(transport, subject.digest, image.Descriptor(
                image.OCI_MANIFEST, pushed, len(data), annotations=manifest_annotations, artifact_type=ARTIFACT_TYPE))
    return image.Descriptor(image.OCI_MANIFEST, pushed, len(data), annotations=manifest_annotations,
                            artifact_type=ARTIFACT_TYPE)


def push_index(reference: str | Reference, manifests: list[image.Descriptor], annotations: dict[str, str],
               options: RegistryOptions) -> str:
    """Push an index of initramfs artifacts (each descriptor with its `platform`, pushed before) to the tag of
    `reference`; returns its digest."""
    ref = push_target(reference)
    assert ref.tag is not None  # push_target refuses a reference without one
    doc = _index(manifests, {CREATED: _created(), **annotations})
    with Transport(ref, options, push=True) as transport:
        return _put_manifest(transport, ref.tag, json.dumps(doc, indent=2).encode(), image.OCI_INDEX)[0]


def push_index_of(reference: str | Reference, entries: Sequence[tuple[dict[str, str], str]],
                  annotations: dict[str, str], options: RegistryOptions) -> str:
    """Push to the tag of `reference` the index of initramfs artifacts pushed before by digest to its repository
    (`entries`: each one's platform fields and manifest digest, in order); returns its digest.

    Each manifest is read back for its size and type, and must be an initramfs artifact; the index says it was
    created when the newest of them was, so the same artifacts always make the same index."""
    ref = push_target(reference)
    assert ref.tag is not None  # push_target refuses a reference without one
    manifests: list[image.Descriptor] = []
    created: list[str] = []
    with Transport(ref, options, push=True) as transport:
        for platform, digest in entries:
            data, media_type = manifest(transport, digest, digest)
            doc = image.parse_json(data, transport.label(digest))
            if doc.get("artifactType") != ARTIFACT_TYPE:
                raise InvalidImageError(f"{transport.label(digest)}: not an initramfs artifact ({ARTIFACT_TYPE})")
            created.append(_created_of(doc))
            manifests.append(image.Descriptor(media_type, digest, len(data), platform=platform,
                                              artifact_type=ARTIFACT_TYPE))
        doc = _index(manifests, {CREATED: max(created) or _created(), **annotations})
        return _put_manifest(transport, ref.tag, json.dumps(doc, indent=2).encode(), image.OCI_INDEX)[0]


def _index(manifests: list[image.Descriptor], annotations: dict[str, str]) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": image.OCI_INDEX, "artifactType": ARTIFACT_TYPE,
            "manifests": [m.to_json() for m in manifests], "annotations": annotations}


def _upload(transport: Transport, d: image.Descriptor, chunks: Chunks) -> None:
    """Upload a blob unless the repository has it."""
    what = f"{transport.ref.name}: blob {d.digest}"
    resp = transport.request("HEAD", f"blobs/{d.digest}", what)
    if resp.status_code == 200:
        return
    if resp.status_code != 404:
        fail(resp, what)
    resp = transport.request("POST", "blobs/uploads/", what, headers={"Content-Length": "0"})
    if resp.status_code != 202:
        fail(resp, what)
    location = _location(resp, what)
    step = max(CHUNK, _int_header(resp, "oci-chunk-min-length"))
    last: bytes | Callable[[], Iterable[bytes]]
    if d.size > step:
        # Chunked: each PATCH answers with the URL of the next one.
        for offset in range(0, d.size, step):
            length = min(step, d.size - offset)
            resp = transport.request("PATCH", location, what, content=_slice(chunks, offset, length),
                                     headers={"Content-Type": "application/octet-stream",
                                              "Content-Length": str(length),
                                              "Content-Range": f"{offset}-{offset + length - 1}"})
            if resp.status_code != 202:
                fail(resp, what)
            location = _location(resp, what)
        last, length = b"", 0
    else:
        last, length = _slice(chunks, 0, d.size), d.size
    resp = transport.request("PUT", location.copy_merge_params({"digest": d.digest}), what, content=last,
                             headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)})
    if resp.status_code != 201:
        fail(resp, what)


def _put_manifest(transport: Transport, tag: str, data: bytes, media_type: str) -> tuple[str, bool]:
    """Returns the manifest's digest and whether the registry indexes `subject` itself (OCI-Subject)."""
    what = f"{transport.ref.name}:{tag}"
    resp = transport.request("PUT", f"manifests/{tag}", what, content=data, headers={"Content-Type": media_type})
    if resp.status_code != 201:
        fail(resp, what)
    pushed = digests.of(data)
    echoed = resp.headers.get("docker-content-digest")
    if echoed and echoed != pushed:
        raise RegistryError(f"{what}: the registry stored the manifest as {echoed}, expected {pushed}")
    return pushed, "oci-subject" in resp.headers


def _add_referrer(transport: Transport, subject: str, entry: image.Descriptor) -> None:
    """Add `entry` to the referrers tag of `subject`, keeping what other pushes listed there."""
    tag = subject.replace(":", "-")[:128]
    entries: list[dict[str, Any]] = []
    try:
        found, media_type = manifest(transport, tag, None)
        doc = image.parse_json(found, transport.label(tag))
        if image.kind(doc, media_type) == "index":
            entries = [e for e in doc.get("manifests") or [] if isinstance(e, dict)]
    except NotFound:
        pass  # the first referrer of this subject
    except InvalidImageError as e:
        log.warning("%s: not a referrers index (%s); replacing it", transport.label(tag), e)
    if any(e.get("digest") == entry.digest for e in entries):
        return  # pushed before: already listed
    index = {"schemaVersion": 2, "mediaType": image.OCI_INDEX, "manifests": entries + [entry.to_json()]}
    # Two pushers updating the same tag at once can lose an entry: the spec's answer is
    # If-Match on the tag's ETag, which registries without the referrers API do not offer.
    _put_manifest(transport, tag, json.dumps(index, indent=2).encode(), image.OCI_INDEX)


def _slice(chunks: Chunks, offset: int, length: int) -> Callable[[], Iterable[bytes]]:
    return lambda: chunks(offset, length)


def _location(resp: httpx.Response, what: str) -> httpx.URL:
    if "location" not in resp.headers:
        raise RegistryError(f"{what}: upload response without Location")
    try:
        return resp.url.join(resp.headers["location"])
    except httpx.InvalidURL:
        raise RegistryError(f"{what}: upload response with an invalid Location") from None


def _int_header(resp: httpx.Response, name: str) -> int:
    try:
        return int(resp.headers.get(name) or 0)
    except ValueError:
        return 0


def _hash_file(f: BinaryIO) -> str:
    h = digests.hasher("sha256:")
    while chunk := f.read(READ_SIZE):
        h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def _file_chunks(path: str, offset: int, length: int, on_bytes: Callable[[int], None] | None) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(offset)
        while length > 0:
            chunk = f.read(min(READ_SIZE, length))
            if not chunk:
                raise OutputError(f"{path} shrank while it was being pushed")
            length -= len(chunk)
            if on_bytes:
                on_bytes(len(chunk))
            yield chunk


def _created() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    try:
        moment = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH={epoch!r} is not a number of seconds") from None
    return moment.strftime(CREATED_FORMAT)


def _created_of(doc: dict[str, Any]) -> str:
    """A manifest's creation time, if it is one as this module writes it ("" if not): a registry's answer goes
    into the index only as a timestamp."""
    value = (doc.get("annotations") or {}).get(CREATED)
    try:
        datetime.strptime(str(value), CREATED_FORMAT)
    except ValueError:
        return ""
    return str(value)
