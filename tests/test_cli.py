"""The CLI end to end on local image sources (the registry cases live in test_cli_registry.py)."""

import json
import subprocess
import sys

import pytest

from fixtures.boot import boot
from fixtures.images import E, Layout, busybox_entries

CLI = [sys.executable, "-m", "initramfs_operator.cli"]


def run(*args, input=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, input=input, cwd=cwd)


@pytest.fixture
def image(tmp_path) -> str:
    lay = Layout(tmp_path / "layout")
    amd = lay.image([[E("etc", "dir"), E("etc/arch", data=b"amd64"), E("usr", "dir"), E("usr/share", "dir"),
                      E("usr/share/doc", "dir"), E("usr/share/doc/README", data=b"r"), E("a.pyc", data=b"c"),
                      E("lib", "dir"), E("lib/x.pyc", data=b"c"), E("bin", "dir"),
                      E("bin/sh", data=b"#!", mode=0o755)]],
                    config={"Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Env": ["PATH=/bin", "MODE=prod"],
                            "WorkingDir": "/srv", "User": "0"})
    arm = lay.image([[E("etc", "dir"), E("etc/arch", data=b"arm64")]], config={"Cmd": ["/bin/sh"]},
                    platform=("linux", "arm64", "v8"))
    lay.tag(lay.index([amd, arm]), "multi")
    return f"oci:{lay.root}:multi"


def test_build_json_result_and_files(image, tmp_path):
    out = tmp_path / "initrd.img"
    p = run("build", image, "-o", out, "--json", "-c", "zstd", "--level", "5", "--exclude", "/usr/share/doc",
            "--exclude", "**/*.pyc", "--source-date-epoch", "0")
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    data = out.read_bytes()
    import hashlib
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    assert result["sha512"] == hashlib.sha512(data).hexdigest()
    assert result["size"] == len(data) and result["output"] == str(out)
    assert result["platform"] == "linux/amd64" and result["compression"] == "zstd" and result["init"] == "generated"
    assert result["imageDigest"].startswith("sha256:")
    listing = subprocess.run(["bsdtar", "-tf", str(out)], capture_output=True, text=True).stdout.split()
    assert "usr/share" in listing and "usr/share/doc" not in listing and "usr/share/doc/README" not in listing
    assert not [n for n in listing if n.endswith(".pyc")]
    assert result["entries"] == len(listing)


def test_original_tool_flags_and_platforms(image, tmp_path):
    for args, arch in ((["--platform-os", "linux", "--platform-arch", "arm64"], b"arm64"),
                       (["--platform", "linux/arm64/v8"], b"arm64"), ([], b"amd64")):
        out = tmp_path / "x.cpio"
        p = run("build", image, "-o", out, "-c", "none", "--init", __file__, *args)
        assert p.returncode == 0, p.stderr
        extracted = subprocess.run(["bsdtar", "-xOf", str(out), "etc/arch"], capture_output=True).stdout
        assert extracted == arch
    p = run("build", image, "-o", tmp_path / "y", "--platform", "linux/s390x")
    assert p.returncode == 4 and "linux/amd64, linux/arm64" in p.stderr and "Traceback" not in p.stderr


def test_single_platform_image_must_match(tmp_path):
    lay = Layout(tmp_path / "l")
    lay.tag(lay.image([[E("etc", "dir")]], platform=("linux", "arm64", "")), "arm")
    p = run("build", f"oci:{lay.root}:arm", "-o", tmp_path / "x", "--init", __file__)
    assert p.returncode == 4 and "for linux/arm64, not linux/amd64" in p.stderr
    p = run("build", f"oci:{lay.root}:arm", "-o", tmp_path / "x", "--init", __file__, "--platform", "linux/arm64")
    assert p.returncode == 0, p.stderr


