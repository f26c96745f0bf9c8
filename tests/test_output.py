"""archive/output: a file written through `atomic` holds exactly the bytes written, counted and hashed on the
way, with its disk writes started as it is written (so that the fsync before the rename has little left)."""

import hashlib
import os
import random
import sys

import pytest

from initramfs_operator.archive import output


def test_an_output_of_many_writeback_steps_is_the_bytes_written_with_their_digests(tmp_path):
    rng = random.Random(5)
    pieces = [rng.randbytes(rng.randrange(1, 3 << 20)) for _ in range(24)]  # ~36 MiB: several steps, odd sizes
    path = tmp_path / "initramfs.img"
    with output.atomic(str(path)) as out:
        for piece in pieces:
            out.write(piece)
    data = b"".join(pieces)
    assert len(data) > 3 * output._Writeback.STEP
    assert path.read_bytes() == data
    assert out.digests.size == len(data)
    assert out.digests.sha256.hexdigest() == hashlib.sha256(data).hexdigest()
    assert out.digests.sha512.hexdigest() == hashlib.sha512(data).hexdigest()
    assert os.listdir(tmp_path) == ["initramfs.img"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_writeback_is_started_where_linux_offers_it():
    assert output._sync_file_range() is not None
