"""A registry image's layer blobs, downloaded when wanted into files on disk.

`RegistryLayer.prefetch()` starts a download in the background, `RegistryOptions.jobs` at a
time; `open()` starts it if need be. Each blob is verified against its digest and size while it
arrives (a cached one, before it is used). A connection that breaks is resumed where it broke off
(a range request; from a registry that sends the whole blob again, what the file has is skipped),
so the file only grows and every byte in it is one of those the download verifies. A layer opened
before its download is done is read from that file as it arrives, so inflating and parsing overlap
with the transfer, and its bytes are hashed once, by the download. Files live in the layer cache
when there is one (see `cache`: shared by concurrent builds, each blob pinned from its check until
the image is closed, then the cache trimmed to its size bound), otherwise in a scratch directory
that closing `Downloads` removes.
"""

import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from contextlib import closing
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO

import httpx

from ...errors import BuildError, InvalidImageError, RegistryError, UsageError
from .. import image
from ..digests import VerifyingReader
from . import cache
from .options import RegistryOptions
from .transport import READ_SIZE, Body, Transport, fail

log = logging.getLogger(__name__)


class Downloads:
    """The layer files of one image, each downloaded at most once."""

    def __init__(self, transport: Transport, options: RegistryOptions):
        self._transport = transport
        self._cached = bool(options.cache_dir)
        self._cache_max_bytes = options.cache_max_bytes
        # The cache's blobs/ (left in place), or a scratch directory of this image's own.
        self._directory = os.path.join(options.cache_dir, "blobs") if options.cache_dir \
            else _scratch_dir(options.scratch_dir)
        self._slots = threading.Semaphore(max(1, options.jobs))
        self._futures: dict[str, Future[str]] = {}
        self._arrivals: dict[str, _Arrival] = {}
        self._pins: dict[str, int] = {}  # digest -> a shared-locked descriptor of its cached blob
        self._on_bytes = options.on_bytes
        self._lock = threading.Lock()  # guards the fields below, scratch files' creation and `on_bytes`
        self._closed = False

    def __enter__(self) -> "Downloads":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def layer(self, d: image.Descriptor) -> "RegistryLayer":
        return RegistryLayer(d, self)

    def start(self, d: image.Descriptor) -> "Future[str]":
        """The download of `d` (its file's path, once verified), started unless it was already."""
        with self._lock:
            if self._closed:
                raise ValueError("the image was closed")
            future = self._futures.get(d.digest)  # a manifest may list the same blob twice
            if future is None:
                future = self._futures[d.digest] = Future()
                arrival = self._arrivals[d.digest] = _Arrival()
                future.add_done_callback(lambda _: arrival.changed())
                # Daemon threads, not a ThreadPoolExecutor: a CLI that fails or is interrupted must
                # exit at once, not after the downloads in flight (the executor joins them at exit).
                threading.Thread(target=self._run, args=(future, d), daemon=True,
                                 name=f"download {d.digest[:19]}").start()
            return future

    def arriving(self, d: image.Descriptor) -> "ArrivingBlob":
        """The blob of `d` read as its download writes it."""
        future = self.start(d)
        return ArrivingBlob(self._arrivals[d.digest], future, lambda: self.open_verified(d))

    def open_verified(self, d: image.Descriptor) -> int:
        """A new descriptor of the verified blob of `d` (its download done): the pinned inode of a cached one."""
        path = self.start(d).result()
        with self._lock:
            pinned = self._pins.get(d.digest)
        return os.dup(pinned) if pinned is not None else os.open(path, os.O_RDONLY)

    def close(self) -> None:
        """Removes the scratch files, or trims the cache to its bound and unpins this image's blobs; downloads
        in flight fail, and those not started never start."""
        with self._lock:
            self._closed = True
            if not self._cached:
                shutil.rmtree(self._directory, ignore_errors=True)
                return
            for fd in self._pins.values():
                os.close(fd)
            self._pins.clear()
        if self._cache_max_bytes is not None:
            try:  # this image's blobs were used last: they go last
                gone = cache.evict(self._directory, self._cache_max_bytes)
                if gone.removed:
                    log.info("layer cache: evicted %d files (%d bytes); %d bytes kept",
                             gone.removed, gone.freed, gone.kept)
            except OSError as e:  # the build is done: a cache that cannot be trimmed is not its failure
                log.warning("layer cache: cannot trim %s: %s", self._directory, e.strerror)

    def _run(self, future: "Future[str]", d: image.Descriptor) -> None:
        with self._slots:  # `jobs` at a time, roughly in the order asked
            future.set_running_or_notify_cancel()
            try:
                if self._closed:
                    raise ValueError("the image was closed")
                future.set_result(self._fetch(d))
            except BaseException as e:
                future.set_exception(e)

    def _fetch(self, d: image.Descriptor) -> str:
        """The verified file of `d`; local disk trouble (a full disk, an unusable cache) is a clear error."""
        try:
            return self._fetch_to_cache(d) if self._cached else self._fetch_to_scratch(d)
        except OSError as e:
            raise BuildError(f"layer {d.digest}: cannot store it in {self._directory}: "
                             f"{e.strerror or type(e).__name__}") from None

    def _fetch_to_scratch(self, d: image.Descriptor) -> str:
        path = os.path.join(self._directory, d.digest.split(":", 1)[1])
        _download(self._transport, d, path, lambda: self._create_scratch(path), self._progress,
                  self._arrivals[d.digest])
        return path

    def in_cache(self, d: image.Descriptor) -> bool:
        """Whether the layer cache has a file for `d` (checked against its digest before it is used)."""
        return self._cached and os.path.exists(self._cache_path(d))

    def _cache_path(self, d: image.Descriptor) -> str:
        return os.path.join(self._directory, *d.digest.split(":", 1))

    def _fetch_to_cache(self, d: image.Descriptor) -> str:
        path = self._cache_path(d)
        pinned = cache.pin(path)
        if pinned is not None:
            try:
                with closing(VerifyingReader(cache.BlobFile(os.dup(pinned)), d.digest, d.size, "cached layer")) as f:
                    f.verify()
                self._keep_pin(d, pinned)
                self._progress(d.size)
                return path
            except InvalidImageError as e:
                os.close(pinned)
                log.warning("%s; downloading it again", e)
            except BaseException:
                os.close(pinned)
                raise
        pinned, tmp = cache.create(path)
        try:
            _download(self._transport, d, tmp, lambda: _create(tmp), self._progress, self._arrivals[d.digest])
            os.replace(tmp, path)  # over a corrupt blob, or the same bytes another build just downloaded
        except BaseException:
            os.close(pinned)
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self._keep_pin(d, pinned)
        return path

    def _keep_pin(self, d: image.Descriptor, fd: int) -> None:
        """Holds the blob's pin until `close`, and marks it as just used."""
        cache.touch(fd)
        with self._lock:
            if self._closed:  # the image was closed while this download ran: nothing will read it
                os.close(fd)
            else:
                self._pins[d.digest] = fd

    def _create_scratch(self, path: str) -> BinaryIO:
        with self._lock:  # never a file in a scratch directory being removed
            if self._closed:
                raise ValueError("the image was closed")
            return _create(path)

    def _progress(self, n: int) -> None:
        if self._on_bytes:
            with self._lock:  # the callback need not be thread-safe
                self._on_bytes(n)