def test_inject_modes_and_escapes(image, tmp_path):
    weird = tmp_path / "a:b.conf"
    weird.write_text("weird\n")
    plain = tmp_path / "plain"
    plain.write_text("plain\n")
    out = tmp_path / "i.cpio"
    p = run("build", image, "-o", out, "-c", "none", "--inject", f"{plain}:/etc/app/plain.conf:0600",
            "--inject", f"{weird}=/etc/weird", "--inject", str(weird).replace(":", "\\:") + ":/etc/weird2:0755",
            "--init", __file__)
    assert p.returncode == 0, p.stderr
    listing = subprocess.run(["bsdtar", "-tvf", str(out)], capture_output=True, text=True).stdout
    assert "-rw-------" in next(line for line in listing.splitlines() if line.endswith("etc/app/plain.conf"))
    assert "-rwxr-xr-x" in next(line for line in listing.splitlines() if line.endswith("etc/weird2"))
    assert "etc/weird" in listing


def test_inject_never_follows_image_symlinks_or_leaves_the_root(tmp_path):
    lay = Layout(tmp_path / "l")
    lay.tag(lay.image([[E("usr", "dir"), E("usr/lib", "dir"), E("lib", "symlink", link="/usr/lib"),
                        E("etc", "symlink", link="../../../host-etc")]]), "t")
    src = tmp_path / "f"
    src.write_text("x")
    for dest, message in (("/lib/modules.conf", "/lib is not a directory"), ("/etc/passwd", "/etc is not a directory"),
                          ("../../outside", "escape the root")):
        p = run("build", f"oci:{lay.root}:t", "-o", tmp_path / "o", "--init", __file__, "--inject", f"{src}:{dest}")
        assert p.returncode == 2 and message in p.stderr, p.stderr
    assert not (tmp_path / "o").exists()
    p = run("build", f"oci:{lay.root}:t", "-o", tmp_path / "o", "--init", __file__, "-c", "none",
            "--inject", f"{src}:/usr/lib/modules.conf")
    assert p.returncode == 0 and "usr/lib/modules.conf" in subprocess.run(
        ["bsdtar", "-tf", str(tmp_path / "o")], capture_output=True, text=True).stdout


