#!/usr/bin/env python3
"""The operator's memory beside a fleet of Nodes (issue 24, item 4).

Not a test: run it by hand, e.g.
    python3 benchmarks/node_watch_benchmark.py --nodes 5000
    python3 benchmarks/node_watch_benchmark.py --nodes 5000 --operator /tmp/before/operator   # another checkout
It starts the test control plane (etcd, kube-apiserver, no kubelet and no node controller), creates --nodes
API-only Node objects shaped like a kubelet's (conditions, addresses, capacity, 30 images: about 7 KB of
JSON each), then runs the operator with delivery on (the setting under which it watches Nodes) and prints
its RSS once it has listed them and settled, its peak RSS (VmHWM), and both again after every Node's
status is updated once (a round of kubelet status reports: one watch event per Node).
"""

import argparse
import json
import re
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import httpx

import _paths  # noqa: F401  (first: tests/ and operator/ on sys.path)
from fixtures.kube import Processes
from fleet_benchmark import OperatorProcess, build_tools, client_tls, rss_mib, start_control_plane

SETTLE_SECONDS = 20.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--operator", type=Path, help="the operator/ directory to run (default: this checkout's)")
    return p.parse_args()


def node(i: int) -> dict:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = [{"type": t, "status": "False" if t != "Ready" else "True", "reason": f"Kubelet{t}",
                   "message": f"kubelet reports {t}", "lastHeartbeatTime": now, "lastTransitionTime": now}
                  for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready", "NetworkUnavailable")]
    images = [{"names": [f"registry.example.com/platform/service-{j}@sha256:{j:064x}",
                         f"registry.example.com/platform/service-{j}:v1.{j}"], "sizeBytes": 50_000_000 + j}
              for j in range(30)]
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": f"node-{i:05d}", "labels": {
            "kubernetes.io/hostname": f"node-{i:05d}", "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "topology.kubernetes.io/zone": f"zone-{i % 3}", "node.kubernetes.io/instance-type": "metal-64",
            **({"initramfs.dev/vm-host": "true"} if i % 2 else {})}},
        "spec": {"podCIDR": f"10.{i // 256 % 256}.{i % 256}.0/24", "providerID": f"metal://rack-{i // 40}/node-{i}"},
        "status": {"capacity": {"cpu": "64", "memory": "263856696Ki", "pods": "110", "ephemeral-storage": "1Ti"},
                   "allocatable": {"cpu": "63500m", "memory": "261759544Ki", "pods": "110"},
                   "conditions": conditions, "images": images,
                   "addresses": [{"type": "InternalIP", "address": f"10.200.{i // 256}.{i % 256}"},
                                 {"type": "Hostname", "address": f"node-{i:05d}"}],
                   "nodeInfo": {"machineID": f"{i:032x}", "systemUUID": f"{i:032x}", "bootID": f"{i:032x}",
                                "kernelVersion": "6.1.0-27-amd64", "osImage": "Debian GNU/Linux 12 (bookworm)",
                                "containerRuntimeVersion": "containerd://1.7.22", "kubeletVersion": "v1.34.4",
                                "kubeProxyVersion": "v1.34.4", "operatingSystem": "linux", "architecture": "amd64"}},
    }


def in_parallel(http: httpx.Client, send, count: int) -> None:
    with ThreadPoolExecutor(16) as pool:
        for response in pool.map(send, range(count)):
            response.raise_for_status()


def sample(pid: int, seconds: float) -> float:
    """VmRSS at the end of `seconds` of waiting."""
    time.sleep(seconds)
    return rss_mib(pid)


def main() -> int:
    args = parse_args()
    bin_dir = build_tools()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="node-watch-") as tmp:
        work = Path(tmp)
        procs = Processes(work)
        stack.callback(procs.stop)
        plane = start_control_plane(bin_dir, work, procs, controllers="garbagecollector")
        server = plane.cluster.server
        http = stack.enter_context(httpx.Client(verify=client_tls(plane.cluster.ca_file, plane.admin_cert),
                                                timeout=30, limits=httpx.Limits(max_connections=16)))
        started = time.monotonic()
        in_parallel(http, lambda i: http.post(f"{server}/api/v1/nodes", json=node(i)), args.nodes)
        size = len(json.dumps(node(0)))
        print(f"{args.nodes} Nodes of {size} bytes of JSON each created in {time.monotonic() - started:.0f}s")

        operator = OperatorProcess(plane.operator_kubeconfig, 4, work / "operator.log", args.operator)
        operator.env["INITRAMFS_DELIVERY"] = "true"
        started = time.monotonic()
        operator.start()
        stack.callback(operator.stop)
        pid = operator.proc.pid
        settled = sample(pid, SETTLE_SECONDS)
        print(f"operator ({args.operator or 'this checkout'}): healthy after {time.monotonic() - started:.1f}s; "
              f"RSS {settled:.0f} MiB {SETTLE_SECONDS:.0f}s later, peak {rss_mib(pid, 'VmHWM'):.0f} MiB")

        beat = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        patch = {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                            "message": "kubelet is posting ready status", "lastHeartbeatTime": beat,
                                            "lastTransitionTime": beat}]}}
        started = time.monotonic()
        in_parallel(http, lambda i: http.patch(f"{server}/api/v1/nodes/node-{i:05d}/status", json=patch,
                                               headers={"Content-Type": "application/strategic-merge-patch+json"}),
                    args.nodes)
        updated = time.monotonic() - started
        print(f"one status update per Node in {updated:.0f}s; operator RSS {sample(pid, SETTLE_SECONDS):.0f} MiB "
              f"{SETTLE_SECONDS:.0f}s later, peak {rss_mib(pid, 'VmHWM'):.0f} MiB")
        # Its Node requests, from the API server's audit log (a watch is recorded when it ends: none yet).
        requests = Counter(
            (record["verb"], re.sub(r"continue=[^&]+", "continue=...", record["requestURI"].partition("?")[2]),
             record["responseStatus"]["code"])
            for record in map(json.loads, plane.audit_log.read_text().splitlines())
            if record.get("objectRef", {}).get("resource") == "nodes")
        print("operator's Node requests (verb, query, code): " +
              "; ".join(f"{n} x {request}" for request, n in sorted(requests.items())))
        log = (work / "operator.log").read_text()
        errors = [line for line in log.splitlines() if "rror" in line or "Traceback" in line or "WARNING" in line]
        print(f"operator log: {len(log.splitlines())} lines, {len(errors)} with errors" +
              "".join(f"\n  {line}" for line in errors[:5]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
