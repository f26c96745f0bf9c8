#!/usr/bin/env python3
"""Several delivery agents in one process, for delivery_benchmark.py (a thousand agent processes of
~80 MiB each do not fit a small machine).

    python3 benchmarks/agent_fleet.py CONFIG.json

CONFIG names the API server (`server`, `ca`), the delivery `root` (one directory per node below
it), the `stats` file to write, and `agents`: a list of {"node": NAME, "token": TOKEN}.
Each entry becomes one real `delivery.agent.Agent`: its own API client authenticated with its own
token (so the API server's audit log tells the hosts apart by user), its own informers and
watches, its own version store and its own pulls from the registry. Nothing in the agent is
replaced; the runner only wraps each agent's `kube.watch` to count the events its informers are
handed (bookmarks apart), and the version store's `install` to count the bytes pulled into it.

Every `--interval` seconds, and once more on SIGTERM, it writes CONFIG's `stats` file atomically:
{"t", "pid", "agents": {node: {"events": {resource: n}, "bookmarks", "bytes_hashed", "downloaded",
"installs", "synced"}},
"io": /proc/self/io, "rss_mib", "hwm_mib", "threads"}.
"""

import argparse
import json
import logging
import os
import signal
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import _paths  # noqa: F401  (first: operator/ on sys.path)
from initramfs_operator.delivery import store
from initramfs_operator.delivery.agent import Agent
from initramfs_operator.kube import client

DOWNLOADED: Counter[str] = Counter()  # delivery root -> bytes streamed into its version stores
INSTALLS: Counter[str] = Counter()


class _Pulled:
    def __init__(self, stream: store.Readable, root: str):
        self._stream, self._root = stream, root

    def read(self, n: int = -1, /) -> bytes:
        chunk = self._stream.read(n)
        DOWNLOADED[self._root] += len(chunk)
        return chunk


def count_pulls() -> None:
    """Every install's stream (the artifact as it arrives from the registry), counted per delivery root."""
    install = store.VersionStore.install

    def counted(self: store.VersionStore, stream: store.Readable, expected: store.Expected) -> str:
        INSTALLS[self.root] += 1
        return install(self, _Pulled(stream, self.root), expected)

    store.VersionStore.install = counted  # type: ignore[method-assign]


def client_for(server: str, ca: str, token: str) -> client.HttpxTransport:
    """One API client per agent, as each host's agent has its own (connections, credentials): the agent's own."""
    return client.HttpxTransport(client.Config(server, ssl.create_default_context(cafile=ca), token))


class Counted:
    """The events one agent's informers receive from their watches, by resource."""

    def __init__(self, agent: Agent):
        self.events: Counter[str] = Counter()
        self.bookmarks = 0
        self.agent = agent
        watch = agent.kube.watch

        def counted(url: str, *args, **kwargs) -> Iterator[dict]:
            resource = url.rstrip("/").rsplit("/", 1)[-1]
            for event in watch(url, *args, **kwargs):
                if event.get("type") == "BOOKMARK":
                    self.bookmarks += 1
                else:
                    self.events[resource] += 1
                yield event

        agent.kube.watch = counted  # type: ignore[method-assign]  # this instance only

    def stats(self) -> dict:
        synced = self.agent.nodes.synced.is_set() and all(i.synced.is_set() for i in self.agent.releases)
        return {"events": dict(self.events), "bookmarks": self.bookmarks,
                "bytes_hashed": self.agent.verified.bytes_hashed, "downloaded": DOWNLOADED[self.agent.root],
                "installs": INSTALLS[self.agent.root], "synced": synced}


def proc_status() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            fields[key] = int(value.split()[0])
    return {"rss_mib": fields["VmRSS"] / 1024, "hwm_mib": fields["VmHWM"] / 1024, "threads": fields["Threads"]}


def proc_io() -> dict[str, int]:
    return {k: int(v) for k, v in (line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())}


def write_stats(path: Path, counted: list[Counted]) -> None:
    doc = {"t": time.time(), "pid": os.getpid(), "agents": {c.agent.node: c.stats() for c in counted},
           "io": proc_io(), **proc_status()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.rename(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", type=Path)
    p.add_argument("--interval", type=float, default=0.5)
    args = p.parse_args()
    config = json.loads(args.config.read_text())
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    threading.stack_size(512 << 10)  # ~7 threads per agent: keep their address space small
    stats = Path(config["stats"])
    count_pulls()
    counted = []
    for entry in config["agents"]:
        root = Path(config["root"]) / entry["node"]
        root.mkdir(parents=True, exist_ok=True)
        agent = Agent(client_for(config["server"], config["ca"], entry["token"]), entry["node"], str(root))
        counted.append(Counted(agent))
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    for c in counted:
        threading.Thread(target=c.agent.run, name=f"agent {c.agent.node}", daemon=True).start()
    while not stopping.wait(args.interval):
        write_stats(stats, counted)
    for c in counted:
        c.agent.stop()
    write_stats(stats, counted)


if __name__ == "__main__":
    main()