@dataclass
class RegistryLayer:
    descriptor: image.Descriptor
    downloads: Downloads

    def prefetch(self) -> None:
        """Start the download in the background."""
        self.downloads.start(self.descriptor)

    def open(self) -> VerifyingReader:
        """The verified file, or, while the download is in flight, the blob as it arrives: either way its bytes
        are hashed once, by the download or the cache's check, and the reader checks their count. A cached blob
        is read once its check is done: read while being checked, it would be hashed twice."""
        d = self.descriptor
        future = self.downloads.start(d)
        if future.done() or self.downloads.in_cache(d):
            return VerifyingReader(cache.BlobFile(self.downloads.open_verified(d)), d.digest, d.size, "layer",
                                   hashed=False)
        return VerifyingReader(self.downloads.arriving(d), d.digest, d.size, "layer", hashed=False)


class _Arrival:
    """What the download in flight of one blob has written to its file so far."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.path: str | None = None
        self.written = 0  # by the download, flushed: readable from the file

    def begin(self, path: str) -> None:
        """Before the download creates the file: nothing in it may be read until it is written."""
        with self.condition:
            self.path, self.written = path, 0

    def grew(self, n: int) -> None:
        with self.condition:
            self.written += n
            self.condition.notify_all()

    def changed(self) -> None:
        with self.condition:
            self.condition.notify_all()


class ArrivingBlob:
    """A blob's file read while its download writes it: `read` waits for bytes, and ends where the
    finished download ended; the download's failure is raised to the reader."""

    def __init__(self, arrival: _Arrival, download: "Future[str]", open_verified: Callable[[], int]):
        self._arrival, self._download, self._open_verified = arrival, download, open_verified
        self._fd: int | None = None
        self._pos = 0
        self._closed = False

    def read(self, n: int = -1, /) -> bytes:
        if n < 0:
            return b"".join(iter(lambda: self.read(READ_SIZE), b""))
        while True:
            with self._arrival.condition:
                while not (self._closed or self._download.done()
                           or (self._arrival.path and self._arrival.written > self._pos)):
                    self._arrival.condition.wait()
                if self._closed:
                    raise ValueError("read from a closed blob")
                done = self._download.done()
                path, end = self._arrival.path, self._arrival.written
            if done:
                self._download.result()  # the download's error, if it failed
            if self._fd is None:
                if done:
                    self._fd = self._open_verified()
                else:
                    assert path is not None
                    try:
                        self._fd = os.open(path, os.O_RDONLY)
                    except FileNotFoundError:
                        wait([self._download])  # it just ended: its file renamed into the cache, or removed
                        continue
            data = os.pread(self._fd, n if done else min(n, end - self._pos), self._pos)
            self._pos += len(data)
            return data

    def close(self) -> None:
        with self._arrival.condition:
            self._closed = True
            self._arrival.condition.notify_all()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _scratch_dir(parent: str | None) -> str:
    try:
        return tempfile.mkdtemp(prefix="initramfs-layers-", dir=parent)
    except OSError as e:
        raise UsageError(f"cannot use scratch directory {parent}: {e.strerror}") from None


