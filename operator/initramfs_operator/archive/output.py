"""Write a file so that it either appears whole or not at all."""

import ctypes
import hashlib
import os
import queue
import stat
import tempfile
import threading
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
    """Counts, hashes and writes the compressed bytes on a thread of its own: hashlib and file writes
    release the GIL, so they overlap with building the records and feeding the compressor. `write`
    queues (a few pieces at most, to bound memory); `close` waits for the rest and raises what the
    thread met (a full disk, say)."""

    DEPTH = 8

    def __init__(self, out: BinaryIO):
        self._out = out
        self._writeback = _Writeback(out)
        self.digests = Digests()
        self._queue: queue.Queue[bytes | None] = queue.Queue(self.DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, daemon=True, name="output")
        self._thread.start()

    def write(self, data: bytes, /) -> int:
        if self._error is not None:
            raise self._error
        self._queue.put(bytes(data))  # a copy only if it is not bytes: a writer may reuse its buffer
        return len(data)

    def flush(self) -> None:
        pass  # ordering is kept by the queue; close() is where everything is known to be written

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _drain(self) -> None:
        d = self.digests
        while (data := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep taking pieces, so that a writer waiting for room is not stuck
            try:
                d.size += len(data)
                d.sha256.update(data)
                d.sha512.update(data)
                self._out.write(data)
                self._writeback.wrote(len(data))
            except BaseException as e:  # noqa: BLE001  handed to the writing thread at its next call
                self._error = e


class _Writeback:
    """Starts the disk writes of what is written, every `STEP` bytes, without waiting for them (Linux's
    sync_file_range with SYNC_FILE_RANGE_WRITE): the disk works while the rest is still being compressed,
    and the fsync that makes the file durable finds little left to do (84 MB: 40 ms -> 2 ms here). Where
    libc has no such call, or the file cannot take it, the fsync does it all, as before."""

    STEP = 8 << 20
    _START = 2  # SYNC_FILE_RANGE_WRITE

    def __init__(self, out: BinaryIO):
        self._out = out
        self._call = _sync_file_range()
        self._started = self._written = 0

    def wrote(self, n: int) -> None:
        self._written += n
        if self._call is None or self._written - self._started < self.STEP:
            return
        self._out.flush()
        if self._call(self._out.fileno(), self._started, self._written - self._started, self._START) != 0:
            self._call = None  # a pipe, say: not worth asking again
        self._started = self._written


def _sync_file_range() -> "ctypes._NamedFuncPointer | None":
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


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
            try:
                yield out
            finally:
                out.close()
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



def remove(root: str, paths: list[str]) -> list[str]:
    """Remove the files at `paths`, relative to the directory `root`, never following a symlink on the way (a
    file that is one is removed, not its target); returns those that were there. UsageError, before anything
    is removed, for a path that would leave `root`; OutputError for one that cannot be removed."""
    for path in paths:
        if path.startswith("/") or any(p in ("", ".", "..") for p in path.split("/")):
            raise UsageError(f"{path}: not a relative path inside {root}")
    return [path for path in paths if _remove_one(root, path.split("/"))]


def _remove_one(root: str, parts: list[str]) -> bool:
    where = os.path.join(root, *parts)
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise OutputError(f"{root}: {e.strerror}") from None
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                return False
            except OSError as e:
                raise OutputError(f"cannot remove {where}: {part}: {e.strerror}") from None
            os.close(fd)
            fd = inner
        try:
            os.unlink(parts[-1], dir_fd=fd)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise OutputError(f"cannot remove {where}: {e.strerror}") from None
        return True
    finally:
        os.close(fd)
