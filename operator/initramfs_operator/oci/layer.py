"""Layer blobs -> tar entries, streamed: the compression is recognised by its magic bytes,
so OCI and Docker media types (and `docker save`'s bare tars) all take the same path.

Layers come from anyone, so what reading them may cost is bounded: the decompressed bytes of all
layers together (`Limits`), and the tar headers in front of each entry (pax records, GNU long
names, sparse maps), which tarfile would otherwise read into memory whatever their size.
"""

import io
import re
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Protocol, TypeVar, cast

import zstandard
from zlib_ng import gzip_ng_threaded
from zlib_ng import zlib_ng as zlib_ng_module

from ..errors import InvalidImageError, LimitExceeded
from .image import Layer

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Media types that are layers; anything else in a manifest's layers (an artifact, say) is refused.
LAYER_MEDIA_PREFIXES = ("application/vnd.oci.image.layer.", "application/vnd.docker.image.rootfs.")
# Header bytes (pax records, long names, sparse maps) allowed in front of one entry, as Go's archive/tar.
MAX_TAR_HEADERS = 1 << 20
ZSTD_MAX_WINDOW = 1 << 27  # zstd's own default: a frame asking for a larger window is refused
CHUNK = 1 << 20
# What tarfile and the decompressors raise on bytes that are not a valid layer.
_CORRUPT: tuple[type[BaseException], ...] = (
    tarfile.TarError, EOFError, OSError, zlib.error, cast(type[BaseException], zlib_ng_module.error),
    zstandard.ZstdError, ValueError, IndexError, OverflowError, struct.error)
_HEADER_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                 tarfile.SOLARIS_XHDTYPE)
_PAX_NUMBERS: dict[str, Callable[[str], float]] = {"uid": int, "gid": int, "size": int, "mtime": float}
T = TypeVar("T")


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


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def _reading(where: str, call: Callable[[], T]) -> T:
    """Runs a read of layer bytes; a failure of the bytes themselves becomes an invalid-image error."""
    try:
        return call()
    except _CORRUPT as e:
        raise InvalidImageError(f"{where}: corrupt or truncated ({type(e).__name__}: {e})") from None


class _Peek(io.RawIOBase):
    """Lets us look at the first bytes of a stream without a seek."""

    def __init__(self, raw: Readable, n: int):
        super().__init__()
        self._raw = raw
        self.head = raw.read(n)

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            data, self.head = self.head + self._raw.read(), b""
            return data
        if self.head:
            data, self.head = self.head[:n], self.head[n:]
            return data + (self._raw.read(n - len(data)) if len(data) < n else b"")
        return self._raw.read(n)

    def readinto(self, buffer: "bytearray | memoryview") -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


