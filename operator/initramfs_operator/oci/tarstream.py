"""A lean, strict reader of the tar streams inside layer blobs.

It reads what `tarfile` reads (ustar, pax, GNU long names and base-256 numbers) into the same
member fields for well-formed archives, at a fraction of the cost per header (one difference:
the ustar name prefix is read from ustar headers only, as GNU tar and Go read it; tarfile also
reads it from GNU headers, where those bytes hold other fields), and refuses what an image has
no business carrying, naming the layer and, once known, the entry:

- a header whose checksum or numbers are malformed, a malformed pax record, or a stream that ends
  inside a header or a member (`tarfile` silently ends the archive there instead);
- a pax number that is not one (`tarfile` turns it into 0: root, the epoch, an empty file);
- sparse members (GNU type `S`, pax `GNU.sparse.*`): a few bytes of them stand for gigabytes of
  zeros, and no image builder writes them;
- more than `MAX_HEADERS` bytes of pax records and GNU long names in front of one entry, refused
  before they are read (as Go's archive/tar, which containerd uses).

Parsing is linear in the input. File contents are handed out by `read` as slices of the chunks
the reader is fed (the inflated blob), so each byte is copied once on its way to the store.
"""

import math
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..errors import InvalidImageError, LimitExceeded, shown

BLOCK = 512
MAX_HEADERS = 1 << 20

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


class TarFormatError(InvalidImageError):
    """The stream is not a well-formed tar archive: corrupt or truncated."""


@dataclass(slots=True)
class Member:
    """One archive entry, with the fields `tarfile.TarInfo` gives it after pax and GNU extensions."""

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

    def ischr(self) -> bool:
        return self.type == CHRTYPE

    def isblk(self) -> bool:
        return self.type == BLKTYPE


