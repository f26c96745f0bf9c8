"""status.delivery and the Delivered condition from the agents' reports (one case a row), and how often
they are written."""

import math

import pytest

from initramfs_operator.kube.delivery_status import Coalescer, summarize

SHA = "a" * 64
BUILD = {"metadata": {"uid": "u1"}, "spec": {"delivery": {"nodeSelector": {"matchLabels": {"vm": "yes"}}}},
         "status": {"output": {"sha256": SHA, "sha512": "c" * 128, "size": 1, "reference": "r/x@sha256:" + "b" * 64}}}
NODES = {"n1": {"vm": "yes"}, "n2": {"vm": "yes"}, "n3": {"vm": "no"}}


def report(node: str, phase: str, digest: str = "sha256:" + SHA, uid: str = "u1", message: str = "",
           reason: str = "") -> dict:
    return {"spec": {"buildUID": uid, "nodeName": node}, "status": {"phase": phase, "digest": digest,
                                                                    "message": message, "reason": reason}}


@pytest.mark.parametrize(("reports", "counts", "condition"), [
    ([], (2, 0, 0), ("False", "Delivering", f"0/2 nodes hold sha256:{SHA}; 2 waiting")),
    ([report("n1", "Ready"), report("n2", "Ready")], (2, 2, 0), ("True", "Delivered", "all 2 selected nodes")),
    ([report("n1", "Ready"), report("n2", "Ready", digest="sha256:" + "c" * 64)],  # n2 holds an older output
     (2, 1, 0), ("False", "Delivering", "1/2 nodes hold sha256:")),
    ([report("n1", "Ready"), report("n2", "Failed", message="sha512 mismatch")],
     (2, 1, 1), ("False", "DeliveryFailed", "; 0 waiting; 1 failed: n2: sha512 mismatch")),
    # Every failed node refuses it for one of the admin's rules: that is the reason.
    ([report("n1", "Failed", message="over quota", reason="QuotaExceeded"),
      report("n2", "Failed", message="over quota", reason="QuotaExceeded")],
     (2, 0, 2), ("False", "QuotaExceeded", "2 failed: n1: over quota; n2: over quota")),
    ([report("n1", "Failed", message="another build's", reason="DeliveryConflict"), report("n2", "Ready")],
     (2, 1, 1), ("False", "DeliveryConflict", "1 failed: n1: another build's")),
    # Mixed with a failed pull (no reason), or two rules: a plain DeliveryFailed.
    ([report("n1", "Failed", message="over quota", reason="QuotaExceeded"), report("n2", "Failed", message="503")],
     (2, 0, 2), ("False", "DeliveryFailed", "2 failed")),
    ([report("n1", "Ready"), report("n2", "Ready"), report("n3", "Ready")],  # n3 left the selector: not counted
     (2, 2, 0), ("True", "Delivered", "")),
    ([report("n1", "Ready", uid="old"), report("n2", "Ready")],  # a report of a deleted build of the same name
     (2, 1, 0), ("False", "Delivering", "1/2 nodes hold")),
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


def test_the_message_names_no_waiting_node_so_reports_arriving_do_not_change_it():
    nodes = {f"n{i}": {"vm": "yes"} for i in range(50)}
    messages = {summarize(BUILD, nodes, [report(f"n{i}", "Pending")] if i else []).condition[2] for i in range(50)}
    assert messages == {f"0/50 nodes hold sha256:{SHA}; 50 waiting"}
    failed = [report(f"n{i}", "Failed", message="HTTP 503") for i in range(8)]
    message = summarize(BUILD, nodes, failed).condition[2]
    assert message.endswith("8 failed: n0: HTTP 503; n1: HTTP 503; n2: HTTP 503; n3: HTTP 503; n4: HTTP 503 "
                            "(and 3 more)")


# --- several platforms: each node its own platform's file; a node of none is not desired ----------------------

AMD, ARM = "1" * 64, "2" * 64  # each platform's file
INDEX = "sha256:" + "9" * 64
MULTI = {"metadata": {"uid": "u1"}, "spec": {"delivery": {"nodeSelector": {"matchLabels": {"vm": "yes"}}}},
         "status": {"output": {"reference": "r/x@" + INDEX, "digest": INDEX, "platforms": "linux/amd64,linux/arm64"},
                    "outputs": [{"os": "linux", "architecture": a, "reference": f"r/x@sha256:{a[0] * 64}",
                                 "digest": f"sha256:{a[0] * 64}", "sha256": sha, "sha512": "c" * 128, "size": 1}
                                for a, sha in (("amd64", AMD), ("arm64", ARM))]}}


def platform(arch: str | None, os: str | None = "linux") -> dict[str, str]:
    return {"vm": "yes", **({"kubernetes.io/os": os} if os else {}), **({"kubernetes.io/arch": arch} if arch else {})}


FLEET = {"amd": platform("amd64"), "arm": platform("arm64"), "riscv": platform("riscv64"), "bare": platform(None, None),
         "riscv2": platform("riscv64")}
THEIRS = "their platform's file of " + INDEX
NONE_OF_OURS = ("3 selected nodes are of no platform the build has (linux/amd64, linux/arm64; by their "
                "kubernetes.io/os and kubernetes.io/arch labels) and take nothing: ?/?: 1, linux/riscv64: 2")


@pytest.mark.parametrize(("nodes", "reports", "counts", "condition"), [
    (FLEET, [report("amd", "Ready", "sha256:" + AMD), report("arm", "Ready", "sha256:" + ARM)], (2, 2, 0, 3),
     ("True", "Delivered", f"all 2 selected nodes hold {THEIRS}; {NONE_OF_OURS}")),
    # Each node's own platform: arm holding the amd64 file is not done; the NoPlatform reports count for nothing.
    (FLEET, [report("amd", "Ready", "sha256:" + AMD), report("arm", "Ready", "sha256:" + AMD),
             report("riscv", "Failed", "", reason="NoPlatform")], (2, 1, 0, 3),
     ("False", "Delivering", f"1/2 nodes hold {THEIRS}; 1 waiting; {NONE_OF_OURS}")),
    ({n: FLEET[n] for n in ("amd", "arm")}, [report("amd", "Ready", "sha256:" + AMD)], (2, 1, 0, 0),
     ("False", "Delivering", f"1/2 nodes hold {THEIRS}; 1 waiting")),
    ({n: FLEET[n] for n in ("riscv", "bare")}, [report("riscv", "Failed", "", reason="NoPlatform")], (0, 0, 0, 2),
     ("False", "NoPlatform", "2 selected nodes are of no platform the build has (linux/amd64, linux/arm64; by their "
                             "kubernetes.io/os and kubernetes.io/arch labels) and take nothing: ?/?: 1, "
                             "linux/riscv64: 1")),
])
def test_summary_of_several_platforms(nodes, reports, counts, condition):
    s = summarize(MULTI, nodes, reports)
    assert (s.desired, s.ready, s.failed, s.without_platform) == counts
    assert s.condition == condition and s.digest == INDEX
    assert s.status()["nodes"] == f"{counts[1]}/{counts[0]}"
    assert s.status().get("withoutPlatform", 0) == counts[3]


def test_the_message_of_nodes_without_a_platform_stays_bounded():
    nodes = {f"n{i}": platform(f"arch{i % 8}") for i in range(1000)}
    message = summarize(MULTI, nodes, []).condition[2]
    assert message.endswith("take nothing: linux/arch0: 125, linux/arch1: 125, linux/arch2: 125, linux/arch3: 125, "
                            "linux/arch4: 125 (and 3 more platforms)")
    assert len(message) < 400


def test_one_platform_goes_to_every_node_as_before():
    """A build of one platform (its status.output is its file) counts every selected node, whatever its
    architecture, and its status has no withoutPlatform."""
    s = summarize(BUILD, {"amd": platform("amd64"), "riscv": platform("riscv64")}, [report("riscv", "Ready")])
    assert (s.desired, s.ready) == (2, 1) and "withoutPlatform" not in s.status()


def written_at(changes: list[float], window: float) -> list[float]:
    """When a build's status is written for summaries changing at these times: DeliveryStatus.sync's
    steps on a clock of the test's, a delayed sync kept at its earliest time as WorkQueue.add_after keeps it."""
    now = 0.0
    coalesce = Coalescer(window, clock=lambda: now)
    pending, retry, writes = sorted(changes), math.inf, []
    while pending or retry < math.inf:
        if retry <= (pending[0] if pending else math.inf):
            now, retry = retry, math.inf
        else:
            now = pending.pop(0)
        wait = coalesce.wait("build")
        if wait > 0:
            retry = min(retry, now + wait)
        else:
            writes.append(now)
    return writes


@pytest.mark.parametrize(("changes", "writes"), [
    ([0.0], [0.0]),                                # a lone change: written at once
    ([i * 0.05 for i in range(50)], [0.0, 3.0]),  # 50 reports within the window: two writes, not 50
    ([0.0, 1.0, 2.9, 3.1], [0.0, 3.0, 6.0]),      # the change after a write waits for that write's window
    ([0.0, 1.0, 3.5, 4.0], [0.0, 3.0, 6.0]),
    ([0.0, 10.0, 10.1], [0.0, 10.0, 13.0]),
])
def test_status_writes_are_coalesced_per_window(changes, writes):
    got = written_at(changes, window=3.0)
    assert got == pytest.approx(writes)
    assert all(b - a >= 3.0 for a, b in zip(got, got[1:], strict=False))  # at most one write per window
    for change in changes:  # every change is in a write at most one window later
        assert any(change <= w <= change + 3.0 for w in got)


def test_a_build_that_went_is_forgotten():
    now = 0.0
    coalesce = Coalescer(3.0, clock=lambda: now)
    assert coalesce.wait("b") == 0.0
    assert coalesce.wait("b") == 3.0
    coalesce.forget("b")  # deleted, and created again under the same name
    assert coalesce.wait("b") == 0.0


def test_a_count_gone_is_removed_by_the_status_patch():
    """status.delivery is written as a merge patch: withoutPlatform (or a wave) no longer there is sent as null,
    which removes it, so the status read back equals the summary and the next pass writes nothing."""
    before = summarize(MULTI, FLEET, []).patch()
    after = summarize(MULTI, {n: FLEET[n] for n in ("amd", "arm")}, []).patch()
    assert before["withoutPlatform"] == 3 and after["withoutPlatform"] is None and after["wave"] is None
    merged = {k: v for k, v in {**before, **after}.items() if v is not None}  # RFC 7386 on status.delivery
    assert merged == summarize(MULTI, {n: FLEET[n] for n in ("amd", "arm")}, []).status()
