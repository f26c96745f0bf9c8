"""The host-side version directory behind `current`: verified installs, atomic switches, pruning,
and no way out of the configured root."""

import hashlib
import io
import os
import threading

import pytest

from initramfs_operator.delivery.store import CURRENT, Expected, Verified, VersionStore
from initramfs_operator.errors import InvalidImageError, OutputError, UsageError


def expected(data: bytes, compression: str = "gzip") -> Expected:
    return Expected(hashlib.sha256(data).hexdigest(), hashlib.sha512(data).hexdigest(), len(data), compression)


def sha512_file(version: str) -> str:
    return version.split(".", 1)[0] + ".sha512"


def install(store: VersionStore, data: bytes) -> str:
    name = store.install(io.BytesIO(data), expected(data))
    store.activate(name)
    return name


def test_install_activate_and_roll_forward(tmp_path):
    store = VersionStore(str(tmp_path), "ns/build")
    first = install(store, b"one" * 1000)
    assert (tmp_path / "ns/build" / first).read_bytes() == b"one" * 1000
    assert os.readlink(tmp_path / "ns/build" / CURRENT) == first == store.current()
    second = install(store, b"two" * 1000)
    assert (tmp_path / "ns/build" / CURRENT).read_bytes() == b"two" * 1000
    assert set(store.versions()) == {first, second}
    assert not [p for p in os.listdir(tmp_path / "ns/build") if p.endswith(".tmp")]


@pytest.mark.parametrize("damage", ["flip", "truncate", "extend", "sha512"])
def test_a_mismatch_is_refused_and_current_stays(tmp_path, damage):
    store = VersionStore(str(tmp_path), "b")
    good = install(store, b"good")
    data = b"new version"
    want = expected(data)
    sent = {"flip": b"New version", "truncate": data[:-1], "extend": data + b"!", "sha512": data}[damage]
    if damage == "sha512":
        want = Expected(want.sha256, hashlib.sha512(b"other").hexdigest(), want.size, want.compression)
    with pytest.raises(InvalidImageError):
        store.install(io.BytesIO(sent), want)
    assert store.current() == good
    assert set(os.listdir(tmp_path / "b")) == {CURRENT, good, sha512_file(good)}


def test_a_verified_file_is_read_again_only_when_its_identity_changes_or_its_check_expires(tmp_path):
    now = [0.0]
    store = VersionStore(str(tmp_path), "b", Verified(max_age=100, clock=lambda: now[0]))
    data = os.urandom(1 << 20)
    name = install(store, data)
    assert all(store.has(expected(data)) for _ in range(10))
    assert store.verified.bytes_hashed == 0  # hashed while it was written: trusted since
    now[0] = 101
    assert store.has(expected(data)) and store.verified.bytes_hashed == len(data)  # due again: read once
    assert store.has(expected(data)) and store.verified.bytes_hashed == len(data)

    path = tmp_path / "b" / name
    before = os.stat(path)
    with open(path, "r+b") as f:  # same size, other bytes; even its mtime put back (ctime still moves)
        f.write(bytes([data[0] ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert not store.has(expected(data))
    install(store, data)  # the agent's next step: fetched again, renamed over it
    assert path.read_bytes() == data and store.has(expected(data))


def test_each_version_has_its_sha512_beside_it_from_before_it_is_current(tmp_path):
    """What a launcher pinning Kata's initrd_hash reads: the sha512 of the file `current` points at."""
    store = VersionStore(str(tmp_path), "b")
    data = os.urandom(10_000)
    name = store.install(io.BytesIO(data), expected(data))
    pinned = tmp_path / "b" / sha512_file(name)
    assert pinned.read_bytes() == hashlib.sha512(data).hexdigest().encode() + b"\n"  # before activation
    store.activate(name)
    target = os.readlink(tmp_path / "b" / CURRENT)
    assert (tmp_path / "b" / sha512_file(target)).read_text().strip() == \
        hashlib.sha512((tmp_path / "b" / target).read_bytes()).hexdigest()

    pinned.unlink()  # a version an older agent placed, without one
    assert store.has(expected(data)) and pinned.read_text() == hashlib.sha512(data).hexdigest() + "\n"
    pinned.write_text("0" * 128 + "\n")
    assert store.has(expected(data)) and pinned.read_text() == hashlib.sha512(data).hexdigest() + "\n"
    assert not [p for p in os.listdir(tmp_path / "b") if p.endswith(".tmp")]


def test_prune_keeps_current_and_newest(tmp_path):
    store = VersionStore(str(tmp_path), "b")
    names = [install(store, f"v{i}".encode()) for i in range(5)]
    for i, name in enumerate(names):  # install order, as mtimes a coarse clock might not tell apart
        os.utime(tmp_path / "b" / name, ns=(i * 10**9, i * 10**9))
    store.activate(names[1])  # rolled back to an old one
    (tmp_path / "b" / "notes.txt").write_text("mine")
    removed = store.prune(3)
    assert set(store.versions()) == {names[1], names[4], names[3]}
    assert set(removed) == {names[0], names[2]}
    assert (tmp_path / "b" / "notes.txt").read_text() == "mine"
    assert set(os.listdir(tmp_path / "b")) == {CURRENT, "notes.txt", *store.versions(),
                                               *map(sha512_file, store.versions())}  # with their versions
    store.remove_all()
    assert os.listdir(tmp_path / "b") == ["notes.txt"]


def test_a_reader_never_sees_a_missing_or_partial_current(tmp_path):
    store = VersionStore(str(tmp_path), "b")
    a, b = os.urandom(1 << 20), os.urandom(1 << 20)
    names = [install(store, a), install(store, b)]
    path, seen, stop = tmp_path / "b" / CURRENT, [], threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(path.read_bytes())  # raises if current is ever missing

    t = threading.Thread(target=reader)
    t.start()
    for i in range(200):
        store.activate(names[i % 2])
    stop.set()
    t.join()
    assert seen and all(data in (a, b) for data in seen)


@pytest.mark.parametrize("directory", ["../escape", "/abs/../../x", "a/../../b", "", "."])
def test_directories_outside_the_root_are_refused(tmp_path, directory):
    with pytest.raises(UsageError):
        VersionStore(str(tmp_path), directory)


def test_symlinks_under_the_root_are_never_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "ns").symlink_to(outside)
    store = VersionStore(str(root), "ns/build")
    with pytest.raises(OutputError, match="never followed"):
        install(store, b"x")
    assert list(outside.iterdir()) == []


def test_a_symlink_named_like_the_version_is_replaced_not_followed(tmp_path):
    data = b"payload"
    store = VersionStore(str(tmp_path), "b")
    (tmp_path / "b").mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (tmp_path / "b" / expected(data).filename).symlink_to(victim)
    assert not store.has(expected(data))
    install(store, data)
    assert victim.read_bytes() == b"keep me"
    assert (tmp_path / "b" / CURRENT).read_bytes() == data
