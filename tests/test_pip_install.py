"""`pip install initramfs-operator` gives a working CLI without Kubernetes: the built wheel, installed
without the [operator] extra into a fresh virtualenv, builds an initramfs from a local OCI layout."""

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fixtures.images import E, Layout
from fixtures.tools import REPO, need

# What the wheel's build and the venv need, downloaded from PyPI once and used from here afterwards (no index).
WHEELS = Path(os.environ.get("INITRAMFS_TOOLS_CACHE", Path.home() / ".cache/initramfs-operator")) / "wheels"
FROM_CACHE = ["--no-index", "--find-links", str(WHEELS)]
OPERATOR_EXTRA = ("kopf", "kubernetes", "prometheus_client", "yaml")
# The venv's programs see the installed wheel only, not a checkout that PYTHONPATH may name.
VENV_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _pip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], check=check, capture_output=not check)


def _with_cache(*args: str) -> None:
    """Runs pip from the wheel cache; on the first run (or when the requirements changed) fills it first."""
    if _pip(*args, *FROM_CACHE, check=False).returncode != 0:
        pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
        _pip("download", "-q", "--dest", str(WHEELS),
             *pyproject["build-system"]["requires"], *pyproject["project"]["dependencies"])
        _pip(*args, *FROM_CACHE)


@pytest.fixture(scope="module")
def venv_bin(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("install")
    # from a copy of what the Dockerfile copies, so the build leaves nothing in the checkout
    src = work / "src"
    shutil.copytree(REPO / "operator", src / "operator", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    _with_cache("wheel", "-q", "--no-deps", "--wheel-dir", str(work / "dist"), str(src))
    [wheel] = (work / "dist").glob("initramfs_operator-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(work / "venv")], check=True)
    _with_cache("--python", str(work / "venv/bin/python"), "install", "-q", str(wheel))
    return work / "venv/bin"


def test_the_operator_libraries_are_not_installed(venv_bin):
    probe = ("import importlib.util, json, initramfs_operator; print(json.dumps([initramfs_operator.__file__, "
             f"[m for m in {OPERATOR_EXTRA!r} if importlib.util.find_spec(m)]]))")
    where, present = json.loads(subprocess.run([str(venv_bin / "python"), "-c", probe], check=True,
                                               capture_output=True, text=True, cwd="/", env=VENV_ENV).stdout)
    assert where.startswith(str(venv_bin.parent)) and present == []


def test_the_cli_builds_a_local_layout(venv_bin, tmp_path):
    need("bsdtar")
    lay = Layout(tmp_path / "layout")
    lay.tag(lay.image([[E("bin", "dir"), E("bin/sh", data=b"#!", mode=0o755), E("etc", "dir"),
                        E("etc/hostname", data=b"installed\n")]], config={"Cmd": ["/bin/sh"]}, compression="zstd"),
            "v1")
    args = ["build", f"oci:{lay.root}:v1", "--source-date-epoch", "0", "--json", "-o"]
    installed = subprocess.run([str(venv_bin / "initramfs-builder"), *args, str(tmp_path / "installed.cpio.gz")],
                               capture_output=True, text=True, cwd=tmp_path, env=VENV_ENV)
    assert installed.returncode == 0, installed.stderr
    result = json.loads(installed.stdout)
    assert (result["compression"], result["init"]) == ("gzip", "generated")
    archive = tmp_path / "installed.cpio.gz"
    hostname = subprocess.run(["bsdtar", "-xOf", str(archive), "etc/hostname"], capture_output=True, check=True)
    assert hostname.stdout == b"installed\n"
    # the same engine as the source tree: the same bytes
    subprocess.run([sys.executable, "-m", "initramfs_operator.cli", *args, str(tmp_path / "tree.cpio.gz")],
                   check=True, capture_output=True)
    assert archive.read_bytes() == (tmp_path / "tree.cpio.gz").read_bytes()


@pytest.mark.parametrize("command", ["initramfs-operator", "initramfs-delivery-agent"])
@pytest.mark.parametrize("args", [[], ["--help"]])
def test_the_operator_names_the_extra_it_needs(venv_bin, command, args):
    p = subprocess.run([str(venv_bin / command), *args], capture_output=True, text=True, env=VENV_ENV)
    assert p.returncode == 1 and p.stdout == "", (p.stdout, p.stderr)
    assert "pip install 'initramfs-operator[operator]'" in p.stderr and "Traceback" not in p.stderr, p.stderr
