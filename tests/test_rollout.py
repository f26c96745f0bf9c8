"""Which output a build's hosts may take and which of them may take it now (kube/rollout.py): one case a row.
The same with real agents and the operator process: test_rollout_fleet.py."""

from datetime import UTC, datetime, timedelta

import pytest

from initramfs_operator.kube import crd
from initramfs_operator.kube.release import release_spec
from initramfs_operator.kube.rollout import Plan, Report, plan, released_output, wave_ends


def output(n: int) -> dict:
    return {"reference": f"r/out@sha256:{n:064x}", "digest": f"sha256:{n:064x}", "sha256": f"{n:064x}",
            "sha512": f"{n:0128x}", "size": n, "compression": "gzip"}


NEW, OLD, OLDER = output(3), output(2), output(1)
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
NODES = {f"n{i}": {} for i in range(5)}  # node -> labels
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


# --- several platforms: each host its own architecture's file ---------------------------------------------

def arch(name: str) -> dict[str, str]:
    return {"kubernetes.io/os": "linux", "kubernetes.io/arch": name}


def platforms(n: int) -> dict:
    """status.output and status.outputs of a build of linux/amd64 and linux/arm64 (n: which build)."""
    files = [{**output(10 * n + i), "platform": f"linux/{a}", "os": "linux", "architecture": a, "entries": 7,
              "imageDigest": f"sha256:{i:064x}"} for i, a in ((1, "amd64"), (2, "arm64"))]
    index = {"reference": f"r/out@sha256:{n:064x}", "digest": f"sha256:{n:064x}", "tag": "v",
             "platforms": "linux/amd64,linux/arm64", "compression": "gzip"}
    return {"output": index, "outputs": files}


def multi(status: dict, **delivery) -> dict:
    return {**build(**delivery), "status": status}


# n2 is of no platform the build has: in no wave, waited for by none. Waves of the others: n0 | n1 n3 | n4.
FLEET = {"n0": arch("amd64"), "n1": arch("arm64"), "n2": arch("riscv64"), "n3": arch("amd64"), "n4": arch("arm64")}
MNEW, MOLD = platforms(5), platforms(4)
M_NEW, M_OLD = released_output(multi(MNEW)), released_output(multi(MOLD))
M_HELD = release_spec(multi(MNEW), Plan(M_OLD), None)  # M_OLD released before


def files(status: dict) -> dict[str, str]:
    """architecture -> the file's sha256 digest."""
    return {o["architecture"]: f"sha256:{o['sha256']}" for o in status["outputs"]}


def holds(nodes: str, status: dict = MNEW, phase: str = "Ready") -> dict[str, Report]:
    """Each of `nodes` holding its own platform's file of the build `status`."""
    return {n: Report(phase, files(status)[FLEET[n]["kubernetes.io/arch"]], NOW - timedelta(seconds=120))
            for n in nodes.split()}


def test_a_release_of_several_platforms_names_each_platforms_file():
    sent = ("os", "architecture", "reference", "digest", "sha256", "sha512", "size", "compression")
    assert M_NEW["platforms"] == [{k: o[k] for k in sent} for o in MNEW["outputs"]]
    assert (M_NEW["reference"], M_NEW["digest"]) == (MNEW["output"]["reference"], MNEW["output"]["digest"])
    assert set(M_NEW) == {"reference", "digest", "platforms"}
    # An entry without its file (as no build writes it) is no output to deliver.
    assert released_output(multi({**MNEW, "outputs": [MNEW["outputs"][0], {"platform": "linux/arm64"}]})) is None


