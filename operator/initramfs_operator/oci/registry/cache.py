"""The layer cache (`--cache-dir`): content-addressed blob files that builds running at the same time,
on one machine or on a volume they share, use and evict without stepping on each other.

- A blob lives at `<dir>/<algorithm>/<hex>`. It is written to a temp file beside it and renamed
  there once its digest checks out: a crash leaves a temp file behind, never a half blob under its name.
- A blob is checked against its digest before every use; a corrupt one is downloaded again.
- A build holds a shared lock (flock) on each blob it uses, from its check until it is done with
  the image, and reads the inode it locked rather than the name (which a concurrent download of the
  same blob may rename over). Eviction takes the exclusive lock without waiting and skips what it
  cannot lock, so it never removes a blob a build is reading.
- Eviction keeps the cache within a size, least recently used first: every use touches the blob's
  mtime (atime is unreliable: volumes are mounted noatime or relatime).
"""

import errno
import fcntl
import logging
import os
import tempfile
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

# A temp file is locked right after it is created; one older than this and unlocked is a crashed
# download's leftover (the delay covers the instant between its creation and its lock).
ABANDONED_AFTER_SECONDS = 60.0


def pin(path: str) -> int | None:
    """A read-only descriptor of the blob at `path`, shared-locked so eviction leaves it alone; None if it is
    not there, or was evicted between its opening and its locking."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        if os.fstat(fd).st_nlink == 0:  # unlinked by an eviction that held the lock just before us
            os.close(fd)
            return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def create(path: str) -> tuple[int, str]:
    """A temp file beside `path` (to be renamed to it once written and checked), shared-locked: its descriptor
    is the blob's pin, and an eviction never takes it for a crashed download's leftover."""
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        os.unlink(temp)
        raise
    return fd, temp


def touch(fd: int) -> None:
    """Marks a blob as just used (eviction goes by mtime)."""
    os.utime(fd)


class BlobFile:
    """A blob read from a descriptor by position (`pread`), so descriptors duplicated from one pin are read
    independently; closing it closes its descriptor."""

    def __init__(self, fd: int):
        self._fd: int | None = fd
        self._pos = 0

    def read(self, n: int = -1, /) -> bytes:
        if self._fd is None:
            raise ValueError("read from a closed blob")
        if n < 0:
            n = max(0, os.fstat(self._fd).st_size - self._pos)
        data = os.pread(self._fd, n, self._pos)
        self._pos += len(data)
        return data

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class Eviction:
    removed: int      # blobs and abandoned temp files
    freed: int        # their bytes
    kept: int         # bytes left in the cache, blobs in use included


def evict(directory: str, max_bytes: int, now: float | None = None) -> Eviction:
    """Removes the least recently used blobs until the cache holds at most `max_bytes`, and crashed downloads'
    temp files; a blob some build holds stays (the cache may then stay above `max_bytes` until it is done)."""
    now = time.time() if now is None else now
    blobs: list[tuple[float, int, str]] = []  # mtime, size, path
    removed = freed = 0
    for algorithm in _listdir(directory):
        folder = os.path.join(directory, algorithm)
        for name in _listdir(folder):
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if name.startswith("."):
                if now - st.st_mtime > ABANDONED_AFTER_SECONDS and _remove_unlocked(path):
                    removed, freed = removed + 1, freed + st.st_size
            else:
                blobs.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in blobs)
    for _, size, path in sorted(blobs):
        if total <= max_bytes:
            break
        if _remove_unlocked(path):
            removed, freed, total = removed + 1, freed + size, total - size
    return Eviction(removed, freed, total)


def _remove_unlocked(path: str) -> bool:
    """Unlinks `path` if no one holds a lock on it, deciding under the exclusive lock (so no build can pin it
    meanwhile: a pin taken just before the unlink sees no links left and lets the blob go)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # in use
        try:
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                return False  # renamed over meanwhile: the new file is someone's fresh download
        except FileNotFoundError:
            return False
        os.unlink(path)
        return True
    except OSError as e:
        if e.errno != errno.ENOENT:
            log.warning("layer cache: cannot evict %s: %s", path, e.strerror)
        return False
    finally:
        os.close(fd)


def _listdir(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
