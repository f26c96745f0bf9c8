"""The newc format on its own: every record kind written and read back, the Reader reading the way the
kernel's init/initramfs.c does (and refusing what the kernel would read differently), and the Writer
refusing every value that does not fit its field."""

import io
import os
import stat
import subprocess

import pytest

from fixtures.tools import need
from initramfs_operator.archive import cpio
from initramfs_operator.errors import InvalidImageError

REG, DIR, LNK = stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK


def archive(records: list[cpio.Record]) -> bytes:
    out = io.BytesIO()
    w = cpio.Writer(out)
    for r in records:
        w.write(r)
    w.close()
    assert w.records == len(records)
    return out.getvalue()


def read(data: bytes) -> list[cpio.Entry]:
    return list(cpio.Reader(io.BytesIO(data)))


def fields(r: cpio.Record) -> tuple:
    return (r.name, r.mode, r.uid, r.gid, r.mtime, r.nlink, r.ino, r.rdev, r.size, b"".join(r.data), r.dev)


EVERY_KIND = [
    cpio.Record("dir", DIR | 0o755, uid=1, gid=2, mtime=1_700_000_000, nlink=2, ino=1),
    cpio.Record("dir/empty", REG | 0o644, ino=2),
    *(cpio.Record(f"dir/size{n}", REG | 0o600, ino=3 + n, size=n, data=(b"x" * n,)) for n in range(1, 6)),
    cpio.Record("dir/chunks", REG | 0o644, ino=9, size=300_001, data=(os.urandom(100_000), os.urandom(200_001))),
    cpio.Record("setuid", REG | 0o4755, ino=10, size=1, data=(b"s",)),
    cpio.Record("setgid", REG | 0o2711, gid=42, ino=11, size=1, data=(b"g",)),
    cpio.Record("sticky", DIR | 0o1777, nlink=2, ino=12),
    cpio.Record("link", LNK | 0o777, ino=13, size=9, data=(b"dir/size1",)),
    cpio.Record("abs", LNK | 0o777, ino=14, size=4, data=(b"/etc",)),
    cpio.Record("console", stat.S_IFCHR | 0o600, ino=15, rdev=(5, 1)),
    cpio.Record("sda", stat.S_IFBLK | 0o660, gid=6, ino=16, rdev=(8, 0)),
    cpio.Record("biggest-dev", stat.S_IFBLK | 0o600, ino=17, rdev=(0xFFF, 0xFFFFF)),
    cpio.Record("fifo", stat.S_IFIFO | 0o644, ino=18),
    cpio.Record("socket", stat.S_IFSOCK | 0o755, ino=19),
    # a hardlink group: data once, on the last name, as GNU cpio and the kernel expect
    cpio.Record("h1", REG | 0o755, nlink=3, ino=20, size=0),
    cpio.Record("h2", REG | 0o755, nlink=3, ino=20, size=0),
    cpio.Record("h3", REG | 0o755, nlink=3, ino=20, size=5, data=(b"hello",)),
    cpio.Record("linked-fifo-1", stat.S_IFIFO | 0o600, nlink=2, ino=21),
    cpio.Record("linked-fifo-2", stat.S_IFIFO | 0o600, nlink=2, ino=21),
    cpio.Record("limits", REG | 0o7777, uid=0xFFFFFFFE, gid=0xFFFFFFFE, mtime=0xFFFFFFFF, nlink=1, ino=0x7FFFFFFF),
    cpio.Record("not-utf8-\udcff\udcfe", REG | 0o644, ino=22),
    cpio.Record("/".join(["d" * 255] * 15) + "/" + "e" * 254, REG | 0o644, ino=23),  # 4095 bytes: PATH_MAX - 1
]


def test_every_record_kind_reads_back_as_written():
    data = archive(EVERY_KIND)
    assert data.startswith(cpio.MAGIC) and len(data) % 4 == 0
    entries = read(data)
    assert [fields(e.record) for e in entries] == [fields(r) for r in EVERY_KIND]
    links = {e.record.name: e.link for e in entries if e.link}
    assert links == {"h2": "h1", "h3": "h1", "linked-fifo-2": "linked-fifo-1"}
    assert [e.offset % 4 for e in entries] == [0] * len(entries)


