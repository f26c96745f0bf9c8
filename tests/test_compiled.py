"""The engine compiled by mypyc writes the bytes the pure-Python reference writes, and refuses what it
refuses with the same words: the corpus is built by the CLI twice, in processes whose PYTHONPATH names
the checkout's sources or the compiled build (fixtures.compiled), side by side."""

import runpy
import subprocess
import sys
import tarfile

import pytest

from fixtures.compiled import compiled_engine
from fixtures.images import E, Layout
from fixtures.tools import REPO, need
from test_reproducible import image as layer_rules_image

COMPILED = runpy.run_path(str(REPO / "setup.py"))["COMPILED"]
MODULES = [f"initramfs_operator.{path.removesuffix('.py').replace('/', '.')}" for path in COMPILED]


@pytest.fixture(scope="module")
def engines() -> dict[str, str]:
    need("cc")  # mypyc's C compiler
    return {"pure": str(REPO / "operator"), "compiled": str(compiled_engine())}


def _run(engine: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "initramfs_operator.cli", *args], capture_output=True, text=True,
                          env={"PYTHONPATH": engine, "PATH": "/usr/bin:/bin"}, timeout=120)


def test_each_engine_runs_what_it_is_named_for(engines):
    probe = f"import importlib; print(*(importlib.import_module(m).__file__ for m in {MODULES!r}))"
    files = {name: subprocess.run([sys.executable, "-c", probe], env={"PYTHONPATH": path}, check=True,
                                  capture_output=True, text=True).stdout.split()
             for name, path in engines.items()}
    assert all(f.startswith(engines["pure"]) and f.endswith(".py") for f in files["pure"]), files["pure"]
    assert all(f.startswith(engines["compiled"]) and f.endswith(".so") for f in files["compiled"]), files["compiled"]


def shapes_image(tmp_path) -> str:
    """Every kind of entry and header the reader and the writer tell apart."""
    long_dir = "usr/share/" + "d" * 120
    layer = [
        E("dev", "dir"), E("dev/null", "char", major=1, minor=3, mode=0o666), E("dev/sda", "block", major=8),
        E("run", "dir"), E("run/fifo", "fifo"), E("bin", "dir", mtime=5_000_000_000),  # clamped to 2106
        E("bin/su", data=b"\x7fELF", mode=0o4755, uid=0, gid=0), E("bin/sh", "symlink", link="/bin/su"),
        E("usr", "dir"), E("usr/share", "dir"), E(long_dir, "dir"),  # a pax path record
        E(f"{long_dir}/{'f' * 90}", data=b"long\n", uid=70_000, gid=70_000),
        E("usr/share/gnu-" + "g" * 110, data=b"gnu\n", format=tarfile.GNU_FORMAT),  # a GNU long name
        E("etc", "dir"), E("etc/caf\udce9", data=b"latin-1 name\n"),  # not UTF-8: kept as bytes
        E("etc/old", data=b"negative", pax={"mtime": "-86400.5"}),
        E("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"), E("etc/passwd-", "hardlink", link="etc/passwd"),
        E("opt", "dir"), *(E(f"opt/d{i}/f{i}", data=b"%d\n" % i) for i in range(50)),  # implicit parents
    ]
    lay = Layout(tmp_path / "shapes")
    lay.tag(lay.image([layer], config={"Entrypoint": ["/bin/sh"], "Env": ["A=b"]}, compression="zstd"), "t")
    return f"{lay.root}:t"


def hostile_image(tmp_path, entries: list[E]) -> str:
    lay = Layout(tmp_path / "hostile")
    lay.tag(lay.image([[E("etc", "dir"), *entries]]), "t")
    return f"{lay.root}:t"


CORPUS = {  # name: (image, extra CLI arguments)
    "layer rules": (layer_rules_image, []),
    "entry shapes": (shapes_image, []),
    "excluded": (shapes_image, ["--exclude", "opt/d1*", "--exclude", "**/gnu-*", "--exclude", "/run"]),
}


@pytest.mark.parametrize("compression", ["none", "zstd"])
@pytest.mark.parametrize("corpus", list(CORPUS))
def test_the_compiled_engine_writes_the_same_bytes(engines, tmp_path, corpus, compression):
    make, extra = CORPUS[corpus]
    spec = make(tmp_path)
    outputs = {}
    for name, engine in engines.items():
        out = tmp_path / f"{name}.img"
        done = _run(engine, "build", f"oci:{spec}", "-o", str(out), "-c", compression, "-q",
                    "--source-date-epoch", "1700000000", *extra)
        assert done.returncode == 0, done.stderr
        outputs[name] = (out.read_bytes(), done.stderr)
    assert outputs["compiled"] == outputs["pure"]


HOSTILE = {
    "escaping path": [E("etc/../../x", data=b"x")],
    "bad checksum": [E("raw", "raw", data=tarfile.TarInfo("x").tobuf()[:148] + b"0000001\0"
                       + tarfile.TarInfo("x").tobuf()[156:])],
    "pax size not a number": [E("etc/a", data=b"a", pax={"size": "1e3"})],
    "uid that does not fit": [E("etc/a", data=b"a", pax={"uid": str(1 << 32)})],
    "hardlink to a directory": [E("etc/l", "hardlink", link="etc")],
    "symlink parent": [E("lib", "symlink", link="etc"), E("lib/x", data=b"x")],
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_the_compiled_engine_refuses_the_same_way(engines, tmp_path, case):
    spec = hostile_image(tmp_path, HOSTILE[case])
    out = tmp_path / "initramfs.img"
    results = {name: _run(engine, "build", f"oci:{spec}", "-o", str(out), "-q") for name, engine in engines.items()}
    assert results["pure"].returncode not in (0, 1) and "Traceback" not in results["pure"].stderr, results["pure"]
    assert (results["compiled"].returncode, results["compiled"].stderr) == (results["pure"].returncode,
                                                                            results["pure"].stderr)
    assert not out.exists()
