"""cpio `newc` archives, the format the Linux kernel unpacks into its initramfs.

As in u-root's pkg/cpio: a `Record`, a `Writer`, a `Reader`, and small transforms over record
streams. The kernel creates no intermediate directories, so records must come parents first;
producing them in that order is the caller's job.

The kernel's reader (init/initramfs.c) is the one that matters, and it is lenient: it parses each
header field with simple_strtoul over exactly 8 bytes, keeps the mode in 16 bits, treats a uid of
0xFFFFFFFF as "leave unchanged", folds device numbers into a 32-bit dev_t, cuts names at the first
NUL and silently skips records it cannot use. An archive that relies on any of that unpacks into
something other than what other tools list, so the Writer refuses every value that does not fit
(`FIELD_LIMITS`), and the Reader refuses every archive whose meaning depends on it.
"""

import hashlib
import re
import stat
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from ..errors import InvalidImageError, shown

MAGIC = b"070701"
MAGIC_CHECKSUM = b"070702"  # same layout; `check` is the byte sum of a regular file's data
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110
FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor", "rdevmajor",
          "rdevminor", "namesize", "check")
U32 = 0xFFFFFFFF
MAX_FILE_SIZE = U32  # filesize is 8 hex digits
MAX_MTIME = U32  # unsigned seconds: 1970 to 2106
PATH_MAX = 4096  # the kernel skips a record whose name (with its NUL) is longer
NAME_MAX = 255  # and cannot create a path component that is longer
# What each field may hold so that the kernel reads what was written, and why.
FIELD_LIMITS = {
    "ino": (0x7FFFFFFF, "the kernel's hardlink table keeps it in an int"),
    "mode": (0xFFFF, "the kernel keeps 16 bits"),
    "uid": (U32 - 1, "0xFFFFFFFF is -1, which chown reads as 'leave unchanged' (root)"),
    "gid": (U32 - 1, "0xFFFFFFFF is -1, which chown reads as 'leave unchanged' (root)"),
    "nlink": (U32, "8 hex digits"),
    "mtime": (MAX_MTIME, "8 hex digits of unsigned seconds (1970..2106)"),
    "filesize": (MAX_FILE_SIZE, "8 hex digits (4 GiB - 1)"),
    "devmajor": (0x7FFFFFFF, "the kernel's hardlink table keeps it in an int"),
    "devminor": (0x7FFFFFFF, "the kernel's hardlink table keeps it in an int"),
    "rdevmajor": (0xFFF, "the kernel's 32-bit dev_t keeps 12 bits of major"),
    "rdevminor": (0xFFFFF, "the kernel's 32-bit dev_t keeps 20 bits of minor"),
    "namesize": (PATH_MAX, "the kernel skips longer names (PATH_MAX)"),
}
FILE_TYPES = {stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink", stat.S_IFCHR: "char device",
              stat.S_IFBLK: "block device", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}
# Types the kernel hardlinks by (ino, dev) when nlink >= 2; directories and symlinks never are.
LINKABLE = frozenset((stat.S_IFREG, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK))
_HEX8 = re.compile(rb"[0-9A-Fa-f]{8}")


@dataclass(slots=True)
class Record:
    name: str
    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    nlink: int = 1
    ino: int = 0
    rdev: tuple[int, int] = (0, 0)
    size: int = 0
    data: Iterable[bytes] = ()
    dev: tuple[int, int] = (0, 0)  # the device the inode lived on: part of its hardlink identity


class Output(Protocol):
    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True, slots=True)
class Written:
    """What the Writer wrote under a watched name."""

    mode: int
    size: int
    sha256: str


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def kernel_name_problem(name: str) -> str | None:
    """Why the kernel would not create exactly this path from an archive, or None if it would."""
    if name == TRAILER:
        return f"{TRAILER} is the archive's end marker"
    raw = name.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        return "it contains a NUL byte"
    if len(raw) + 1 > PATH_MAX:
        return f"it is {len(raw)} bytes long; the kernel skips names over {PATH_MAX - 1}"
    for part in raw.split(b"/"):
        if part in (b"", b".", b".."):
            return "it is not a plain relative path (empty, '.' or '..' component)"
        if len(part) > NAME_MAX:
            return f"a component is {len(part)} bytes long; the kernel cannot create one over {NAME_MAX}"
    return None


