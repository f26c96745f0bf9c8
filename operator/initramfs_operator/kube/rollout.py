"""Which output a build's hosts may take, and which of them may take it now: waves, pause, halt and pin.

A pure function of the build, the release as written last, the selected nodes and their agents' reports:
level-triggered, so a restarted operator picks a rollout up where the reports say it is.

- `spec.delivery.pinnedDigest` names an output the release has held (its current one or its `history`,
  as long as `keep`): every selected host switches to it at once (a host keeping the file only re-points
  `current`; another pulls it). Not waved: a pin is a rollback.
- Without `spec.delivery.rollout`, every selected host takes the build's output at once.
- With it, the selected nodes in name order are cut into waves: the first `canary` of them, then
  `waveSize` (a count or a percentage of the selection) at a time. A wave starts once every host of the
  waves before holds the output and `pauseSeconds` have passed since the last of them got it. The release
  names the hosts that may take the output (`spec.rollout.nodes`); the others keep their `current`. When
  more than `maxFailures` hosts that may take it report Failed, the rollout halts where it is (the
  Delivered condition says RolloutHalted and names them); it resumes once they recover, and a new output
  (a fix) starts over with the canary.
- `spec.delivery.paused` holds the release as it is.

A build of several platforms delivers each host its own platform's file (crd.file_for: by the Node's
kubernetes.io/os and kubernetes.io/arch labels): the release's output is their index with one entry per
platform, and a host holds the output when it holds its own platform's file. A selected host of no platform
the build has takes no part: not in a wave, not waited for. A pin may name the index's digest, or any
platform's file or artifact digest: every host gets its own platform's file of that output.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..oci import image
from . import conditions, crd

OUTPUT_FIELDS = ("reference", "digest", "sha256", "sha512", "size", "compression")
PLATFORM_FILE_FIELDS = (*image.PLATFORM_FIELDS, *OUTPUT_FIELDS)

Labels = Mapping[str, Mapping[str, str]]  # node -> its labels


def released_output(build: Mapping[str, Any]) -> dict[str, Any] | None:
    """The output the build's hosts may take (crd.deliverable: with spec.verify, only one that booted), as much
    of it as a release carries: the file, or for several platforms their index and each platform's file."""
    output = crd.deliverable(build)
    if not output:
        return None
    if "outputs" in output:
        return {"reference": output["reference"], "digest": output["digest"],
                "platforms": [{k: o[k] for k in PLATFORM_FILE_FIELDS if o.get(k) is not None}
                              for o in output["outputs"]]}
    # One platform: the file, and the platform it was built for (status.outputs' one entry, when it is this
    # file's), so that a node of another architecture is not given it.
    file = {k: output[k] for k in OUTPUT_FIELDS if output.get(k) is not None}
    entries = (build.get("status") or {}).get("outputs") or []
    if len(entries) == 1 and entries[0].get("sha256") == output["sha256"]:
        file |= {k: entries[0][k] for k in image.PLATFORM_FIELDS if entries[0].get(k)}
    return file


@dataclass(frozen=True)
class Report:
    phase: str               # Pending, Ready or Failed
    digest: str | None       # what its current is, sha256:<file sha256>
    since: datetime | None   # when the phase last changed


@dataclass(frozen=True)
class Plan:
    output: dict[str, Any] | None   # what the release names
    nodes: list[str] | None = None  # the hosts that may take it; None: every selected host
    wave: int = 0                   # 1-based, of `waves`; 0: not waved
    waves: int = 0
    halted: list[str] = field(default_factory=list)  # the failed hosts that halted it
    missing_pin: str | None = None  # a pinnedDigest the release does not know
    requeue_after: float | None = None  # a pause ends then


def digest_of(output: Mapping[str, Any] | None) -> str | None:
    """What names an output: its file's sha256 digest, or for several platforms their index's digest."""
    if not output:
        return None
    return str(output["digest"]) if "platforms" in output else f"sha256:{output['sha256']}"


def expected(output: Mapping[str, Any] | None, labels: Mapping[str, str]) -> str | None:
    """The digest a node with these labels reports once it holds `output`: its platform's file's; None when the
    build has no file for it."""
    file = crd.file_for(output, labels) if output else None
    return f"sha256:{file['sha256']}" if file else None


