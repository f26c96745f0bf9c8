"""Images made by an attacker: values that do not fit the archive, bombs, deep trees, signals, output paths,
full volumes, and image data that must never become shell in /init. Every refusal is an exit code and a
message naming what is wrong; nothing ends in a traceback."""

import json
import os
import re
import resource
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from pathlib import Path

import pytest

from fixtures.images import E, Layout, gnu_sparse, kernel_view, pax_sparse, read_archive, tar
from initramfs_operator import cli

CLI = [sys.executable, "-m", "initramfs_operator.cli"]
UNREACHABLE = "127.0.0.1:9/nothing/here:1"  # a registry nobody serves: reaching it would be exit 3, not 2
GOOD = [E("etc", "dir"), E("etc/hostname", data=b"box\n")]


def image(tmp_path: Path, layers: list[list[E]], config: dict | None = None, compression: str = "gzip",
          name: str = "layout") -> str:
    lay = Layout(tmp_path / name)
    lay.tag(lay.image(layers, config=config or {"Cmd": ["/bin/app"]}, compression=compression), "t")
    return f"oci:{lay.root}:t"


@pytest.fixture
def init_file(tmp_path) -> Path:
    path = tmp_path / "init-file"
    path.write_bytes(b"#!/bin/sh\nexec /bin/app\n")
    return path


def build(capsys, *args: str) -> tuple[int, str]:
    """The CLI in this process: an exception escaping it (a traceback) fails the test."""
    code = cli.main(["build", "-q", *args])
    return code, capsys.readouterr().err


def built(tmp_path: Path, capsys, spec: str, *args: str) -> tuple[dict, str]:
    out = tmp_path / "out.cpio"
    code, err = build(capsys, spec, "-c", "none", "-o", str(out), *args)
    assert code == 0, err
    return kernel_view(read_archive(out.read_bytes()))[0], err


def _file_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = size, 1_600_000_000
    return info.tobuf(tarfile.USTAR_FORMAT)


# -- values that do not fit the newc header, names the kernel cannot create -------------------------------------

