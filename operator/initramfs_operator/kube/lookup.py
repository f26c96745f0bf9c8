"""What an image reference points at right now, asked by the operator itself, off the reconcile path.

The digest names the build Job and is what refreshInterval compares; the build pod is
then given the image pinned to it. The engine's registry client does the talking, with
the same options the build pod gets (credentials, CA, plain HTTP).

A registry can take its time, or never answer: lookups run in a few threads of their own
(`Lookups`), each with short timeouts, so a pass only asks a question and moves on, and a
bad registry delays nobody but the builds that use it.
"""

import dataclasses
import logging
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from ..errors import BuildError
from ..oci import reference, registry
from .clock import REAL, Clock

log = logging.getLogger(__name__)

# A lookup is one HEAD (a manifest GET at worst): a registry that does not answer this fast is
# reported, and asked again later with backoff (reconcile.py), rather than waited for.
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
RETRIES = 1
SHARED_SECONDS = 5.0  # how long one lookup's answer serves other builds asking the same


def pinned_digest(spec: dict) -> str | None:
    """The digest the image reference pins, if it does: nothing to ask a registry then.

    Raises UsageError for a reference that does not parse.
    """
    return reference.parse(spec["image"]).digest


def current_digest(image: str, options: registry.RegistryOptions) -> str:
    """What the reference (the build's image, or its OCI output's tag) points at now. Raises an
    errors.BuildError whose `.reason` goes into the status."""
    return registry.current_digest(image, limited(options))


def limited(options: registry.RegistryOptions) -> registry.RegistryOptions:
    """The options of a request the operator makes itself: short timeouts, one retry."""
    return dataclasses.replace(options, timeout=TIMEOUT, retries=RETRIES)


class Pending:
    """A question asked and not answered yet."""


PENDING = Pending()


@dataclass(frozen=True)
class Answer:
    value: Any  # what the lookup returned (a digest; a registry.Removal for cleanup.py); None on error
    error: BuildError | None
    ended: datetime  # when the lookup ended: backoff and resolvedTime count from here


class Lookups:
    """Registry lookups in `workers` threads of their own.

    A pass `ask`s a question for its build and moves on; when the answer arrives,
    `on_answer(build)` queues the build for another pass, which reads it and `take`s it.

    Builds that ask the same registry the same thing with the same access (`same`, a key
    saying so) share one lookup, and its answer stays good for SHARED_SECONDS: a thousand
    builds of one image cost its registry one request, and one that fails is not asked again
    by each of them. A build is never handed the same answer twice: its retry (whose backoff
    may end within SHARED_SECONDS) asks the registry again instead of counting the failure it
    has already counted. The lookups run in `pool` (by default `workers` threads of its own).
    """

    def __init__(self, workers: int, on_answer: Callable[[Hashable], None], clock: Clock = REAL,
                 pool: Executor | None = None):
        self._pool = pool or ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lookup")
        self._on_answer, self._clock = on_answer, clock
        self._lock = threading.Lock()
        self._state: dict[Hashable, dict[Hashable, Pending | Answer]] = {}  # build -> question -> state
        self._flights: dict[Hashable, list[tuple[Hashable, Hashable]]] = {}  # same -> (build, question) waiting
        self._recent: dict[Hashable, tuple[float, Answer]] = {}             # same -> (its monotonic(), answer)
        self._handed: dict[tuple[Hashable, Hashable], Answer] = {}          # (build, same) -> last answer given

    def ask(self, build: Hashable, question: Hashable, same: Hashable, lookup: Callable[[], Any]) -> None:
        with self._lock:
            asked = self._state.setdefault(build, {})
            if question in asked:
                return
            recent = self._recent.get(same)
            answered = recent is not None and self._clock.monotonic() - recent[0] < SHARED_SECONDS and \
                recent[1] is not self._handed.get((build, same))
            if recent and answered:
                asked[question] = self._handed[build, same] = recent[1]
            else:
                asked[question] = PENDING
            if not answered:
                flight = self._flights.setdefault(same, [])
                flight.append((build, question))
                if len(flight) > 1:
                    return  # the lookup in flight answers this build too
        if answered:
            self._on_answer(build)
        else:
            self._pool.submit(self._run, same, lookup)

    def _run(self, same: Hashable, lookup: Callable[[], Any]) -> None:
        try:
            answer = Answer(lookup(), None, self._clock.now())
        except BuildError as e:
            answer = Answer(None, e, self._clock.now())
        except Exception as e:  # a bug, but the builds': report it on them, keep the thread
            log.exception("lookup %s failed", same)
            error = BuildError(f"the lookup failed unexpectedly ({type(e).__name__})")
            answer = Answer(None, error, self._clock.now())
        with self._lock:
            waiting = self._flights.pop(same, [])
            cutoff = self._clock.monotonic() - SHARED_SECONDS
            for key in [k for k, (t, _) in self._recent.items() if t < cutoff]:
                del self._recent[key]
            self._recent[same] = (self._clock.monotonic(), answer)
            for build, question in waiting:
                asked = self._state.get(build)
                if asked is not None and question in asked:  # else forgotten meanwhile (no longer of interest)
                    asked[question] = self._handed[build, same] = answer
        for build, _ in waiting:
            self._on_answer(build)

    def answer(self, build: Hashable, question: Hashable) -> Pending | Answer | None:
        """PENDING, the answer, or None if the question was not asked (or its answer was taken)."""
        with self._lock:
            return self._state.get(build, {}).get(question)

    def take(self, build: Hashable, question: Hashable) -> None:
        with self._lock:
            asked = self._state.get(build, {})
            if isinstance(asked.get(question), Answer):
                del asked[question]

    def forget(self, build: Hashable, keep: tuple = ()) -> None:
        """Drop the build's questions but those in `keep` (a lookup in flight still answers, unheard); with
        nothing kept (the build is gone), also which answers it was given."""
        with self._lock:
            if not keep:
                for handed in [h for h in self._handed if h[0] == build]:
                    del self._handed[handed]
            asked = self._state.get(build)
            if asked is None:
                return
            for question in [q for q in asked if q not in keep]:
                del asked[question]
            if not asked:
                del self._state[build]

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
