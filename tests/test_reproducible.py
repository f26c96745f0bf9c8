"""The same image gives the same bytes whichever way the build runs: file contents kept in memory,
spilled to the scratch file midway, or in the file from the start; one compression thread or
several; and the compressed archives hold exactly the uncompressed one."""

import gzip
import hashlib
import io
import lzma
import random
import subprocess

import pytest
import zstandard

from fixtures.images import E, Layout
from fixtures.tools import need
from initramfs_operator import build
from initramfs_operator.archive import compress
from initramfs_operator.oci import layout

MIB = 1 << 20


def _noise(seed: int, size: int) -> bytes:
    """Half random, half repeated: blocks that compress, but not to nothing."""
    rng = random.Random(seed)
    return b"".join(rng.randbytes(512) + bytes(512) for _ in range(size // 1024))


def image(tmp_path) -> str:
    """Three layers, over 4 MiB of contents (several compression blocks and jobs), the layer rules at work."""
    lay = Layout(tmp_path / "layout")
    base = [E("bin", "dir"), E("bin/sh", data=b"sh", mode=0o755), E("bin/app", data=_noise(1, 3 * MIB), mode=0o755),
            E("bin/tool", "hardlink", link="bin/app"), E("etc", "dir"), E("etc/a", data=b"a" * 100),
            E("etc/b", data=_noise(2, 300_000))]
    upper = [E("etc/.wh.a"), E("etc/c", data=_noise(3, 1 * MIB + 7)), E("lib", "symlink", link="bin")]
    top = [E("srv", "dir")] + [E(f"srv/f{i}", data=_noise(i, 2048)) for i in range(200)]
    lay.tag(lay.image([base, upper, top], config={"Cmd": ["/bin/app"]}), "t")
    return f"{lay.root}:t"


VARIANTS = {  # memory budget, threads
    "in memory": (1 << 30, 1),
    "spilled to the scratch file midway": (4 * MIB, 3),  # at etc/c, in the second layer
    "in the scratch file from the start": (0, 2),
}


@pytest.mark.parametrize("compression", ["gzip", "zstd", "lz4", "xz"])
def test_every_way_of_building_writes_the_same_bytes(tmp_path, compression):
    spec = image(tmp_path)
    outputs = {}
    for name, (budget, threads) in VARIANTS.items():
        out = tmp_path / f"{name}.img"
        options = build.BuildOptions(compression=compression, threads=threads, memory_budget=budget,
                                     scratch_dir=str(tmp_path))
        build.build_file(layout.load(spec), str(out), options)
        outputs[name] = out.read_bytes()
    assert len({hashlib.sha256(data).hexdigest() for data in outputs.values()}) == 1, list(outputs)
    plain = tmp_path / "plain.cpio"
    build.build_file(layout.load(spec), str(plain), build.BuildOptions(compression="none", memory_budget=0))
    assert UNPACK[compression](outputs["in memory"]) == plain.read_bytes()


def _lz4_dc(data: bytes) -> bytes:
    return subprocess.run([need("lz4"), "-dc"], input=data, capture_output=True, check=True).stdout


UNPACK = {"gzip": gzip.decompress, "zstd": zstandard.ZstdDecompressor().decompressobj().decompress,
          "lz4": _lz4_dc, "xz": lzma.decompress}


def _compressed(data: bytes, compression: str, level: int, threads: int, step: int) -> bytes:
    out = io.BytesIO()
    writer = compress.writer(out, compression, level, threads)
    for i in range(0, len(data), step):
        writer.write(data[i:i + step])
    writer.close()
    return out.getvalue()


@pytest.mark.parametrize("compression, level, size", [
    ("gzip", 6, 5 * MIB + 123),  # 1 MiB blocks
    ("lz4", 1, 17 * MIB + 5),  # 8 MiB blocks, fast mode
    ("lz4", 9, 17 * MIB + 5),  # high compression mode
    ("xz", 0, 5 * MIB + 123),  # 1 MiB blocks
])
def test_block_compression_bytes_depend_on_the_input_only(compression, level, size):
    data = _noise(7, size)
    outputs = {_compressed(data, compression, level, threads, step)
               for threads, step in ((1, MIB), (2, 4096), (4, 777_777))}
    assert len(outputs) == 1
    assert UNPACK[compression](outputs.pop()) == data


@pytest.mark.parametrize("level", [1, 2, 3, 9, 12])
def test_lz4_writes_the_bytes_of_lz4_legacy(level, tmp_path):
    """The reference for the format the kernel reads is `lz4 -l`: the same liblz4 writes the same bytes."""
    data = _noise(8, 9 * MIB)
    (tmp_path / "in").write_bytes(data)
    legacy = subprocess.run([need("lz4"), "-l", f"-{level}", "-c", str(tmp_path / "in")], capture_output=True,
                            check=True).stdout
    assert _compressed(data, "lz4", level, 2, MIB) == legacy


def test_xz_is_one_stream_of_crc32_blocks_as_the_kernel_reads_it(tmp_path):
    """XZ Embedded reads one stream of LZMA2 blocks checked by CRC32; `xz --list` shows how it was cut."""
    path = tmp_path / "out.xz"
    path.write_bytes(_compressed(_noise(9, 6 * MIB), "xz", 0, 2, MIB))
    listing = subprocess.run([need("xz"), "--robot", "--list", str(path)], capture_output=True, text=True,
                             check=True).stdout
    file = next(line.split("\t") for line in listing.splitlines() if line.startswith("file\t"))
    assert (file[1], file[2], file[6]) == ("1", "6", "CRC32")  # one stream, six blocks (of 1 MiB), CRC32
