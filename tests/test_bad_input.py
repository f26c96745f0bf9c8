"""Bad images get a clear error that names what is wrong, and leave nothing behind."""

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.images import E, Layout, tar
from fixtures.tools import need
from initramfs_operator import build, cli
from initramfs_operator.errors import InvalidImageError, OutputError, UsageError
from initramfs_operator.oci import dockerarchive, layout

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


@pytest.mark.parametrize("field, value", [("platform", "linux/amd64"), ("annotations", ["a"])])
def test_an_index_entry_whose_platform_or_annotations_is_not_an_object(tmp_path, field, value):
    lay = Layout(tmp_path / "l")
    lay.tag(lay.index([{**lay.image([GOOD]), field: value}]), "t")
    with pytest.raises(InvalidImageError, match="index entry: platform and annotations must be JSON objects"):
        layout.load(f"{lay.root}:t")


# -- a corpus of malformed documents: each is exit 2 or 4 with the field named, never a traceback ----------------

LAYER = [E("bin", "dir"), E("bin/sh", data=b"sh", mode=0o755), E("bin/setpriv", data=b"p", mode=0o755)]


def _json(value) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def _with_index(lay: Layout, index) -> str:
    (lay.root / "index.json").write_bytes(_json(index))
    return f"oci:{lay.root}"


def _valid_parts(lay: Layout, config: dict | None = None) -> tuple[dict, dict]:
    layer, diff_id = lay.layer(LAYER)
    cfg = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/app"]},
           "rootfs": {"type": "layers", "diff_ids": [diff_id]}, **(config or {})}
    return lay.blob(_json(cfg), "application/vnd.oci.image.config.v1+json"), layer


def _with_manifest(lay: Layout, manifest) -> str:
    desc = lay.blob(_json(manifest), "application/vnd.oci.image.manifest.v1+json")
    lay.tag(desc, "t")
    return f"oci:{lay.root}:t"


def _with_config(lay: Layout, config) -> str:
    config_desc, layer = _valid_parts(lay)
    config_desc = lay.blob(_json(config), "application/vnd.oci.image.config.v1+json")
    return _with_manifest(lay, {"schemaVersion": 2, "config": config_desc, "layers": [layer]})


def _config_fields(lay: Layout, **fields) -> str:
    config_desc, layer = _valid_parts(lay)
    cfg = json.loads((lay.root / "blobs/sha256" / config_desc["digest"][7:]).read_bytes())
    for key, value in fields.items():
        if key in ("os", "architecture", "rootfs"):
            cfg[key] = value
        else:
            cfg["config"][key] = value
    return _with_config(lay, cfg)


def _entry(lay: Layout, **override) -> str:
    config_desc, layer = _valid_parts(lay)
    manifest = lay.blob(_json({"schemaVersion": 2, "config": config_desc, "layers": [layer]}),
                        "application/vnd.oci.image.manifest.v1+json")
    return _with_index(lay, {"schemaVersion": 2, "manifests": [{**manifest, **override}]})


def _docker(tmp_path: Path, manifest, members: dict[str, bytes] | None = None) -> str:
    path = tmp_path / "save.tar"
    path.write_bytes(tar([E("manifest.json", data=_json(manifest))]
                         + [E(name, data=data) for name, data in (members or {}).items()]))
    return f"docker-archive:{path}"


def _passwd(lay: Layout, passwd: bytes, user: str, group: bytes = b"") -> str:
    layer, diff_id = lay.layer(LAYER + [E("etc", "dir"), E("etc/passwd", data=passwd), E("etc/group", data=group)])
    cfg = lay.blob(_json({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/app"], "User": user},
                          "rootfs": {"type": "layers", "diff_ids": [diff_id]}}),
                   "application/vnd.oci.image.config.v1+json")
    return _with_manifest(lay, {"schemaVersion": 2, "config": cfg, "layers": [layer]})


