"""What the command line decides about builds (command.py), read by the reconciler and its parts."""

from dataclasses import dataclass

from . import buildjob, verifyjob
from .workqueue import Backoff


@dataclass(frozen=True)
class Settings:
    builder_image: str
    max_concurrent_builds: int
    pod_ids: buildjob.PodIds = buildjob.PodIds()
    limits: buildjob.Limits = buildjob.Limits()
    pod_defaults: buildjob.PodDefaults = buildjob.PodDefaults()
    retry: Backoff = Backoff(base=5.0, cap=300.0)  # failed lookups and refused Jobs, per build
    stall_after: int = 5                 # failures in a row after which a retried failure is reported Stalled
    lookup_workers: int = 4              # registry lookups at once
    verify: verifyjob.Settings = verifyjob.Settings()  # boot verification of outputs (spec.verify)