def test_gnu_cpio_reads_what_the_writer_wrote_and_the_reader_reads_gnu_cpio(tmp_path):
    need("cpio")
    records = [r for r in EVERY_KIND if not stat.S_ISCHR(r.mode) and not stat.S_ISBLK(r.mode)
               and r.uid == 0 and r.name != "limits"]
    (tmp_path / "in.cpio").write_bytes(archive(records))
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames", "-F", str(tmp_path / "in.cpio")],
                   cwd=out, check=True)
    assert (out / "h1").read_bytes() == b"hello" and os.stat(out / "h1").st_ino == os.stat(out / "h3").st_ino
    assert os.readlink(out / "link") == "dir/size1" and stat.S_ISFIFO(os.lstat(out / "fifo").st_mode)
    assert (out / "dir/chunks").read_bytes() == b"".join(EVERY_KIND[7].data)
    # and back: GNU cpio's own archive (its inode numbers, nlinks, 512-byte end padding) through the Reader
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    gnu = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=b"\n".join(map(os.fsencode, names)), cwd=out,
                         capture_output=True, check=True).stdout
    assert len(gnu) % 512 == 0
    entries = {e.record.name: e for e in read(gnu)}
    assert sorted(entries) == names
    assert entries["dir/chunks"].data == b"".join(EVERY_KIND[7].data)
    hard = [entries[n] for n in ("h1", "h2", "h3")]
    assert [e.link is None for e in hard].count(True) == 1 and b"".join(e.data for e in hard) == b"hello"


def test_concatenated_archives_are_read_past_each_trailer_as_the_kernel_does():
    first = archive([cpio.Record("a", REG | 0o644, nlink=2, ino=7, size=1, data=(b"1",)),
                     cpio.Record("b", REG | 0o644, nlink=2, ino=7)])
    second = archive([cpio.Record("c", REG | 0o644, nlink=2, ino=7, size=1, data=(b"2",)),
                      cpio.Record("a", REG | 0o600, size=1, data=(b"3",))])
    data = first + b"\0" * (512 - len(first) % 512) + second + b"\0" * 16  # bootloader-style block padding
    reader = cpio.Reader(io.BytesIO(data))
    entries = list(reader)
    assert [(e.record.name, e.link, e.data) for e in entries] == [
        ("a", None, b"1"), ("b", "a", b""),
        ("c", None, b"2"),  # same inode number, but the trailer cleared the kernel's hardlink table
        ("a", None, b"3")]  # a later record with an existing name: the caller decides (the kernel replaces)
    assert reader.trailers == 2


def test_an_archive_without_trailer_is_read_to_its_end():
    data = archive([cpio.Record("a", REG | 0o644)])
    body = data[:data.index(cpio.MAGIC, 1)]
    reader = cpio.Reader(io.BytesIO(body))
    assert [e.record.name for e in reader] == ["a"] and reader.trailers == 0


def _header(**override: object) -> bytes:
    values = dict(ino=1, mode=REG | 0o644, uid=0, gid=0, nlink=1, mtime=0, filesize=0, devmajor=0, devminor=0,
                  rdevmajor=0, rdevminor=0, namesize=2, check=0)
    raw = {k: override.pop(k) if k in override else b"%08X" % v for k, v in values.items()}
    magic = override.pop("magic", cpio.MAGIC)
    assert not override
    return magic + b"".join(raw[k] for k in cpio.FIELDS)


def _one(header: bytes, name: bytes = b"a\0", data: bytes = b"") -> bytes:
    head = header + name
    return head + b"\0" * (-len(head) % 4) + data + b"\0" * (-len(data) % 4)


def _hex(n: int) -> bytes:
    return b"%08X" % n


