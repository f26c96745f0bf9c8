"""A gzip writer that deflates fixed-size blocks on several threads, pigz-style, with output
bytes that depend only on the input and the level: not on the thread count, nor on how the
input was split into writes.

Each block is deflated by a fresh zlib-ng stream primed with the last 32 KiB of the block
before it and ends on a sync flush, so the blocks join into one deflate stream: a single gzip
member (no timestamp, no name) that any gunzip and the kernel's initramfs unpacker read.
(zlib-ng's own threaded writer reuses one stream per thread, and a reused stream's output
depends on the blocks it saw before: its bytes change with the thread count.)
"""

import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from zlib_ng import zlib_ng

BLOCK = 1 << 20
WINDOW = 1 << 15
# 10-byte header: magic, deflate, no flags, mtime 0, no extra flags, OS unknown.
HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_TRAILER = struct.Struct("<II")  # CRC-32 and size modulo 2**32 of the input


class Output(Protocol):
    def write(self, data: bytes, /) -> object: ...


def _deflate(block: bytes, window: bytes, level: int) -> bytes:
    """One block as raw deflate, seeing `window` (the 32 KiB before it) as one stream would."""
    if window:
        stream = zlib_ng.compressobj(level, zlib_ng.DEFLATED, -zlib_ng.MAX_WBITS, zdict=window)
    else:
        stream = zlib_ng.compressobj(level, zlib_ng.DEFLATED, -zlib_ng.MAX_WBITS)
    return stream.compress(block) + stream.flush(zlib_ng.Z_SYNC_FLUSH)


class Writer:
    """`write` buffers up to a block and hands full blocks to the pool; `close` ends the member.

    At most `2 * threads` blocks are in flight; compressed blocks reach `out` in order, from the
    thread calling `write` or `close`.
    """

    def __init__(self, out: Output, level: int, threads: int):
        self._out = out
        self._level = level
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="deflate")
        self._in_flight: deque[Future[bytes]] = deque()
        self._limit = 2 * threads
        self._pending = bytearray()
        self._window = b""
        self._crc = 0
        self._size = 0
        out.write(HEADER)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._pending += data
        while len(self._pending) >= BLOCK:
            self._submit(bytes(self._pending[:BLOCK]))
            del self._pending[:BLOCK]
        return len(data)

    def close(self) -> None:
        try:
            if self._pending:
                self._submit(bytes(self._pending))
                self._pending.clear()
            while self._in_flight:
                self._out.write(self._in_flight.popleft().result())
            # An empty final block ends the deflate stream.
            self._out.write(zlib_ng.compress(b"", self._level, -zlib_ng.MAX_WBITS))
            self._out.write(_TRAILER.pack(self._crc, self._size & 0xFFFFFFFF))
        finally:
            self._pool.shutdown(cancel_futures=True)

    def _submit(self, block: bytes) -> None:
        self._crc = zlib_ng.crc32(block, self._crc)
        self._size += len(block)
        self._in_flight.append(self._pool.submit(_deflate, block, self._window, self._level))
        self._window = block[-WINDOW:]
        while len(self._in_flight) >= self._limit or (self._in_flight and self._in_flight[0].done()):
            self._out.write(self._in_flight.popleft().result())