class TarReader:
    """`members()` walks the archive; `read(n)` reads the current member's contents (what is left
    unread is skipped when the walk goes on)."""

    def __init__(self, chunks: Iterable[bytes], where: str):
        self._chunks = iter(chunks)
        self._where = where
        self._buffer = b""
        self._pos = 0
        self._left = 0     # unread data bytes of the current member
        self._padding = 0  # bytes after them up to the next block boundary
        self._headers = 0  # metadata bytes read in front of the coming entry
        self._last = ""    # the last entry's name, for messages

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
            self._check_sum(block, fields[6])
            kind, size = fields[7], self._number(fields[4], "size")
            if kind in (PAX_LOCAL, SOLARIS_PAX, PAX_GLOBAL):
                (global_pax if kind == PAX_GLOBAL else local_pax).update(self._pax_records(self._metadata(size)))
            elif kind == GNU_LONGNAME:
                long_name = _text(self._metadata(size))
            elif kind == GNU_LONGLINK:
                long_link = _text(self._metadata(size))
            else:
                member = self._member(fields, kind, size)
                if long_name is not None:
                    member.name = long_name.removesuffix("/") if member.isdir() else long_name
                if long_link is not None:
                    member.linkname = long_link
                for pax in (global_pax, local_pax):
                    self._apply_pax(member, pax)
                self._check_member(member)
                self._left = 0 if kind in HEADER_ONLY_TYPES else member.size
                self._padding = -self._left % BLOCK
                self._headers, self._last = 0, member.name
                yield member
                local_pax, long_name, long_link = {}, None, None

    def read(self, n: int = -1, /) -> bytes:
        """Up to `n` bytes (all, if negative) of the current member's contents; b"" at its end."""
        if n < 0:
            return b"".join(iter(lambda: self.read(1 << 20), b""))
        n = min(n, self._left)
        if n == 0:
            return b""
        if self._pos == len(self._buffer):
            self._refill()
        buffer, pos = self._buffer, self._pos
        # The whole chunk is handed on as it is, without a copy.
        data = buffer if pos == 0 and n >= len(buffer) else buffer[pos:pos + n]
        self._pos += len(data)
        self._left -= len(data)
        return data

    # -- the stream

    def _finish_member(self) -> None:
        """Skips what the consumer left unread of the previous member, and its padding."""
        self._skip(self._left + self._padding)
        self._left = self._padding = 0

    def _header_block(self) -> bytes | None:
        """The next header; None at the end of the archive (a zero block, or the end of the stream)."""
        if self._pos == len(self._buffer) and not self._refill(end_ok=True):
            return None
        block = self._take(BLOCK)
        # One zero block ends the archive, as for tarfile: what follows is not read.
        return None if block == _ZERO_BLOCK else block

    def _metadata(self, size: int) -> bytes:
        """The contents of a pax or long-name header, counted against MAX_HEADERS before they are read."""
        if size < 0:
            raise self._corrupt(f"negative size {size} in a header")
        self._headers += size
        if size > MAX_HEADERS:
            raise LimitExceeded(f"{self._where}: {size} bytes of tar header data in front of one entry"
                                f"{self._after()} (at most {MAX_HEADERS} are read)")
        if self._headers > MAX_HEADERS:
            raise LimitExceeded(f"{self._where}: more than {MAX_HEADERS >> 20} MiB of tar headers (pax records, "
                                f"long names) in front of one entry{self._after()}")
        data = self._take(size)
        self._skip(-size % BLOCK)
        return data

    def _refill(self, end_ok: bool = False) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._buffer, self._pos = chunk, 0
                return True
        if end_ok:
            return False
        raise self._corrupt("the stream ends in the middle of an entry")

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

    # -- headers

    def _member(self, fields: tuple[bytes, ...], kind: bytes, size: int) -> Member:
        name = fields[0]
        if fields[9] == _USTAR_MAGIC and fields[15][0]:
            name = _cstring(fields[15]) + b"/" + _cstring(name)  # the ustar prefix field
        text = _text(name)
        if kind == AREGTYPE and text.endswith("/"):
            kind = DIRTYPE  # the old V7 spelling of a directory
        if kind == DIRTYPE:
            text = text.rstrip("/")
        member = Member(text, kind, self._number(fields[1], "mode"), self._number(fields[2], "uid"),
                        self._number(fields[3], "gid"), size, self._number(fields[5], "mtime"), _text(fields[8]))
        if kind in (CHRTYPE, BLKTYPE):
            member.devmajor = self._number(fields[13], "devmajor")
            member.devminor = self._number(fields[14], "devminor")
        return member

    def _apply_pax(self, member: Member, pax: dict[str, str]) -> None:
        # Names first, so that a refusal names the entry by its real name (not the ustar field's stand-in);
        # a sparse file's GNU.sparse.name wins over the path record written for its long stand-in name.
        for key, value in sorted(pax.items(), key=lambda item: ("path", "GNU.sparse.name").index(item[0])
                                 if item[0] in ("path", "GNU.sparse.name") else 2):
            if key == "path":
                member.name = value.rstrip("/")
            elif key == "linkpath":
                member.linkname = value
            elif key in ("size", "uid", "gid"):
                number = value.removeprefix("-")
                if not (number.isascii() and number.isdigit()):
                    raise self._refused(member, f": pax {key} {value[:40]!r} is not a number")
                setattr(member, key, int(value))
            elif key == "mtime":
                member.mtime = self._pax_mtime(member, value)
            elif key.startswith("GNU.sparse."):
                member.type = GNU_SPARSE
                if key == "GNU.sparse.name":
                    member.name = value

    def _pax_mtime(self, member: Member, value: str) -> int:
        """Whole seconds, through a float as `int(tarfile.TarInfo.mtime)` gives them."""
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds):
            raise self._refused(member, f": pax mtime {value[:40]!r} is not a number")
        return int(seconds)

    def _check_member(self, member: Member) -> None:
        if member.type == GNU_SPARSE:
            raise self._refused(member, " is a sparse file (GNU or pax sparse format), which is not supported")
        if member.size < 0:
            raise self._refused(member, f": negative size {member.size}")

    def _check_sum(self, block: bytes, field: bytes) -> None:
        stored = self._number(field, "checksum")
        # The byte sum with the checksum field counted as spaces. Adler-32's low half is 1 + the
        # byte sum modulo 65521, exact for 256 bytes or fewer: two C calls instead of a Python loop.
        total = ((zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2
                 - sum(block[148:156]) + 8 * 0x20)
        if stored != total and stored != sum(_SIGNED_BYTES.unpack(block)) + 8 * 0x20:  # some old tars sum signed bytes
            raise self._corrupt("bad header checksum")

    def _number(self, field: bytes, what: str) -> int:
        """An octal number, or GNU base-256 (first byte 0x80 positive, 0xff negative)."""
        first = field[0]
        if first & 0x80:
            if first not in (0x80, 0xFF):
                raise self._corrupt(f"invalid {what} field in a header")
            value = int.from_bytes(field[1:], "big")
            return value - (1 << (8 * (len(field) - 1))) if first == 0xFF else value
        digits = _cstring(field).strip()
        if not digits:
            return 0
        if not digits.isdigit() or b"8" in digits or b"9" in digits:
            raise self._corrupt(f"invalid {what} field in a header")
        return int(digits, 8)

    def _pax_records(self, data: bytes) -> dict[str, str]:
        """`LENGTH KEY=VALUE\\n` records, LENGTH counting the whole record; NUL padding may follow."""
        records: dict[str, str] = {}
        pos = 0
        while pos < len(data) and data[pos]:
            space = data.find(b" ", pos, pos + 20)
            length = data[pos:space] if space > pos else b""
            end = pos + int(length) if length.isdigit() else -1
            if end <= space + 1 or end > len(data) or data[end - 1] != 0x0A:
                raise self._corrupt("malformed pax record")
            key, equals, value = data[space + 1:end - 1].partition(b"=")
            if not equals:
                raise self._corrupt("malformed pax record")
            records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
            pos = end
        if data[pos:].strip(b"\0"):
            raise self._corrupt("malformed pax record")
        return records

    # -- errors

    def _after(self) -> str:
        return f" after entry {shown(self._last)!r}" if self._last else ""

    def _corrupt(self, problem: str) -> TarFormatError:
        return TarFormatError(f"{self._where}: corrupt or truncated tar stream: {problem}{self._after()}")

    def _refused(self, member: Member, problem: str) -> InvalidImageError:
        return InvalidImageError(f"{self._where}: entry {shown(member.name)!r}{problem}")


def _cstring(field: bytes) -> bytes:
    end = field.find(b"\0")
    return field if end < 0 else field[:end]


def _text(field: bytes) -> str:
    return _cstring(field).decode("utf-8", "surrogateescape")
