"""The lean tar reader: the same members and contents as Python's tarfile for the archives real
tools write (however the stream is cut into chunks), and a clear refusal for what is malformed."""

import hashlib
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from fixtures.images import E, gnu_sparse, pax_sparse, tar
from initramfs_operator.errors import InvalidImageError, LimitExceeded
from initramfs_operator.oci import tarstream

WHERE = "layer sha256:test"
LONG = "d" * 90 + "/" + "e" * 90 + "/" + "f" * 60  # over ustar's 100-byte name field: a prefix or extension


def via_tarfile(data: bytes) -> list[tuple]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as archive:
        for m in archive:
            content = archive.extractfile(m).read() if m.isreg() else None
            device = (m.devmajor, m.devminor) if m.ischr() or m.isblk() else (0, 0)
            out.append(_row(m.name, m.type, m.mode, m.uid, m.gid, m.size if m.isreg() else None, int(m.mtime),
                            m.linkname, device, content))
    return out


def via_tarstream(data: bytes, step: int) -> list[tuple]:
    reader = tarstream.TarReader((data[i:i + step] for i in range(0, len(data), step)), WHERE)
    return [_row(m.name, m.type, m.mode, m.uid, m.gid, m.size if m.isreg() else None, m.mtime, m.linkname,
                 (m.devmajor, m.devminor), reader.read() if m.isreg() else None)
            for m in reader.members()]


def _row(name, kind, mode, uid, gid, size, mtime, link, device, content):
    return name, kind, mode, uid, gid, size, mtime, link, device, content and hashlib.sha256(content).hexdigest()


def tree(root: Path) -> Path:
    """Every member type, long names and targets, non-UTF-8 names, a big uid, a fractional mtime."""
    (root / LONG).mkdir(parents=True)
    (root / LONG / ("g" * 120)).write_bytes(b"deep\n")
    (root / "big").write_bytes(bytes(range(256)) * 40)
    (root / "empty").write_bytes(b"")
    (root / "hard").hardlink_to(root / "big")
    (root / "short-link").symlink_to("big")
    (root / "long-link").symlink_to("t" * 150)
    (root / b"caf\xe9".decode("utf-8", "surrogateescape")).write_bytes(b"latin-1 name")
    (root / "ünï").write_bytes(b"utf-8 name")
    subprocess.run(["mkfifo", str(root / "fifo")], check=True)
    return root


def tarfile_archives(root: Path) -> dict[str, bytes]:
    archives = {}
    for name, fmt in (("pax", tarfile.PAX_FORMAT), ("gnu", tarfile.GNU_FORMAT)):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=fmt) as t:
            t.add(root, arcname=".")
            for kind, major, minor in ((tarfile.CHRTYPE, 4, 64), (tarfile.BLKTYPE, 259, 1 << 19)):
                info = tarfile.TarInfo(f"dev{kind.decode()}")
                info.type, info.devmajor, info.devminor, info.uid = kind, major, minor, 3_000_000
                t.addfile(info)
        archives[name] = buffer.getvalue()
    archives["pax records"] = tar([E("a", data=b"x", pax={"mtime": "1700000000.999999999", "uid": "70000",
                                                          "comment": "ignored", "path": "renamed/"}),
                                   E("b", "dir", pax={"gid": "-1"}), E("c", "symlink", pax={"linkpath": "x" * 300})])
    global_pax = io.BytesIO()
    with tarfile.open(fileobj=global_pax, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"uid": "77", "mtime": "123.5"}) as t:
        t.add(root / "big", arcname="big")
    archives["global pax"] = global_pax.getvalue()
    archives["v7 directory"] = _v7_directory()
    return archives


def _v7_directory() -> bytes:
    info = tarfile.TarInfo("olddir/")
    info.type = tarfile.AREGTYPE
    return info.tobuf(tarfile.USTAR_FORMAT) + b"\0" * 1024


def test_members_and_contents_match_tarfile_however_the_stream_is_cut(tmp_path):
    archives = tarfile_archives(tree(tmp_path / "tree"))
    if shutil.which("tar"):  # GNU tar's own formats, as image builders that shell out to it write them
        for fmt in ("gnu", "posix", "ustar", "oldgnu"):
            archives[f"GNU tar {fmt}"] = subprocess.run(
                ["tar", f"--format={fmt}", "-cf", "-", "-C", str(tmp_path / "tree"), "."], capture_output=True).stdout
    for name, data in archives.items():
        expected = via_tarfile(data)
        assert expected, name
        for step in (1 << 20, 512, 333, 1):
            assert via_tarstream(data, step) == expected, (name, step)


