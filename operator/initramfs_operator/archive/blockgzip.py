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

from zlib_ng import zlib_ng

from .blocks import BlockWriter, Output

BLOCK = 1 << 20
WINDOW = 1 << 15
# 10-byte header: magic, deflate, no flags, mtime 0, no extra flags, OS unknown.
HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_TRAILER = struct.Struct("<II")  # CRC-32 and size modulo 2**32 of the input


class Writer(BlockWriter):
    """One gzip member of blocks that each see the 32 KiB before them, as one deflate stream would."""

    def __init__(self, out: Output, level: int, threads: int):
        super().__init__(out, BLOCK, threads, "deflate")
        self._level = level
        self._window = b""
        self._crc = 0
        self._size = 0
        out.write(HEADER)

    def _cut(self, block: bytes) -> bytes:
        window = self._window
        self._window = block[-WINDOW:]
        self._crc = zlib_ng.crc32(block, self._crc)
        self._size += len(block)
        return window

    def _encode(self, block: bytes, window: bytes) -> bytes:
        """One block as raw deflate, ending on a sync flush so that the next block joins it."""
        if window:
            stream = zlib_ng.compressobj(self._level, zlib_ng.DEFLATED, -zlib_ng.MAX_WBITS, zdict=window)
        else:
            stream = zlib_ng.compressobj(self._level, zlib_ng.DEFLATED, -zlib_ng.MAX_WBITS)
        return stream.compress(block) + stream.flush(zlib_ng.Z_SYNC_FLUSH)

    def _end(self) -> None:
        # An empty final block ends the deflate stream.
        self._out.write(zlib_ng.compress(b"", self._level, -zlib_ng.MAX_WBITS))
        self._out.write(_TRAILER.pack(self._crc, self._size & 0xFFFFFFFF))
