"""Layer blobs -> inflated byte chunks, produced on a thread of their own.

Reading the blob, checking its digest and inflating it all happen on the producer thread, in
C code that releases the GIL (hashlib, ISA-L's inflate, zstd), so they overlap with the tar
parsing and the stores on the consumer's thread. The compression is recognised by its magic
bytes, so OCI and Docker media types (and `docker save`'s bare tars) all take the same path.

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
DEPTH = 2         # chunks in flight: bounds the memory between the threads
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
    def __init__(self, blob: Blob, where: str):
        self._blob = blob
        self._where = where
        self._queue: queue.Queue[object] = queue.Queue(DEPTH)
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # who closes the blob: the consumer, or a producer left behind
        self._producing = True
        self._abandoned = False
        self._producer = threading.Thread(target=self._produce, daemon=True, name="inflate")
        self._producer.start()

    def finish(self) -> None:
        """After the consumer read what it needed: the producer stops (what it inflated beyond is dropped),
        the rest of the blob is read for its digest alone, and the blob is closed."""
        self._stopping.set()
        self._producer.join()  # a producer waiting for room in the queue notices within one timeout
        try:
            self._blob.verify()
        finally:
            self._blob.close()

    def abandon(self) -> None:
        self._stopping.set()
        with self._lock:
            self._abandoned = True
            if self._producing:
                return
        self._blob.close()

    def _produce(self) -> None:
        try:
            for chunk in _decoded(self._blob):
                if not self._put(chunk):
                    return
            self._put(_END)
        except _CORRUPT as e:
            self._put(InvalidImageError(f"{self._where}: corrupt or truncated ({type(e).__name__}: {e})"))
        except BaseException as e:  # handed to the consumer, which raises it where it reads
            self._put(e)
        finally:
            with self._lock:
                self._producing = False
                if self._abandoned:
                    with suppress(Exception):
                        self._blob.close()

    def chunks(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item

    def _put(self, item: object) -> bool:
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False


def _decoded(blob: Blob) -> Iterator[bytes]:
    head = _Head(blob)
    stream: _Readable
    if head.peek.startswith(GZIP_MAGIC):
        stream = igzip.open(head, "rb")  # type: ignore[no-untyped-call]  # isal leaves open() unannotated
    elif head.peek.startswith(ZSTD_MAGIC):
        zstd = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        stream = zstd.stream_reader(cast(BinaryIO, head), read_size=CHUNK, read_across_frames=True)
    else:
        stream = head  # an uncompressed tar
    while chunk := stream.read(CHUNK):
        yield chunk


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _Head(io.RawIOBase):
    """The blob with its first bytes read ahead, to recognise the compression without a seek."""

    def __init__(self, blob: Blob):
        super().__init__()
        self._blob = blob
        self.peek = b""
        while len(self.peek) < len(ZSTD_MAGIC) and (more := blob.read(CHUNK)):
            self.peek += more
        self._pending = self.peek

    def read(self, n: int = -1) -> bytes:
        if not self._pending:
            return self._blob.read(n)
        if n < 0:
            n = len(self._pending)
        data, self._pending = self._pending[:n], self._pending[n:]
        return data

    def readinto(self, buffer: "WriteableBuffer") -> int:  # igzip reads through it
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True
