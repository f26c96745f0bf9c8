#!/usr/bin/env python3
"""What delivery to a fleet of VM hosts costs the API server, from its own audit log (issue 14).

Not a test: run it by hand, e.g.
    python3 benchmarks/delivery_benchmark.py --agents 50 --builds 20
It starts the test control plane (etcd, kube-apiserver with an audit log, kube-controller-manager,
from fleet_benchmark.py), a local registry, `--agents` delivery agent processes
(`initramfs-delivery-agent`, each with its own Node object and delivery root, all authenticated as
one agent user), and pushes `--builds` initramfs artifacts. Each InitramfsBuild selects every node;
its status.output is written the way the operator writes it after a build (there is no kubelet
here to run build pods, and the operator and the agents meet only through that status).

Printed: the agents' requests by verb and resource and per node per delivery; the time from the
outputs appearing until every node holds every build (ready == desired, summed by the operator's
own `delivery_status.summarize`); the agents' peak RSS; and that every file on every "host" matches.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import kubernetes

import _paths  # noqa: F401  (first: tests/ and operator/ on sys.path)
import fleet_benchmark as fleet
from fixtures.kube import Processes, issue_cert, write_kubeconfig
from fixtures.registry import start_registry
from initramfs_operator.kube import crd
from initramfs_operator.kube.delivery_status import summarize
from initramfs_operator.oci.registry import RegistryOptions, push

AGENT_USER = "initramfs-delivery-agent"
CPIO_GZ = "application/vnd.initramfs.v1.cpio+gzip"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=50)
    p.add_argument("--builds", type=int, default=20)
    p.add_argument("--size", type=int, default=2 << 20, help="bytes of each initramfs artifact")
    p.add_argument("--timeout", type=float, default=600)
    return p.parse_args()


def rss_mib(pid: int) -> float:
    return fleet.rss_mib(pid, "VmHWM")


def main() -> int:
    args = parse_args()
    # The agents' requests are what this measures: audit their user, not the operator's.
    fleet.AUDIT_POLICY["rules"] = [{"level": "Metadata", "users": [AGENT_USER]}, {"level": "None"}]
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="delivery-bench-") as tmp:
        work = Path(tmp)
        procs = Processes(work)
        stack.callback(procs.stop)
        plane = fleet.start_control_plane(fleet.build_tools(), work, procs)
        pki = work / "pki"
        issue_cert(pki, "agent", f"/O=system:masters/CN={AGENT_USER}", "extendedKeyUsage=clientAuth\n")
        agent_kubeconfig = work / "agent.kubeconfig"
        write_kubeconfig(agent_kubeconfig, plane.cluster.server, pki / "ca.crt", AGENT_USER,
                         {"client-certificate": str(pki / "agent.crt"), "client-key": str(pki / "agent.key")})
        plane.cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                              "crd/initramfsdeliveries.initramfs.dev")
        registry, registry_proc = start_registry(work / "registry")
        stack.callback(registry_proc.terminate)
        client = plane.cluster.api_client()
        core, custom = kubernetes.client.CoreV1Api(client), kubernetes.client.CustomObjectsApi(client)
        core.create_namespace({"metadata": {"name": "fleet"}})

        nodes = [f"vm-host-{i:03d}" for i in range(args.agents)]
        for name in nodes:
            core.create_node({"metadata": {"name": name, "labels": {"vm-host": "true"}}})
        agents = []
        for name in nodes:
            root = work / "roots" / name
            root.mkdir(parents=True)
            log = open(work / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
            agents.append(subprocess.Popen([sys.executable, "-m", "initramfs_operator.delivery.agent",
                                            "--node-name", name, "--root", str(root), "--port", "0"],
                                           env={**os.environ, "KUBECONFIG": str(agent_kubeconfig)},
                                           stdout=log, stderr=subprocess.STDOUT))
        stack.callback(lambda: [a.terminate() for a in agents])

        options = RegistryOptions(insecure=(registry.host,))
        outputs = {}
        for i in range(args.builds):
            name = f"build-{i:03d}"
            data = os.urandom(args.size)
            path = work / f"{name}.cpio.gz"
            path.write_bytes(data)
            digest = push.push_artifact(str(path), f"{registry.host}/fleet/{name}:v", media_type=CPIO_GZ,
                                        annotations={}, subject=None, options=options)
            outputs[name] = {"reference": f"{registry.host}/fleet/{name}@{digest}", "digest": digest,
                             "compression": "gzip", "size": len(data),
                             "sha256": hashlib.sha256(data).hexdigest(), "sha512": hashlib.sha512(data).hexdigest()}
            custom.create_namespaced_custom_object(crd.GROUP, crd.VERSION, "fleet", crd.PLURAL, {
                "apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": name},
                "spec": {"image": f"{registry.host}/src/app:1", "registry": {"insecure": True},
                         "output": {"oci": {"repository": f"{registry.host}/fleet/{name}", "tag": "v"}},
                         "delivery": {"nodeSelector": {"matchLabels": {"vm-host": "true"}}}}})
        time.sleep(5)  # the agents are up and watching: what follows is delivery, not start-up
        audit_start = len(plane.audit_log.read_text().splitlines())
        started = time.monotonic()
        for name, output in outputs.items():
            custom.patch_namespaced_custom_object_status(crd.GROUP, crd.VERSION, "fleet", crd.PLURAL, name,
                                                         {"status": {"output": output}})
        labels = {name: {"vm-host": "true"} for name in nodes}
        done_at = None
        while time.monotonic() - started < args.timeout:
            builds = custom.list_namespaced_custom_object(crd.GROUP, crd.VERSION, "fleet", crd.PLURAL)["items"]
            reports = custom.list_namespaced_custom_object(crd.GROUP, crd.VERSION, "fleet",
                                                           crd.DELIVERY_PLURAL)["items"]
            summaries = [summarize(b, labels, reports) for b in builds]
            ready = sum(s.ready for s in summaries if s)
            desired = sum(s.desired for s in summaries if s)
            print(f"  {time.monotonic() - started:6.1f}s  ready {ready}/{desired}", flush=True)
            if ready == desired == args.agents * args.builds:
                done_at = time.monotonic() - started
                break
            time.sleep(1.0)
        peak = [rss_mib(a.pid) for a in agents]
        events = [json.loads(line) for line in plane.audit_log.read_text().splitlines()[audit_start:]]

        mismatched = 0
        for name in nodes:
            for build, output in outputs.items():
                current = work / "roots" / name / "fleet" / build / "current"
                data = current.read_bytes() if current.exists() else b""
                mismatched += hashlib.sha512(data).hexdigest() != output["sha512"]
        by_kind = Counter((e["verb"], (e.get("objectRef") or {}).get("resource", "?")) for e in events
                          if e.get("user", {}).get("username") == AGENT_USER)
        deliveries = args.agents * args.builds
        print(f"\n{args.agents} agents x {args.builds} builds = {deliveries} deliveries of {args.size} bytes")
        print("ready == desired after: " + (f"{done_at:.1f} s" if done_at is not None else "NOT REACHED"))
        print(f"files not matching status.output.sha512: {mismatched}")
        print("agent requests after start-up, by verb and resource:")
        for (verb, resource), n in sorted(by_kind.items(), key=lambda kv: -kv[1]):
            print(f"  {verb:8} {resource:22} {n:6}  {n / deliveries:.2f} per node per delivery")
        total = sum(by_kind.values())
        print(f"  total {total}: {total / deliveries:.2f} requests per node per delivery")
        print(f"agent peak RSS: max {max(peak):.0f} MiB, mean {sum(peak) / len(peak):.0f} MiB")
        return 0 if done_at is not None and mismatched == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
