"""A lean, strict reader of the tar streams inside layer blobs.

It reads what `tarfile` reads (ustar, pax, GNU long names and base-256 numbers) with the same
results for well-formed archives, at a fraction of the cost per header, and refuses what an
image never needs to carry:

- a header whose checksum, numbers or pax records are malformed, or a stream that ends inside
  a header or a member, is corrupt (`tarfile` silently ends the archive there instead);
- sparse members (GNU type `S`, pax `GNU.sparse.*`) are refused: a few bytes of them can
  stand for gigabytes of zeros;
- pax headers and GNU long names over `MAX_METADATA` bytes are refused before they are read.

Input is an iterator of byte chunks (the inflated blob); file contents are handed out by
`read` as slices of those chunks, so each byte is copied once on its way to the store.
"""

import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..errors import InvalidImageError

BLOCK = 512
MAX_METADATA = 1 << 20  # a pax header or GNU long name: as Go's archive/tar, which containerd uses

REGTYPE, AREGTYPE, CONTTYPE = b"0", b"\0", b"7"
LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE = b"1", b"2", b"3", b"4", b"5", b"6"
GNU_LONGNAME, GNU_LONGLINK, GNU_SPARSE = b"L", b"K", b"S"
PAX_LOCAL, PAX_GLOBAL, SOLARIS_PAX = b"x", b"g", b"X"
REGULAR_TYPES = (REGTYPE, AREGTYPE, CONTTYPE)
# Types whose size field is not followed by data; every other type (unknown ones too) has its data skipped.
HEADER_ONLY_TYPES = (LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE)

# name mode uid gid size mtime chksum type linkname magic version uname gname devmajor devminor prefix
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")
_SIGNED_BYTES = struct.Struct("148b8x356b")
_USTAR_MAGIC = b"ustar\0"
_ZERO_BLOCK = bytes(BLOCK)
_ADLER_MASK = 0xFFFF


class TarFormatError(ValueError):
    """The stream is not a well-formed tar archive (corrupt or truncated)."""


@dataclass(slots=True)
class Member:
    """One archive entry, with the fields `tarfile.TarInfo` would give it after pax and GNU extensions."""

    name: str
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0

    def isreg(self) -> bool:
        return self.type in REGULAR_TYPES

    def islnk(self) -> bool:
        return self.type == LNKTYPE

    def isdir(self) -> bool:
        return self.type == DIRTYPE


class TarReader:
    """`members()` walks the archive; `extractfile(member)` reads the current member's contents."""

    def __init__(self, chunks: Iterable[bytes], where: str):
        self._chunks = iter(chunks)
        self._where = where
        self._buffer = b""
        self._pos = 0
        self._current: Member | None = None
        self._left = 0     # unread data bytes of the current member
        self._padding = 0  # bytes after them up to the next block boundary

    def members(self) -> Iterator[Member]:
        global_pax: dict[str, str] = {}
        local_pax: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        while True:
            self._finish_member()
            block = self._header_block()
            if block is None:
                return
            fields = _HEADER.unpack(block)
            _check_sum(block, fields[6])
            kind, size = fields[7], _number(fields[4], "size")
            if size < 0:
                raise TarFormatError(f"negative size {size} in a header")
            if kind in (PAX_LOCAL, SOLARIS_PAX, PAX_GLOBAL):
                (global_pax if kind == PAX_GLOBAL else local_pax).update(_pax_records(self._metadata(size, "pax")))
            elif kind == GNU_LONGNAME:
                long_name = _text(self._metadata(size, "GNU long name"))
            elif kind == GNU_LONGLINK:
                long_link = _text(self._metadata(size, "GNU long link"))
            else:
                member = _member(fields, kind, size)
                if long_name is not None:
                    member.name = long_name.removesuffix("/") if member.isdir() else long_name
                if long_link is not None:
                    member.linkname = long_link
                for pax in (global_pax, local_pax):
                    if pax:
                        self._apply_pax(member, pax)
                if kind == GNU_SPARSE:
                    self._refuse_sparse(member)
                self._current = member
                self._left = 0 if kind in HEADER_ONLY_TYPES else member.size
                self._padding = -self._left % BLOCK
                yield member
                local_pax, long_name, long_link = {}, None, None

    def extractfile(self, member: Member) -> "MemberData":
        if member is not self._current:
            raise ValueError("only the current member's contents can be read from a tar stream")
        return MemberData(self)

    def read(self, n: int) -> bytes:
        """Up to `n` bytes of the current member's contents; b"" at its end."""
        n = min(n, self._left)
        if n <= 0:
            return b""
        if self._pos == len(self._buffer):
            self._refill()
        buffer, pos = self._buffer, self._pos
        # The whole chunk is handed on as it is, without a copy.
        data = buffer if pos == 0 and n >= len(buffer) else buffer[pos:pos + n]
        self._pos += len(data)
        self._left -= len(data)
        return data

    # -- internals

    def _finish_member(self) -> None:
        """Skips what the consumer left unread of the previous member, and its padding."""
        self._skip(self._left + self._padding)
        self._left = self._padding = 0
        self._current = None

    def _header_block(self) -> bytes | None:
        """The next header; None at the end of the archive (a zero block, or the end of the stream)."""
        if self._pos == len(self._buffer) and not self._refill(eof_ok=True):
            return None
        block = self._take(BLOCK)
        # One zero block ends the archive, as for tarfile: what follows is not read.
        return None if block == _ZERO_BLOCK else block

    def _metadata(self, size: int, what: str) -> bytes:
        if size > MAX_METADATA:
            raise InvalidImageError(f"{self._where}: a {what} header of {size} bytes (the limit is {MAX_METADATA})")
        data = self._take(size)
        self._skip(-size % BLOCK)
        return data

    def _apply_pax(self, member: Member, pax: dict[str, str]) -> None:
        for key, value in pax.items():
            if key == "path":
                member.name = value.rstrip("/")
            elif key == "linkpath":
                member.linkname = value
            elif key in ("size", "uid", "gid"):
                setattr(member, key, _pax_integer(key, value))
            elif key == "mtime":
                member.mtime = _pax_mtime(value)
            elif key.startswith("GNU.sparse."):
                self._refuse_sparse(member)

    def _refuse_sparse(self, member: Member) -> None:
        raise InvalidImageError(f"{self._where}: entry {member.name!r} is a sparse file, which is not supported")

    def _refill(self, eof_ok: bool = False) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._buffer, self._pos = chunk, 0
                return True
        if eof_ok:
            return False
        raise TarFormatError("the tar stream ends in the middle of an entry")

    def _take(self, n: int) -> bytes:
        """Exactly `n` bytes, across chunk boundaries if need be."""
        pos, end = self._pos, self._pos + n
        if end <= len(self._buffer):
            self._pos = end
            return self._buffer[pos:end]
        parts = []
        while n:
            if self._pos == len(self._buffer):
                self._refill()
            part = self._buffer[self._pos:self._pos + n]
            self._pos += len(part)
            n -= len(part)
            parts.append(part)
        return b"".join(parts)

    def _skip(self, n: int) -> None:
        while n:
            if self._pos == len(self._buffer):
                self._refill()
            step = min(n, len(self._buffer) - self._pos)
            self._pos += step
            n -= step