def _names(output: Mapping[str, Any]) -> set[str | None]:
    """Every digest a pin may name the output by: the file's and the artifact's, of each platform's too."""
    files = [output, *(output.get("platforms") or [])]
    return {digest_of(output)} | {f.get("digest") for f in files} | {f"sha256:{f['sha256']}" for f in files
                                                                       if f.get("sha256")}


def _known(held: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    return ([held["output"]] if held and held.get("output") else []) + list((held or {}).get("history") or [])


def history(held: Mapping[str, Any] | None, output: Mapping[str, Any] | None, keep: int) -> list[dict[str, Any]]:
    """The outputs the release named before, newest first, `output` apart: what a pin may name (as many as
    hosts keep)."""
    seen, earlier = {digest_of(output)}, []
    for known in _known(held):
        if digest_of(known) not in seen:
            seen.add(digest_of(known))
            earlier.append(known)
    return earlier[:keep]


def pinned(pin: str, build: Mapping[str, Any], held: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The output a pin names, by its file's sha256 digest or its artifact's digest (of several platforms: the
    index's, or one platform's file or artifact)."""
    candidates = [o for o in [released_output(build)] if o] + _known(held)
    return next((o for o in candidates if pin in _names(o)), None)


def wave_ends(count: int, rollout: Mapping[str, Any]) -> list[int]:
    """How many of `count` hosts may hold the output once each wave has started, in order."""
    canary = min(int(rollout.get("canary", 0)), count)
    size = rollout.get("waveSize", "100%")
    step = math.ceil(count * int(size[:-1]) / 100) if isinstance(size, str) else int(size)
    ends, end = ([canary] if canary else []), canary
    while end < count:
        end = min(end + max(step, 1), count)
        ends.append(end)
    return ends or [count]


def takers(output: Mapping[str, Any] | None, selected: Labels) -> list[str]:
    """The selected nodes, in name order, that have a file of the output: all of them for one file (or none yet),
    those of one of its platforms for several."""
    return sorted(n for n, labels in selected.items() if output is None or crd.file_for(output, labels) is not None)


def plan(build: Mapping[str, Any], held: Mapping[str, Any] | None, selected: Labels,
         reports: Mapping[str, Report], now: datetime) -> Plan:
    """`selected`: the nodes the build's selector picks, with their labels (their platform)."""
    delivery = build["spec"].get("delivery") or {}
    if delivery.get("paused") and held is not None:
        return Plan(held.get("output"), (held.get("rollout") or {}).get("nodes"))
    pin = delivery.get("pinnedDigest")
    if pin:
        found = pinned(pin, build, held)
        if found is None:
            return Plan(held.get("output") if held else None, (held or {}).get("rollout", {}).get("nodes"),
                        missing_pin=pin)
        return Plan(found)
    output, rollout = released_output(build), delivery.get("rollout")
    if output is None or rollout is None:
        return Plan(output)
    order = takers(output, selected)
    holding = {n for n in order if reports.get(n, Report("", None, None)).digest == expected(output, selected[n])
               and reports[n].phase == "Ready"}
    ends = wave_ends(len(order), rollout)
    # The first wave not yet done: the one of the first host (in order) that does not hold the output; the
    # hosts before it all do.
    first_missing = next((i for i, n in enumerate(order) if n not in holding), len(order))
    wave = next((i for i, end in enumerate(ends) if end > first_missing), len(ends) - 1)
    allowed = order[:ends[wave]]
    failed = [n for n in allowed if reports.get(n, Report("", None, None)).phase == "Failed"]
    if len(failed) > int(rollout.get("maxFailures", 0)):
        # Halted: no host beyond the ones that may take it already.
        before = (held or {}).get("rollout", {}).get("nodes") if (held or {}).get("output") == output else None
        return Plan(output, before if before is not None else allowed, wave + 1, len(ends), halted=failed)
    if wave > 0:
        done = [since for n in order[:ends[wave - 1]] if (since := reports[n].since) is not None]
        left = float(rollout.get("pauseSeconds", 0)) - ((now - max(done)).total_seconds() if done else 0.0)
        if left > 0:
            return Plan(output, order[:ends[wave - 1]], wave, len(ends), requeue_after=left)
    return Plan(output, None if len(allowed) == len(order) else allowed, wave + 1, len(ends))


def report_of(status: Mapping[str, Any]) -> Report:
    return Report(status.get("phase") or "Pending", status.get("digest"),
                  conditions.parse_time(status.get("lastTransitionTime")))
