"""Removing initramfs artifacts this project pushed: the manifest, the tag that names it, and its entry in
its subject's referrers tag.

Registries differ in what they allow (deleting is optional in the OCI distribution spec):
- DELETE /manifests/<digest>: Debian's docker-registry (distribution 2.8) answers 202 when its config
  has `storage.delete.enabled: true`, else 405 UNSUPPORTED; deleting a manifest there untags it too;
- DELETE /manifests/<tag>: OCI distribution 1.1 allows registries to offer it; distribution 2.8
  refuses it (400 DIGEST_INVALID). It is the fallback for a tag still naming the artifact.
What a registry refuses is reported (`Removal.left`), not retried. Only an artifact of ours (artifactType
application/vnd.initramfs.v1) is ever deleted; blobs stay until the registry's garbage collector takes them.
"""

import json
from dataclasses import dataclass, field
from typing import Any

from ...errors import AuthError, InvalidImageError
from .. import digests, image
from ..reference import Reference
from .options import RegistryOptions
from .pull import manifest
from .push import ARTIFACT_TYPE
from .transport import NotFound, Transport, fail

DELETED, GONE, REFUSED = "deleted", "gone", "refused"


@dataclass
class Removal:
    """What became of one artifact: `removed` once nothing names it any more (deleted, or only untagged where
    that is all the registry allows); `left` says what is still there and why."""
    removed: bool = True
    done: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


def remove_artifact(repository: Reference, digest: str, options: RegistryOptions, tag: str | None = None) -> Removal:
    """Remove the artifact `digest` from `repository` (its registry and repository are used), `tag` with it if
    the tag still names it, and its entry in the referrers tag of its subject.

    Raises RegistryError (the registry unreachable, an unexpected answer) for the caller to retry; a
    refusal is in the result."""
    ref = Reference(repository.registry, repository.repository, None, digest)
    result = Removal()
    with Transport(ref, options, delete=True) as transport:
        label = transport.label(digest)
        try:
            data, _ = manifest(transport, digest, digest)
        except NotFound:
            result.done.append(f"{label} was already gone")
            return result
        doc = image.parse_json(data, label)
        if doc.get("artifactType") != ARTIFACT_TYPE:
            return Removal(False, left=[f"{label} (not an initramfs artifact ({ARTIFACT_TYPE}): never deleted)"])
        subject = doc.get("subject")
        named = tag if tag and _names(transport, tag, digest) else None
        outcome, why = _delete(transport, digest)
        if outcome != REFUSED:
            result.done.append(f"deleted {label}")
        elif named and _delete(transport, named)[0] != REFUSED:
            result.done.append(f"untagged {transport.label(named)} (the registry refuses to delete manifests: "
                               f"{why}; {label} stays, named by digest only)")
        else:
            result.removed = False
            result.left.append(f"{transport.label(named) if named else label} ({why})")
        if isinstance(subject, dict) and isinstance(subject.get("digest"), str):
            _drop_referrer(transport, subject["digest"], digest, result)
    return result


def _names(transport: Transport, tag: str, digest: str) -> bool:
    """Whether `tag` still names `digest` (someone may have pushed over it since)."""
    try:
        data, _ = manifest(transport, tag, None)
    except NotFound:
        return False
    return digests.of(data) == digest


def _delete(transport: Transport, identifier: str) -> tuple[str, str]:
    """DELETE a manifest by digest or tag: (DELETED | GONE | REFUSED, the registry's reason for a refusal)."""
    what = transport.label(identifier)
    try:
        resp = transport.request("DELETE", f"manifests/{identifier}", what)
    except AuthError:
        return REFUSED, "access denied: the credentials lack delete permission"
    if resp.status_code in (200, 202, 204):
        return DELETED, ""
    if resp.status_code == 404:
        return GONE, ""
    if resp.status_code in (400, 403, 405):  # 400: distribution 2.8 on a tag; 405: deletion disabled
        hint = "; the registry does not allow deleting (distribution: storage.delete.enabled)" \
            if resp.status_code == 405 else ""
        return REFUSED, f"HTTP {resp.status_code}: {_error_codes(resp.text)}{hint}"
    fail(resp, what)


def _error_codes(body: str) -> str:
    try:
        errors = json.loads(body).get("errors") or []
        return "; ".join(str(e.get("code")) for e in errors if isinstance(e, dict))[:200] or "refused"
    except (ValueError, AttributeError):
        return "refused"


def _drop_referrer(transport: Transport, subject: str, digest: str, result: Removal) -> None:
    """Take `digest` out of the referrers tag of `subject` (the referrers tag schema, see push.py): the index is
    rewritten without it, or deleted once it lists nothing else (left empty where deleting is refused)."""
    tag = subject.replace(":", "-")[:128]
    label = transport.label(tag)
    try:
        data, media_type = manifest(transport, tag, None)
        doc = image.parse_json(data, label)
    except NotFound:
        return
    except InvalidImageError:
        return  # not a referrers index of ours to edit
    if image.kind(doc, media_type) != "index":
        return
    entries: list[dict[str, Any]] = [e for e in doc.get("manifests") or [] if isinstance(e, dict)]
    kept = [e for e in entries if e.get("digest") != digest]
    if len(kept) == len(entries):
        return
    if not kept and _delete(transport, digests.of(data))[0] != REFUSED:
        result.done.append(f"deleted referrers tag {label}")
        return
    index = {"schemaVersion": 2, "mediaType": image.OCI_INDEX, "manifests": kept}
    body = json.dumps(index, indent=2).encode()
    resp = transport.request("PUT", f"manifests/{tag}", label, content=body, headers={"Content-Type": image.OCI_INDEX})
    if resp.status_code != 201:
        fail(resp, label)
    result.done.append(f"removed {digest} from referrers tag {label}")
