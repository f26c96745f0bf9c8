"""A directory of initramfs versions on a VM host, behind an atomic `current` symlink.

    <root>/<dir>/<sha256>.cpio.gz     one file per version, named by its content
    <root>/<dir>/<sha256>.sha512      its sha512 in hex and a newline (Kata's initrd_hash)
    <root>/<dir>/current -> <sha256>.cpio.gz
    <root>/<dir>/.owner               the UID of the build the directory belongs to, and a newline

A VM launcher (Kata's `initrd`, a Firecracker script) reads `current`; it sees either the
old file or the new one, never a missing or partial file: a version is written to a
temp file, verified, fsynced and renamed into place before `current` is re-pointed by
renaming a new symlink over it; the version's .sha512 file is in place (written the same way)
before `current` points at it. Every operation goes through directory file descriptors
opened with O_NOFOLLOW from the configured root, so a symlink planted anywhere under the
root cannot redirect a write outside it.

The first build to deliver into a directory claims it (`.owner`): another build naming the same
directory is refused while that one exists (the agent decides, see tenancy.py), so two builds never
share `current` or prune each other's versions.

A version verified once is trusted while its file keeps the same identity (device, inode,
size, mtime and ctime: any write or rename changes one of them), for at most `Verified.max_age`:
an agent asked again and again about a file it holds reads its metadata, not its bytes.
"""

import hashlib
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from ..archive.compress import EXTENSIONS
from ..errors import InvalidImageError, OutputError, UsageError

CURRENT = "current"
OWNER = ".owner"
READ_SIZE = 1 << 20
SHA512_SUFFIX = ".sha512"
SHA512_NAME = re.compile("[0-9a-f]{64}" + re.escape(SHA512_SUFFIX))
VERSION_NAME = re.compile("[0-9a-f]{64}(?:" + "|".join(map(re.escape, EXTENSIONS.values())) + ")")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
REVERIFY_SECONDS = 6 * 3600  # a verified file is hashed again at least this often (bit rot, a silent edit)


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Expected:
    """What the file must be: the artifact layer's digest and size, and the build's sha512."""

    sha256: str  # hex
    sha512: str  # hex
    size: int
    compression: str  # a key of EXTENSIONS: "gzip", "zstd", "lz4", "xz" or "none"

    @property
    def filename(self) -> str:
        return self.sha256 + EXTENSIONS[self.compression]

    @property
    def sha512_filename(self) -> str:
        return self.sha256 + SHA512_SUFFIX


