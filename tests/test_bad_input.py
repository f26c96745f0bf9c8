"""Bad images get a clear error that names what is wrong, and leave nothing behind."""

import json
import subprocess
from pathlib import Path

import pytest

from fixtures.images import E, Layout, tar
from fixtures.tools import need
from initramfs_operator import build
from initramfs_operator.oci import dockerarchive, layout
from initramfs_operator.errors import InvalidImageError, OutputError, UsageError

GOOD = [E("etc", "dir"), E("etc/hostname", data=b"box\n" * 5000)]


def build_into(lay_root: Path, out_dir: Path, tag="t", **options):
    out_dir.mkdir(exist_ok=True)
    try:
        return build.build_file(layout.load(f"{lay_root}:{tag}"), str(out_dir / "initrd.img"),
                                build.BuildOptions(**options))
    finally:
        assert [p.name for p in out_dir.iterdir()] in ([], ["initrd.img"])


def layer_blob(lay: Layout, manifest_desc: dict) -> Path:
    manifest = json.loads((lay.root / "blobs/sha256" / manifest_desc["digest"][7:]).read_bytes())
    return lay.root / "blobs/sha256" / manifest["layers"][0]["digest"][7:], manifest["layers"][0]["digest"]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_corrupt_layer_names_the_digest_and_leaves_no_file(tmp_path, damage, compression):
    lay = Layout(tmp_path / "l")
    m = lay.image([GOOD], compression=compression)
    lay.tag(m, "t")
    blob, digest = layer_blob(lay, m)
    data = bytearray(blob.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x40
    else:
        del data[len(data) // 2:]
    blob.write_bytes(bytes(data))
    with pytest.raises(InvalidImageError, match=digest) as e:
        build_into(lay.root, tmp_path / "out")
    assert not (tmp_path / "out/initrd.img").exists()
    assert "Traceback" not in str(e.value)


def test_blob_that_is_valid_but_not_the_declared_one(tmp_path):
    lay = Layout(tmp_path / "l")
    m = lay.image([GOOD], compression="none")
    lay.tag(m, "t")
    blob, digest = layer_blob(lay, m)
    other = tar([E("etc", "dir"), E("etc/hostname", data=b"BOX\n" * 5000)])
    assert len(other) == blob.stat().st_size
    blob.write_bytes(other)
    with pytest.raises(InvalidImageError, match=f"{digest}: content digest mismatch"):
        build_into(lay.root, tmp_path / "out")


@pytest.mark.parametrize("entry, message", [
    (E("../../etc/passwd", data=b"x"), "escape the root"),
    (E("etc/../../x", data=b"x"), "escape the root"),
    (E("link", "hardlink", link="../outside"), "escape the root"),
    (E("orphan", "hardlink", link="not/there"), "missing"),
])
def test_unsafe_entries_are_refused(tmp_path, entry, message):
    lay = Layout(tmp_path / "l")
    lay.tag(lay.image([GOOD + [entry]]), "t")
    with pytest.raises(InvalidImageError, match=message):
        build_into(lay.root, tmp_path / "out")


def test_absolute_paths_are_made_relative_and_symlinks_never_followed(tmp_path):
    lay = Layout(tmp_path / "l")
    lay.tag(lay.image([GOOD + [E("/abs", "dir"), E("/abs/file", data=b"a"),
                               E("escape", "symlink", link="/../../../../etc")],
                       [E("escape/passwd", data=b"pwned")]]), "t")
    with pytest.raises(InvalidImageError, match="'escape'.*not a directory"):
        build_into(lay.root, tmp_path / "out")
    lay.tag(lay.image([GOOD + [E("/abs", "dir"), E("/abs/file", data=b"a"),
                               E("escape", "symlink", link="/../../../../etc")]], config={"Cmd": ["x"]}), "ok")
    build_into(lay.root, tmp_path / "out2", tag="ok", compression="none", init=__file__)
    listing = subprocess.run(["bsdtar", "-tf", str(tmp_path / "out2/initrd.img")], capture_output=True,
                             text=True).stdout.split()
    assert "abs/file" in listing and "escape" in listing


def test_unwritable_output_is_an_output_error(tmp_path):
    lay = Layout(tmp_path / "l")
    lay.tag(lay.image([GOOD]), "t")
    with pytest.raises(OutputError, match="no-such-dir"):
        build.build_file(layout.load(f"{lay.root}:t"), str(tmp_path / "no-such-dir/initrd"), build.BuildOptions())


def test_unknown_tag_lists_the_tags(tmp_path):
    lay = Layout(tmp_path / "l")
    lay.tag(lay.image([GOOD]), "v1")
    lay.tag(lay.image([GOOD, GOOD]), "v2")
    with pytest.raises(UsageError, match="tags: v1, v2"):
        layout.load(f"{lay.root}:v3")


def test_docker_save_archive_builds_the_same_tree(tmp_path):
    need("skopeo")
    lay = Layout(tmp_path / "l")
    lay.tag(lay.image([GOOD, [E("etc/.wh.hostname"), E("etc/motd", data=b"hi")]], config={"Cmd": ["sh"]}), "t")
    archive = tmp_path / "saved.tar"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{lay.root}:t", f"docker-archive:{archive}:example/app:v1"],
                   check=True)
    init = tmp_path / "init"
    init.write_text("#!/bin/sh\n")
    outs = []
    for img in (layout.load(f"{lay.root}:t"), dockerarchive.load(f"{archive}:example/app:v1")):
        out = tmp_path / f"{len(outs)}.cpio"
        build.build_file(img, str(out), build.BuildOptions(compression="none", init=str(init)))
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    with pytest.raises(UsageError, match="example/app:v1"):
        dockerarchive.load(f"{archive}:other:tag")


def test_nul_byte_in_a_name_is_refused(tmp_path):
    import io
    import tarfile
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("etc/passwd")
        info.size, info.pax_headers = 1, {"path": "etc/pa\0sswd"}
        t.addfile(info, io.BytesIO(b"x"))
    lay = Layout(tmp_path / "l")
    layer = lay.blob(raw.getvalue(), "application/vnd.oci.image.layer.v1.tar")
    config = lay.blob(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers",
                                  "diff_ids": [layer["digest"]]}}).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = lay.blob(json.dumps({"schemaVersion": 2, "config": config, "layers": [layer]}).encode(),
                        "application/vnd.oci.image.manifest.v1+json")
    lay.tag(manifest, "t")
    with pytest.raises(InvalidImageError, match="NUL byte"):
        build_into(lay.root, tmp_path / "out", init=__file__)
