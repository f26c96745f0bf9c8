"""File contents parked on disk between reading the layers and writing the archive.

Layers arrive in stack order but the archive is written in path order, and an upper
layer can replace anything below it, so contents are appended to one unlinked temp
file and read back by offset: memory stays flat however large the image is.
"""

import os
import tempfile
from typing import BinaryIO, Iterator

CHUNK = 1 << 20


class Scratch:
    def __init__(self, directory: str | None = None):
        self._file = tempfile.TemporaryFile(dir=directory, prefix="initramfs-")
        self._fd = self._file.fileno()
        self.size = 0

    def add(self, stream: BinaryIO, size: int) -> int:
        """Appends exactly `size` bytes read from `stream`; returns their offset."""
        offset = self.size
        left = size
        while left:
            data = stream.read(min(left, CHUNK))
            if not data:
                raise EOFError(f"stream ended {left} bytes early")
            self._file.write(data)
            left -= len(data)
        self.size += size
        return offset

    def add_bytes(self, data: bytes) -> int:
        offset = self.size
        self._file.write(data)
        self.size += len(data)
        return offset

    def chunks(self, offset: int, size: int) -> Iterator[bytes]:
        self._file.flush()
        end = offset + size
        while offset < end:
            data = os.pread(self._fd, min(CHUNK, end - offset), offset)
            if not data:
                raise EOFError("scratch file shorter than recorded")
            offset += len(data)
            yield data

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Scratch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
