#!/usr/bin/env python3
"""A throwaway local cluster made of the test tooling, for trying the operator by hand
(examples/operator-demo.sh): the control plane and the node the tests start (tests/fixtures), a
registry on the node's network, and the project's image built from the Dockerfile and pushed there.

    tests/tools/local-cluster.py STATE_DIR

Writes STATE_DIR/env (shell variables: KUBECONFIG, REGISTRY, OPERATOR_IMAGE, NODE_NAME) once all is
up, then runs until SIGTERM or SIGINT and takes everything down again. Needs root (the node), the
Debian packages of .ci/run, and the binaries of tests/tools/build-tools.sh.
"""

import shutil
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from fixtures.image_build import build_project_image  # noqa: E402  (after the path is set)
from fixtures.kube import control_plane  # noqa: E402
from fixtures.network import Network  # noqa: E402
from fixtures.node import running_node  # noqa: E402
from fixtures.registry import start_registry  # noqa: E402


def stop(*_) -> None:
    raise SystemExit(0)  # unwinds the ExitStack: everything started is stopped


def main() -> None:
    state = Path(sys.argv[1]).resolve()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    built = subprocess.run([str(TESTS / "tools/build-tools.sh")], check=True, capture_output=True, text=True)
    k8s_bin = Path(built.stdout.strip().splitlines()[-1])
    busybox = Path(shutil.which("busybox") or "busybox").resolve()
    with ExitStack() as stack:
        network = Network.create()
        stack.callback(network.delete)
        kube = stack.enter_context(control_plane(k8s_bin, network, directory(state / "kube")))
        registry, registry_proc = start_registry(state / "registry", address=network.host_ip)
        stack.callback(registry_proc.terminate)
        node = stack.enter_context(running_node(kube, network, registry, k8s_bin, busybox, directory(state / "node")))
        image = build_project_image(registry, directory(state / "image-build"))
        (state / "env").write_text(f"KUBECONFIG={kube.kubeconfig}\nREGISTRY={registry.host}\n"
                                   f"OPERATOR_IMAGE={image}\nNODE_NAME={node.name}\n")
        print(f"cluster up: API server {kube.server}, registry {registry.host}", flush=True)
        while True:
            signal.pause()


def directory(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


if __name__ == "__main__":
    main()