def _check(r: Record) -> list[int]:
    """The 13 header fields of `r`, each checked against what the kernel reads back."""
    where = f"/{shown(r.name)}"
    problem = kernel_name_problem(r.name)
    if problem:
        raise InvalidImageError(f"{where}: cannot be archived: {problem}")
    kind = stat.S_IFMT(r.mode)
    if kind not in FILE_TYPES:
        raise InvalidImageError(f"{where}: mode {r.mode:#o} is not a file type the kernel unpacks")
    if kind == stat.S_IFLNK and not 0 < r.size < PATH_MAX:
        raise InvalidImageError(f"{where}: a symlink target of {r.size} bytes cannot be created "
                                f"(1..{PATH_MAX - 1} bytes)")
    if kind not in (stat.S_IFREG, stat.S_IFLNK) and r.size:
        raise InvalidImageError(f"{where}: a {FILE_TYPES[kind]} with {r.size} bytes of data is skipped by the kernel")
    namesize = len(r.name.encode("utf-8", "surrogateescape")) + 1
    values = dict(ino=r.ino, mode=r.mode, uid=r.uid, gid=r.gid, nlink=r.nlink, mtime=r.mtime, filesize=r.size,
                  devmajor=r.dev[0], devminor=r.dev[1], rdevmajor=r.rdev[0], rdevminor=r.rdev[1],
                  namesize=namesize)
    for name, value in values.items():
        limit, why = FIELD_LIMITS[name]
        if not 0 <= value <= limit:
            raise InvalidImageError(f"{where}: {name} {value} does not fit the cpio newc header "
                                    f"(0..{limit}: {why})")
    return [*values.values(), 0]


class Writer:
    """Writes records and, on close, the trailer. `watch` names records whose written form
    (`watched`) the caller wants to know, computed from the bytes that went out."""

    def __init__(self, out: Output, watch: Collection[str] = ()):
        self._out = out
        self._watch = frozenset(watch)
        self.records = 0  # not counting the trailer
        self.watched: dict[str, Written] = {}

    def write(self, r: Record) -> None:
        fields = _check(r)
        self._write(r, fields)
        self.records += 1

    def _write(self, r: Record, fields: list[int]) -> None:
        name = r.name.encode("utf-8", "surrogateescape") + b"\0"
        header = MAGIC + b"".join([b"%08X" % f for f in fields])
        self._out.write(header + name + _pad(len(header) + len(name)))
        digest = hashlib.sha256()
        written = 0
        for chunk in r.data:
            if stat.S_ISLNK(r.mode) and b"\0" in chunk:
                raise InvalidImageError(f"/{shown(r.name)}: a symlink target with a NUL byte would be cut short "
                                        f"by the kernel")
            if r.name in self._watch:
                digest.update(chunk)
            self._out.write(chunk)
            written += len(chunk)
        if written != r.size:
            raise InvalidImageError(f"/{shown(r.name)}: wrote {written} bytes, header says {r.size}")
        self._out.write(_pad(r.size))
        if r.name in self._watch:
            self.watched[r.name] = Written(r.mode, r.size, digest.hexdigest())

    def close(self) -> None:
        trailer = Record(TRAILER, 0)
        self._write(trailer, [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(TRAILER) + 1, 0])


