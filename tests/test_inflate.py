"""oci/inflate: a layer blob read, hashed and inflated on a thread of its own, handed to the consumer; every
way out (the end, a bad blob, a failed read, a consumer that leaves) verifies or closes the blob."""

import gzip
import io
import random
import threading
import time

import pytest
import zstandard

from initramfs_operator.errors import InvalidImageError, RegistryError
from initramfs_operator.oci import digests, inflate

CONTENT = random.Random(23).randbytes(3 * inflate.CHUNK + 12345)  # several chunks, and a part of one


class Blob:
    """A blob as layers open it (VerifyingReader over a stream), which says whether it was closed."""

    def __init__(self, data: bytes, digest: str | None = None):
        self.reader = digests.VerifyingReader(io.BytesIO(data), digest or digests.of(data), len(data), "layer")
        self.closed = threading.Event()

    def read(self, n: int = -1) -> bytes:
        return self.reader.read(n)

    def verify(self) -> None:
        self.reader.verify()

    def close(self) -> None:
        self.closed.set()


@pytest.mark.parametrize("encode", [gzip.compress, zstandard.compress, bytes], ids=["gzip", "zstd", "tar"])
def test_a_blob_comes_out_inflated_and_verified(encode):
    blob = Blob(encode(CONTENT))
    with inflate.inflated(blob, "layer x") as chunks:
        assert b"".join(chunks) == CONTENT
    assert blob.reader.verified and blob.closed.is_set()


def test_a_consumer_that_stops_early_still_has_the_whole_blob_checked():
    """A tar stream ends before its padding does: the bytes after what was used are read for the digest alone."""
    blob = Blob(gzip.compress(CONTENT), digests.of(b"other bytes"))
    with pytest.raises(InvalidImageError, match="digest"), inflate.inflated(blob, "layer x") as chunks:
        next(chunks)
    assert blob.closed.is_set()


def test_bytes_that_do_not_inflate_are_an_invalid_image_naming_the_layer():
    blob = Blob(gzip.compress(CONTENT)[:-100] + b"\0" * 100)
    with pytest.raises(InvalidImageError, match="layer x: corrupt or truncated"), \
            inflate.inflated(blob, "layer x") as chunks:
        b"".join(chunks)
    assert blob.closed.is_set()


def test_a_failed_read_reaches_the_consumer_as_it_was_raised():
    class Failing(Blob):
        def read(self, n: int = -1) -> bytes:
            if self.reader.position > inflate.CHUNK:
                raise RegistryError("connection reset by the registry")
            return super().read(n)

    blob = Failing(gzip.compress(CONTENT))
    with pytest.raises(RegistryError, match="connection reset"), inflate.inflated(blob, "layer x") as chunks:
        b"".join(chunks)
    assert blob.closed.is_set()


def test_a_consumer_that_leaves_does_not_wait_for_a_stuck_read_and_the_blob_is_closed_after_it():
    """A registry that stops sending: the build fails (or is interrupted) at once; the thread still inside the
    blob's read closes the blob when the read returns, never while it is reading."""
    release, reading = threading.Event(), threading.Event()

    class Stuck(Blob):
        def read(self, n: int = -1) -> bytes:
            if self.reader.position >= 2 * inflate.CHUNK:  # after what the first inflated chunk needs
                reading.set()
                release.wait()
                assert not self.closed.is_set(), "closed while being read"
            return super().read(n)

    blob = Stuck(gzip.compress(CONTENT))
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt), inflate.inflated(blob, "layer x") as chunks:
        next(chunks)
        assert reading.wait(10)
        raise KeyboardInterrupt
    assert time.monotonic() - started < 5 and not blob.closed.is_set()
    release.set()
    assert blob.closed.wait(10)