def test_unread_contents_are_skipped():
    data = tar([E("a", data=b"A" * 3000), E("b", data=b"B" * 10), E("c", "dir")])
    reader = tarstream.TarReader([data], WHERE)
    members = reader.members()
    assert next(members).name == "a" and reader.read(5) == b"AAAAA"
    assert next(members).name == "b" and reader.read() == b"B" * 10
    assert [m.name for m in members] == ["c"]


def members_of(data: bytes) -> list[str]:
    return [m.name for m in tarstream.TarReader([data], WHERE).members()]


def _corrupt_checksum(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[1536 + 1] ^= 1  # in the name field of the second header (a: one block of header, two of data)
    return bytes(damaged)


def _header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(tarfile.USTAR_FORMAT)


GOOD = tar([E("a", data=b"x" * 700), E("b", data=b"y")])

REFUSED = {
    "a bad header checksum": (_corrupt_checksum(GOOD), tarstream.TarFormatError, "bad header checksum after entry 'a'"),
    "a stream ending in a header": (GOOD[:1024 + 100], tarstream.TarFormatError, "ends in the middle"),
    "a stream ending in a member": (GOOD[:700], tarstream.TarFormatError, "ends in the middle"),
    "an octal field with 9": (tar([E("a")]).replace(b"0000644", b"0000649", 1), tarstream.TarFormatError,
                              "bad header checksum|invalid mode"),
    "a GNU sparse member": (tar([gnu_sparse("holes", 1 << 30, [(0, b"x")])]), InvalidImageError,
                            "entry 'holes' is a sparse file"),
    "a pax 0.1 sparse member": (tar([pax_sparse("holes", 1 << 30, [(5, b"x")], version="0.1")]),
                                InvalidImageError, "entry 'holes' is a sparse file"),
    "a pax 1.0 sparse member": (tar([pax_sparse("holes", 1 << 30, [(5, b"x")])]), InvalidImageError,
                                "entry 'holes' is a sparse file"),
    "a pax uid that is not a number": (tar([E("u", pax={"uid": "root"})]), InvalidImageError,
                                       "entry 'u': pax uid 'root' is not a number"),
    "a pax size that is not a number": (tar([E("s", data=b"x", pax={"size": "1e3"})]), InvalidImageError,
                                        "entry 's': pax size '1e3' is not a number"),
    "a pax mtime that is NaN": (tar([E("t", pax={"mtime": "nan"})]), InvalidImageError,
                                "entry 't': pax mtime 'nan' is not a number"),
    "a pax record longer than its header": (_header("././@PaxHeader", tarfile.XHDTYPE, 6) + b"9 x=y\n".ljust(512, b"\0")
                                            + tar([E("r")]), tarstream.TarFormatError, "malformed pax record"),
    "a pax header of 1 GiB": (_header("././@PaxHeader", tarfile.XHDTYPE, 1 << 30), LimitExceeded,
                              "1073741824 bytes of tar header data"),
    "2 MiB of long names in front of one entry": (
        _header("././@LongLink", tarfile.GNUTYPE_LONGNAME, 1 << 19) + bytes(1 << 19)
        + _header("././@LongLink", tarfile.GNUTYPE_LONGLINK, 1 << 19) + bytes(1 << 19)
        + _header("././@PaxHeader", tarfile.XHDTYPE, 1 << 19), LimitExceeded, "more than 1 MiB of tar headers"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_malformed_and_unsupported_input_is_refused_naming_the_layer(case):
    data, error, message = REFUSED[case]
    with pytest.raises(error, match=message) as raised:
        members_of(data)
    assert str(raised.value).startswith(f"{WHERE}: ")


def test_pax_records_are_read_in_linear_time():
    # 512 KiB of digits in one record: quadratic in tarfile's pax regexes before 3.11.10 (CVE-2024-6232)
    digits = "9" * (512 << 10)
    data = tar([E("f", data=b"x", pax={"comment": digits, "mtime": "1" + "0" * 9})])
    assert [(m.name, m.mtime) for m in tarstream.TarReader([data], WHERE).members()] == [("f", 1_000_000_000)]


def test_the_archive_ends_at_a_zero_block_or_at_the_end_of_the_stream():
    assert members_of(GOOD + b"garbage after the end-of-archive blocks") == ["a", "b"]
    assert members_of(GOOD[:-1024]) == ["a", "b"]  # no end-of-archive blocks at all
    assert members_of(b"") == []
