"""The Kubernetes operator: InitramfsBuilds become build Jobs running the CLI. The engine never imports this."""

import importlib
import sys

# What `pip install 'initramfs-operator[operator]'` adds to the CLI's dependencies.
OPERATOR_EXTRA = ("kopf", "kubernetes", "prometheus_client")


def _run(command: str, module: str) -> None:
    """Runs `module.main`; without the extra installed, says which command installs it instead of a traceback."""
    try:
        entry = importlib.import_module(f"{__name__}.{module}").main
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] not in OPERATOR_EXTRA:
            raise
        sys.exit(f"{command}: {e.name} is not installed: it needs the [operator] extra: "
                 "pip install 'initramfs-operator[operator]'")
    entry()


def main() -> None:
    """`initramfs-operator`."""
    _run("initramfs-operator", "command")


def agent_main() -> None:
    """`initramfs-delivery-agent`, the DaemonSet on VM hosts."""
    _run("initramfs-delivery-agent", "agent")