REFUSED = {
    "uid over 32 bits": (E("big-uid", data=b"x", uid=1 << 32), "'big-uid'.*uid 4294967296"),
    "negative uid": (E("neg-uid", data=b"x", pax={"uid": "-1"}), "'neg-uid'.*uid -1"),
    "uid -1 as 0xFFFFFFFF": (E("ff-uid", data=b"x", uid=0xFFFFFFFF), "'ff-uid'.*uid 4294967295"),
    "gid over 32 bits": (E("big-gid", "dir", gid=1 << 40), "'big-gid'.*gid 1099511627776"),
    "device major over 12 bits": (E("dev-major", "char", major=4096), "'dev-major'.*device major 4096"),
    "device minor over 20 bits": (E("dev-minor", "block", minor=1 << 20), "'dev-minor'.*device minor 1048576"),
    "pax uid that is not a number": (E("pax-uid", data=b"x", uid=1000, pax={"uid": "root"}),
                                     "'pax-uid'.*pax uid 'root' is not a number"),
    "pax size that is not a number": (E("pax-size", data=b"x", pax={"size": "1e3"}), "pax size '1e3'"),
    "pax mtime NaN": (E("pax-nan", data=b"x", pax={"mtime": "nan"}), "pax mtime 'nan'"),
    # 5 GiB claimed in the header, no data behind it: refused before any read
    "file over the 4 GiB newc limit, at its header": (E("huge", "raw", _file_header("huge", 5 << 30)),
                                                       "'huge'.* over the 4 GiB - 1 limit"),
    "empty symlink target": (E("empty-link", "symlink", link=""), "'empty-link'.*symlink target"),
    "symlink target of PATH_MAX bytes": (E("long-link", "symlink", link="t" * 4096), "'long-link'.*symlink target"),
    "NUL in a symlink target": (E("nul-link", "symlink", pax={"linkpath": "/etc/passwd\0junk"}),
                                "'nul-link'.*symlink target"),
    "the trailer's name": (E("TRAILER!!!", data=b"everything after me is invisible to cpio -t"),
                           "'TRAILER!!!'.*end marker"),
    "a component over NAME_MAX": (E("n" * 256, data=b"x"), "over 255"),
    "a path over PATH_MAX": (E("/".join(["p" * 200] * 21), data=b"x"), "4220 bytes long"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_values_that_do_not_fit_are_refused_naming_entry_and_field(tmp_path, capsys, init_file, case):
    entry, message = REFUSED[case]
    code, err = build(capsys, image(tmp_path, [GOOD + [entry]]), "--init", str(init_file),
                      "-o", str(tmp_path / "out"))
    assert code == 4, err
    assert err.startswith("initramfs-builder: error: layer sha256:")
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists() and os.listdir(tmp_path).count("out") == 0


def test_out_of_range_mtimes_are_clamped_with_a_warning(tmp_path, capsys, init_file):
    spec = image(tmp_path, [GOOD + [E("old", data=b"o", pax={"mtime": "-86400"}),
                                    E("future", data=b"f", pax={"mtime": "1e12"}),
                                    E("fraction", data=b"f", pax={"mtime": "1600000000.75"})]])
    view, err = built(tmp_path, capsys, spec, "--init", str(init_file))
    assert view["old"][4] == 0 and view["future"][4] == 0xFFFFFFFF and view["fraction"][4] == 1_600_000_000
    assert "warning: 2 mtimes outside 1970..2106 were clamped" in err and "/old (-86400)" in err


def test_the_result_says_which_init_the_archive_holds(tmp_path, capsys, init_file):
    own = [E("bin", "dir"), E("bin/sh", data=b"sh", mode=0o755), E("init", data=b"#!/bin/sh\nown\n", mode=0o755)]
    for args, expect, content in (((), "image", b"#!/bin/sh\nown\n"),
                                  (("--init", str(init_file)), "file", init_file.read_bytes())):
        out = tmp_path / f"{expect}.cpio"
        assert cli.main(["build", "-q", "--json", image(tmp_path, [own], name=expect), "-c", "none",
                         "-o", str(out), *args]) == 0
        result = json.loads(capsys.readouterr().out)
        entries = read_archive(out.read_bytes())
        assert result["init"] == expect and result["entries"] == len(entries)
        assert [e.data for e in entries if e.record.name == "init"] == [content]
    # an image whose /init is hardlinked: its data sits on the later name, the result still says "image"
    linked = [E("bin", "dir"), E("bin/sh", data=b"sh", mode=0o755), E("zinit", data=b"#!/bin/sh\n", mode=0o755),
              E("init", "hardlink", link="zinit")]
    assert cli.main(["build", "-q", "--json", image(tmp_path, [linked], name="linked"), "-c", "none",
                     "-o", str(tmp_path / "l.cpio")]) == 0
    assert json.loads(capsys.readouterr().out)["init"] == "image"


# -- resources -------------------------------------------------------------------------------------------------


# The CLI, recording its own peak RSS as it exits. Not the child's ru_maxrss: Linux carries a process's
# maxrss across exec, so a child forked from a big pytest would report pytest's size, not the CLI's.
# VmHWM is the high-water mark of the exec'd image alone.
PEAK_RSS_CLI = """import atexit, runpy, sys
peak_file = sys.argv.pop(1)
def record():
    with open("/proc/self/status") as status, open(peak_file, "w") as out:
        out.write(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
atexit.register(record)
runpy.run_module("initramfs_operator.cli", run_name="__main__", alter_sys=True)
"""


def run_bounded(args: list[str], max_file: int, timeout: float = 60) -> tuple[int, str, float, int]:
    """The CLI in a child that can write no file larger than `max_file` (the kernel enforces it);
    returns exit code, stderr, the child's CPU seconds (user and system: what the input cost it, whatever
    else the machine is doing) and its own peak RSS in MiB."""
    def limits() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file, max_file))

    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as err:
        peak = Path(tmp) / "peak-kib"
        proc = subprocess.Popen([sys.executable, "-c", PEAK_RSS_CLI, str(peak), "build", "-q", *args],
                                stdout=subprocess.DEVNULL, stderr=err, preexec_fn=limits)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        assert peak.exists(), f"the CLI did not exit by itself (code {proc.returncode})"
        return (proc.returncode, err.read().decode(), usage.ru_utime + usage.ru_stime,
                int(peak.read_text()) // 1024)


def gzip_bomb(files: int, size: int) -> bytes:
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    zero = b"\0" * (1 << 20)
    out = []
    for i in range(files):
        out.append(c.compress(_file_header(f"f{i}", size)))
        for _ in range(size >> 20):
            out.append(c.compress(zero))
    out.append(c.compress(b"\0" * 1024) + c.flush())
    return b"".join(out)


def raw_layer_image(tmp_path: Path, blob: bytes, name: str = "bomb") -> str:
    lay = Layout(tmp_path / name)
    layer = lay.blob(blob, "application/vnd.oci.image.layer.v1.tar+gzip" if blob[:2] == b"\x1f\x8b"
                     else "application/vnd.oci.image.layer.v1.tar")
    config = lay.blob(json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/app"]},
                                  "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}).encode(),
                      "application/vnd.oci.image.config.v1+json")
    lay.tag(lay.blob(json.dumps({"schemaVersion": 2, "config": config, "layers": [layer]}).encode(),
                     "application/vnd.oci.image.manifest.v1+json"), "t")
    return f"oci:{lay.root}:t"


CAP = 32 << 20


def test_bombs_are_refused_in_bounded_time_disk_and_memory(tmp_path, init_file):
    sparse_mib = 1 << 30
    bombs = {
        # 512 MiB of zeros in 2.4 MB of gzip, 16 files: refused once the cap is passed, not at the end
        "gzip layer": (gzip_bomb(16, 32 << 20), "decompress to more than the 32 MiB allowed"),
        # 3.5 KB of tar claiming a 1 GiB file: sparse members are refused at their header
        "GNU sparse member": (tar([gnu_sparse("sparse", sparse_mib, [(sparse_mib - 1, b"x")])]),
                              "'sparse' is a sparse file"),
        "pax sparse member": (tar([pax_sparse("sparse", sparse_mib, [(sparse_mib - 1, b"x")])]),
                              "'sparse' is a sparse file"),
        # a 5 GiB member declared with no data behind it
        "over the newc limit": (_file_header("five-gib", 5 << 30), "'five-gib'.*over the 4 GiB - 1 limit"),
        # a pax header claiming 1 GiB: refused before tarfile reads it into memory
        "pax header size": (_pax_header_claiming(1 << 30), "1073741824 bytes of tar header data"),
        # a GNU sparse map of 4 MiB of extension blocks in front of one entry: refused before it is read
        "sparse map": (tar([gnu_sparse("map", 4096, [(0, b"x")], extension_blocks=8192)]),
                       "'map' is a sparse file"),
        # 3000 names for an entry cap of 1000
        "entries": (tar([E(f"e{i}", "dir") for i in range(3000)]), "more than the 1000 entries allowed"),
    }
    for name, (blob, message) in bombs.items():
        spec = raw_layer_image(tmp_path, blob, name.replace(" ", "-"))
        code, err, seconds, rss = run_bounded(
            [spec, "--init", str(init_file), "--max-uncompressed-size", str(CAP), "--max-entries", "1000",
             "--scratch-dir", str(tmp_path), "-o", str(tmp_path / "out")], max_file=CAP + (1 << 20))
        assert code == 4 and re.search(message, err), (name, err)
        assert "Traceback" not in err and seconds < 20, (name, seconds)
        assert rss < 400, (name, rss)
        assert not (tmp_path / "out").exists()


def _pax_header_claiming(size: int) -> bytes:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, size
    return info.tobuf(tarfile.USTAR_FORMAT) + b"\0" * 4096


def test_docker_save_with_a_sparse_2_gib_manifest_costs_nothing(tmp_path):
    archive = tmp_path / "save.tar"
    archive.write_bytes(tar([gnu_sparse("manifest.json", 2 << 30, [((2 << 30) - 1, b"]")])]))
    big = tmp_path / "big.tar"
    big.write_bytes(tar([E("manifest.json", data=b"[" + b" " * (5 << 20) + b"]")]))
    for path, message in ((archive, "sparse member 'manifest.json'"), (big, "manifest.json is 5242882 bytes")):
        code, err, seconds, rss = run_bounded([f"docker-archive:{path}", "-o", str(tmp_path / "out")], max_file=1 << 20)
        assert code == 4 and message in err and seconds < 10 and rss < 200, (err, seconds, rss)


def test_docker_save_pax_records_are_parsed_in_linear_time(tmp_path):
    """The outer tar of a `docker save` is read with Python's tarfile, whose pax regexes backtrack quadratically
    on long digit runs before 3.11.10 (CVE-2024-6232): 512 KiB of them would take hours."""
    body = f" comment={'9' * (512 << 10)}\n"
    record = f"{len(body) + len(str(len(body) + 7))}{body}".encode()
    info = tarfile.TarInfo("manifest.json")
    info.size, info.pax_headers = 2, {"comment": "x"}
    pax = info.tobuf(tarfile.PAX_FORMAT).replace(b"12 comment=x\n", b"")  # the header with no records yet
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, len(record)
    archive = tmp_path / "save.tar"
    archive.write_bytes(header.tobuf(tarfile.USTAR_FORMAT) + record + b"\0" * (-len(record) % 512)
                        + pax[-512:] + b"[]".ljust(512, b"\0") + b"\0" * 1024)
    code, err, seconds, _ = run_bounded([f"docker-archive:{archive}", "-o", str(tmp_path / "out")], max_file=1 << 20)
    assert code == 4 and "digit runs too long" in err and seconds < 10, (err, seconds)


def test_a_large_etc_passwd_is_not_read_for_user(tmp_path, capsys):
    passwd = b"".join(b"user%d:x:%d:%d::/home:/bin/sh\n" % (i, i, i) for i in range(200_000))
    assert len(passwd) > 4 << 20
    spec = image(tmp_path, [[E("bin", "dir"), E("bin/sh", data=b"sh", mode=0o755), E("bin/setpriv", data=b"s"),
                             E("etc", "dir"), E("etc/passwd", data=passwd)]], config={"Cmd": ["/x"], "User": "app"})
    code, err = build(capsys, spec, "-o", str(tmp_path / "out"))
    assert code == 4 and "/etc/passwd is" in err and "over the 4 MiB read to resolve User" in err


def test_a_tree_2000_levels_deep_builds_and_reads_back(tmp_path, capsys, init_file):
    deep = "/".join(["d"] * 2000)
    spec = image(tmp_path, [[E(deep + "/leaf", data=b"bottom")], [E("d/.wh..wh..opq"), E(deep, "dir")]])
    view, _ = built(tmp_path, capsys, spec, "--init", str(init_file), "--exclude", "**/nothing")
    assert view[deep][0] == "dir" and deep + "/leaf" not in view  # the opaque marker emptied it, iteratively
    code, err = build(capsys, image(tmp_path, [[E("/".join(["d"] * 2048) + "x", data=b"")]], name="deeper"),
                      "--init", str(init_file), "-o", str(tmp_path / "o2"))
    assert code == 4 and "4096 bytes long" in err


def test_exclude_runs_in_linear_time_on_hostile_paths(tmp_path, capsys, init_file):
    deep = "/".join(["a"] * 1000)
    spec = image(tmp_path, [[E(deep + "/x", data=b"x"), E("keep", data=b"k")]])
    start = time.process_time()  # CPU seconds: what the patterns cost, however loaded the machine is
    view, _ = built(tmp_path, capsys, spec, "--init", str(init_file),
                    "--exclude", "**a**a**a**a**a**a**a**a**a**a**b", "--exclude", "a/**/a/**/a/**/x*x")
    assert time.process_time() - start < 10  # a backtracking regex needs hours here
    assert "keep" in view and deep + "/x" in view
    view, _ = built(tmp_path, capsys, spec, "--init", str(init_file), "--exclude", "**/a/x")
    assert deep + "/x" not in view and deep in view


# -- command line, output and scratch ----------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--exclude", "[z-a]"], "--exclude '[z-a]': invalid range z-a"),
    (["-o", ""], "the output path is empty"),
    (["-o", "/dev/null"], "/dev/null is a char device, not a regular file"),
    (["-o", "{tmp}"], "is a directory, not a regular file"),
    (["-o", "{tmp}/fifo"], "fifo is a fifo, not a regular file"),
    (["-o", "{tmp}/link"], "link is a symlink, not a regular file"),
    (["--scratch-dir", "{tmp}/missing"], "--scratch-dir {tmp}/missing: no such directory"),
    (["--max-uncompressed-size", "lots"], "--max-uncompressed-size 'lots': expected a size"),
    (["--source-date-epoch", "-1"], "source date epoch -1 is outside"),
    (["--source-date-epoch", str(1 << 32)], "source date epoch 4294967296 is outside"),
])
def test_bad_requests_are_usage_errors_before_any_download(tmp_path, capsys, args, message):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file").write_bytes(b"")
    os.symlink("file", tmp_path / "link")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, err = build(capsys, UNREACHABLE, *args)
    assert code == 2, err
    assert message.replace("{tmp}", str(tmp_path)) in err
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode) and stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_an_unwritable_result_file_is_an_output_error(tmp_path, capsys, init_file):
    code, err = build(capsys, image(tmp_path, [GOOD]), "--init", str(init_file), "-o", str(tmp_path / "out"),
                      "--result-file", str(tmp_path))
    assert code == 5 and f"cannot write the result file {tmp_path}: Is a directory" in err