def clamp_mtime(records: Iterable[Record], epoch: int | None, warn: Callable[[str], None]) -> Iterator[Record]:
    """Every mtime into the range newc can hold (1970..2106), with a warning; then SOURCE_DATE_EPOCH
    semantics: nothing newer than the epoch."""
    clamped: list[str] = []
    for r in records:
        if not 0 <= r.mtime <= MAX_MTIME:
            clamped.append(f"/{shown(r.name)} ({r.mtime})" if len(clamped) < 3 else "")
            r.mtime = min(max(r.mtime, 0), MAX_MTIME)
        if epoch is not None and r.mtime > epoch:
            r.mtime = epoch
        yield r
    if clamped:
        more = f" and {len(clamped) - 3} more" if len(clamped) > 3 else ""
        warn(f"{len(clamped)} mtimes outside 1970..2106 were clamped to fit the cpio newc header: "
             f"{', '.join(clamped[:3])}{more}")


class FormatError(ValueError):
    """The bytes are not an archive the kernel reads unambiguously, at `offset`."""

    def __init__(self, offset: int, message: str):
        super().__init__(f"offset {offset}: {message}")
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Entry:
    """One record as the kernel reads it. `link` is the earlier name whose inode the kernel links this
    one to (same ino, dev and type since the last trailer, nlink >= 2), or None."""

    record: Record
    link: str | None
    offset: int

    @property
    def data(self) -> bytes:
        return b"".join(self.record.data)