class MemberData:
    """The file-like `read(n)` view of the current member's contents."""

    def __init__(self, reader: TarReader):
        self._reader = reader

    def read(self, n: int = -1) -> bytes:
        if n >= 0:
            return self._reader.read(n)
        return b"".join(iter(lambda: self._reader.read(1 << 20), b""))


def _member(fields: tuple[bytes, ...], kind: bytes, size: int) -> Member:
    name = fields[0]
    if fields[9] == _USTAR_MAGIC and fields[15][0]:
        name = _cstring(fields[15]) + b"/" + _cstring(name)  # the ustar prefix field
    text = _text(name)
    if kind == AREGTYPE and text.endswith("/"):
        kind = DIRTYPE  # the old V7 spelling of a directory
    if kind == DIRTYPE:
        text = text.rstrip("/")
    member = Member(text, kind, _number(fields[1], "mode"), _number(fields[2], "uid"), _number(fields[3], "gid"),
                    size, _number(fields[5], "mtime"), _text(fields[8]))
    if kind in (CHRTYPE, BLKTYPE):
        member.devmajor, member.devminor = _number(fields[13], "devmajor"), _number(fields[14], "devminor")
    return member


def _check_sum(block: bytes, field: bytes) -> None:
    stored = _number(field, "checksum")
    # The unsigned byte sum with the checksum field counted as spaces. Adler-32's low half is
    # 1 + the byte sum modulo 65521, exact for 256 bytes or fewer: two C calls instead of a Python loop.
    total = ((zlib.adler32(block[:256]) & _ADLER_MASK) + (zlib.adler32(block[256:]) & _ADLER_MASK) - 2
             - sum(block[148:156]) + 8 * 0x20)
    if stored != total and stored != sum(_SIGNED_BYTES.unpack(block)) + 8 * 0x20:  # some old tars sum signed bytes
        raise TarFormatError("bad header checksum")


def _number(field: bytes, what: str) -> int:
    """An octal number, or GNU base-256 (first byte 0x80 positive, 0xff negative)."""
    first = field[0]
    if first & 0x80:
        if first not in (0x80, 0xFF):
            raise TarFormatError(f"invalid {what} field in a header")
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * (len(field) - 1))) if first == 0xFF else value
    digits = _cstring(field).strip()
    if not digits:
        return 0
    if not digits.isdigit():
        raise TarFormatError(f"invalid {what} field in a header")
    try:
        return int(digits, 8)
    except ValueError:
        raise TarFormatError(f"invalid {what} field in a header") from None


def _pax_records(data: bytes) -> dict[str, str]:
    """`LENGTH KEY=VALUE\\n` records, LENGTH counting the whole record."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos]:  # NUL padding may follow the last record
        space = data.find(b" ", pos)
        length = data[pos:space]
        end = pos + int(length) if length.isdigit() else -1
        if space < 0 or end <= space or end > len(data) or data[end - 1] != 0x0A:
            raise TarFormatError("malformed pax record")
        key, equals, value = data[space + 1:end - 1].partition(b"=")
        if not equals:
            raise TarFormatError("malformed pax record")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos = end
    return records


def _pax_integer(key: str, value: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise TarFormatError(f"invalid pax {key} {value!r}")
    return int(value)


def _pax_mtime(value: str) -> int:
    """Whole seconds, rounded through a float exactly as `int(tarfile.TarInfo.mtime)` rounds them."""
    whole, _, fraction = value.removeprefix("-").partition(".")
    if not (whole.isascii() and whole.isdigit() and (not fraction or (fraction.isascii() and fraction.isdigit()))):
        raise TarFormatError(f"invalid pax mtime {value!r}")
    try:
        return int(float(value))
    except OverflowError:
        raise TarFormatError(f"invalid pax mtime {value!r}") from None


def _cstring(field: bytes) -> bytes:
    end = field.find(b"\0")
    return field if end < 0 else field[:end]


def _text(field: bytes) -> str:
    return _cstring(field).decode("utf-8", "surrogateescape")