class _Metered:
    """The decompressed tar stream, charged to the budget; while `headers` counts (tarfile is reading
    what comes before an entry's data), also bounded by MAX_TAR_HEADERS."""

    def __init__(self, raw: Readable, budget: Budget, where: str):
        self._raw = raw
        self._budget = budget
        self._where = where
        self.headers: int | None = None
        self.after = ""  # the last entry read, for messages

    def read(self, n: int = -1, /) -> bytes:
        data = self._raw.read(n)
        self._budget.charge_uncompressed(len(data), self._where)
        if self.headers is not None:
            self.headers += len(data)
            # tarfile reads ahead one record (10 KiB) at a time: allow for it
            if self.headers > MAX_TAR_HEADERS + 2 * tarfile.RECORDSIZE:
                after = f" after entry {self.after!r}" if self.after else ""
                raise InvalidImageError(f"{self._where}: more than {size_text(MAX_TAR_HEADERS)} of tar headers "
                                        f"(pax records, long names, sparse maps) in front of one entry{after}")
        return data


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
            raise ValueError(f"{self.size} bytes of tar header data for {self.name[:200]!r}, over "
                             f"{size_text(MAX_TAR_HEADERS)}")
        return super()._proc_member(archive)  # type: ignore[misc, no-any-return]

    def _proc_pax(self, archive: tarfile.TarFile) -> "SafeTarInfo":
        assert archive.fileobj is not None
        raw = archive.fileobj
        buf = raw.read(-(-self.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE)
        problem = check_pax_records(buf[:self.size])
        if problem:
            raise ValueError(f"pax header {self.name[:200]!r}: {problem}")
        archive.fileobj = _Replay(buf, raw)  # type: ignore[assignment]
        try:
            return super()._proc_pax(archive)  # type: ignore[misc, no-any-return]
        finally:
            archive.fileobj = raw


class EntryData:
    """A regular entry's contents; what the caller leaves unread is skipped after it."""

    def __init__(self, tar: tarfile.TarFile, member: tarfile.TarInfo, where: str):
        file = tar.extractfile(member)
        assert file is not None  # extractfile returns None only for non-regular members
        self._file = file
        self._left = member.size
        self._where = f"{where}: entry {member.name[:200]!r}"

    def read(self, n: int = -1, /) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = _reading(self._where, lambda: self._file.read(n))
        if n and not data:
            raise InvalidImageError(f"{self._where}: ends {self._left} bytes early")
        self._left -= len(data)
        return data

    def drain(self) -> None:
        while self._left:
            self.read(CHUNK)


def _decompressed(blob: Readable) -> Readable:
    peek = _Peek(blob, 4)
    if peek.head.startswith(GZIP_MAGIC):
        gzip: Readable = gzip_ng_threaded.open(peek, "rb", threads=1)  # type: ignore[no-untyped-call]
        return gzip
    if peek.head.startswith(ZSTD_MAGIC):
        return zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(
            cast(IO[bytes], peek), read_across_frames=True)
    return peek


def _check_numbers(member: tarfile.TarInfo, where: str) -> None:
    """tarfile turns a pax number it cannot parse into 0 (root, the epoch, an empty file), and takes
    a negative size from a base-256 field: refuse both."""
    if member.size < 0:
        raise InvalidImageError(f"{where}: entry {member.name[:200]!r}: negative size {member.size}")
    for key, parse in _PAX_NUMBERS.items():
        value = member.pax_headers.get(key)
        if value is None:
            continue
        try:
            number = parse(value)
        except ValueError:
            number = float("nan")
        if number != number or number in (float("inf"), float("-inf")):
            raise InvalidImageError(f"{where}: entry {member.name[:200]!r}: pax {key} {value[:40]!r} is not a number")


def _open_tar(stream: _Metered) -> tarfile.TarFile:
    return tarfile.open(fileobj=cast(IO[bytes], stream), mode="r|", tarinfo=SafeTarInfo)


def entries(layer: Layer, budget: Budget) -> Iterator[tuple[tarfile.TarInfo, EntryData | None]]:
    """The layer's tar entries in order, each with its contents if it is a regular file (read them before
    asking for the next entry); the blob's digest and size are verified after the last one."""
    d = layer.descriptor
    where = f"layer {d.digest}"
    if d.media_type and not d.media_type.startswith(LAYER_MEDIA_PREFIXES):
        raise InvalidImageError(f"{where}: media type {d.media_type!r} is not an image layer")
    blob = layer.open()
    try:
        stream = _reading(where, lambda: _decompressed(blob))
        try:
            meter = _Metered(stream, budget, where)
            meter.headers = 0
            with _reading(where, lambda: _open_tar(meter)) as tar:
                while True:
                    meter.headers = 0
                    member = _reading(where, tar.next)
                    meter.headers = None
                    if member is None:
                        break
                    tar.members.clear()  # type: ignore[attr-defined]  # stream mode never needs them again: memory stays flat
                    meter.after = member.name[:200]
                    _check_numbers(member, where)
                    data = EntryData(tar, member, where) if member.isreg() else None
                    yield member, data
                    if data is not None:
                        data.drain()
            _reading(where, blob.verify)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                _reading(where, close)
    finally:
        blob.close()
