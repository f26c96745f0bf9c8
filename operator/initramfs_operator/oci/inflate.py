"""Layer blobs -> inflated byte chunks, produced on threads of their own.

Reading the blob (which hashes it, for its digest) happens on a read thread, inflating it on an
inflate thread, both in C code that releases the GIL (hashlib, ISA-L's inflate, zstd), so they
overlap with each other and with the tar parsing and the stores on the consumer's thread: the
inflate thread, the slowest of the three, does nothing else. The compression is recognised by its
magic bytes, so OCI and Docker media types (and `docker save`'s bare tars) all take the same path.

Once the consumer has what it needs (a tar stream stops at its end-of-archive block), the rest
of the blob is read without inflating it, for the digest alone: blob bytes are hashed once.
"""

import io
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, BinaryIO, Protocol, cast

import zstandard
from isal import igzip
from isal.igzip_lib import IsalError

from ..errors import InvalidImageError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_MAX_WINDOW = 1 << 27  # zstd's own default: a frame asking for a larger window is refused
CHUNK = 1 << 20   # inflated bytes per chunk handed over
PIECE = 1 << 18   # blob bytes per read: about what one inflated chunk takes, in less memory
DEPTH = 2         # chunks, or pieces, in flight: bounds the memory between the threads
# What the decompressors raise on bytes that are not a valid stream (igzip: BadGzipFile is an OSError).
_CORRUPT: tuple[type[BaseException], ...] = (OSError, EOFError, cast(type[BaseException], IsalError),
                                              zstandard.ZstdError)
_END = object()


class Blob(Protocol):
    """What a layer's `open()` returns: a stream whose `verify()` drains it and checks its digest."""

    def read(self, n: int = -1) -> bytes: ...
    def verify(self) -> None: ...
    def close(self) -> None: ...


@contextmanager
def inflated(blob: Blob, where: str) -> Iterator[Iterator[bytes]]:
    """Yields the blob's inflated contents as chunks; on a clean exit the blob's digest is verified.

    The blob is closed in any case. Leaving early (the consumer failed, or a signal interrupted it)
    does not wait for the producer, which may be blocked reading a pipe: it stops at its next chunk
    and closes the blob itself. Bytes that do not inflate are an `InvalidImageError` naming `where`.
    """
    pipe = _Pipe(blob, where)
    try:
        yield pipe.chunks()
    except BaseException:
        pipe.abandon()
        raise
    pipe.finish()


class _Pipe:
    """blob -> read thread -> inflate thread -> consumer, each hand-over through a bounded queue."""

    def __init__(self, blob: Blob, where: str):
        self._blob = blob
        self._where = where
        self._read: queue.Queue[object] = queue.Queue(DEPTH)  # blob bytes, then b"" or the read's error
        self._queue: queue.Queue[object] = queue.Queue(DEPTH)  # inflated chunks, then _END or an error
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # who closes the blob: the consumer, or a reader left behind
        self._reading = True
        self._abandoned = False
        self._reader = threading.Thread(target=self._read_blob, daemon=True, name="read")
        self._producer = threading.Thread(target=self._produce, daemon=True, name="inflate")
        self._reader.start()
        self._producer.start()

    def finish(self) -> None:
        """After the consumer read what it needed: the threads stop (what they read or inflated beyond is
        dropped, already hashed), the rest of the blob is read for its digest alone, and the blob is closed."""
        self._stopping.set()
        self._producer.join()  # a thread waiting for room in a queue notices within one timeout
        self._reader.join()
        try:
            self._blob.verify()
        finally:
            self._blob.close()

    def abandon(self) -> None:
        self._stopping.set()
        with self._lock:
            self._abandoned = True
            if self._reading:
                return
        self._blob.close()

    def _read_blob(self) -> None:
        try:
            while self._put(self._read, data := self._blob.read(PIECE)) and data:
                pass
        except BaseException as e:  # handed to the inflate thread, which raises it where it reads
            self._put(self._read, e)
        finally:
            with self._lock:
                self._reading = False
                if self._abandoned:
                    with suppress(Exception):
                        self._blob.close()

    def _produce(self) -> None:
        try:
            for chunk in _decoded(_Queued(self._read, self._stopping)):
                if not self._put(self._queue, chunk):
                    return
            self._put(self._queue, _END)
        except _Stopped:
            return
        except _CORRUPT as e:
            self._put(self._queue, InvalidImageError(f"{self._where}: corrupt or truncated ({type(e).__name__}: {e})"))
        except BaseException as e:  # handed to the consumer, which raises it where it reads
            self._put(self._queue, e)

    def chunks(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item

    def _put(self, into: "queue.Queue[object]", item: object) -> bool:
        while not self._stopping.is_set():
            try:
                into.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False


class _Stopped(Exception):
    """The consumer left: the inflate thread ends without a word."""


class _Queued(io.RawIOBase):
    """The read thread's pieces of the blob as the stream the decompressors read, its first bytes peeked at
    to recognise the compression without a seek; an error the read thread met is raised here. `readinto`
    (igzip's way) copies each byte once, from its piece into the decompressor's buffer."""

    def __init__(self, pieces: "queue.Queue[object]", stopping: threading.Event):
        super().__init__()
        self._pieces = pieces
        self._stopping = stopping
        self._piece, self._at, self._ended = b"", 0, False
        while len(self._piece) < len(ZSTD_MAGIC) and not self._ended:
            more = self._next()
            self._piece += more
            self._ended = not more
        self.peek = self._piece[:len(ZSTD_MAGIC)]

    def readinto(self, buffer: "WriteableBuffer") -> int:
        view, left = memoryview(buffer).cast("B"), self._left()
        n = min(len(view), len(left))
        view[:n] = left[:n]
        self._at += n
        return n

    def read(self, n: int = -1) -> bytes:
        left = self._left()
        n = len(left) if n < 0 else min(n, len(left))
        self._at += n
        return self._piece if n == len(self._piece) else bytes(left[:n])

    def readable(self) -> bool:
        return True

    def _left(self) -> memoryview:
        """What is left of the current piece, the next one once it is used up: empty at the end."""
        if self._at == len(self._piece) and not self._ended:
            self._piece, self._at = self._next(), 0
            self._ended = not self._piece
        return memoryview(self._piece)[self._at:]

    def _next(self) -> bytes:
        while True:
            try:
                item = self._pieces.get(timeout=0.05)
            except queue.Empty:
                if self._stopping.is_set():
                    raise _Stopped from None
                continue
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            return item


def _decoded(blob: _Queued) -> Iterator[bytes]:
    stream: _Readable
    if blob.peek.startswith(GZIP_MAGIC):
        stream = igzip.open(blob, "rb")  # type: ignore[no-untyped-call]  # isal leaves open() unannotated
    elif blob.peek.startswith(ZSTD_MAGIC):
        zstd = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        stream = zstd.stream_reader(cast(BinaryIO, blob), read_size=CHUNK, read_across_frames=True)
    else:
        stream = blob  # an uncompressed tar
    while chunk := stream.read(CHUNK):
        yield chunk


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...
