"""How many selected nodes hold a build's current output: the agents' reports summed into
`status.delivery` and the `Delivered` condition. Pure functions over what the indexes hold.

`desired` is every node the build's selector picks; a node that runs no agent never reports
and shows up in the message as waiting, which is what its owner needs to see. A report only
counts for the build it names by UID and for a node the selector picks now, so a node that
leaves the selector stops counting at once, whatever its agent has (or has not) cleaned up.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .selector import matches

DELIVERED = "Delivered"
SHOWN_NODES = 5  # nodes named in a message; the rest are counted


@dataclass(frozen=True)
class Summary:
    desired: int
    ready: int
    failed: int
    condition: tuple[str, str, str]  # status, reason, message

    def status(self) -> dict[str, Any]:
        return {"desired": self.desired, "ready": self.ready, "failed": self.failed,
                "nodes": f"{self.ready}/{self.desired}"}


def summarize(build: Mapping[str, Any], node_labels: Mapping[str, Mapping[str, str]],
              reports: Iterable[Mapping[str, Any]]) -> Summary | None:
    """None for a build without spec.delivery."""
    delivery = build["spec"].get("delivery")
    if delivery is None:
        return None
    selected = sorted(n for n, labels in node_labels.items() if matches(delivery.get("nodeSelector"), labels))
    output = (build.get("status") or {}).get("output") or {}
    digest = f"sha256:{output['sha256']}" if output.get("sha256") and output.get("reference") else None
    phases: dict[str, tuple[str, str]] = {}
    for report in reports:
        spec, status = report.get("spec") or {}, report.get("status") or {}
        if spec.get("buildUID") == build["metadata"]["uid"] and spec.get("nodeName") in selected:
            phase = status.get("phase") or "Pending"
            if phase == "Ready" and status.get("digest") != digest:
                phase = "Pending"  # holds an older output: the new one is on its way
            phases[spec["nodeName"]] = (phase, status.get("message") or "")
    ready = [n for n in selected if phases.get(n, ("",))[0] == "Ready"]
    failed = [n for n in selected if phases.get(n, ("",))[0] == "Failed"]
    waiting = [n for n in selected if n not in ready and n not in failed]
    return Summary(len(selected), len(ready), len(failed), _condition(selected, ready, failed, waiting, phases,
                                                                      digest))


def _condition(selected: list[str], ready: list[str], failed: list[str], waiting: list[str],
               phases: Mapping[str, tuple[str, str]], digest: str | None) -> tuple[str, str, str]:
    if not selected:
        return "False", "NoNodes", "no node matches spec.delivery.nodeSelector"
    if digest is None:
        return "False", "WaitingForOutput", f"{len(selected)} nodes selected; waiting for the build's OCI output"
    if len(ready) == len(selected):
        return "True", DELIVERED, f"all {len(selected)} selected nodes hold {digest}"
    if failed:
        shown = "; ".join(f"{n}: {phases[n][1]}" for n in failed[:SHOWN_NODES])
        more = f" (and {len(failed) - SHOWN_NODES} more)" if len(failed) > SHOWN_NODES else ""
        return "False", "DeliveryFailed", f"{len(ready)}/{len(selected)} nodes hold {digest}; failed on {shown}{more}"
    shown = ", ".join(waiting[:SHOWN_NODES]) + (f" and {len(waiting) - SHOWN_NODES} more"
                                                if len(waiting) > SHOWN_NODES else "")
    return "False", "Delivering", f"{len(ready)}/{len(selected)} nodes hold {digest}; waiting for {shown}"
