"""The states an InitramfsBuild goes through, as metav1.Condition-shaped `Ready` and `Progressing`."""

from dataclasses import dataclass
from datetime import datetime, timezone

READY, PROGRESSING = "Ready", "Progressing"
QUEUED, BUILDING, SUCCEEDED = "Queued", "Building", "Succeeded"
IN_PROGRESS = (QUEUED, BUILDING)


@dataclass(frozen=True)
class State:
    ready: bool
    progressing: bool
    reason: str   # CamelCase, as the Kubernetes condition reason pattern wants
    message: str


def queued(message: str) -> State:
    return State(False, True, QUEUED, message)


def building(message: str) -> State:
    return State(False, True, BUILDING, message)


def succeeded(message: str) -> State:
    return State(True, False, SUCCEEDED, message)


def failed(reason: str, message: str) -> State:
    return State(False, False, reason, message)


def conditions(old: list[dict] | None, state: State, generation: int, now: str) -> list[dict]:
    """Ready and Progressing for `state`; lastTransitionTime only moves when a condition's status flips."""
    previous = {c["type"]: c for c in old or []}
    result = []
    for type_, value in ((READY, state.ready), (PROGRESSING, state.progressing)):
        status = "True" if value else "False"
        before = previous.get(type_)
        changed = not before or before.get("status") != status
        result.append({"type": type_, "status": status, "reason": state.reason, "message": state.message,
                       "observedGeneration": generation,
                       "lastTransitionTime": now if changed else before["lastTransitionTime"]})
    return result


def find(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


def reason(status: dict) -> str | None:
    return find(status, READY).get("reason")


def now() -> datetime:
    return datetime.now(timezone.utc)


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
