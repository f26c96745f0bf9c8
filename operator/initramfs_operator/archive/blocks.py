"""The common part of the writers that compress fixed-size blocks on several threads (gzip, lz4, xz):
the input is cut into blocks of a size the format fixes, each block is encoded on a pool thread, and the
encoded blocks reach the output in order. The bytes depend on the input and the level only, never on
the thread count nor on how the input was split into writes.

The compression libraries release the GIL while they work, so the threads run on several CPUs.
"""

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol


class Output(Protocol):
    def write(self, data: bytes, /) -> object: ...


class BlockWriter:
    """`write` buffers up to a block and hands full blocks to the pool; `close` ends the stream.

    A format says how a block is encoded (`_encode`, on a pool thread), and may follow the blocks in
    order on the writing thread: as they are cut (`_cut`), as they are written (`_emit`) and at the end
    (`_end`). At most `2 * threads` blocks are in flight.
    """

    def __init__(self, out: Output, block_size: int, threads: int, prefix: str):
        self._out = out
        self._block_size = block_size
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=prefix)
        self._in_flight: deque[Future[bytes]] = deque()
        self._limit = 2 * threads
        self._pending = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._pending += data
        while len(self._pending) >= self._block_size:
            self._submit(bytes(self._pending[:self._block_size]))
            del self._pending[:self._block_size]
        return len(data)

    def close(self) -> None:
        try:
            if self._pending:
                self._submit(bytes(self._pending))
                self._pending.clear()
            while self._in_flight:
                self._emit(self._in_flight.popleft().result())
            self._end()
        finally:
            self._pool.shutdown(cancel_futures=True)

    def _encode(self, block: bytes, context: bytes) -> bytes:
        """`block` encoded, knowing `context` of the input before it."""
        raise NotImplementedError

    def _cut(self, block: bytes) -> bytes:
        """Called in order as each block is cut; returns the `context` its `_encode` needs (nothing
        where blocks are independent)."""
        return b""

    def _emit(self, encoded: bytes) -> None:
        self._out.write(encoded)

    def _end(self) -> None:
        pass

    def _submit(self, block: bytes) -> None:
        self._in_flight.append(self._pool.submit(self._encode, block, self._cut(block)))
        while len(self._in_flight) >= self._limit or (self._in_flight and self._in_flight[0].done()):
            self._emit(self._in_flight.popleft().result())
