"""The states of an InitramfsBuild as kstatus-conformant, metav1.Condition-shaped conditions.

- `Ready`: True once a valid output exists for the current generation. Its reason is Succeeded,
  the phase (Resolving, Queued, Building) while there is no output yet, or why it failed.
  During a refresh rebuild (same generation, new digest) it stays True, with the previous
  output in status, until the new one lands.
- `Reconciling`: True while work is in flight (Resolving, Queued, Building, Refreshing),
  retries of a retryable failure included; removed otherwise (kstatus: absent means False).
- `Stalled`: True with the failure's reason on a failure someone must act on; removed otherwise.
  A failed lookup or Job creation is still looked at again with backoff (the message says when),
  so fixing the cause heals the build without a spec change.

- `Verified` (only for builds with spec.verify, or the operator's default): whether the newest output booted.
  Verifying (False) while a verification Job boots it, then True with reason Booted, or False with
  BootFailed or BootTimeout (and Stalled: the output is never given to hosts), the last console lines in
  the message. Until it is True the new output is not in status.output: Ready waits for it (or, on a
  refresh, stays True with the previous output), and delivery only ever sees outputs that booted.

Reconciling and Stalled are never True together: kstatus reads the first of them it finds.

A suspended build (spec.suspend) is paused, as Flux pauses its objects: Ready keeps saying whether a
valid output exists (True: kstatus Current; False: InProgress, nothing was built to be current), with
the reason Suspended and no Reconciling; a failure that needs someone stays Stalled (pausing fixes
nothing); a Job that was running is reported as usual until its result is recorded.
"""

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

READY, RECONCILING, STALLED = "Ready", "Reconciling", "Stalled"
RESOLVING, QUEUED, BUILDING, REFRESHING, SUCCEEDED = "Resolving", "Queued", "Building", "Refreshing", "Succeeded"
SUSPENDED, RESUMED = "Suspended", "Resumed"
VERIFIED, VERIFYING, BOOTED = "Verified", "Verifying", "Booted"


@dataclass(frozen=True)
class Reason:
    reason: str   # CamelCase, as the Kubernetes condition reason pattern wants
    message: str


@dataclass(frozen=True)
class State:
    ready: bool
    summary: Reason                   # Ready's reason and message
    reconciling: Reason | None = None
    stalled: Reason | None = None
    problem: Reason | None = None     # the failure behind this state, if any
    news: Reason | None = None        # a pause or a resume: what an Event says, and no build finished
    verified: Reason | None = None    # the Verified condition (True iff its reason is Booted); None: as it was

    @property
    def headline(self) -> Reason:
        """What an Event about this state says: the pause or resume, the problem if any, else the work in
        flight or the result."""
        if self.news:
            return self.news
        if self.problem:
            return self.problem
        if self.ready and self.reconciling:
            return self.reconciling
        return self.summary


def in_flight(phase: str, message: str) -> State:
    """Resolving, Queued or Building, with no output yet."""
    return State(False, Reason(phase, message), reconciling=Reason(phase, message))


def succeeded(message: str) -> State:
    return State(True, Reason(SUCCEEDED, message))


def retrying(reason: str, message: str, phase: str) -> State:
    """A failure the operator (or the kubelet) keeps retrying: not Ready, still Reconciling in `phase`."""
    return State(False, Reason(reason, message), reconciling=Reason(phase, message), problem=Reason(reason, message))


def failed(reason: str, message: str) -> State:
    """A failure of the current generation and digest that someone must act on."""
    return State(False, Reason(reason, message), stalled=Reason(reason, message), problem=Reason(reason, message))


def over_previous_output(state: State, previous: str) -> State:
    """`state` of a refresh rebuild: the previous output stays valid (Ready, with its message) meanwhile."""
    if state.ready:
        return state
    kept = Reason(SUCCEEDED, previous)
    if state.stalled:
        return State(True, kept, stalled=state.stalled, problem=state.problem, verified=state.verified)
    detail = explained(state.problem.reason, state.problem.message) if state.problem else state.summary.message
    return State(True, kept, reconciling=Reason(REFRESHING, detail), problem=state.problem, verified=state.verified)


def verifying(message: str) -> State:
    """A new output being booted: not Ready for it yet."""
    return replace(in_flight(VERIFYING, message), verified=Reason(VERIFYING, message))


def verifying_held(reason: str, message: str) -> State:
    """A verification held up by something the kubelet keeps retrying (its image, scheduling): said, not final."""
    return replace(retrying(reason, message, VERIFYING), verified=Reason(VERIFYING, message))


