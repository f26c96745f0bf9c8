"""No Docker engine here: check what the Dockerfile relies on, and run its install steps for real."""

import re
import subprocess
import sys
import tomllib
import venv
import zipfile

from fixtures.tools import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()


def test_copy_sources_exist_and_entrypoints_are_console_scripts():
    sources = [s for line in re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE, re.M) for s in line.split()[:-1]]
    assert sources, "no COPY found"
    for s in sources:
        assert (REPO / s).exists(), s
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoint = re.search(r'^ENTRYPOINT \["([^"]+)"', DOCKERFILE, re.M).group(1)
    assert entrypoint in scripts and "initramfs-builder" in scripts
    assert re.search(r"^USER 65532", DOCKERFILE, re.M)


def test_install_steps_in_a_fresh_virtualenv(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(wheels), str(REPO)],
                   check=True)
    [wheel] = wheels.glob("initramfs_operator-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    pip = env_dir / "bin/pip"
    subprocess.run([str(pip), "install", "-q", str(wheel)], check=True)
    for script in ("initramfs-builder", "initramfs-operator"):
        p = subprocess.run([str(env_dir / "bin" / script), "--help"], capture_output=True, text=True)
        assert p.returncode == 0 and "usage" in p.stdout.lower(), (script, p.stdout, p.stderr)
    # the wheel holds the package, not a top-level `operator` that would shadow the stdlib
    names = zipfile.ZipFile(wheel).namelist()
    assert "initramfs_operator/cli.py" in names and not [n for n in names if n.startswith("operator/")]
