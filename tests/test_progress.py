"""What a person sees of a build at a terminal: the CLI run on a pseudo-terminal against a real registry
(through the fault proxy, which can send a layer at a network's pace), its screen read back line by line."""

import fcntl
import json
import os
import pty
import random
import re
import struct
import subprocess
import termios

from fixtures.images import E, Layout
from fixtures.registry import unique_repo
from test_cli import CLI, run

LAYER_RATE = 2e6  # bytes/s the big layer is sent at
CONFIG = {"Cmd": ["/bin/sh"]}
SMALL_FILES = [E("srv", "dir")] + [E(f"srv/f{i:03d}", data=b"x" * i) for i in range(300)]
SHELL = [E("bin", "dir"), E("bin/sh", data=b"#!", mode=0o755)]


def on_terminal(*args, pipe_stdout: bool = False, columns: int = 120) -> tuple[int, str, str]:
    """The CLI with stderr, and stdout unless `pipe_stdout`, on a pseudo-terminal `columns` wide:
    its exit code, everything the terminal received, and what went to the stdout pipe."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen([*CLI, *map(str, args)], stdin=subprocess.DEVNULL, stderr=slave,
                            stdout=subprocess.PIPE if pipe_stdout else slave, env={**os.environ, "TERM": "xterm"})
    os.close(slave)
    received = []
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not data:
            break
        received.append(data)
    os.close(master)
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    return proc.wait(30), b"".join(received).decode(), stdout


def screen(received: str) -> list[list[str]]:
    """The lines left on the screen, each as the versions it was drawn in: a carriage return starts
    the line over, ESC[K clears what an earlier version left beyond the new one."""
    lines = []
    for raw in received.split("\n"):
        versions = [v.replace("\033[K", "") for v in raw.split("\r")]
        versions = [v for v in versions if v]
        if versions:
            lines.append(versions)
    return lines


def pushed_image(registry, tmp_path, layers: list[list[E]]) -> tuple[str, list[dict]]:
    lay = Layout(tmp_path / "layout")
    manifest = lay.image(layers, config=CONFIG)
    lay.tag(manifest, "v1")
    repo = unique_repo("progress")
    doc = json.loads((lay.root / "blobs/sha256" / manifest["digest"].split(":")[1]).read_bytes())
    registry.push(lay.root, "v1", repo)
    return repo, doc["layers"]


UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def sizes(version: str, label: str) -> tuple[float, float, float]:
    """Bytes done and total as `label  DONE/TOTAL UNIT` shows them, and the unit."""
    match = re.match(re.escape(label) + r"  ([\d.]+)/([\d.]+) (B|kB|MB|GB)  ", version + "  ")
    assert match, version
    unit = UNITS[match.group(3)]
    return float(match.group(1)) * unit, float(match.group(2)) * unit, unit


def test_each_phase_is_one_line_redrawn_until_its_totals(registry, fault_proxy, tmp_path):
    big = random.Random(0).randbytes(4_000_000)
    repo, layers = pushed_image(registry, tmp_path, [[E("blob", data=big), *SMALL_FILES], SHELL])
    first = layers[0]["digest"]
    fault_proxy.inject("GET", f"/blobs/{first}", "slow", rate=LAYER_RATE, times=None)
    out = tmp_path / "initrd.zst"
    code, received, _ = on_terminal("build", fault_proxy.ref(repo, "v1"), "-o", out, "-c", "zstd",
                                    "--insecure-registry", fault_proxy.host)
    assert code == 0, received
    download, second, writing, wrote, *rest = screen(received)

    label = f"layer 1/2 {first[:19]}"
    progress = [sizes(v, label) for v in download]
    assert {(t, unit) for _, t, unit in progress} == {(round(layers[0]["size"] / 1e6, 1) * 1e6, 1e6)}
    assert progress[0][0] == 0 and progress[-1][0] == progress[-1][1]
    assert [d for d, _, _ in progress] == sorted(d for d, _, _ in progress)
    assert len({d for d, _, _ in progress}) >= 4  # redrawn as the bytes came (a download lands 1 MiB at a time)
    # while it runs: how fast (the pace the proxy sends at, no faster) and how long is left
    rates = [float(m.group(1)) for v in download[1:-1] if (m := re.search(r"  ([\d.]+) MB/s  eta \d+:\d\d$", v))]
    assert rates and max(rates) <= 1.2 * LAYER_RATE / 1e6, download
    # done: the totals, the mean rate, the time it took (the layer alone takes 2 s to send)
    assert re.fullmatch(rf"{re.escape(label)}  ([\d.]+)/\1 MB  [\d.]+ MB/s  (\d+\.\d) s", download[-1])
    assert float(download[-1].rsplit("  ", 1)[1][:-2]) >= 0.9 * layers[0]["size"] / LAYER_RATE

    assert second[-1].startswith(f"layer 2/2 {layers[1]['digest'][:19]}  ")
    entries = int(re.search(r", (\d+) entries,", wrote[0]).group(1))
    # the total is known before the first entry is written
    assert writing[0] == f"writing zstd archive  0/{entries} entries  0%"
    assert re.fullmatch(rf"writing zstd archive  {entries}/{entries} entries  100%  \d+\.\d s", writing[-1])
    assert wrote == [f"wrote {out}: {out.stat().st_size} bytes, {entries} entries, zstd, init: generated"]
    assert [len(line) for line in rest] == [1, 1]  # the digest and source lines, drawn once
    assert all(len(v) < 120 for line in (download, second, writing) for v in line)


def test_push_is_a_phase_too_and_json_is_unchanged(registry, tmp_path):
    repo, _ = pushed_image(registry, tmp_path, [SHELL])
    target = f"{registry.host}/{repo}:initramfs"
    code, received, stdout = on_terminal("build", registry.ref(repo, "v1"), "--push", target,
                                         "--insecure-registry", registry.host, "--json", pipe_stdout=True)
    assert code == 0, received
    result = json.loads(stdout)
    assert result["reference"].startswith(f"{target.rsplit(':', 1)[0]}@sha256:")
    layer, writing, pushing = screen(received)
    assert layer[-1].startswith("layer 1/1 sha256:") and writing[-1].startswith("writing gzip archive  ")
    sent, total, unit = sizes(pushing[-1], "pushing")
    assert sent == total and abs(total - result["size"]) <= unit / 20  # to one decimal


def test_nothing_under_quiet_or_off_a_terminal(registry, fault_proxy, tmp_path):
    repo, _ = pushed_image(registry, tmp_path, [SHELL])
    ref, out = registry.ref(repo, "v1"), tmp_path / "initrd"
    code, received, _ = on_terminal("build", ref, "-o", out, "--insecure-registry", registry.host, "--quiet")
    assert code == 0 and "\033[K" not in received
    wrote, digest, source = screen(received)
    assert wrote[0].startswith(f"wrote {out}: ") and digest[0].startswith("sha256:") and source[0].startswith("source:")
    assert [len(line) for line in (wrote, digest, source)] == [1, 1, 1]
    piped = run("build", ref, "-o", out, "--insecure-registry", registry.host)
    assert piped.returncode == 0 and piped.stderr == ""


def test_a_failed_phase_stays_where_it_stopped_and_the_error_follows(registry, fault_proxy, tmp_path):
    repo, layers = pushed_image(registry, tmp_path, [SHELL])
    fault_proxy.inject("GET", f"/blobs/{layers[0]['digest']}", "flip", times=None)
    code, received, _ = on_terminal("build", fault_proxy.ref(repo, "v1"), "-o", tmp_path / "initrd",
                                    "--insecure-registry", fault_proxy.host)
    assert code == 4
    layer, error = screen(received)
    assert layer[-1].startswith(f"layer 1/1 {layers[0]['digest'][:19]}  ")
    assert len(error) == 1 and error[0].startswith(f"initramfs-builder: error: layer {layers[0]['digest']}")
