"""The LZ4 legacy format (`lz4 -l`), the one the kernel's initramfs unpacker reads: a magic number,
then blocks of 8 MiB of input, each compressed on its own and prefixed by its compressed size
(32-bit little-endian). No checksum, no end mark: the stream ends where the file does.

The blocks are independent, so they compress on several threads; the bytes are those of
`lz4 -l -LEVEL` (same liblz4): levels 1-2 are LZ4's fast mode, 3-12 its high compression mode.
"""

import struct

import lz4.block

from .blocks import BlockWriter, Output

MAGIC = struct.pack("<I", 0x184C2102)
BLOCK = 8 << 20  # the kernel decompresses each block into a buffer of this size (lib/decompress_unlz4.c)
HIGH_COMPRESSION = 3  # the first level of LZ4's high compression mode, as in the lz4 command
_SIZE = struct.Struct("<I")


class Writer(BlockWriter):
    def __init__(self, out: Output, level: int, threads: int):
        super().__init__(out, BLOCK, threads, "lz4")
        self._level = level
        out.write(MAGIC)

    def _encode(self, block: bytes, context: bytes) -> bytes:
        compressed: bytes
        if self._level >= HIGH_COMPRESSION:
            compressed = lz4.block.compress(block, mode="high_compression", compression=self._level,
                                            store_size=False)
        else:
            compressed = lz4.block.compress(block, store_size=False)
        return _SIZE.pack(len(compressed)) + compressed