class _Input:
    """Exact-length reads with the offset counted, as the kernel's `this_header` is."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._buf = b""
        self.offset = 0

    def read(self, n: int, what: str) -> bytes:
        parts, have = [self._buf], len(self._buf)
        while have < n:
            more = self._stream.read(max(n - have, 1 << 16))
            if not more:
                raise FormatError(self.offset, f"archive ends inside {what}")
            parts.append(more)
            have += len(more)
        buf = b"".join(parts) if len(parts) > 1 else self._buf
        data, self._buf = buf[:n], buf[n:]
        self.offset += n
        return data

    def skip_zeros(self) -> bytes:
        """Skips NUL bytes; the next byte, or b"" at the end of the stream."""
        while True:
            if not self._buf:
                self._buf = self._stream.read(1 << 16)
                if not self._buf:
                    return b""
            stripped = self._buf.lstrip(b"\0")
            self.offset += len(self._buf) - len(stripped)
            self._buf = stripped
            if stripped:
                return stripped[:1]


class Reader:
    """Reads newc records exactly where and as the kernel's init/initramfs.c does.

    Between records the kernel skips any number of NUL bytes, and a header may start only at a
    multiple of 4 ("broken padding" otherwise). TRAILER!!! ends nothing: the kernel forgets the
    hardlinks it has seen and goes on with whatever follows (concatenated archives, as bootloaders
    and early-microcode tooling produce), so the Reader does too and counts `trailers`; the trailer
    records themselves are not yielded. Compressed segments are not decoded: decompress first.

    Strict where the kernel is lenient: a field that is not exactly 8 hex digits, a name without its
    NUL or with one inside, a name or symlink target the kernel would skip or fail to create, data on
    a record type the kernel skips, a uid of 0xFFFFFFFF, a device number that does not fit dev_t,
    non-zero padding, a wrong checksum or a truncated record is a `FormatError`. The kernel applies
    records in order (a later record with an existing name replaces it); the Reader yields them in
    order and leaves duplicates to the caller. Record data is returned in memory.
    """

    def __init__(self, stream: BinaryIO):
        self._input = _Input(stream)
        self.trailers = 0

    def __iter__(self) -> Iterator[Entry]:
        links: dict[tuple[int, int, int, int], str] = {}
        while first := self._input.skip_zeros():
            start = self._input.offset
            if start % 4:
                raise FormatError(start, "broken padding: data at an offset that is not a multiple of 4")
            if first != b"0":
                raise FormatError(start, f"no cpio newc magic: {first!r} (the kernel would try to decompress "
                                         f"from here; the Reader reads uncompressed newc only)")
            record = self._record(start)
            if record is None:
                self.trailers += 1
                links.clear()
                continue
            kind = stat.S_IFMT(record.mode)
            link = None
            if record.nlink >= 2 and kind in LINKABLE:
                link = links.setdefault((record.ino, *record.dev, kind), record.name)
                link = None if link == record.name else link
            yield Entry(record, link, start)

    def _record(self, start: int) -> Record | None:
        header = self._input.read(HEADER_SIZE, "a header")
        magic = header[:6]
        if magic not in (MAGIC, MAGIC_CHECKSUM):
            hint = " (odc: the kernel wants newc)" if magic == b"070707" else ""
            raise FormatError(start, f"no cpio newc magic: {magic!r}{hint}")
        values = {}
        for i, name in enumerate(FIELDS):
            raw = header[6 + 8 * i:14 + 8 * i]
            if not _HEX8.fullmatch(raw):
                raise FormatError(start, f"{name} {raw!r} is not 8 hex digits")
            values[name] = int(raw, 16)
        namesize, size, mode = values["namesize"], values["filesize"], values["mode"]
        if not 0 < namesize <= PATH_MAX:
            raise FormatError(start, f"namesize {namesize}: the kernel skips the record (1..{PATH_MAX})")
        raw_name = self._input.read(namesize, "a name")
        self._padding(namesize + HEADER_SIZE, start)
        if raw_name[-1:] != b"\0" or b"\0" in raw_name[:-1]:
            raise FormatError(start, f"name {raw_name!r} is not one NUL-terminated string")
        name = raw_name[:-1].decode("utf-8", "surrogateescape")
        kind = stat.S_IFMT(mode)
        if name == TRAILER and kind != stat.S_IFLNK:
            self._input.read(size, "the trailer")
            self._padding(size, start)
            return None
        data = self._input.read(size, f"the data of {shown(name)!r}")
        self._padding(size, start)
        self._check(start, name, values, data, magic == MAGIC_CHECKSUM)
        return Record(name, mode, values["uid"], values["gid"], values["mtime"], values["nlink"], values["ino"],
                      (values["rdevmajor"], values["rdevminor"]), size, (data,),
                      (values["devmajor"], values["devminor"]))

    def _padding(self, n: int, start: int) -> None:
        if self._input.read(-n % 4, "padding").strip(b"\0"):
            raise FormatError(start, "non-zero padding")

    def _check(self, start: int, name: str, values: dict[str, int], data: bytes, checksum: bool) -> None:
        mode, kind = values["mode"], stat.S_IFMT(values["mode"])
        problem = kernel_name_problem(name)
        if problem:
            raise FormatError(start, f"{shown(name)!r}: {problem}")
        if kind not in FILE_TYPES or mode > 0xFFFF:
            raise FormatError(start, f"{name!r}: mode {mode:#o} is not a file type the kernel unpacks")
        if kind == stat.S_IFLNK and (not 0 < len(data) < PATH_MAX or b"\0" in data):
            raise FormatError(start, f"{name!r}: symlink target {data[:64]!r} cannot be created as written")
        if kind not in (stat.S_IFREG, stat.S_IFLNK) and data:
            raise FormatError(start, f"{name!r}: the kernel skips a {FILE_TYPES[kind]} that has data")
        for field_name in ("uid", "gid") + (("rdevmajor", "rdevminor") if kind in (stat.S_IFCHR, stat.S_IFBLK)
                                            else ()):
            limit, why = FIELD_LIMITS[field_name]
            if values[field_name] > limit:
                raise FormatError(start, f"{name!r}: {field_name} {values[field_name]:#x} ({why})")
        if values["nlink"] >= 2 and kind in LINKABLE:
            for field_name in ("ino", "devmajor", "devminor"):
                limit, why = FIELD_LIMITS[field_name]
                if values[field_name] > limit:
                    raise FormatError(start, f"{name!r}: {field_name} {values[field_name]:#x} ({why})")
        check = sum(data) & U32 if checksum and kind == stat.S_IFREG else 0
        if values["check"] != check:
            raise FormatError(start, f"{name!r}: check {values['check']:#x}, expected {check:#x}")