DIGEST = "sha256:" + "a" * 64
CORPUS = {
    # index.json
    "index not JSON": (lambda lay, tmp: _with_index(lay, b"{nope"), 4, "index.json: not valid JSON"),
    "index a list": (lambda lay, tmp: _with_index(lay, [1]), 4, "index.json: not a JSON object"),
    "index nested 100000 deep": (lambda lay, tmp: _with_index(lay, b"[" * 100_000 + b"]" * 100_000), 4,
                                 "nested too deeply"),
    "index over 4 MiB": (lambda lay, tmp: _with_index(lay, {"pad": "x" * (5 << 20)}), 4, "over the 4 MiB"),
    "index manifests an object": (lambda lay, tmp: _with_index(lay, {"manifests": {"a": 1}}), 4,
                                  "manifests must be a list"),
    "index entry a string": (lambda lay, tmp: _with_index(lay, {"manifests": ["sha256:x"]}), 4,
                             "descriptor must be a JSON object"),
    "index entry size a string": (lambda lay, tmp: _entry(lay, size="12"), 4, "invalid size 12"),
    "index entry size true": (lambda lay, tmp: _entry(lay, size=True), 4, "invalid size True"),
    "index entry size 2^64": (lambda lay, tmp: _entry(lay, size=1 << 64), 4, "invalid size 18446744073709551616"),
    "index entry size -1": (lambda lay, tmp: _entry(lay, size=-1), 4, "invalid size -1"),
    "index entry digest a number": (lambda lay, tmp: _entry(lay, digest=12), 4, "index.json: missing or malformed"),
    "index entry digest md5": (lambda lay, tmp: _entry(lay, digest="md5:" + "a" * 32), 4, "malformed digest"),
    "index entry mediaType a number": (lambda lay, tmp: _entry(lay, mediaType=5), 4, "mediaType"),
    "index entry annotation a number": (lambda lay, tmp: _entry(
        lay, annotations={"org.opencontainers.image.ref.name": 5}), 4, "annotation values"),
    "index entry platform os a number": (lambda lay, tmp: _entry(lay, platform={"os": 1}), 4, "platform os"),
    "index.json a directory": (lambda lay, tmp: (lay.root / "index.json").unlink() or (lay.root / "index.json").mkdir()
                               or f"oci:{lay.root}", 2, "cannot read"),
    # manifests
    "manifest descriptor of 10 GiB": (lambda lay, tmp: _entry(lay, size=10 << 30), 4, "over the 4 MiB"),
    "manifest config a string": (lambda lay, tmp: _with_manifest(lay, {"config": DIGEST, "layers": []}), 4,
                                 "manifest has no config or layers"),
    "manifest layers an object": (lambda lay, tmp: _with_manifest(
        lay, {"config": _valid_parts(lay)[0], "layers": {"a": 1}}), 4, "manifest has no config or layers"),
    "manifest layer size -1": (lambda lay, tmp: _with_manifest(
        lay, {"config": _valid_parts(lay)[0], "layers": [{**_valid_parts(lay)[1], "size": -1}]}), 4,
                               "layer: invalid size -1"),
    "manifest mediaType a number": (lambda lay, tmp: _with_manifest(lay, {"mediaType": 7, "layers": []}), 4,
                                    "unsupported manifest media type 7"),
    "manifest config descriptor of 100 MiB": (lambda lay, tmp: _with_manifest(
        lay, {"config": {**_valid_parts(lay)[0], "size": 100 << 20}, "layers": []}), 4, "over the 4 MiB"),
    "an index listing itself": (lambda lay, tmp: _self_index(lay), 4, "nested too deeply"),
    # configs
    "config not JSON": (lambda lay, tmp: _with_config(lay, b"\xff\xfe"), 4, "config sha256:[0-9a-f]+: not valid JSON"),
    "config a list": (lambda lay, tmp: _with_config(lay, [1, 2]), 4, "not a JSON object"),
    "config Entrypoint a string": (lambda lay, tmp: _config_fields(lay, Entrypoint="sh -c x"), 4,
                                   "Entrypoint must be a list of strings"),
    "config Env numbers": (lambda lay, tmp: _config_fields(lay, Env=[1, 2]), 4, "Env must be a list of strings"),
    "config User a number": (lambda lay, tmp: _config_fields(lay, User=1000), 4, "User must be a string, not int"),
    "config WorkingDir an object": (lambda lay, tmp: _config_fields(lay, WorkingDir={"a": 1}), 4, "WorkingDir must"),
    "config os a number": (lambda lay, tmp: _config_fields(lay, os=5), 4, "os must be a string"),
    "config rootfs a string": (lambda lay, tmp: _config_fields(lay, rootfs="layers"), 4, "rootfs must be JSON"),
    "config diff_ids a string": (lambda lay, tmp: _config_fields(lay, rootfs={"diff_ids": DIGEST}), 4,
                                 "diff_ids must be a list of strings"),
    # docker save archives
    "docker manifest not JSON": (lambda lay, tmp: _docker(tmp, b"[{"), 4, "manifest.json is not valid JSON"),
    "docker manifest an object": (lambda lay, tmp: _docker(tmp, {"Config": "c"}), 4, "manifest.json lists no images"),
    "docker manifest of numbers": (lambda lay, tmp: _docker(tmp, [1]), 4, "manifest.json lists no images"),
    "docker Layers a string": (lambda lay, tmp: _docker(tmp, [{"Config": "c.json", "Layers": "l.tar"}]), 4,
                               "needs Config .* and Layers"),
    "docker Config a number": (lambda lay, tmp: _docker(tmp, [{"Config": 1, "Layers": []}]), 4, "needs Config"),
    "docker config of the wrong shape": (lambda lay, tmp: _docker(
        tmp, [{"Config": "c.json", "Layers": []}], {"c.json": b'{"config": "x"}'}), 4, "config and rootfs must be"),
    "docker RepoTags a number": (lambda lay, tmp: _docker(tmp, [{"Config": "c", "Layers": [], "RepoTags": 5}]) + ":a:b",
                                 2, "no image tagged 'a:b'"),
    "docker manifest nested deep": (lambda lay, tmp: _docker(tmp, b"[" * 100_000), 4, "nested too deeply"),
    "docker archive a directory": (lambda lay, tmp: f"docker-archive:{tmp}", 2, "cannot read it"),
    "docker archive not a tar": (lambda lay, tmp: _not_a_tar(tmp), 4, "not a docker save archive"),
    # /etc/passwd and /etc/group, read to resolve User
    "passwd uid not a number": (lambda lay, tmp: _passwd(lay, b"root:x:0:0::/root:/bin/sh\napp:x:abc:1::/:/bin/sh\n",
                                                         "app"), 4, "/etc/passwd line 2: uid 'abc'"),
    "passwd gid -1": (lambda lay, tmp: _passwd(lay, b"app:x:5:-1::/:/bin/sh\n", "app"), 4, "line 1: gid '-1'"),
    "passwd uid 2^32": (lambda lay, tmp: _passwd(lay, b"app:x:4294967296:1::/:/bin/sh\n", "app"), 4,
                        "uid '4294967296' is not a number in 0..4294967294"),
    "group gid not a number": (lambda lay, tmp: _passwd(lay, b"app:x:5:5::/:/bin/sh\n", "app:staff",
                                                        b"staff:x:zz:\n"), 4, "/etc/group line 1: gid 'zz'"),
    "numeric User over 32 bits": (lambda lay, tmp: _passwd(lay, b"", "99999999999"), 4, "User uid '99999999999'"),
    "passwd over 4 MiB": (lambda lay, tmp: _passwd(lay, b"#" * (5 << 20), "app"), 4, "over the 4 MiB read"),
}


