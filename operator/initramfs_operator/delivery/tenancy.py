"""What the admin lets each namespace put on a host, and which build a shared directory belongs to: the
rules the agent applies before it writes anything (pure functions over what it knows).

- Only the namespaces the admin names (the chart's delivery.namespaces, or those its
  delivery.namespaceSelector picks) may deliver; with neither set, every namespace the agent serves may.
- A namespace may hold at most `quota` bytes of version files on each host. A download is refused
  when the namespace would hold more once the new version is in place and its directory pruned to
  `keep` (for a moment during a roll-forward, one version more is on disk).
- A directory belongs to the build named in its owner mark while that build exists; otherwise (no
  mark yet, or its build deleted with reclaimPolicy Retain) to the earliest of the builds claiming it,
  by creationTimestamp, then name. The others are refused and nothing of the owner's is touched.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

NAMESPACE_NOT_ALLOWED = "NamespaceNotAllowed"
QUOTA_EXCEEDED = "QuotaExceeded"
DELIVERY_CONFLICT = "DeliveryConflict"


@dataclass(frozen=True)
class Tenancy:
    """The admin's rules, as the agent's flags give them."""

    namespaces: frozenset[str] = frozenset()  # may deliver
    namespace_selector: str = ""              # a label selector: the namespaces it picks may deliver too
    quota: int = 0                            # bytes of versions per namespace per host; 0: no limit

    @property
    def restricts_namespaces(self) -> bool:
        return bool(self.namespaces or self.namespace_selector)

    def may_deliver(self, namespace: str, selected: Iterable[str]) -> bool:
        """`selected`: the namespaces the selector picks now."""
        return not self.restricts_namespaces or namespace in self.namespaces or namespace in selected

    def over_quota(self, held: int) -> bool:
        return self.quota > 0 and held > self.quota


def bytes_after(namespace_bytes: int, directory_versions: Sequence[int], keep: int, size: int) -> int:
    """What a namespace holding `namespace_bytes` will hold once a version of `size` bytes is installed in a
    directory holding versions of these sizes (newest first) and pruned to `keep`: the new version and the
    `keep - 1` newest others stay."""
    return namespace_bytes - sum(directory_versions) + size + sum(directory_versions[:max(keep - 1, 0)])


@dataclass(frozen=True, order=True)
class Claimant:
    """A build naming a directory, ordered as the ownership rule orders them."""

    created: str  # metadata.creationTimestamp (RFC 3339 in UTC: sorts as time does)
    name: str
    uid: str


def directory_owner(mark: str | None, claimants: Iterable[Claimant], existing: Iterable[str]) -> str:
    """The UID of the build a directory belongs to. `claimants`: the builds delivering into it to this host now
    (at least the one asking); `mark`: the UID its owner mark names; `existing`: the UIDs of every build of the
    namespace (an owner need not be a claimant: its host may have left its selector, its files retained)."""
    if mark is not None and mark in set(existing):
        return mark
    return min(claimants).uid
