"""cpio `newc` archives, the format the Linux kernel unpacks into its initramfs.

As in u-root's pkg/cpio: a `Record`, a `Writer`, and small transforms over record
streams. The kernel creates no intermediate directories, so records must come
parents first; producing them in that order is the caller's job.
"""

import stat
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator

from ..errors import InvalidImageError

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
MAX_FILE_SIZE = 0xFFFFFFFF  # newc sizes are 8 hex digits


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


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


class Writer:
    def __init__(self, out: BinaryIO):
        self._out = out
        self.records = 0

    def write(self, r: Record) -> None:
        if r.size > MAX_FILE_SIZE:
            raise InvalidImageError(f"/{r.name}: {r.size} bytes is over the 4 GiB - 1 limit of the cpio newc format")
        name = r.name.encode("utf-8", "surrogateescape") + b"\0"
        fields = (r.ino, r.mode, r.uid, r.gid, r.nlink, max(r.mtime, 0), r.size, 0, 0, *r.rdev, len(name), 0)
        header = MAGIC + b"".join(b"%08X" % f for f in fields)
        self._out.write(header + name + _pad(len(header) + len(name)))
        written = 0
        for chunk in r.data:
            self._out.write(chunk)
            written += len(chunk)
        if written != r.size:
            raise InvalidImageError(f"/{r.name}: wrote {written} bytes, header says {r.size}")
        self._out.write(_pad(r.size))
        self.records += 1

    def close(self) -> None:
        self.write(Record(TRAILER, 0))


def clamp_mtime(recs: Iterable[Record], epoch: int | None) -> Iterator[Record]:
    """SOURCE_DATE_EPOCH semantics: nothing newer than the epoch."""
    for r in recs:
        if epoch is not None and r.mtime > epoch:
            r.mtime = epoch
        yield r


def write(recs: Iterable[Record], out: BinaryIO) -> int:
    w = Writer(out)
    for r in recs:
        w.write(r)
    w.close()
    return w.records - 1
