"""Write a file so that it either appears whole or not at all."""

import hashlib
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from ..errors import OutputError


@dataclass
class Digests:
    """Counts and hashes every byte on its way out (Kata pins initrds by sha512)."""

    size: int = 0
    sha256: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    sha512: "hashlib._Hash" = field(default_factory=hashlib.sha512)


class HashingWriter:
    def __init__(self, out):
        self._out = out
        self.digests = Digests()

    def write(self, data) -> int:
        self.digests.size += len(data)
        self.digests.sha256.update(data)
        self.digests.sha512.update(data)
        return self._out.write(data)

    def flush(self) -> None:
        self._out.flush()


@contextmanager
def atomic(path: str, create_dirs: bool = False) -> Iterator[HashingWriter]:
    """A temp file beside `path`, fsynced and renamed over it on success, removed on any failure."""
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
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
        raise