class Verified:
    """Version files hashed lately and found as expected, by where they are and what they were expected
    to be: one memory shared by the stores of one agent (its workers use it at once).

    `bytes_hashed` counts the bytes read back from disk to verify files already there; `observe`, if given,
    is told how many seconds each such verification took.
    """

    def __init__(self, max_age: float = REVERIFY_SECONDS, clock: Callable[[], float] = time.monotonic,
                 observe: Callable[[float], None] | None = None):
        self.max_age, self._clock, self.observe = max_age, clock, observe
        self._files: dict[str, tuple[Expected, tuple[int, ...], float]] = {}
        self._lock = threading.Lock()
        self.bytes_hashed = 0

    def trusts(self, path: str, st: os.stat_result, expected: Expected) -> bool:
        with self._lock:
            known = self._files.get(path)
        return known is not None and known[:2] == (expected, _identity(st)) and self._clock() < known[2]

    def remember(self, path: str, st: os.stat_result, expected: Expected) -> None:
        with self._lock:
            self._files[path] = (expected, _identity(st), self._clock() + self.max_age)

    def forget(self, path: str) -> None:
        with self._lock:
            self._files.pop(path, None)

    def count(self, n: int) -> None:
        with self._lock:
            self.bytes_hashed += n


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def relative_parts(path: str) -> list[str]:
    """The components of a path below the root; '..', absolute escapes and empty names are refused."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." or "\0" in p for p in parts):
        raise UsageError(f"delivery directory {path!r} must be a relative path below the root without '..'")
    return parts


class VersionStore:
    """The versions of one build in `<root>/<directory>`; the root must exist, the rest is created.
    `verified` remembers what was hashed (an agent passes its own, shared by all its stores)."""

    def __init__(self, root: str, directory: str, verified: Verified | None = None):
        self.root = root
        self.parts = relative_parts(directory)
        self.where = os.path.join(root, *self.parts)
        self.verified = verified or Verified()

    @contextmanager
    def _directory(self) -> Iterator[int]:
        """A descriptor of the version directory, reached from the root without following symlinks."""
        try:
            fd = os.open(self.root, _DIR_FLAGS)
        except OSError as e:
            raise OutputError(f"delivery root {self.root}: {e.strerror}") from None
        try:
            for part in self.parts:
                with suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    raise OutputError(f"{self.where}: {part!r} is not a directory ({e.strerror}); "
                                      "symlinks under the delivery root are never followed") from None
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def current(self) -> str | None:
        """The file name `current` points at, if any."""
        with self._directory() as fd:
            return _link_target(CURRENT, fd)

    def versions(self) -> list[str]:
        """Version files, newest first (by the time they were installed)."""
        with self._directory() as fd:
            return self._versions(fd)

    def version_sizes(self) -> list[int]:
        """The sizes of the version files, newest first."""
        with self._directory() as fd:
            return [os.stat(name, dir_fd=fd, follow_symlinks=False).st_size for name in self._versions(fd)]

    def owner(self) -> str | None:
        """The UID of the build that claimed the directory, if one did."""
        with self._directory() as fd:
            mark = (_read_small(OWNER, fd) or b"").decode(errors="replace").strip()
        return mark or None

    def claim(self, uid: str) -> None:
        """Marks the directory as the build's (atomically, replacing a former owner's mark)."""
        with self._directory() as fd:
            _write_small(OWNER, uid.encode() + b"\n", fd)

    def install(self, stream: Readable, expected: Expected) -> str:
        """Writes the stream as a new version, verified against `expected`, and its .sha512 file; returns
        the version's file name.

        A version already present is re-verified rather than trusted. Nothing is renamed into
        place unless size, sha256 and sha512 all match.
        """
        name = expected.filename
        with self._directory() as fd:
            tmp = f".{name}.{os.getpid()}.tmp"
            try:
                out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                              dir_fd=fd)
            except OSError as e:
                raise OutputError(f"{self.where}: cannot create {tmp}: {e.strerror}") from None
            try:
                with os.fdopen(out, "wb") as f:
                    self._copy_verified(stream, f, expected)
                    f.flush()
                    os.fsync(f.fileno())
                    os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
                    os.fsync(fd)
                    written = os.fstat(f.fileno())  # after the rename, which sets the ctime
            except BaseException:
                _unlink_quietly(tmp, fd)
                raise
            _write_small(expected.sha512_filename, _sha512_line(expected), fd)
        self.verified.remember(self._path(name), written, expected)
        return name

    def has(self, expected: Expected) -> bool:
        """Whether the version is present with the right content: hashed, unless it was verified before and
        its file is the same since (identity unchanged, within `Verified.max_age`); never trusted by name.
        A missing or wrong .sha512 file beside a good version (an older agent's) is written again."""
        path = self._path(expected.filename)
        with self._directory() as fd:
            try:
                f = os.open(expected.filename, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError:
                return False
            with os.fdopen(f, "rb") as stream:
                before = os.fstat(stream.fileno())
                if not stat.S_ISREG(before.st_mode):
                    return False
                if not self.verified.trusts(path, before, expected):
                    self.verified.forget(path)
                    started = time.monotonic()
                    try:
                        self._copy_verified(_Counted(stream, self.verified.count), None, expected)
                    except InvalidImageError:
                        return False
                    finally:
                        if self.verified.observe is not None:
                            self.verified.observe(time.monotonic() - started)
                    # The identity from before the bytes were read: a write while they were makes it stale.
                    self.verified.remember(path, before, expected)
            if _read_small(expected.sha512_filename, fd) != _sha512_line(expected):
                _write_small(expected.sha512_filename, _sha512_line(expected), fd)
            return True

    def activate(self, name: str) -> None:
        """Points `current` at `name` atomically: a new symlink renamed over the old one."""
        if not VERSION_NAME.fullmatch(name):
            raise UsageError(f"{name!r} is not a version file name")
        with self._directory() as fd:
            if _link_target(CURRENT, fd) == name:
                return
            tmp = f".{CURRENT}.{os.getpid()}.tmp"
            _unlink_quietly(tmp, fd)
            os.symlink(name, tmp, dir_fd=fd)
            try:
                os.rename(tmp, CURRENT, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                _unlink_quietly(tmp, fd)
                raise
            os.fsync(fd)

    def prune(self, keep: int) -> list[str]:
        """Removes the oldest versions beyond `keep` (the current one always stays); returns their names.

        Only files named like versions are considered: anything else in the directory is left alone.
        """
        with self._directory() as fd:
            current = _link_target(CURRENT, fd)
            versions = self._versions(fd)
            kept = ([current] if current in versions else [])
            kept += [v for v in versions if v != current][: max(keep - len(kept), 0)]
            removed = [v for v in versions if v not in kept]
            for name in removed:
                _unlink_quietly(name, fd)
                _unlink_quietly(name.split(".", 1)[0] + SHA512_SUFFIX, fd)
            if removed:
                os.fsync(fd)
            return removed

    def remove_all(self) -> None:
        """Removes `current`, every version, .sha512 file, the owner's mark and leftover temp files; the directory
        itself stays."""
        with self._directory() as fd:
            for entry in os.listdir(fd):
                if entry in (CURRENT, OWNER) or VERSION_NAME.fullmatch(entry) or SHA512_NAME.fullmatch(entry) or (
                        entry.startswith(".") and entry.endswith(".tmp")):
                    _unlink_quietly(entry, fd)
            os.fsync(fd)

    def _path(self, name: str) -> str:
        return os.path.join(self.where, name)

    def _versions(self, fd: int) -> list[str]:
        found = []
        for entry in os.listdir(fd):
            if VERSION_NAME.fullmatch(entry):
                st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    found.append((st.st_mtime_ns, entry))
        return [name for _, name in sorted(found, reverse=True)]

    def _copy_verified(self, stream: Readable, out: BinaryIO | None, expected: Expected) -> None:
        sha256, sha512, size = hashlib.sha256(), hashlib.sha512(), 0
        while chunk := stream.read(READ_SIZE):
            size += len(chunk)
            if size > expected.size:
                raise InvalidImageError(f"{expected.filename}: more than the {expected.size} bytes expected")
            sha256.update(chunk)
            sha512.update(chunk)
            if out is not None:
                out.write(chunk)
        if size != expected.size:
            raise InvalidImageError(f"{expected.filename}: got {size} bytes, expected {expected.size} (truncated?)")
        if sha256.hexdigest() != expected.sha256:
            raise InvalidImageError(f"{expected.filename}: sha256 mismatch (got {sha256.hexdigest()})")
        if sha512.hexdigest() != expected.sha512:
            raise InvalidImageError(f"{expected.filename}: sha512 mismatch (got {sha512.hexdigest()[:32]}...)")


def _sha512_line(expected: Expected) -> bytes:
    return expected.sha512.encode() + b"\n"


def namespace_bytes(root: str, namespace: str) -> int:
    """What the version files under `<root>/<namespace>/` add up to, in every directory below it (symlinks are
    never followed)."""
    try:
        fd = os.open(root, _DIR_FLAGS)
    except OSError as e:
        raise OutputError(f"delivery root {root}: {e.strerror}") from None
    try:
        try:
            top = os.open(namespace, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            return 0
        try:
            total = 0
            for _, _, files, dir_fd in os.fwalk(".", dir_fd=top):
                for name in files:
                    if VERSION_NAME.fullmatch(name):
                        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                        total += st.st_size if stat.S_ISREG(st.st_mode) else 0
            return total
        finally:
            os.close(top)
    finally:
        os.close(fd)


def _write_small(name: str, data: bytes, fd: int) -> None:
    """A small file (a .sha512 file, the owner's mark), atomically: a temp file, fsynced, renamed into place."""
    tmp = f".{name}.{os.getpid()}.tmp"
    _unlink_quietly(tmp, fd)
    try:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=fd)
        with os.fdopen(out, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        os.fsync(fd)
    except BaseException:
        _unlink_quietly(tmp, fd)
        raise


def _read_small(name: str, fd: int) -> bytes | None:
    """The first bytes of a regular file (enough for a .sha512 file), or None if there is none."""
    try:
        f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    except OSError:
        return None
    with os.fdopen(f, "rb") as stream:
        return stream.read(256) if stat.S_ISREG(os.fstat(stream.fileno()).st_mode) else None


class _Counted:
    """A file read through, its bytes counted."""

    def __init__(self, stream: Readable, count: Callable[[int], None]):
        self._stream, self._count = stream, count

    def read(self, n: int = -1, /) -> bytes:
        chunk = self._stream.read(n)
        self._count(len(chunk))
        return chunk


def _link_target(name: str, fd: int) -> str | None:
    """Where the symlink `name` points, or None if it is missing or not a symlink."""
    try:
        return os.readlink(name, dir_fd=fd)
    except OSError:  # missing, or not a symlink (EINVAL)
        return None


def _unlink_quietly(name: str, fd: int) -> None:
    with suppress(FileNotFoundError):
        os.unlink(name, dir_fd=fd)
