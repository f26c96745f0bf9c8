"""The entry points that need the [operator] extra: without it installed, they say which command installs it."""

import importlib
import sys

# What `pip install 'initramfs-operator[operator]'` adds to the CLI's dependencies.
OPERATOR_EXTRA = ("kopf", "kubernetes", "prometheus_client", "yaml")


def run(command: str, module: str) -> None:
    """Runs `module.main`; without the extra installed, says which command installs it instead of a traceback."""
    try:
        entry = importlib.import_module(module).main
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] not in OPERATOR_EXTRA:
            raise
        sys.exit(f"{command}: {e.name} is not installed: it needs the [operator] extra: "
                 "pip install 'initramfs-operator[operator]'")
    entry()
