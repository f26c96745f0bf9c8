"""The time a reconcile pass reads: one object, passed in, so that a test can set it.

`monotonic()` measures waits (backoff, how long a claim's uid is taken as current); `now()` is
wall-clock time, compared with the timestamps status and the API server write.
"""

import time
from datetime import UTC, datetime


class Clock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)


REAL = Clock()