def test_a_full_scratch_volume_is_an_output_error_naming_it(tmp_path, init_file):
    spec = image(tmp_path, [GOOD + [E("big", data=os.urandom(3 << 20))]])
    code, err, _, _ = run_bounded([spec, "--init", str(init_file), "--scratch-dir", str(tmp_path),
                                   "--memory-budget", "0", "-o", str(tmp_path / "out")], max_file=1 << 20)
    assert code == 5 and f"scratch directory {tmp_path}: File too large" in err, err
    assert not (tmp_path / "out").exists()


def test_a_full_output_volume_is_an_output_error_naming_it(tmp_path, init_file):
    spec = image(tmp_path, [GOOD + [E(f"e{i:05}", data=b"") for i in range(20_000)]])  # no data: a tiny scratch
    out = tmp_path / "out.cpio"
    code, err, _, _ = run_bounded([spec, "--init", str(init_file), "-c", "none", "-o", str(out)], max_file=1 << 20)
    assert code == 5 and f"cannot write {out}: File too large" in err, err
    assert os.listdir(tmp_path).count("out.cpio") == 0 and not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signals_remove_temp_output_and_exit_128_plus_n(tmp_path, init_file, signum):
    lay = Layout(tmp_path / "layout")
    desc = lay.image([GOOD + [E("big", data=os.urandom(1 << 20))]], compression="none")
    lay.tag(desc, "t")
    manifest = json.loads((lay.root / "blobs/sha256" / desc["digest"][7:]).read_bytes())
    blob = lay.root / "blobs/sha256" / manifest["layers"][0]["digest"][7:]
    data = blob.read_bytes()
    blob.unlink()
    os.mkfifo(blob)  # the builder blocks reading the layer until the test writes it
    out_dir, scratch = tmp_path / "out", tmp_path / "scratch"
    out_dir.mkdir()
    scratch.mkdir()
    # The builder keeps a signal ignored if it starts ignored (nohup): start it with the defaults, whatever
    # the test runner inherited (a CI run in the background has SIGINT ignored, under nohup SIGHUP too).
    proc = subprocess.Popen([*CLI, "build", "-q", f"oci:{lay.root}:t", "--init", str(init_file), "--scratch-dir",
                             str(scratch), "-o", str(out_dir / "initrd.img")], stderr=subprocess.PIPE,
                            preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (signum,)])
    with open(blob, "wb") as fifo:
        fifo.write(data[: len(data) // 2])
        fifo.flush()
        deadline = time.monotonic() + 20
        while not os.listdir(out_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p for p in os.listdir(out_dir) if p.endswith(".tmp")], "the temp output never appeared"
        proc.send_signal(signum)
        assert proc.wait(20) == 128 + signum
    assert os.listdir(out_dir) == [] and os.listdir(scratch) == []
    err = proc.stderr.read().decode()
    assert f"interrupted by {signal.Signals(signum).name}" in err and "Traceback" not in err


# -- /init: nothing from the command line or the image reaches it unquoted ---------------------------------------

def test_generated_init_quotes_everything_it_is_given(tmp_path, capsys):
    marker = tmp_path / "pwned"
    payload = f"'; /usr/bin/touch {marker}; '\n/usr/bin/touch {marker}\n$(/usr/bin/touch {marker})`touch {marker}`"
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    log = tmp_path / "log"
    for tool in ("mkdir", "mount", "app"):  # each logs its argv, NUL-separated, one call per \x1e
        (stubs / tool).write_text(f"#!/bin/sh\nprintf '%s\\0' {tool} \"$@\" >> {log}\nprintf '\\036' >> {log}\n"
                                  + (f"/usr/bin/env > {tmp_path / 'env'}\n" if tool == "app" else ""))
        (stubs / tool).chmod(0o755)
    workdir = tmp_path / "work '; touch pwned; '$(touch pwned)\nx"
    workdir.mkdir()
    config = {"Entrypoint": [str(stubs / "app"), payload], "Cmd": ["--flag=" + payload],
              "Env": [f"PATH={stubs}", f"VALUE={payload}", "EVIL\nNAME=x"], "WorkingDir": str(workdir)}
    odd = tmp_path / "dir\n" / "usr" / "bin" / "touch pwned\n"  # a line of shell, if the comment let it through
    odd.mkdir(parents=True)
    spec = image(odd, [[E("bin", "dir"), E("bin/sh", data=b"sh", mode=0o755)]], config=config)
    view, _ = built(tmp_path, capsys, spec)
    script = tmp_path / "init.sh"
    script.write_bytes(view["init"][5])
    assert "dir\\n/usr/bin/touch pwned\\n/layout" in script.read_text().splitlines()[1]  # the comment, escaped
    run = subprocess.run(["sh", str(script)], capture_output=True, text=True, env={}, cwd=tmp_path)
    assert run.returncode == 0 and run.stderr == "" and not marker.exists(), run.stderr
    calls = [call.split("\0")[:-1] for call in log.read_text().split("\x1e")[:-1]]
    assert calls[-1] == ["app", payload, "--flag=" + payload]
    assert {c[0] for c in calls[:-1]} == {"mkdir", "mount"}
    env = (tmp_path / "env").read_text()
    assert f"VALUE={payload}\n" in env and "EVIL" not in env


# -- the operator carries the limits and reports a refusal as what it is ------------------------------------------

def test_the_operator_passes_spec_limits_and_reports_limit_refusals(tmp_path, capsys, init_file):
    import yaml

    from fixtures.tools import REPO
    from initramfs_operator.kube import buildjob
    from initramfs_operator.oci.layer import Limits

    crd = yaml.safe_load((REPO / "crds/initramfsbuilds.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["limits"]
    size, entries = schema["properties"]["maxUncompressedSize"], schema["properties"]["maxEntries"]
    # the CRD's defaults are the CLI's, and every size the CRD admits, the CLI parses
    assert cli._size(size["default"], "x") == Limits().max_uncompressed_size
    assert entries["default"] == Limits().max_entries
    for text in ("16Gi", "1048576", "500M", "2T", "3k", "7Ki"):
        assert re.fullmatch(size["pattern"], text) and cli._size(text, "x") > 0
    spec = {"image": "registry.example/app:1", "output": {"pvc": {"claimName": "c", "path": "a.cpio.gz"}},
            "limits": {"maxUncompressedSize": "64Mi", "maxEntries": 1}}
    args, _, _ = buildjob.builder_arguments(spec, "sha256:" + "a" * 64, [])
    assert args[args.index("--max-uncompressed-size") + 1] == "64Mi" and args[args.index("--max-entries") + 1] == "1"
    # what the build pod writes to its termination log when an image is over its limits, and how it reads back
    result = tmp_path / "termination-log"
    code = cli.main(["build", "-q", image(tmp_path, [GOOD]), "--init", str(init_file), "-o", str(tmp_path / "o"),
                     "--result-file", str(result), *args[args.index("--max-uncompressed-size"):][:4]])
    assert code == 4 and "more than the 1 entries allowed (max-entries)" in capsys.readouterr().err
    verdict = buildjob.outcome({"exitCode": code, "message": result.read_text()}, spec)
    assert verdict.reason == "LimitExceeded" and "max-entries" in verdict.message
    # a full volume is retried by the Job; an invalid image, a bad spec or a registry refusal is not
    job = buildjob.build_job({"metadata": {"name": "b", "namespace": "n", "uid": "u", "generation": 1}, "spec": spec},
                             "sha256:" + "a" * 64, "builder:1")
    fail_codes = job["spec"]["podFailurePolicy"]["rules"][1]["onExitCodes"]["values"]
    assert fail_codes == [2, 3, 4]
