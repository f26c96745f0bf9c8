"""Which output a build's hosts may take and which of them may take it now (kube/rollout.py): one case a row.
The same with real agents and the operator process: test_rollout_fleet.py."""

from datetime import UTC, datetime, timedelta

import pytest

from initramfs_operator.kube.release import release_spec
from initramfs_operator.kube.rollout import Plan, Report, plan, wave_ends


def output(n: int) -> dict:
    return {"reference": f"r/out@sha256:{n:064x}", "digest": f"sha256:{n:064x}", "sha256": f"{n:064x}",
            "sha512": f"{n:0128x}", "size": n, "compression": "gzip"}


NEW, OLD, OLDER = output(3), output(2), output(1)
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
NODES = [f"n{i}" for i in range(5)]
WAVES = {"canary": 1, "waveSize": 2, "pauseSeconds": 60, "maxFailures": 0}  # n0 | n1 n2 | n3 n4


def build(**delivery) -> dict:
    return {"metadata": {"namespace": "team", "name": "vm", "uid": "u", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"image": "r/app:1", "output": {"oci": {"repository": "r/out", "tag": "v"}},
                     "delivery": {"nodeSelector": {}, "keep": 3, **delivery}},
            "status": {"output": NEW}}


def holding(nodes: str, what: dict = NEW, phase: str = "Ready", ago: float = 120) -> dict[str, Report]:
    return {n: Report(phase, f"sha256:{what['sha256']}", NOW - timedelta(seconds=ago)) for n in nodes.split()}


HELD = release_spec(build(), Plan(OLD, ["n0"]), {"output": OLDER})  # OLD, rolled out to n0; OLDER before it


@pytest.mark.parametrize(("count", "rollout", "ends"), [
    (5, {"canary": 1, "waveSize": 2}, [1, 3, 5]),
    (5, {"waveSize": "40%"}, [2, 4, 5]),
    (10, {"canary": 2, "waveSize": "50%"}, [2, 7, 10]),
    (3, {"canary": 5}, [3]),
    (4, {}, [4]),
    (0, {"canary": 1}, [0]),
])
def test_waves(count, rollout, ends):
    assert wave_ends(count, rollout) == ends


@pytest.mark.parametrize(("delivery", "held", "reports", "expected"), [
    # Not waved: every host at once.
    ({}, None, {}, Plan(NEW)),
    # The canary first; then the next wave once it holds NEW and the pause has passed since.
    ({"rollout": WAVES}, None, {}, Plan(NEW, ["n0"], 1, 3)),
    ({"rollout": WAVES}, None, holding("n0", ago=10), Plan(NEW, ["n0"], 1, 3, requeue_after=50.0)),  # pausing
    ({"rollout": WAVES}, None, holding("n0"), Plan(NEW, ["n0", "n1", "n2"], 2, 3)),
    ({"rollout": WAVES}, None, holding("n0 n1 n2"), Plan(NEW, None, 3, 3)),  # the last wave: every host
    ({"rollout": WAVES}, None, holding("n0 n1 n2 n3 n4"), Plan(NEW, None, 3, 3)),
    # A host holding an older output is not done.
    ({"rollout": WAVES}, None, holding("n0", OLD), Plan(NEW, ["n0"], 1, 3)),
    # More failures than maxFailures halt the rollout where it is; fewer do not.
    ({"rollout": WAVES}, None, holding("n0", OLD, "Failed"), Plan(NEW, ["n0"], 1, 3, halted=["n0"])),
    ({"rollout": {**WAVES, "maxFailures": 1}}, None, {**holding("n0"), **holding("n1", OLD, "Failed")},
     Plan(NEW, ["n0", "n1", "n2"], 2, 3)),
    # Paused: the release as it is.
    ({"rollout": WAVES, "paused": True}, HELD, holding("n0"), Plan(OLD, ["n0"])),
    # Pinned: a known output, to every host at once; an unknown one changes nothing and says so.
    ({"rollout": WAVES, "pinnedDigest": f"sha256:{OLDER['sha256']}"}, HELD, {}, Plan(OLDER)),
    ({"pinnedDigest": OLD["digest"]}, HELD, {}, Plan(OLD)),
    ({"pinnedDigest": f"sha256:{9:064x}"}, HELD, {}, Plan(OLD, ["n0"], missing_pin=f"sha256:{9:064x}")),
])
def test_plan(delivery, held, reports, expected):
    assert plan(build(**delivery), held, NODES, reports, NOW) == expected


def test_the_release_remembers_what_a_pin_may_name():
    """Outputs named before, newest first, as many as `keep`; the one named now is not among them."""
    spec = release_spec(build(), Plan(NEW), HELD)
    assert spec["output"] == NEW and spec["history"] == [OLD, OLDER] and "rollout" not in spec
    assert release_spec(build(keep=1), Plan(NEW), HELD)["history"] == [OLD]
    pinned = release_spec(build(), Plan(OLDER), spec)
    assert pinned["output"] == OLDER and pinned["history"] == [NEW, OLD]
