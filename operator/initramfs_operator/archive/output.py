"""Write a file so that it either appears whole or not at all."""

import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import BinaryIO

from ..errors import OutputError, UsageError

NODE_KINDS = {stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo", stat.S_IFCHR: "char device",
              stat.S_IFBLK: "block device", stat.S_IFSOCK: "socket"}


@dataclass
class Digests:
    """Counts and hashes every byte on its way out (Kata pins initrds by sha512)."""

    size: int = 0
    sha256: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    sha512: "hashlib._Hash" = field(default_factory=hashlib.sha512)


class HashingWriter:
    def __init__(self, out: BinaryIO):
        self._out = out
        self.digests = Digests()

    def write(self, data: bytes, /) -> int:
        self.digests.size += len(data)
        self.digests.sha256.update(data)
        self.digests.sha512.update(data)
        return self._out.write(data)

    def flush(self) -> None:
        self._out.flush()


def check_target(path: str) -> None:
    """`path` must name a regular file or nothing yet: renaming over a device, fifo, directory or symlink
    would replace that node with a file instead of writing where the caller meant."""
    if not path:
        raise UsageError("the output path is empty")
    try:
        kind = stat.S_IFMT(os.lstat(path).st_mode)
    except FileNotFoundError:
        return
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    if kind != stat.S_IFREG:
        raise UsageError(f"{path} is a {NODE_KINDS.get(kind, 'special file')}, not a regular file: "
                         f"name a file to write (it is replaced atomically)")


@contextmanager
def atomic(path: str, create_dirs: bool = False) -> Iterator[HashingWriter]:
    """A temp file beside `path`, fsynced and renamed over it on success, removed on any failure
    (a signal included, when it is raised as an exception)."""
    check_target(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        if create_dirs:
            os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"cannot write in {directory}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            out = HashingWriter(f)
            yield out
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as e:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
        raise
