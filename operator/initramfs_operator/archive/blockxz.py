"""An xz writer for the kernel's decoder (XZ Embedded: LZMA2 only, CRC32 as the check) that compresses
on several threads, as `xz -T` does: the input is cut into blocks of three dictionaries, each block is
compressed on its own by liblzma (a one-block stream), and the blocks are joined under one stream
header with an index of their sizes. The bytes depend on the input and the level only.
"""

import lzma
import struct
import zlib

from .blocks import BlockWriter, Output

# xz(1)'s presets: the LZMA2 dictionary of each level, in MiB (the kernel allocates it as it unpacks).
DICTIONARY = {0: 0.25, 1: 1, 2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 7: 16, 8: 32, 9: 64}
# The stream header as the xz format (1.2.0, section 2.1.1) lays it out: the magic, the stream flags (check
# type 1, CRC32) and their CRC32. Written out, not taken from a compressor: even an empty input makes liblzma
# set up a preset-6 encoder (16 MiB and more of peak memory, in every build that imports this module).
_U32 = struct.Struct("<I")
_FLAGS = b"\x00\x01"
STREAM_HEADER = b"\xfd7zXZ\x00" + _FLAGS + _U32.pack(zlib.crc32(_FLAGS))


def block_size(level: int) -> int:
    """Three dictionaries, at least 1 MiB, as `xz -T` cuts: a block shorter than the dictionary
    could not use all of it."""
    return max(int(3 * DICTIONARY[level] * (1 << 20)), 1 << 20)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        shift += 7
        if not byte & 0x80:
            return value, at


class Writer(BlockWriter):
    def __init__(self, out: Output, level: int, threads: int):
        super().__init__(out, block_size(level), threads, "xz")
        self._level = level
        self._records: list[tuple[int, int]] = []  # each block's unpadded and uncompressed size
        out.write(STREAM_HEADER)

    def _encode(self, block: bytes, context: bytes) -> bytes:
        return lzma.compress(block, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=self._level)

    def _emit(self, stream: bytes) -> None:
        """Writes the block of a one-block stream and keeps the sizes its index gives."""
        index_size = (_U32.unpack_from(stream, len(stream) - 8)[0] + 1) * 4
        index_start = len(stream) - 12 - index_size
        count, at = _read_varint(stream, index_start + 1)
        assert count == 1, "liblzma wrote one block"
        unpadded, at = _read_varint(stream, at)
        uncompressed, _ = _read_varint(stream, at)
        self._records.append((unpadded, uncompressed))
        self._out.write(stream[12:index_start])

    def _end(self) -> None:
        index = bytearray(b"\0" + _varint(len(self._records)))
        for unpadded, uncompressed in self._records:
            index += _varint(unpadded) + _varint(uncompressed)
        index += bytes(-len(index) % 4)
        index += _U32.pack(zlib.crc32(index))
        backward = _U32.pack(len(index) // 4 - 1) + _FLAGS
        self._out.write(bytes(index) + _U32.pack(zlib.crc32(backward)) + backward + b"YZ")
