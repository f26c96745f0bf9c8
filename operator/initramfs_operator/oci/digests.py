"""Content digests, and a reader that refuses bytes that do not match their descriptor."""

import hashlib
import re
from typing import Protocol

from ..errors import InvalidImageError

_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$|^sha512:[a-f0-9]{128}$")


def validate(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise InvalidImageError(f"unsupported or malformed digest {digest!r}")
    return digest


def of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hasher(digest: str) -> "hashlib._Hash":
    return hashlib.new(digest.split(":", 1)[0])


class Readable(Protocol):
    """What VerifyingReader reads from: a file, a slice of one, a streamed HTTP response."""

    def read(self, n: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class VerifyingReader:
    """Passes bytes through while hashing them; at end of stream the size and digest must match.

    Readers above it may stop early (a tar stream ends before its padding does), so
    `verify()` drains what is left before checking.
    """

    def __init__(self, raw: Readable, digest: str, size: int | None, what: str = "blob", hashed: bool = True):
        """`hashed=False` for bytes whose digest was just checked (a blob verified as it was downloaded):
        they are read back with their size checked, and not hashed a second time."""
        self._raw = raw
        self._digest = validate(digest)
        self._hash = hasher(digest) if hashed else None
        self._size = size
        self._seen = 0
        self._what = what
        self.verified = False

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if data:
            self._seen += len(data)
            if self._hash is not None:
                self._hash.update(data)
            if self._size is not None and self._seen > self._size:
                raise InvalidImageError(
                    f"{self._what} {self._digest}: more than the {self._size} bytes its descriptor declares")
        elif not self.verified and n != 0:
            self._check()
        return data

    def readable(self) -> bool:
        return True

    @property
    def position(self) -> int:
        """Bytes read so far (a progress display watches it from another thread)."""
        return self._seen

    def verify(self) -> None:
        while self.read(1 << 20):
            pass
        if not self.verified:
            self._check()

    def _check(self) -> None:
        if self._size is not None and self._seen != self._size:
            raise InvalidImageError(
                f"{self._what} {self._digest}: got {self._seen} bytes, descriptor declares {self._size} (truncated?)")
        actual = self._digest if self._hash is None else f"{self._digest.split(':', 1)[0]}:{self._hash.hexdigest()}"
        if actual != self._digest:
            raise InvalidImageError(f"{self._what} {self._digest}: content digest mismatch (got {actual})")
        self.verified = True

    def close(self) -> None:
        self._raw.close()
