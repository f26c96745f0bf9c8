"""The layer cache shared by concurrent builds: eviction by size and age of use, never of a blob in use."""

import fcntl
import os
import threading
import time
from contextlib import closing

import httpx

from initramfs_operator.oci import digests, image
from initramfs_operator.oci import registry as reg
from initramfs_operator.oci.registry import cache
from test_registry_client import LAYER, REF, Registry


def blob(directory, data: bytes, mtime: float) -> str:
    path = directory / "sha256" / digests.of(data).split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return str(path)


def test_eviction_removes_the_least_recently_used_blobs_down_to_the_bound(tmp_path):
    oldest, older, newest = (blob(tmp_path, bytes([i]) * 1000, 1000.0 + i) for i in range(3))
    gone = cache.evict(str(tmp_path), 2000, now=2000.0)
    assert (gone.removed, gone.freed, gone.kept) == (1, 1000, 2000)
    assert [os.path.exists(p) for p in (oldest, older, newest)] == [False, True, True]
    assert cache.evict(str(tmp_path), 2000, now=2000.0) == cache.Eviction(0, 0, 2000)


def test_a_pinned_blob_stays_and_the_next_one_goes_instead(tmp_path):
    oldest, older, newest = (blob(tmp_path, bytes([i]) * 1000, 1000.0 + i) for i in range(3))
    fd = cache.pin(oldest)
    assert fd is not None
    try:
        assert cache.evict(str(tmp_path), 2000, now=2000.0) == cache.Eviction(1, 1000, 2000)
        assert [os.path.exists(p) for p in (oldest, older, newest)] == [True, False, True]
        assert cache.evict(str(tmp_path), 0, now=2000.0) == cache.Eviction(1, 1000, 1000)
    finally:
        os.close(fd)
    assert cache.evict(str(tmp_path), 0, now=2000.0) == cache.Eviction(1, 1000, 0)
    assert not os.path.exists(oldest)


def test_a_pin_waiting_on_an_eviction_of_its_blob_is_refused(tmp_path):
    # The pin opened the name, then waited for its shared lock while an eviction held the exclusive one
    # and unlinked the blob: it must not keep a blob the cache no longer has.
    path = blob(tmp_path, b"x" * 100, 1000.0)
    evicting = os.open(path, os.O_RDONLY)
    fcntl.flock(evicting, fcntl.LOCK_EX)
    pinned: list[int | None] = []
    pinning = threading.Thread(target=lambda: pinned.append(cache.pin(path)))
    pinning.start()
    time.sleep(0.2)  # the pin has opened the name and waits for the lock
    os.unlink(path)
    os.close(evicting)
    pinning.join(10)
    assert pinned == [None]


def test_temp_files_of_crashed_downloads_go_and_those_being_written_stay(tmp_path):
    abandoned = tmp_path / "sha256" / ".abc.1"
    abandoned.parent.mkdir(parents=True)
    abandoned.write_bytes(b"half")
    os.utime(abandoned, (1000.0, 1000.0))
    fd, writing = cache.create(str(tmp_path / "sha256" / "def"))
    os.utime(writing, (1000.0, 1000.0))  # old, but locked: a slow download
    try:
        assert cache.evict(str(tmp_path), 1 << 30, now=2000.0).removed == 1
        assert not abandoned.exists() and os.path.exists(writing)
    finally:
        os.close(fd)


def test_a_build_reads_the_blob_it_pinned_even_if_its_name_is_replaced(tmp_path):
    options = reg.RegistryOptions(transport=httpx.MockTransport(Registry()), cache_dir=str(tmp_path))
    entry = tmp_path / "blobs" / "sha256" / digests.of(LAYER).split(":")[1]
    with reg.load(REF, image.DEFAULT_PLATFORM, options) as img:
        with closing(img.layers[0].open()) as layer:
            layer.verify()  # downloaded, verified and pinned
        entry.unlink()
        entry.write_bytes(b"not the layer")  # what a broken disk or another writer left under the name
        with closing(img.layers[0].open()) as layer:
            assert layer.read() == LAYER


def test_concurrent_builds_share_the_cache_and_a_bounded_one_never_evicts_a_layer_in_use(tmp_path):
    served = Registry()
    bounded = reg.RegistryOptions(transport=httpx.MockTransport(served), cache_dir=str(tmp_path), cache_max_bytes=0)
    entry = tmp_path / "blobs" / "sha256" / digests.of(LAYER).split(":")[1]
    layer_gets = lambda: [r for r in served.requests if r.url.path.endswith(digests.of(LAYER))]  # noqa: E731
    with reg.load(REF, image.DEFAULT_PLATFORM, bounded) as first:
        with closing(first.layers[0].open()) as layer:
            layer.verify()
        done = threading.Event()

        def second_build() -> None:
            with reg.load(REF, image.DEFAULT_PLATFORM, bounded) as second, closing(second.layers[0].open()) as layer:
                assert layer.read() == LAYER
            done.set()

        threading.Thread(target=second_build).start()
        assert done.wait(10)
        assert len(layer_gets()) == 1  # the second build used the first one's download
        assert entry.exists()  # its bound of 0 could not take a layer the first build holds
        with closing(first.layers[0].open()) as layer:
            assert layer.read() == LAYER
    assert not entry.exists()  # the first build's own bound, once it let go