@pytest.mark.parametrize(("delivery", "held", "reports", "expected"), [
    ({}, None, {}, Plan(M_NEW)),
    ({"rollout": WAVES}, None, {}, Plan(M_NEW, ["n0"], 1, 3)),
    ({"rollout": WAVES}, None, holds("n0"), Plan(M_NEW, ["n0", "n1", "n3"], 2, 3)),
    # n0 holding the arm64 file (or the old build's) does not hold the output: its own platform's is amd64.
    ({"rollout": WAVES}, None, {"n0": Report("Ready", files(MNEW)["arm64"], NOW - timedelta(seconds=120))},
     Plan(M_NEW, ["n0"], 1, 3)),
    ({"rollout": WAVES}, None, holds("n0", MOLD), Plan(M_NEW, ["n0"], 1, 3)),
    ({"rollout": WAVES}, None, holds("n0 n1 n3"), Plan(M_NEW, None, 3, 3)),  # the last wave: n2 is not waited for
    # n2 failing (it reports NoPlatform) halts nothing: it takes no part.
    ({"rollout": WAVES}, None, {**holds("n0"), "n2": Report("Failed", None, NOW)},
     Plan(M_NEW, ["n0", "n1", "n3"], 2, 3)),
    ({"rollout": WAVES, "paused": True}, M_HELD, holds("n0"), Plan(M_OLD)),
    # A pin by the index's digest, by one platform's file or by one platform's artifact: the whole output, each
    # host its own platform's file of it.
    ({"pinnedDigest": MOLD["output"]["digest"]}, M_HELD, {}, Plan(M_OLD)),
    ({"pinnedDigest": files(MOLD)["arm64"]}, M_HELD, {}, Plan(M_OLD)),
    ({"pinnedDigest": MOLD["outputs"][0]["digest"]}, M_HELD, {}, Plan(M_OLD)),
    ({"pinnedDigest": files(MNEW)["amd64"]}, M_HELD, {}, Plan(M_NEW)),
])
def test_plan_of_several_platforms(delivery, held, reports, expected):
    assert plan(multi(MNEW, **delivery), held, FLEET, reports, NOW) == expected


ARM64 = {"platform": "linux/arm64", "os": "linux", "architecture": "arm64", "entries": 7}


@pytest.mark.parametrize(("outputs", "labels", "takes"), [
    # A build of one platform: its file names the platform it was built for (status.outputs' one entry) ...
    ([{**NEW, **ARM64}], arch("arm64"), True),
    ([{**NEW, **ARM64}], arch("amd64"), False),  # ... so a node of another architecture takes nothing,
    ([{**NEW, **ARM64}], {"kubernetes.io/arch": "amd64"}, False),
    ([{**NEW, **ARM64}], {"kubernetes.io/os": "windows", "kubernetes.io/arch": "arm64"}, False),
    ([{**NEW, **ARM64}], {}, True),  # and a node without the labels takes it, as it always did;
    ([{**OLD, **ARM64}], arch("amd64"), True),  # an entry of another file says nothing of this one;
    ([], arch("amd64"), True),  # nor does a status from before status.outputs.
])
def test_a_one_platform_file_goes_to_nodes_of_its_platform(outputs, labels, takes):
    released = released_output({**build(), "status": {"output": NEW, "outputs": outputs}})
    assert released is not None
    assert (crd.file_for(released, labels) == released) is takes
    assert {k: released[k] for k in ("sha256", "reference")} == {"sha256": NEW["sha256"], "reference": NEW["reference"]}
    assert crd.platforms_of(released) == ([released] if outputs and outputs[0]["sha256"] == NEW["sha256"] else [])


def test_the_release_remembers_what_a_pin_may_name():
    """Outputs named before, newest first, as many as `keep`; the one named now is not among them."""
    spec = release_spec(build(), Plan(NEW), HELD)
    assert spec["output"] == NEW and spec["history"] == [OLD, OLDER] and "rollout" not in spec
    assert release_spec(build(keep=1), Plan(NEW), HELD)["history"] == [OLD]
    pinned = release_spec(build(), Plan(OLDER), spec)
    assert pinned["output"] == OLDER and pinned["history"] == [NEW, OLD]
    # Of several platforms, the history keeps each output whole (every platform's file), one entry per index.
    after = release_spec(multi(platforms(6)), None, release_spec(multi(MNEW), None, M_HELD))
    assert after["history"] == [M_NEW, M_OLD] and after["output"]["digest"] == platforms(6)["output"]["digest"]
    assert release_spec(multi(platforms(6)), None, after) == after  # the same output again: nothing changes
