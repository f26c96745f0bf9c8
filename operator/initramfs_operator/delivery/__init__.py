"""The delivery agent, on each VM host: the builds selected for its node, placed on its disk.

It reads InitramfsBuilds and writes InitramfsDelivery reports through the operator's API client
(kube/api.py) and names (kube/crd.py); the operator never imports this, and meets the agents only
through those reports.
"""

from .. import extra


def main() -> None:
    """`initramfs-delivery-agent`, the DaemonSet on VM hosts."""
    extra.run("initramfs-delivery-agent", f"{__name__}.agent")
