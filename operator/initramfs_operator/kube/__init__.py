"""The Kubernetes operator: InitramfsBuilds become build Jobs running the CLI. The engine never imports this."""

from .. import extra


def main() -> None:
    """`initramfs-operator`."""
    extra.run("initramfs-operator", f"{__name__}.command")
