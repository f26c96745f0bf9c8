"""How to reach registries: TLS trust, plain-HTTP hosts, credentials, layer storage, progress, transport."""

import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...errors import UsageError
from ..reference import Reference
from .keychain import Keychain

if TYPE_CHECKING:  # httpx loads in ~50 ms: a build from a local image never needs it
    import httpx

RETRIES = 4


@dataclass
class RegistryOptions:
    """How to reach registries.

    `on_bytes(n)` reports progress: layer bytes downloaded (or verified in the cache) and blob
    bytes uploaded. It is called from the download threads, one call at a time; a retried
    transfer counts again.

    `transport`, when given, carries every request as it is (a test passes an
    `httpx.MockTransport`): TLS trust, proxies from the environment and connection limits are
    then its business, and closing it is the caller's.
    """

    insecure: tuple[str, ...] = ()       # hosts (host or host:port) spoken to over plain HTTP
    ca_certs: bytes | None = field(default=None, repr=False)  # PEM, trusted in addition to the system CAs
    keychain: Keychain = field(default_factory=Keychain)  # empty: anonymous access
    cache_dir: str | None = None         # content-addressed layer cache, shared between runs
    cache_max_bytes: int | None = None   # the cache trimmed to this after each image (None: unbounded)
    scratch_dir: str | None = None       # where layers wait until read (default: $TMPDIR)
    jobs: int = 4                        # parallel layer downloads
    on_bytes: Callable[[int], None] | None = None
    transport: "httpx.BaseTransport | None" = None
    # How long to wait on a registry; None is the CLI's patience (transport.DEFAULT_TIMEOUT). The
    # operator, with other builds to look after, gives up fast and retries on its own schedule
    # (kube/lookup.py).
    timeout: "httpx.Timeout | None" = None
    retries: int = RETRIES               # of a transient failure, after the first attempt, with backoff


def read_ca_file(path: str) -> bytes:
    """The PEM certificates in `path`, checked now so a bad file fails before any request."""
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise UsageError(f"cannot read CA bundle {path}: {e.strerror}") from None
    # Checked in a context of its own, without the system's trust store: loading that (17 ms, a MiB and more)
    # is for the context the requests use.
    _load_ca(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), pem, f"CA bundle {path}")
    return pem


def ssl_context(ca_certs: bytes | None, source: str = "the registry CA certificates") -> ssl.SSLContext:
    """The system's trust store (as OpenSSL finds it, SSL_CERT_FILE included), plus `ca_certs`.

    Explicit because httpx would otherwise use certifi instead of the system store.
    """
    ctx = ssl.create_default_context()
    if ca_certs is not None:
        _load_ca(ctx, ca_certs, source)
    return ctx


def _load_ca(ctx: ssl.SSLContext, ca_certs: bytes, source: str) -> None:
    # Only the PEM blocks: bundles such as Mozilla's carry comments that are not ASCII.
    blocks = re.findall(rb"-----BEGIN [A-Z0-9 ]+-----.*?-----END [A-Z0-9 ]+-----", ca_certs, re.DOTALL)
    try:
        # cadata as str is PEM (bytes would mean DER)
        ctx.load_verify_locations(cadata=b"\n".join(blocks).decode("ascii"))
    except (ValueError, ssl.SSLError) as e:
        reason = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(e)) or type(e).__name__
        raise UsageError(f"cannot load {source}: {reason}") from None


def plain_http(ref: Reference, insecure: tuple[str, ...]) -> bool:
    hostname = ref.registry.rsplit(":", 1)[0] if not ref.registry.endswith("]") else ref.registry
    return bool({ref.registry, ref.host, hostname} & {h.strip().lower() for h in insecure})

