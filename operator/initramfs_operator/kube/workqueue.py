"""Keys of builds to reconcile, and when to retry them (client-go's workqueue, in small).

- A key waits at most once: adding a waiting key again changes nothing.
- A key is handed to one worker at a time; added while a worker has it, it waits until
  that worker is done, so a pass always starts after the event that asked for it.
- `add_after` delays a key (retries, refreshInterval, builds to look at again); only the
  earliest delay of a key is kept.
- Urgent keys (a build whose Job or pod changed) go before the others: a thousand new builds
  waiting to be told they are queued must not hold back the status of the running ones.
"""

import heapq
import random
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass

from .clock import REAL, Clock


class WorkQueue:
    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._urgent: dict[Hashable, None] = {}   # insertion-ordered: first in, first out
        self._waiting: dict[Hashable, None] = {}
        self._processing: set[Hashable] = set()
        self._again: dict[Hashable, bool] = {}    # added while processing: urgent?
        self._delayed: list[tuple[float, int, Hashable]] = []
        self._due: dict[Hashable, float] = {}
        self._sequence = 0

    def add(self, key: Hashable, urgent: bool = False) -> None:
        with self._cv:
            self._add(key, urgent)

    def _add(self, key: Hashable, urgent: bool = False) -> None:
        if key in self._processing:
            self._again[key] = self._again.get(key, False) or urgent
        elif key in self._urgent or (key in self._waiting and not urgent):
            return
        else:
            self._waiting.pop(key, None)
            (self._urgent if urgent else self._waiting)[key] = None
            self._cv.notify()

    def add_after(self, key: Hashable, seconds: float) -> None:
        if seconds <= 0:
            self.add(key)
            return
        when = time.monotonic() + seconds
        with self._cv:
            if self._due.get(key, float("inf")) <= when:
                return
            self._due[key] = when
            self._sequence += 1
            heapq.heappush(self._delayed, (when, self._sequence, key))
            self._cv.notify()

    def get(self, timeout: float) -> Hashable | None:
        """The next key, marked as being processed until `done(key)`; None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                now = time.monotonic()
                self._release_due(now)
                lane = self._urgent or self._waiting
                if lane:
                    key = next(iter(lane))
                    del lane[key]
                    self._processing.add(key)
                    return key
                wake = min(deadline, self._delayed[0][0]) if self._delayed else deadline
                if now >= deadline:
                    return None
                self._cv.wait(wake - now)

    def _release_due(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            when, _, key = heapq.heappop(self._delayed)
            if self._due.get(key) == when:
                del self._due[key]
                self._add(key)

    def done(self, key: Hashable) -> None:
        with self._cv:
            self._processing.discard(key)
            if key in self._again:
                self._add(key, self._again.pop(key))

    def __len__(self) -> int:
        with self._cv:
            return len(self._urgent) + len(self._waiting)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter and a cap: base, 2 x base, 4 x base, ... at most `cap` seconds."""

    base: float
    cap: float
    jitter: float = 0.2  # up to this fraction shorter, so that builds failing together spread out

    def delay(self, failures: int) -> float:
        exact = min(self.cap, self.base * 2 ** max(failures - 1, 0))
        return exact * (1 - self.jitter * random.random())


@dataclass(frozen=True)
class Retry:
    failures: int   # in a row
    delay: float    # seconds from the end of the last attempt to the next
    at: float       # the clock's monotonic() of the next attempt


class Retries:
    """Consecutive failures per key and when to try again, counted from when each attempt ended."""

    def __init__(self, backoff: Backoff, clock: Clock = REAL):
        self.backoff, self.clock = backoff, clock
        self._retries: dict[Hashable, Retry] = {}
        self._lock = threading.Lock()

    def failed(self, key: Hashable) -> Retry:
        with self._lock:
            before = self._retries.get(key)
            failures = before.failures + 1 if before else 1
            delay = self.backoff.delay(failures)
            retry = self._retries[key] = Retry(failures, delay, self.clock.monotonic() + delay)
        return retry

    def get(self, key: Hashable) -> Retry | None:
        with self._lock:
            return self._retries.get(key)

    def reset(self, key: Hashable) -> None:
        with self._lock:
            self._retries.pop(key, None)
