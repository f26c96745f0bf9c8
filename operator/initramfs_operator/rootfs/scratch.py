"""File contents parked between reading the layers and writing the archive.

Layers arrive in stack order but the archive is written in path order, and an upper
layer can replace anything below it, so contents are appended to one store and read
back by offset. The store is memory while everything added fits `memory_budget`; the
first add that would not fit moves it all to an unlinked temp file, where the rest
goes too: memory stays bounded however large the image is, and small images skip the
round trip through the file.

A scratch volume that is missing, full or unwritable is the machine's problem, not the
image's: it is an `OutputError` naming the scratch directory, which a caller may retry.
"""

import os
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from types import TracebackType
from typing import Protocol

from ..errors import OutputError

CHUNK = 1 << 20
MEMORY_BUDGET = 32 << 20  # the default: most small images fit; a large one moves to the file early


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class Scratch:
    def __init__(self, directory: str | None = None, memory_budget: int = MEMORY_BUDGET):
        self.directory = directory or tempfile.gettempdir()
        try:
            # unlinked at once, closed by close(): nothing is left behind whatever ends the process
            self._file = tempfile.TemporaryFile(dir=directory, prefix="initramfs-")  # noqa: SIM115
        except OSError as e:
            raise self._error(e) from None
        self._fd = self._file.fileno()
        self._memory: bytearray | None = bytearray() if memory_budget > 0 else None
        self._memory_budget = memory_budget
        self.size = 0

    def _error(self, e: OSError) -> OutputError:
        return OutputError(f"scratch directory {self.directory}: {e.strerror or e}")

    def add(self, stream: Readable, size: int) -> int:
        """Appends exactly `size` bytes read from `stream`; returns their offset."""
        offset = self.size
        self._make_room(size)
        left = size
        while left:
            data = stream.read(min(left, CHUNK))
            if not data:
                raise EOFError(f"stream ended {left} bytes early")
            self._write(data)
            left -= len(data)
        self.size += size
        return offset

    def add_bytes(self, data: bytes) -> int:
        offset = self.size
        self._make_room(len(data))
        self._write(data)
        self.size += len(data)
        return offset

    def _make_room(self, size: int) -> None:
        """Moves what memory holds to the file if `size` more bytes would not fit the budget."""
        if self._memory is not None and self.size + size > self._memory_budget:
            memory, self._memory = self._memory, None
            self._write(memory)

    def _write(self, data: bytes | bytearray) -> None:
        if self._memory is not None:
            self._memory += data
            return
        try:
            self._file.write(data)
        except OSError as e:
            raise self._error(e) from None

    def chunks(self, offset: int, size: int) -> Iterator[bytes]:
        if self._memory is not None:
            for start in range(offset, offset + size, CHUNK):
                with memoryview(self._memory) as memory:
                    piece = memory[start:min(start + CHUNK, offset + size)].tobytes()
                yield piece
            return
        try:
            self._file.flush()
            end = offset + size
            while offset < end:
                data = os.pread(self._fd, min(CHUNK, end - offset), offset)
                if not data:
                    raise EOFError("scratch file shorter than recorded")
                offset += len(data)
                yield data
        except OSError as e:
            raise self._error(e) from None

    def close(self) -> None:
        # Nothing in it is needed any more: a failure to flush the rest (the disk that just filled up) is moot.
        with suppress(OSError):
            self._file.close()

    def __enter__(self) -> "Scratch":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