def booted(built: str, verdict: str) -> State:
    """The new output booted: Ready with it (`built`: the build's own words)."""
    return State(True, Reason(SUCCEEDED, built), verified=Reason(BOOTED, verdict))


def boot_failed(reason: str, message: str) -> State:
    """The new output did not boot (or could not be booted): Stalled, never delivered, whatever came before."""
    return replace(failed(reason, message), verified=Reason(reason, message))


def recorded(status: dict) -> State:
    """The state the conditions in `status` say."""
    ready, reconciling, stalled = (find(status, t) for t in (READY, RECONCILING, STALLED))
    def reason(c: dict) -> Reason | None:
        return Reason(c["reason"], c.get("message") or "") if c.get("status") == "True" else None
    summary = Reason(ready.get("reason") or RESOLVING, ready.get("message") or "")
    return State(ready.get("status") == "True", summary, reason(reconciling), reason(stalled), reason(stalled))


def suspended(before: State, built: bool) -> State:
    """A paused build whose state was `before`; `built`: whether that state is of the current spec."""
    if built and before.stalled:
        return before
    news = Reason(SUSPENDED, "spec.suspend is true: no build jobs and no registry lookups until it is false")
    if built and before.summary.reason == SUSPENDED:
        return State(before.ready, before.summary, news=news)
    if built and before.ready:  # the output's own words, which a resume gives back to Succeeded
        return State(True, Reason(SUSPENDED, before.summary.message), news=news)
    if built:
        return State(False, Reason(SUSPENDED, f"paused before a build finished; it was "
                                              f"{explained(before.summary.reason, before.summary.message)}"), news=news)
    return State(False, Reason(SUSPENDED, "paused before this spec was built"), news=news)


def resumed(before: State) -> State:
    """A paused build taken up again: Succeeded with its output, else in flight until the pass says more."""
    news = Reason(RESUMED, "spec.suspend is false: building and looking up again")
    if before.ready:
        return State(True, Reason(SUCCEEDED, before.summary.message), news=news)
    return State(False, Reason(RESUMED, news.message), reconciling=news, news=news)


def explained(reason: str, message: str) -> str:
    """`reason: message`, for text that names a reason outside a condition's own reason field; the reason once,
    also when the message already starts with it."""
    if not message or message == reason:
        return reason
    return message if message.startswith(f"{reason}: ") else f"{reason}: {message}"


def conditions(old: list[dict] | None, state: State, generation: int, now: str) -> list[dict]:
    """The conditions of `state`, and the others' (types not about the build) as they were;
    lastTransitionTime only moves when a condition's status changes."""
    previous = {c["type"]: c for c in old or []}
    wanted = [(READY, "True" if state.ready else "False", state.summary)]
    wanted += [(type_, "True", r) for type_, r in ((RECONCILING, state.reconciling), (STALLED, state.stalled)) if r]
    if state.verified:
        wanted.append((VERIFIED, "True" if state.verified.reason == BOOTED else "False", state.verified))
    own = (READY, RECONCILING, STALLED, VERIFIED) if state.verified else (READY, RECONCILING, STALLED)
    result = []
    for type_, status, r in wanted:
        result.append({"type": type_, "status": status, "reason": r.reason, "message": r.message,
                       "observedGeneration": generation,
                       "lastTransitionTime": transition_time(previous.get(type_), status, now)})
    return result + [c for c in old or [] if c.get("type") not in own]


def transition_time(before: Mapping[str, Any] | None, status: str, now: str, key: str = "status") -> str:
    """lastTransitionTime of a condition (or of anything whose `key` is its status) going from `before` to
    `status`: kept while the status stays, `now` when it changes or none was recorded."""
    if before and before.get(key) == status and before.get("lastTransitionTime"):
        return before["lastTransitionTime"]
    return now


def find(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


def headline_of(status: dict) -> str | None:
    """The reason an Event about the written state said (see State.headline), as far as status tells."""
    stalled, ready, reconciling = find(status, STALLED), find(status, READY), find(status, RECONCILING)
    if stalled:
        return stalled.get("reason")
    if ready.get("status") == "True" and reconciling:
        return reconciling.get("reason")
    return ready.get("reason")


def now() -> datetime:
    return datetime.now(UTC)


def timestamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def parse_duration(text: str) -> float:
    """Seconds in a `1h30m`-style duration (the CRD admits only h, m and s)."""
    total, number = 0.0, ""
    for ch in text:
        if ch.isdigit():
            number += ch
        else:
            total += int(number) * {"h": 3600, "m": 60, "s": 1}[ch]
            number = ""
    return total