def test_inspect_and_list_layers(image):
    p = run("inspect", image, "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["platforms"] == ["linux/amd64", "linux/arm64"] and info["indexDigest"].startswith("sha256:")
    assert info["config"] == {"Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Env": ["PATH=/bin", "MODE=prod"],
                              "WorkingDir": "/srv", "User": "0"}
    assert info["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    text = run("inspect", image, "--platform", "linux/arm64").stdout
    assert "linux/arm64" in text and "Cmd:" in text and '["/bin/sh"]' in text
    layers = run("list-layers", image)
    assert layers.returncode == 0 and info["layers"][0]["digest"] in layers.stdout


@pytest.mark.parametrize("args, code, message", [
    (["build", "oci:/nonexistent", "-o", "x"], 2, "not an OCI image layout"),
    (["build", "Not A Ref!", "-o", "x"], 2, "invalid image reference"),
    (["build", "IMAGE", "-o", "/nonexistent/dir/x", "--init", __file__], 5, "/nonexistent/dir"),
    (["build", "IMAGE", "-c", "gzip", "--level", "42"], 2, "out of range"),
    (["build", "IMAGE", "-c", "lz4", "--level", "13"], 2, "lz4 level 13 is out of range 1..12"),
    (["build", "IMAGE", "-c", "xz", "--level", "10"], 2, "xz level 10 is out of range 0..9"),
    (["build", "IMAGE", "--inject", "nope"], 2, "SRC:DEST"),
    (["build", "IMAGE", "--username", "u"], 2, "--password-stdin"),
    # refused before the image is fetched: nothing listens on 127.0.0.1:9 (that would be exit 3)
    (["build", "127.0.0.1:9/absent:1", "--push", "127.0.0.1:9/out@sha256:" + "0" * 64], 2, "push to a tag"),
])
def test_errors_have_exit_codes_and_no_traceback(image, tmp_path, args, code, message):
    work = tmp_path / "work"
    work.mkdir()
    p = run(*[image if a == "IMAGE" else a for a in args], cwd=work)
    assert p.returncode == code, p.stderr
    assert message in p.stderr and "Traceback" not in p.stderr
    assert list(work.iterdir()) == []


def test_create_dirs(image, tmp_path):
    out = tmp_path / "a/b/initrd.img"
    assert run("build", image, "-o", out, "--init", __file__).returncode == 5 and not (tmp_path / "a").exists()
    p = run("build", image, "-o", out, "--init", __file__, "--create-dirs")
    assert p.returncode == 0, p.stderr
    assert out.is_file()


def test_result_file_on_failure(tmp_path):
    p = run("build", "oci:/nonexistent", "--result-file", tmp_path / "r.json")
    assert p.returncode == 2
    assert json.loads((tmp_path / "r.json").read_text())["reason"] == "InvalidSpec"


def test_image_without_shell_or_init_says_what_to_do(tmp_path):
    lay = Layout(tmp_path / "l")
    lay.tag(lay.image([[E("app", data=b"\x7fELF", mode=0o755)]], config={"Entrypoint": ["/app"]}), "t")
    p = run("build", f"oci:{lay.root}:t", "-o", tmp_path / "o")
    assert p.returncode == 2 and "no /bin/sh" in p.stderr and "--init FILE" in p.stderr


def test_generated_init_boots_with_env_workdir_and_user(kernel, busybox_static, tmp_path):
    """Entrypoint/Cmd print the environment, working directory and uid; the console must show them."""
    passwd = E("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\napp:x:1234:2345:App:/home/app:/bin/sh\n")
    lay = Layout(tmp_path / "l")
    script = "echo MARK-ENV=$GREETING; echo MARK-PWD=$(pwd); echo MARK-UID=$(id -u):$(id -g); " \
             "echo MARK-HOME=$HOME; echo MARK-DONE"
    lay.tag(lay.image([busybox_entries(busybox_static, None, [passwd, E("srv", "dir"), E("srv/app", "dir")])],
                      config={"Entrypoint": ["/bin/sh", "-c"], "Cmd": [script],
                              "Env": ["PATH=/bin:/usr/bin", "GREETING=hello from the image config"],
                              "WorkingDir": "/srv/app", "User": "app"}), "t")
    out = tmp_path / "initrd.gz"
    p = run("build", f"oci:{lay.root}:t", "-o", out)
    assert p.returncode == 0, p.stderr
    console = boot(kernel, out, "MARK-DONE")
    assert "MARK-ENV=hello from the image config" in console
    assert "MARK-PWD=/srv/app" in console
    assert "MARK-UID=1234:2345" in console
    assert "MARK-HOME=/home/app" in console


def test_remove_files_without_leaving_the_root(tmp_path):
    root, outside = tmp_path / "volume", tmp_path / "outside"
    (root / "images").mkdir(parents=True)
    outside.mkdir()
    (outside / "keep").write_bytes(b"k")
    (root / "images" / "old.cpio.gz").write_bytes(b"o")
    (root / "escape").symlink_to(outside)
    (root / "link.cpio").symlink_to(outside / "keep")

    refused = run("remove", "--root", root, "images/old.cpio.gz", "../outside/keep")
    assert refused.returncode == 2 and "not a relative path" in refused.stderr
    assert (root / "images" / "old.cpio.gz").exists()  # nothing is removed when one path is refused

    p = run("remove", "--root", root, "--json", "images/old.cpio.gz", "images/gone", "link.cpio")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"removed": ["images/old.cpio.gz", "link.cpio"], "missing": ["images/gone"]}
    assert not (root / "images" / "old.cpio.gz").exists() and not (root / "link.cpio").is_symlink()
    assert (outside / "keep").read_bytes() == b"k"  # a symlink is removed, never its target

    through = run("remove", "--root", root, "escape/keep")
    assert through.returncode == 5 and "Traceback" not in through.stderr
    assert (outside / "keep").exists()