def _not_a_tar(tmp: Path) -> str:
    (tmp / "x.tar").write_bytes(b"x" * 5000)
    return f"docker-archive:{tmp}/x.tar"


def _self_index(lay: Layout) -> str:
    # an index naming an index naming ... itself is impossible by digest; 9 levels of nesting is the same attack
    desc = lay.image([LAYER])
    for _ in range(9):
        desc = {**lay.index([desc]), "platform": {"os": "linux", "architecture": "amd64"}}
    lay.tag(desc, "t")
    return f"oci:{lay.root}:t"


@pytest.mark.parametrize("case", CORPUS)
def test_malformed_documents_are_clean_errors(tmp_path, capsys, case):
    make, code, message = CORPUS[case]
    spec = make(Layout(tmp_path / "l"), tmp_path)
    init = tmp_path / "init"
    init.write_text("#!/bin/sh\n")
    args = ["build", "-q", spec, "-o", str(tmp_path / "out")]
    if "passwd" not in case and "User" not in case and "group" not in case:
        args += ["--init", str(init)]
    assert cli.main(args) == code
    err = capsys.readouterr().err
    assert err.startswith("initramfs-builder: error: ") and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def limit_file_size(limit: int):
    """For a child process: files may not grow past `limit` bytes, and a write that would is refused with
    EFBIG (SIGXFSZ ignored): a disk that fills up while the output is written."""
    def apply() -> None:
        import resource
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_output_that_cannot_be_written_is_an_output_error_and_leaves_no_file(tmp_path, compression):
    """The compressed bytes are written on a thread of their own: its failure still ends the build with
    the output error (exit 5), a message naming the file, no traceback, and no file left behind."""
    lay = Layout(tmp_path / "l")
    incompressible = random.Random(0).randbytes(4 << 20)
    lay.tag(lay.image([[E("init", data=incompressible, mode=0o755)]]), "t")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # The contents stay in memory (--memory-budget), so only the output meets the limit.
    proc = subprocess.run([sys.executable, "-m", "initramfs_operator.cli", "build", "-q", f"oci:{lay.root}:t",
                           "-c", compression, "--memory-budget", "64MiB", "-o", str(out_dir / "initrd.img")],
                          capture_output=True, text=True, preexec_fn=limit_file_size(64 << 10))
    assert proc.returncode == OutputError.exit_code, proc.stderr
    assert "initrd.img" in proc.stderr and "File too large" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(out_dir.iterdir()) == []
