"""Layer blobs -> tar entries, streamed: the compression is recognised by its magic bytes,
so OCI and Docker media types (and `docker save`'s bare tars) all take the same path."""

import io
import tarfile
import zlib
from contextlib import contextmanager
from typing import Iterator

import zstandard
from zlib_ng import gzip_ng_threaded

from ..errors import InvalidImageError
from .image import Layer

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Media types that are layers; anything else in a manifest's layers (an artifact, say) is refused.
LAYER_MEDIA_PREFIXES = ("application/vnd.oci.image.layer.", "application/vnd.docker.image.rootfs.")


class _Peek(io.RawIOBase):
    """Lets us look at the first bytes of a stream without a seek."""

    def __init__(self, raw, n: int):
        super().__init__()
        self._raw = raw
        self.head = raw.read(n)

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n < 0:
                data, self.head = self.head + self._raw.read(), b""
                return data
            data, self.head = self.head[:n], self.head[n:]
            return data + (self._raw.read(n - len(data)) if len(data) < n else b"")
        return self._raw.read(n)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


@contextmanager
def entries(layer: Layer) -> Iterator[tuple[tarfile.TarFile, Iterator[tarfile.TarInfo]]]:
    """Yields the layer's tar and an iterator over its members; verifies the blob's digest at the end."""
    d = layer.descriptor
    if d.media_type and not d.media_type.startswith(LAYER_MEDIA_PREFIXES):
        raise InvalidImageError(f"layer {d.digest}: media type {d.media_type!r} is not an image layer")
    blob = layer.open()
    try:
        peek = _Peek(blob, 4)
        if peek.head.startswith(GZIP_MAGIC):
            stream = gzip_ng_threaded.open(peek, "rb", threads=1)
        elif peek.head.startswith(ZSTD_MAGIC):
            stream = zstandard.ZstdDecompressor().stream_reader(peek, read_across_frames=True)
        else:
            stream = peek
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            yield tar, _members(tar)
        stream.close()
        blob.verify()
    except InvalidImageError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error, zstandard.ZstdError, ValueError) as e:
        raise InvalidImageError(f"layer {d.digest}: corrupt or truncated ({type(e).__name__}: {e})") from None
    finally:
        blob.close()


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    # TarFile keeps every member it has read; in stream mode nothing needs them again,
    # so drop them to keep memory flat however many entries a layer has.
    while (member := tar.next()) is not None:
        yield member
        tar.members.clear()