MALFORMED = {
    # a 9-digit field shifts everything after it: the kernel would read other values than a lenient tool
    # (here the kernel would see namesize 0 and skip the record, body and all)
    "nine digits, as the old writer wrote a 33-bit uid": (_one(_header(uid=b"100000000")), "namesize 0"),
    "non-hex digit": (_one(_header(mtime=b"0000000G")), "mtime b'0000000G' is not 8 hex digits"),
    "0x prefix simple_strtoul accepts": (_one(_header(uid=b"0x000010")), "not 8 hex digits"),
    "negative": (_one(_header(gid=b"-0000001")), "not 8 hex digits"),
    "odc magic": (_one(_header(magic=b"070707")), "odc"),
    "bad magic": (_one(_header(magic=b"07070X")), "no cpio newc magic"),
    "namesize 0 (skipped by the kernel)": (_one(_header(namesize=_hex(0)), b""), "namesize 0"),
    "namesize over PATH_MAX": (_one(_header(namesize=_hex(4097)), b"a" * 4096 + b"\0"), "namesize 4097"),
    "name without NUL": (_one(_header(), b"ab"), "not one NUL-terminated string"),
    "NUL inside the name": (_one(_header(namesize=_hex(4)), b"a\0b\0"), "not one NUL-terminated string"),
    "dir with data (skipped)": (_one(_header(mode=_hex(DIR | 0o755), filesize=_hex(4)), data=b"data"),
                                "skips a directory that has data"),
    "empty symlink target": (_one(_header(mode=_hex(LNK | 0o777))), "symlink target"),
    "NUL in symlink target": (_one(_header(mode=_hex(LNK | 0o777), filesize=_hex(3)), data=b"a\0b"),
                              "symlink target"),
    "symlink target of PATH_MAX": (_one(_header(mode=_hex(LNK | 0o777), filesize=_hex(4096)), data=b"t" * 4096),
                                   "symlink target"),
    "uid -1 (chown leaves root)": (_one(_header(uid=_hex(0xFFFFFFFF))), "uid 0xffffffff"),
    "minor over dev_t": (_one(_header(mode=_hex(stat.S_IFCHR | 0o600), rdevminor=_hex(0x100000))),
                         "rdevminor 0x100000"),
    "major over dev_t": (_one(_header(mode=_hex(stat.S_IFBLK | 0o600), rdevmajor=_hex(0x1000))),
                         "rdevmajor 0x1000"),
    "mode over 16 bits": (_one(_header(mode=_hex(0x18000 | REG))), "not a file type"),
    "unknown file type": (_one(_header(mode=_hex(0o070644))), "not a file type"),
    "hardlink ino over int": (_one(_header(nlink=_hex(2), ino=_hex(0x80000000))), "ino 0x80000000"),
    "non-zero name padding": (_header(namesize=_hex(3)) + b"ab\0x\0\0", "non-zero padding"),
    "non-zero data padding": (_header(filesize=_hex(1)) + b"a\0" + b"dx\0\0", "non-zero padding"),
    "check without checksum magic": (_one(_header(check=_hex(5))), "check 0x5"),
    "wrong checksum": (_one(_header(magic=cpio.MAGIC_CHECKSUM, filesize=_hex(2), check=_hex(1)), data=b"\1\1"),
                       "check 0x1, expected 0x2"),
    "truncated data": (_header(filesize=_hex(100)) + b"a\0" + b"d" * 10, "archive ends inside the data"),
    "truncated header": (_header()[:50], "archive ends inside a header"),
    "broken padding": (_one(_header()) + b"\0\0" + _one(_header()), "broken padding"),
    "compressed segment": (_one(_header()) + b"\x1f\x8b\x08\0", "no cpio newc magic"),
    "a symlink named TRAILER!!!": (_one(_header(mode=_hex(LNK | 0o777), namesize=_hex(11), filesize=_hex(1)),
                                        b"TRAILER!!!\0", b"x"), "end marker"),
    "absolute name": (_one(_header(namesize=_hex(3)), b"/a\0"), "not a plain relative path"),
    "dot-slash name": (_one(_header(namesize=_hex(4)), b"./a\0"), "not a plain relative path"),
    "dot-dot": (_one(_header(namesize=_hex(5)), b"a/..\0"), "not a plain relative path"),
    "component over NAME_MAX": (_one(_header(namesize=_hex(257)), b"n" * 256 + b"\0"), "over 255"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_reader_refuses_what_the_kernel_reads_differently(case):
    data, message = MALFORMED[case]
    with pytest.raises(cpio.FormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read(data)


def test_checksum_archives_are_read():
    data = _one(_header(magic=cpio.MAGIC_CHECKSUM, filesize=_hex(3), check=_hex(6)), data=b"\1\2\3")
    assert [e.data for e in read(data)] == [b"\1\2\3"]


BAD_RECORDS = {
    "uid over 32 bits": (cpio.Record("x", REG | 0o644, uid=1 << 32), "/x: uid 4294967296"),
    "uid -1": (cpio.Record("x", REG | 0o644, uid=0xFFFFFFFF), "/x: uid 4294967295"),
    "negative gid": (cpio.Record("x", REG | 0o644, gid=-1), "/x: gid -1"),
    "mtime past 2106": (cpio.Record("x", REG | 0o644, mtime=1 << 32), "/x: mtime 4294967296"),
    "negative mtime": (cpio.Record("x", REG | 0o644, mtime=-1), "/x: mtime -1"),
    "4 GiB": (cpio.Record("x", REG | 0o644, size=1 << 32), "/x: filesize 4294967296"),
    "major": (cpio.Record("x", stat.S_IFCHR | 0o600, rdev=(4096, 0)), "/x: rdevmajor 4096"),
    "minor": (cpio.Record("x", stat.S_IFCHR | 0o600, rdev=(1, 1 << 20)), "/x: rdevminor 1048576"),
    "ino": (cpio.Record("x", REG | 0o644, ino=1 << 31), "/x: ino 2147483648"),
    "trailer name": (cpio.Record("TRAILER!!!", REG | 0o644), "end marker"),
    "empty name": (cpio.Record("", DIR | 0o755), "not a plain relative path"),
    "dot-dot": (cpio.Record("a/../b", REG | 0o644), "not a plain relative path"),
    "NUL": (cpio.Record("a\0b", REG | 0o644), "NUL byte"),
    "trailing slash": (cpio.Record("a/", REG | 0o644), "not a plain relative path"),
    "path over PATH_MAX": (cpio.Record("/".join(["a" * 200] * 21), REG | 0o644),
                           r"/aaaa\S+\.\.\.\(4220 characters\): .* kernel skips names over 4095"),
    "component over NAME_MAX": (cpio.Record("a" * 256, REG | 0o644), "over 255"),
    "device with data": (cpio.Record("x", stat.S_IFIFO | 0o644, size=1, data=(b"x",)), "skipped by the kernel"),
    "unknown type": (cpio.Record("x", 0o070644), "not a file type"),
    "empty symlink": (cpio.Record("x", LNK | 0o777), "symlink target of 0 bytes"),
    "NUL in symlink": (cpio.Record("x", LNK | 0o777, size=3, data=(b"a\0b",)), "NUL byte"),
    "short data": (cpio.Record("x", REG | 0o644, size=3, data=(b"ab",)), "wrote 2 bytes, header says 3"),
}


@pytest.mark.parametrize("case", BAD_RECORDS)
def test_writer_refuses_values_that_do_not_fit_naming_path_and_field(case):
    record, message = BAD_RECORDS[case]
    with pytest.raises(InvalidImageError, match=message):
        cpio.Writer(io.BytesIO()).write(record)


def test_writer_reports_what_it_wrote_under_watched_names():
    out = io.BytesIO()
    w = cpio.Writer(out, watch={"init"})
    w.write(cpio.Record("init", REG | 0o755, size=3, data=(b"a", b"bc")))
    w.write(cpio.Record("other", REG | 0o755, size=1, data=(b"x",)))
    w.close()
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256 of b"abc"
    assert w.watched == {"init": cpio.Written(REG | 0o755, 3, abc)}
    assert w.records == 2


def test_clamp_mtime_fits_the_header_and_warns_once():
    warnings: list[str] = []
    records = [cpio.Record(f"f{i}", REG, mtime=m) for i, m in enumerate((-5, 1 << 40, 10, 1 << 33, -1, 100))]
    out = [r.mtime for r in cpio.clamp_mtime(records, 50, warnings.append)]
    assert out == [0, 50, 10, 50, 0, 50]
    assert warnings == ["4 mtimes outside 1970..2106 were clamped to fit the cpio newc header: "
                        "/f0 (-5), /f1 (1099511627776), /f3 (8589934592) and 1 more"]
