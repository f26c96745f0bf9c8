"""status.delivery and the Delivered condition from the agents' reports (one case a row)."""

import pytest

from initramfs_operator.kube.delivery_status import summarize

SHA = "a" * 64
BUILD = {"metadata": {"uid": "u1"}, "spec": {"delivery": {"nodeSelector": {"matchLabels": {"vm": "yes"}}}},
         "status": {"output": {"sha256": SHA, "reference": "r/x@sha256:" + "b" * 64}}}
NODES = {"n1": {"vm": "yes"}, "n2": {"vm": "yes"}, "n3": {"vm": "no"}}


def report(node: str, phase: str, digest: str = "sha256:" + SHA, uid: str = "u1", message: str = "") -> dict:
    return {"spec": {"buildUID": uid, "nodeName": node}, "status": {"phase": phase, "digest": digest,
                                                                    "message": message}}


@pytest.mark.parametrize(("reports", "counts", "condition"), [
    ([], (2, 0, 0), ("False", "Delivering", "waiting for n1, n2")),
    ([report("n1", "Ready"), report("n2", "Ready")], (2, 2, 0), ("True", "Delivered", "all 2 selected nodes")),
    ([report("n1", "Ready"), report("n2", "Ready", digest="sha256:" + "c" * 64)],  # n2 holds an older output
     (2, 1, 0), ("False", "Delivering", "waiting for n2")),
    ([report("n1", "Ready"), report("n2", "Failed", message="sha512 mismatch")],
     (2, 1, 1), ("False", "DeliveryFailed", "n2: sha512 mismatch")),
    ([report("n1", "Ready"), report("n2", "Ready"), report("n3", "Ready")],  # n3 left the selector: not counted
     (2, 2, 0), ("True", "Delivered", "")),
    ([report("n1", "Ready", uid="old"), report("n2", "Ready")],  # a report of a deleted build of the same name
     (2, 1, 0), ("False", "Delivering", "waiting for n1")),
])
def test_summary(reports, counts, condition):
    s = summarize(BUILD, NODES, reports)
    assert (s.desired, s.ready, s.failed) == counts
    assert s.condition[:2] == condition[:2] and condition[2] in s.condition[2]
    assert s.status()["nodes"] == f"{counts[1]}/{counts[0]}"


def test_no_delivery_no_nodes_no_output():
    assert summarize({"metadata": {"uid": "u"}, "spec": {}}, NODES, []) is None
    none_selected = {**BUILD, "spec": {"delivery": {"nodeSelector": {"matchLabels": {"vm": "maybe"}}}}}
    assert summarize(none_selected, NODES, []).condition[1] == "NoNodes"
    unbuilt = {**BUILD, "status": {}}
    assert summarize(unbuilt, NODES, [report("n1", "Pending")]).condition[1] == "WaitingForOutput"
