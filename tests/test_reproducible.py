"""The same image gives the same bytes whichever way the build runs: file contents kept in memory,
spilled to the scratch file midway, or in the file from the start; one compression thread or
several; and the compressed archives hold exactly the uncompressed one."""

import gzip
import hashlib
import io
import random

import pytest
import zstandard

from fixtures.images import E, Layout
from initramfs_operator import build
from initramfs_operator.archive import blockgzip
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


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
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
    unpack = gzip.decompress if compression == "gzip" else zstandard.ZstdDecompressor().decompressobj().decompress
    assert unpack(outputs["in memory"]) == plain.read_bytes()


def test_block_gzip_bytes_depend_on_the_input_only():
    data = _noise(7, 5 * MIB + 123)
    outputs = set()
    for threads, step in ((1, MIB), (2, 4096), (4, 777_777)):
        out = io.BytesIO()
        writer = blockgzip.Writer(out, 6, threads)
        for i in range(0, len(data), step):
            writer.write(data[i:i + step])
        writer.close()
        outputs.add(out.getvalue())
    assert len(outputs) == 1
    assert gzip.decompress(outputs.pop()) == data
