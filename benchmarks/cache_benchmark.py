#!/usr/bin/env python3
"""The second build of an image with the layer cache (`--cache-dir`) against without (issue 24, item 3).

Not a test: run it by hand, `python3 benchmarks/cache_benchmark.py` (about a minute). The minbase image of
benchmarks/benchmark.py (one 93 MB gzip layer, built once and cached) is served by a local docker-registry
through a relay that counts the bytes it sends, at full loopback speed and at 50 MB/s (a registry
across a network). Each variant builds it to zstd --runs times, interleaved: without a cache (every
build pulls the layer), and with a cache that a first build filled. Printed per variant: median wall
time, bytes the registry sent per build, and the output's sha256 (the same for all).
"""

import argparse
import hashlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _paths  # noqa: F401  (first: tests/ and operator/ on sys.path)
from benchmark import THROTTLE_MB_S, Relay, minbase_image, minbase_rootfs
from fixtures.registry import start_registry


def build(relay: Relay, repository: str, out: Path, cache: Path | None) -> tuple[float, int, str]:
    """Wall seconds, bytes the registry sent, sha256 of the output."""
    relay.take()
    argv = [sys.executable, "-c", "from initramfs_operator.cli import main; main()", "build",
            f"{relay.host}/{repository}:bench", "-o", str(out), "-c", "zstd", "--insecure-registry", relay.host,
            "--quiet", *(["--cache-dir", str(cache)] if cache else [])]
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    return wall, relay.take(), hashlib.sha256(out.read_bytes()).hexdigest()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    layout = minbase_image(minbase_rootfs())
    with tempfile.TemporaryDirectory(prefix="cache-bench-") as tmp:
        work = Path(tmp)
        registry, server = start_registry(work / "registry")
        try:
            registry.push(layout.path, "bench", repo="bench/minbase")
            results: dict[str, list[tuple[float, int, str]]] = {}
            for speed, rate in (("loopback", None), (f"{THROTTLE_MB_S} MB/s", THROTTLE_MB_S * 1e6)):
                relay = Relay(registry.host, rate)
                cache = work / f"cache-{rate}"
                build(relay, "bench/minbase", work / "out", cache)  # the first build fills the cache
                for _ in range(args.runs):
                    for cached in (False, True):
                        name = f"{speed}, {'second build with the cache' if cached else 'no cache'}"
                        results.setdefault(name, []).append(
                            build(relay, "bench/minbase", work / "out", cache if cached else None))
        finally:
            server.terminate()
            server.wait(10)
    print(f"minbase ({sum(f.stat().st_size for f in layout.layers) / 1e6:.0f} MB of gzip layer), "
          f"median of {args.runs}:")
    for name, runs in results.items():
        pulled = statistics.median(r[1] for r in runs)
        amount = f"{pulled / 1e6:.1f} MB" if pulled >= 1e6 else f"{pulled / 1e3:.1f} kB"
        print(f"  {name}: {statistics.median(r[0] for r in runs):.2f} s, {amount} pulled, sha256 {runs[0][2][:16]}")
    # The reference (the relay's port) is part of the result: the same bytes within each speed.
    same = all(len({r[2] for name, runs in results.items() if name.startswith(speed) for r in runs}) == 1
               for speed in {name.split(",")[0] for name in results})
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
