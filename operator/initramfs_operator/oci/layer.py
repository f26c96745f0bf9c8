"""Layer blobs -> tar entries, streamed: `inflate` recognises the compression by its magic bytes,
so OCI and Docker media types (and `docker save`'s bare tars) all take the same path, and
`tarstream` reads the entries.

Layers come from anyone, so what reading them may cost is bounded: the decompressed bytes of all
layers together (`Limits`), and the tar headers in front of each entry (pax records, GNU long
names), which are refused past MAX_TAR_HEADERS before they are read. `SafeTarInfo` applies the
same bounds to Python's tarfile, for the archives read with it (`docker save`'s outer tar).
"""

import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import InvalidImageError, LimitExceeded, shown
from . import inflate, tarstream
from .image import Layer

# Media types that are layers; anything else in a manifest's layers (an artifact, say) is refused.
LAYER_MEDIA_PREFIXES = ("application/vnd.oci.image.layer.", "application/vnd.docker.image.rootfs.")
# Header bytes (pax records, long names) allowed in front of one entry, as Go's archive/tar.
MAX_TAR_HEADERS = tarstream.MAX_HEADERS
_HEADER_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                 tarfile.SOLARIS_XHDTYPE)


def size_text(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


@dataclass(frozen=True)
class Limits:
    """What one build may take from its layers, all layers together. The defaults fit real images
    (the largest public ones are a few GiB and a few hundred thousand files)."""

    max_uncompressed_size: int = 16 << 30  # decompressed tar bytes, and file contents kept for the archive
    max_entries: int = 2_000_000  # tar entries, and directories created for entries whose parents are missing


class Budget:
    """A build's use of its `Limits`; every charge names what it is for."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.uncompressed = 0
        self.stored = 0
        self.entries = 0

    def charge_uncompressed(self, n: int, where: str) -> None:
        self.uncompressed += n
        if self.uncompressed > self.limits.max_uncompressed_size:
            raise LimitExceeded(f"{where}: the layers decompress to more than the "
                                f"{size_text(self.limits.max_uncompressed_size)} allowed (max-uncompressed-size)")

    def charge_stored(self, n: int, where: str) -> None:
        """File contents about to be kept (sparse files at their full size), checked before they are read."""
        self.stored += n
        if self.stored > self.limits.max_uncompressed_size:
            raise LimitExceeded(f"{where}: the image's files add up to more than the "
                                f"{size_text(self.limits.max_uncompressed_size)} allowed (max-uncompressed-size)")

    def charge_entries(self, n: int, where: str) -> None:
        self.entries += n
        if self.entries > self.limits.max_entries:
            raise LimitExceeded(f"{where}: the layers hold more than the {self.limits.max_entries} entries "
                                f"allowed (max-entries)")


class _Replay:
    """A file object that first gives back bytes already read from it."""

    def __init__(self, head: bytes, raw: "tarfile._Fileobj"):
        self._head = head
        self.raw = raw

    def read(self, n: int = -1, /) -> bytes:
        if self._head:
            data, self._head = self._head[:n], self._head[n:]
            return data + (self.raw.read(n - len(data)) if 0 <= len(data) < n else b"")
        return self.raw.read(n)

    def tell(self) -> int:
        return self.raw.tell()


def check_pax_records(data: bytes) -> str | None:
    """Why `data` is not a plain sequence of pax "LEN keyword=value\\n" records, or None. Python's tarfile
    before 3.11.10/3.12.6 parses them with regular expressions that backtrack quadratically on malformed
    records and on long runs of digits (CVE-2024-6232): such input is refused before tarfile sees it."""
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            return None if not data[pos:].strip(b"\0") else f"bytes after NUL padding at {pos}"
        space = data.find(b" ", pos, pos + 21)
        if space < 0 or not data[pos:space].isdigit():
            return f"no record length at {pos}"
        end = pos + int(data[pos:space])
        if end > len(data) or data.find(b"=", space + 2, end) < 0 or data[end - 1:end] != b"\n":
            return f"malformed record at {pos}"
        pos = end
    if sum(len(run) ** 2 for run in re.findall(rb"\d+", data)) > 1 << 22:
        return "digit runs too long to parse in linear time"
    return None


class SafeTarInfo(tarfile.TarInfo):
    """tarfile's TarInfo, refusing header data (pax records, GNU long names) over MAX_TAR_HEADERS before
    reading it, and pax records its regular expressions could backtrack on."""

    def _proc_member(self, archive: tarfile.TarFile) -> "SafeTarInfo":
        if self.type in _HEADER_TYPES and not 0 <= self.size <= MAX_TAR_HEADERS:
            raise ValueError(f"{self.size} bytes of tar header data for {shown(self.name)!r}, over "
                             f"{size_text(MAX_TAR_HEADERS)}")
        return super()._proc_member(archive)  # type: ignore[misc, no-any-return]

    def _proc_pax(self, archive: tarfile.TarFile) -> "SafeTarInfo":
        assert archive.fileobj is not None
        raw = archive.fileobj
        buf = raw.read(-(-self.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE)
        problem = check_pax_records(buf[:self.size])
        if problem:
            raise ValueError(f"pax header {shown(self.name)!r}: {problem}")
        archive.fileobj = _Replay(buf, raw)  # type: ignore[assignment]
        try:
            return super()._proc_pax(archive)  # type: ignore[misc, no-any-return]
        finally:
            archive.fileobj = raw


def entries(layer: Layer, budget: Budget) -> Iterator[tuple[tarstream.Member, tarstream.TarReader | None]]:
    """The layer's tar entries in order, each with its contents if it is a regular file (read them before
    asking for the next entry); the blob's digest and size are verified after the last one."""
    d = layer.descriptor
    where = f"layer {d.digest}"
    if d.media_type and not d.media_type.startswith(LAYER_MEDIA_PREFIXES):
        raise InvalidImageError(f"{where}: media type {d.media_type!r} is not an image layer")
    with inflate.inflated(layer.open(), where) as chunks:
        tar = tarstream.TarReader(_charged(chunks, budget, where), where)
        for member in tar.members():
            yield member, tar if member.isreg() else None


def _charged(chunks: Iterator[bytes], budget: Budget, where: str) -> Iterator[bytes]:
    for chunk in chunks:
        budget.charge_uncompressed(len(chunk), where)
        yield chunk