def _create(path: str) -> BinaryIO:
    return open(path, "wb")  # noqa: SIM115 (the caller closes it)


def _download(transport: Transport, d: image.Descriptor, path: str, create: Callable[[], BinaryIO],
              on_bytes: Callable[[int], None], arrival: _Arrival) -> None:
    """Stream a blob into the file at `path` that `create()` opens, verifying it; a broken connection is
    resumed where it broke off. Each chunk is flushed, for a reader of the file meanwhile (`ArrivingBlob`)."""
    what = f"{transport.ref.name}: layer {d.digest}"
    url = transport.base.join(f"blobs/{d.digest}")
    resumed = _Resumed()
    reader = VerifyingReader(resumed, d.digest, d.size, "layer")
    arrival.begin(path)
    with create() as f:

        def once() -> None:
            done = reader.position
            try:
                if done < d.size:  # else the connection broke after the last byte: only the check is left
                    resp = transport.send("GET", url, headers={"Range": f"bytes={done}-"} if done else None,
                                          stream=True)
                    resumed.attempt(resp)  # closed below, whatever happens
                    if resp.status_code == 206 and done:
                        _check_range(resp, done, what)
                    elif resp.status_code != 200:
                        fail(resp, what)
                    else:
                        resumed.skip = done
                while chunk := reader.read(READ_SIZE):
                    f.write(chunk)
                    f.flush()
                    arrival.grew(len(chunk))
                    on_bytes(len(chunk))
            finally:
                resumed.attempt(None)

        transport.attempts(what, once)


class _Resumed:
    """A blob's bytes across the attempts of its download: each attempt's response from where the last one
    broke off. A registry that ignores the range asked for sends the whole blob again: what the file already
    has (`skip`) is dropped, unhashed, so the hash covers the file's bytes, each once."""

    def __init__(self) -> None:
        self._resp: httpx.Response | None = None
        self._body: Body | None = None
        self.skip = 0

    def attempt(self, resp: httpx.Response | None) -> None:
        """The response the next bytes come from (None: no more); the previous one is closed."""
        if self._resp is not None:
            self._resp.close()
        self._resp, self._body, self.skip = resp, Body(resp) if resp is not None else None, 0

    def read(self, n: int = -1, /) -> bytes:
        while self._body is not None and (data := self._body.read(n)):
            if len(data) > self.skip:
                data, self.skip = data[self.skip:], 0
                return data
            self.skip -= len(data)
        return b""

    def close(self) -> None:
        self.attempt(None)


_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(?:\d+|\*)")


def _check_range(resp: httpx.Response, start: int, what: str) -> None:
    """A partial response must hold the bytes asked for: those after the `start` the file has."""
    value = resp.headers.get("Content-Range", "")
    found = _CONTENT_RANGE.fullmatch(value.strip())
    if found is None or int(found.group(1)) != start:
        raise RegistryError(f"{what}: asked for the bytes from {start} on, the registry sent "
                            f"Content-Range {value[:80]!r}")
