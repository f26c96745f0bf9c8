"""The admin's rules for what a namespace may put on a host (delivery/tenancy.py), one case a row, and what
the version store keeps of them on disk: the namespace's bytes, and the owner mark of a directory."""

import os
from pathlib import Path

import pytest

from initramfs_operator.delivery.store import OWNER, VersionStore, namespace_bytes
from initramfs_operator.delivery.tenancy import Claimant, Tenancy, bytes_after, directory_owner

MiB = 1 << 20


@pytest.mark.parametrize(("namespace", "directory", "keep", "size", "quota", "held", "refused"), [
    # An empty namespace: the new version alone.
    (0, [], 3, 40 * MiB, 100 * MiB, 40 * MiB, False),
    (0, [], 3, 101 * MiB, 100 * MiB, 101 * MiB, True),
    # Its directory holds 3 of 30 MiB, keep 3: the oldest goes once the new one is current.
    (90 * MiB, [30 * MiB] * 3, 3, 30 * MiB, 100 * MiB, 90 * MiB, False),
    # keep 1: only the new one stays, however much the directory held.
    (90 * MiB, [30 * MiB] * 3, 1, 80 * MiB, 100 * MiB, 80 * MiB, False),
    # Another directory of the namespace counts in full.
    (150 * MiB, [30 * MiB] * 2, 3, 30 * MiB, 150 * MiB, 180 * MiB, True),
    # Exactly the quota fits.
    (50 * MiB, [], 3, 50 * MiB, 100 * MiB, 100 * MiB, False),
    # 0: no limit.
    (10 << 40, [], 10, 1 << 40, 0, (10 << 40) + (1 << 40), False),
])
def test_quota(namespace, directory, keep, size, quota, held, refused):
    after = bytes_after(namespace, directory, keep, size)
    assert after == held
    assert Tenancy(quota=quota).over_quota(after) is refused


@pytest.mark.parametrize(("namespaces", "selector", "selected", "namespace", "allowed"), [
    ((), "", (), "team-a", True),                    # no rule: every served namespace delivers
    (("team-a",), "", (), "team-a", True),
    (("team-a",), "", (), "team-b", False),
    ((), "delivery=yes", ("team-b",), "team-b", True),
    ((), "delivery=yes", ("team-b",), "team-a", False),  # a selector alone picks only what it selects
    (("team-a",), "delivery=yes", ("team-b",), "team-a", True),  # listed or selected
])
def test_namespaces_that_may_deliver(namespaces, selector, selected, namespace, allowed):
    assert Tenancy(frozenset(namespaces), selector).may_deliver(namespace, selected) is allowed


OLD = Claimant("2025-01-01T10:00:00Z", "zeta", "uid-old")
NEW = Claimant("2025-01-01T10:00:05Z", "alpha", "uid-new")
SAME_SECOND = Claimant("2025-01-01T10:00:00Z", "beta", "uid-same")


@pytest.mark.parametrize(("mark", "claimants", "existing", "owner"), [
    (None, [NEW, OLD], {"uid-old", "uid-new"}, "uid-old"),           # no mark: the earliest
    (None, [OLD, SAME_SECOND], {"uid-old", "uid-same"}, "uid-same"),  # created the same second: by name
    ("uid-new", [NEW, OLD], {"uid-old", "uid-new"}, "uid-new"),       # the mark wins while its build exists
    ("uid-gone", [NEW, OLD], {"uid-old", "uid-new"}, "uid-old"),      # its build deleted (files retained)
    ("uid-away", [NEW], {"uid-away", "uid-new"}, "uid-away"),         # its node left its selector: still its
    ("uid-new", [NEW], {"uid-new"}, "uid-new"),
])
def test_directory_owner(mark, claimants, existing, owner):
    assert directory_owner(mark, claimants, existing) == owner


def test_namespace_bytes_count_versions_below_the_namespace_only(tmp_path: Path):
    root = tmp_path / "root"
    (root / "team-a/app/nested").mkdir(parents=True)
    (root / "team-b/app").mkdir(parents=True)
    (root / "team-a/app" / ("a" * 64 + ".cpio.gz")).write_bytes(b"x" * 1000)
    (root / "team-a/app/nested" / ("b" * 64 + ".cpio.zst")).write_bytes(b"x" * 500)
    (root / "team-a/app" / ("a" * 64 + ".sha512")).write_bytes(b"y" * 129)  # not a version
    (root / "team-a/app/.partial.tmp").write_bytes(b"z" * 4000)            # a pull in progress: reserved apart
    (root / "team-b/app" / ("c" * 64 + ".cpio")).write_bytes(b"x" * 7000)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ("d" * 64 + ".cpio")).write_bytes(b"x" * 9000)
    os.symlink(outside, root / "team-a/elsewhere")                          # never followed
    assert namespace_bytes(str(root), "team-a") == 1500
    assert namespace_bytes(str(root), "team-c") == 0


def test_owner_mark_is_written_read_and_removed_with_the_files(tmp_path: Path):
    store = VersionStore(str(tmp_path), "team-a/app")
    assert store.owner() is None
    store.claim("uid-1")
    assert (tmp_path / "team-a/app" / OWNER).read_text() == "uid-1\n" and store.owner() == "uid-1"
    store.claim("uid-2")  # a directory left by a deleted build changes hands
    assert store.owner() == "uid-2"
    (tmp_path / "team-a/app/notes.txt").write_text("the admin's")
    store.remove_all()
    assert store.owner() is None and os.listdir(tmp_path / "team-a/app") == ["notes.txt"]
