"""Reading an initramfs artifact back from a registry (what `push` wrote): its one layer, streamed.

Used by the delivery agent on VM hosts: the artifact is named by digest, so its manifest is
checked against that digest, and the layer's bytes against the layer descriptor while they
stream; the consumer sees every byte once and never a byte that was not verified at the end.
"""

from collections.abc import Callable
from contextlib import closing
from typing import TypeVar

from ...errors import InvalidImageError
from .. import image
from ..digests import VerifyingReader
from ..reference import parse as parse_reference
from .options import RegistryOptions
from .pull import manifest
from .push import ARTIFACT_TYPE
from .transport import Body, Transport, fail

T = TypeVar("T")
LAYER_TYPE_PREFIX = ARTIFACT_TYPE + ".cpio"


def layer_of(reference: str, options: RegistryOptions, platform: image.Platform | None = None) -> image.Descriptor:
    """The initramfs layer of the artifact `repository@digest`; of an index of them (several platforms), the
    layer of `platform`'s artifact, its manifest read by the digest the index names."""
    ref = parse_reference(reference)
    if not ref.digest:
        raise InvalidImageError(f"{ref}: an initramfs artifact is read by digest")
    with Transport(ref, options) as transport:
        data, media_type = manifest(transport, ref.digest, ref.digest)
        where = f"{ref.name}@{ref.digest}"
        doc = image.parse_json(data, where)
        if image.kind(doc, media_type) == "index":
            if platform is None:
                raise InvalidImageError(f"{where}: an index of initramfs artifacts: name the platform to read")
            entries = doc.get("manifests")
            if not isinstance(entries, list):
                raise InvalidImageError(f"{where}: manifests must be a list")
            chosen = image.pick_platform([image.Descriptor.parse(e, f"{where}: index entry") for e in entries],
                                         platform, where)
            data, _ = manifest(transport, chosen.digest, chosen.digest)
            where = f"{ref.name}@{chosen.digest}"
            doc = image.parse_json(data, where)
    if doc.get("artifactType") != ARTIFACT_TYPE:
        raise InvalidImageError(f"{where}: not an initramfs artifact (artifactType {doc.get('artifactType')!r})")
    layers = [image.Descriptor.parse(raw, f"{where}: layer") for raw in doc.get("layers") or []
              if isinstance(raw, dict)]
    found = [d for d in layers if d.media_type.startswith(LAYER_TYPE_PREFIX)]
    if len(found) != 1:
        raise InvalidImageError(f"{where}: expected one {LAYER_TYPE_PREFIX}* layer, found {len(found)}")
    return found[0]


def read_layer(reference: str, layer: image.Descriptor, options: RegistryOptions,
               consume: Callable[[VerifyingReader], T]) -> T:
    """Streams the layer blob into `consume` (which must read it to the end); a broken connection or a
    retryable status restarts the transfer and calls `consume` again from the first byte."""
    ref = parse_reference(reference)
    what = f"{ref.name}: blob {layer.digest}"
    with Transport(ref, options) as transport:
        def once() -> T:
            with closing(transport.send("GET", transport.base.join(f"blobs/{layer.digest}"), stream=True)) as resp:
                if resp.status_code != 200:
                    fail(resp, what)
                reader = VerifyingReader(Body(resp), layer.digest, layer.size, "initramfs layer")
                result = consume(reader)
                reader.verify()
                return result

        return transport.attempts(what, once)
