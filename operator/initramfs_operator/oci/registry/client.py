"""OCI distribution registries as an image source, and as a destination for the built initramfs.

Pulling goes through `image.resolve` like every other source; this module only moves bytes:
manifests and configs in memory (bounded), layers streamed to disk in the background,
`RegistryOptions.jobs` at a time, each verified against its digest and size while it arrives.

The initramfs is pushed as an OCI 1.1 artifact:

- manifest `application/vnd.oci.image.manifest.v1+json` with
  `artifactType: application/vnd.initramfs.v1`;
- config: the empty descriptor (`application/vnd.oci.empty.v1+json`, the 2-byte `{}`);
- one layer, the file as written, typed by the caller:
  `application/vnd.initramfs.v1.cpio` (uncompressed newc cpio),
  `application/vnd.initramfs.v1.cpio+gzip` or `application/vnd.initramfs.v1.cpio+zstd`;
  it carries `org.opencontainers.image.title` (the file name) so `oras pull` restores it;
- manifest annotations: the caller's (`org.opencontainers.image.base.name`/`.base.digest`, ...),
  plus `org.opencontainers.image.title` and `org.opencontainers.image.created`
  (from SOURCE_DATE_EPOCH when set) unless given;
- `subject`, when given (`Image.descriptor`, or `head()`), points at the source image's
  manifest, which must be in the same repository. For registries without the referrers API
  the tag `sha256-<hex>` holds an OCI index listing the referrers of `<hex>`, updated on each
  push: the referrers tag schema of the OCI distribution spec.
"""

import json
import logging
import os
import re
import shutil
import ssl
import tempfile
import threading
import time
import weakref
from concurrent.futures import Future
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Callable, Iterable, Iterator, NoReturn, TypeVar

import httpx

from ...errors import AuthError, InvalidImageError, OutputError, RegistryError, UsageError
from .. import digests, image
from ..digests import VerifyingReader
from ..reference import Reference, parse as parse_reference
from . import auth

log = logging.getLogger(__name__)

ARTIFACT_TYPE = "application/vnd.initramfs.v1"
EMPTY_CONFIG = b"{}"
TITLE = "org.opencontainers.image.title"
CREATED = "org.opencontainers.image.created"

RETRIES = 4               # after the first attempt: 0.5 + 1 + 2 + 4 s of backoff in the worst case
BACKOFF = 0.5
MAX_RETRY_AFTER = 60.0    # a registry asking for longer is better reported than waited for
RETRY_STATUSES = (429, 500, 502, 503, 504)
TIMEOUT = httpx.Timeout(60.0, connect=15.0)
MAX_REDIRECTS = 5
DOCUMENT_LIMIT = 8 << 20  # manifests and configs are held in memory: refuse absurd ones
CHUNK = 16 << 20          # upload chunk; smaller blobs go in one request
READ_SIZE = 1 << 20

T = TypeVar("T")


@dataclass
class RegistryOptions:
    """How to reach registries.

    `on_bytes(n)` reports progress: layer bytes downloaded (or verified in the cache) and blob
    bytes uploaded. It is called from the download threads, one call at a time; a retried
    transfer counts again.
    """

    insecure: tuple[str, ...] = ()       # hosts (host or host:port) spoken to over plain HTTP
    ca_file: str | None = None           # trusted in addition to the system CAs
    auth_file: str | None = None         # docker config.json or .dockerconfigjson
    username: str | None = None
    password: str | None = None
    cache_dir: str | None = None         # content-addressed layer cache, shared between runs
    scratch_dir: str | None = None       # where layers wait until read (default: $TMPDIR)
    jobs: int = 4                        # parallel layer downloads
    on_bytes: Callable[[int], None] | None = None


def load(reference: str, platform: image.Platform, options: RegistryOptions) -> image.Image:
    """The image for `platform`; its layers start downloading in the background right away."""
    ref = parse_reference(reference)
    client = _Client(ref, options)
    downloads = _Downloads(client, options)  # owns the client from here on, and closes it with the image
    data, media_type = client.manifest(ref.identifier, ref.digest)
    top = image.Descriptor(media_type, _digest(data, ref.digest), len(data))
    return image.for_platform(str(ref), top, data, client.fetch, platform, downloads.layer)


def current_digest(reference: str, options: RegistryOptions) -> str:
    """The digest the reference points at now (an index's, for multi-platform images)."""
    return head(reference, options).digest


def head(reference: str, options: RegistryOptions) -> image.Descriptor:
    """The descriptor of the manifest or index the reference points at (e.g. for `subject`)."""
    ref = parse_reference(reference)
    with _Client(ref, options) as client:
        found = client.head_manifest(ref.identifier)
        if found and (not ref.digest or found.digest == ref.digest):
            return found
        # Not every registry sends Docker-Content-Digest and Content-Length on HEAD: fetch and hash.
        data, media_type = client.manifest(ref.identifier, ref.digest)
        return image.Descriptor(media_type, _digest(data, ref.digest), len(data))


def push_artifact(path: str, reference: str, *, media_type: str, annotations: dict,
                  subject: image.Descriptor | None, options: RegistryOptions) -> str:
    """Push the file at `path` as an initramfs artifact (see the module docstring); returns its manifest digest."""
    ref = parse_reference(reference)
    if ref.digest:
        raise UsageError(f"{ref}: push to a tag; the digest of the pushed manifest is not known in advance")
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            file_digest = _hash_file(f)
    except OSError as e:
        raise OutputError(f"cannot read {path}: {e.strerror}") from None
    layer = image.Descriptor(media_type, file_digest, size, annotations={TITLE: name})
    config = image.Descriptor(image.OCI_EMPTY, digests.of(EMPTY_CONFIG), len(EMPTY_CONFIG))
    manifest_annotations = {TITLE: name, CREATED: _created(), **annotations}
    manifest = {"schemaVersion": 2, "mediaType": image.OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
                "config": config.to_json(), "layers": [layer.to_json()], "annotations": manifest_annotations}
    if subject:
        manifest["subject"] = image.Descriptor(subject.media_type, subject.digest, subject.size).to_json()
    data = json.dumps(manifest, indent=2).encode()
    with _Client(ref, options, push=True) as client:
        client.upload(layer, lambda offset, length: _file_chunks(path, offset, length, options.on_bytes))
        client.upload(config, lambda offset, length: [EMPTY_CONFIG[offset:offset + length]])
        pushed, referrers_api = client.put_manifest(ref.tag, data, image.OCI_MANIFEST)
        if subject and not referrers_api:
            client.add_referrer(subject.digest, image.Descriptor(
                image.OCI_MANIFEST, pushed, len(data), annotations=manifest_annotations, artifact_type=ARTIFACT_TYPE))
    return pushed


class _Transient(Exception):
    """A failure worth retrying: the connection broke, or the registry said 429/5xx."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class _Client:
    """One repository of one registry, with the access it needs (pull, or pull and push)."""

    def __init__(self, ref: Reference, options: RegistryOptions, push: bool = False):
        self.ref = ref
        credentials = auth.lookup(ref.registry, options.auth_file, options.username, options.password)
        scheme = "http" if _plain_http(ref, options.insecure) else "https"
        self.base = httpx.URL(f"{scheme}://{ref.host}/v2/{ref.repository}/")
        self.scope = f"repository:{ref.repository}:{'pull,push' if push else 'pull'}"
        # trust_env: proxies from HTTP(S)_PROXY/NO_PROXY. The SSL context is explicit because
        # httpx would otherwise use certifi instead of the system store, or SSL_CERT_FILE alone.
        self.http = httpx.Client(verify=_ssl_context(options.ca_file), trust_env=True, timeout=TIMEOUT,
                                 limits=httpx.Limits(max_connections=max(1, options.jobs) + 2))
        self.auth = auth.Authenticator(ref.registry, credentials, self._token_request)

    def __enter__(self) -> "_Client":
        return self

    def __exit__(self, *_) -> None:
        self.http.close()

    # -- pulling

    def manifest(self, identifier: str, expect: str | None, missing_ok: bool = False) -> tuple[bytes, str] | None:
        """A manifest or index and its media type (empty when the registry's is not one we know)."""
        found = self._document(f"manifests/{identifier}", self._what(identifier), "manifest", expect, None, missing_ok)
        if found is None:
            return None
        data, media_type = found
        return data, _known(media_type)

    def head_manifest(self, identifier: str) -> image.Descriptor | None:
        """The manifest's descriptor from a HEAD request, if the registry tells all of it."""
        what = self._what(identifier)
        resp = self._request("HEAD", f"manifests/{identifier}", what, headers={"Accept": image.ACCEPT})
        if resp.status_code != 200:
            _fail(resp, what)
        media_type = _known(resp.headers.get("content-type", "").split(";")[0].strip())
        try:
            return image.Descriptor(media_type, digests.validate(resp.headers.get("docker-content-digest", "")),
                                    int(resp.headers["content-length"]))
        except (InvalidImageError, KeyError, ValueError):
            return None

    def fetch(self, d: image.Descriptor) -> bytes:
        """A child manifest or a config, checked against its descriptor (`image.Fetch`)."""
        if _known(d.media_type):
            path, label = f"manifests/{d.digest}", "manifest"
        else:
            path, label = f"blobs/{d.digest}", "config"
        if d.size > DOCUMENT_LIMIT:
            raise InvalidImageError(f"{self._what(d.digest)}: {d.size} bytes is too large for a {label}")
        return self._document(path, self._what(d.digest), label, d.digest, d.size)[0]

    def download(self, d: image.Descriptor, path: str, on_bytes: Callable[[int], None]) -> None:
        """Stream a blob into `path`, verifying it; a broken connection restarts the download."""
        what = f"{self.ref.name}: layer {d.digest}"

        def once() -> None:
            with closing(self._send("GET", self.base.join(f"blobs/{d.digest}"), stream=True)) as resp:
                if resp.status_code != 200:
                    _fail(resp, what)
                reader = VerifyingReader(_Body(resp), d.digest, d.size, "layer")
                with open(path, "wb") as f:
                    while chunk := _read_or_transient(reader, READ_SIZE):
                        f.write(chunk)
                        on_bytes(len(chunk))

        self._attempts(what, once)

    def _document(self, path: str, what: str, label: str, digest: str | None, size: int | None,
                  missing_ok: bool = False) -> tuple[bytes, str] | None:
        """A small JSON document, in memory, verified when its digest is known."""
        def once() -> tuple[bytes, str] | None:
            with closing(self._send("GET", self.base.join(path), headers={"Accept": image.ACCEPT},
                                     stream=True)) as resp:
                if resp.status_code == 404 and missing_ok:
                    return None
                if resp.status_code != 200:
                    _fail(resp, what)
                body = VerifyingReader(_Body(resp), digest, size, label) if digest else _Body(resp)
                data = bytearray()
                while chunk := _read_or_transient(body, READ_SIZE):
                    data += chunk
                    if len(data) > DOCUMENT_LIMIT:
                        raise InvalidImageError(f"{what}: larger than {DOCUMENT_LIMIT} bytes, not a {label}")
                return bytes(data), resp.headers.get("content-type", "").split(";")[0].strip()

        return self._attempts(what, once)

    def _what(self, identifier: str) -> str:
        return f"{self.ref.name}{'@' if ':' in identifier else ':'}{identifier}"

    # -- pushing

    def upload(self, d: image.Descriptor, chunks: Callable[[int, int], Iterable[bytes]]) -> None:
        """Upload a blob unless the repository has it; `chunks(offset, length)` streams a slice of it."""
        what = f"{self.ref.name}: blob {d.digest}"
        resp = self._request("HEAD", f"blobs/{d.digest}", what)
        if resp.status_code == 200:
            return
        if resp.status_code != 404:
            _fail(resp, what)
        resp = self._request("POST", "blobs/uploads/", what, headers={"Content-Length": "0"})
        if resp.status_code != 202:
            _fail(resp, what)
        location = self._location(resp, what)
        step = max(CHUNK, int(resp.headers.get("oci-chunk-min-length") or 0))
        if d.size > step:
            # Chunked: each PATCH answers with the URL of the next one.
            for offset in range(0, d.size, step):
                length = min(step, d.size - offset)
                resp = self._request("PATCH", location, what, content=lambda o=offset, n=length: chunks(o, n),
                                     headers={"Content-Type": "application/octet-stream", "Content-Length": str(length),
                                              "Content-Range": f"{offset}-{offset + length - 1}"})
                if resp.status_code != 202:
                    _fail(resp, what)
                location = self._location(resp, what)
            last, length = b"", 0
        else:
            last, length = (lambda: chunks(0, d.size)), d.size
        resp = self._request("PUT", location.copy_merge_params({"digest": d.digest}), what, content=last,
                             headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)})
        if resp.status_code != 201:
            _fail(resp, what)

    def put_manifest(self, tag: str, data: bytes, media_type: str) -> tuple[str, bool]:
        """Returns the manifest's digest and whether the registry indexes `subject` itself (OCI-Subject)."""
        what = f"{self.ref.name}:{tag}"
        resp = self._request("PUT", f"manifests/{tag}", what, content=data, headers={"Content-Type": media_type})
        if resp.status_code != 201:
            _fail(resp, what)
        pushed = digests.of(data)
        echoed = resp.headers.get("docker-content-digest")
        if echoed and echoed != pushed:
            raise RegistryError(f"{what}: the registry stored the manifest as {echoed}, expected {pushed}")
        return pushed, "oci-subject" in resp.headers

    def add_referrer(self, subject: str, entry: image.Descriptor) -> None:
        """Add `entry` to the referrers tag of `subject`, keeping what other pushes listed there."""
        tag = subject.replace(":", "-")[:128]
        found = self.manifest(tag, None, missing_ok=True)
        entries = []
        if found:
            try:
                doc = image.parse_json(found[0], self._what(tag))
                if image.kind(doc, found[1]) == "index":
                    entries = [e for e in doc.get("manifests") or [] if isinstance(e, dict)]
            except InvalidImageError as e:
                log.warning("%s: not a referrers index (%s); replacing it", self._what(tag), e)
        if any(e.get("digest") == entry.digest for e in entries):
            return  # pushed before: already listed
        index = {"schemaVersion": 2, "mediaType": image.OCI_INDEX, "manifests": entries + [entry.to_json()]}
        # Two pushers updating the same tag at once can lose an entry: the spec's answer is
        # If-Match on the tag's ETag, which registries without the referrers API do not offer.
        self.put_manifest(tag, json.dumps(index, indent=2).encode(), image.OCI_INDEX)

    # -- transport

    def _request(self, method: str, path: str | httpx.URL, what: str, *, headers: dict | None = None,
                 content: bytes | Callable[[], Iterable[bytes]] | None = None) -> httpx.Response:
        """A complete (read) response; transient failures are retried."""
        return self._attempts(what, lambda: self._send(method, self.base.join(path), headers=headers,
                                                       content=content))

    def _attempts(self, what: str, once: Callable[[], T]) -> T:
        """Run `once`, retrying transient failures with exponential backoff (or as Retry-After says)."""
        attempt = 0
        while True:
            try:
                return once()
            except _Transient as e:
                if attempt == RETRIES:
                    raise RegistryError(f"{what}: {e} (gave up after {attempt + 1} attempts)") from None
                delay = e.retry_after if e.retry_after is not None else BACKOFF * 2 ** attempt
                log.info("%s: %s; retrying in %.1fs", what, e, delay)
                time.sleep(delay)
                attempt += 1

    def _send(self, method: str, url: httpx.URL, *, headers: dict | None = None,
              content: bytes | Callable[[], Iterable[bytes]] | None = None, stream: bool = False) -> httpx.Response:
        """One attempt, authorized (renewed once on 401) and following GET redirects.

        The Authorization header only ever goes to the registry itself: blob redirects lead to
        storage (S3, a CDN) that must not see it.
        """
        for _ in range(MAX_REDIRECTS + 1):
            own = _same_origin(url, self.base)
            sent = self.auth.header(self.scope) if own else None
            resp = self._exchange(method, url, headers, content, sent, stream)
            if resp.status_code == 401 and own:
                challenge = resp.headers.get("www-authenticate", "")
                resp.close()
                sent = self.auth.renew(self.scope, challenge, sent)
                resp = self._exchange(method, url, headers, content, sent, stream)
                if resp.status_code == 401:
                    resp.close()
                    raise self.auth.refused(self.scope)
            if not (resp.is_redirect and method in ("GET", "HEAD")):
                return resp
            resp.close()
            url = url.join(resp.headers["location"])
        raise RegistryError(f"{self.ref.registry}: more than {MAX_REDIRECTS} redirects for {url.path}")

    def _exchange(self, method: str, url: httpx.URL, headers: dict | None,
                  content: bytes | Callable[[], Iterable[bytes]] | None, authorization: str | None,
                  stream: bool) -> httpx.Response:
        headers = dict(headers or {})
        if authorization:
            headers["Authorization"] = authorization
        body = content() if callable(content) else content  # a fresh stream for each attempt
        try:
            resp = self.http.send(self.http.build_request(method, url, headers=headers, content=body), stream=stream)
        except httpx.TransportError as e:
            raise _classify(e, self.ref.registry) from None
        log.debug("%s %s -> %d", method, url.copy_with(query=None), resp.status_code)
        if resp.status_code in RETRY_STATUSES:
            resp.close()
            raise _Transient(f"HTTP {resp.status_code} from {url.host}", _retry_after(resp))
        return resp

    def _token_request(self, method: str, url: str, **kwargs) -> httpx.Response:
        """For the token endpoint: same TLS, proxies and retries, never the registry's Authorization."""
        def once() -> httpx.Response:
            try:
                resp = self.http.request(method, url, **kwargs)
            except httpx.TransportError as e:
                raise _classify(e, httpx.URL(url).host) from None
            if resp.status_code in RETRY_STATUSES:
                raise _Transient(f"HTTP {resp.status_code} from {resp.url.host}", _retry_after(resp))
            return resp

        return self._attempts(f"{self.ref.registry}: token service", once)

    def _location(self, resp: httpx.Response, what: str) -> httpx.URL:
        if "location" not in resp.headers:
            raise RegistryError(f"{what}: upload response without Location")
        return resp.url.join(resp.headers["location"])


class _Downloads:
    """Downloads a manifest's layers in the background, a few at a time, into files on disk.

    Files live in the cache when there is one (written atomically, so a crash leaves no
    half blob behind), otherwise in a scratch directory removed once the image is dropped.
    """

    def __init__(self, client: _Client, options: RegistryOptions):
        self._client = client
        self._cache = os.path.join(options.cache_dir, "blobs") if options.cache_dir else None
        try:
            self._scratch = tempfile.mkdtemp(prefix="initramfs-layers-", dir=options.scratch_dir)
        except OSError as e:
            raise UsageError(f"cannot use scratch directory {options.scratch_dir}: {e.strerror}") from None
        self._slots = threading.Semaphore(max(1, options.jobs))
        self._futures: dict[str, Future] = {}
        self._on_bytes = options.on_bytes
        self._lock = threading.Lock()
        weakref.finalize(self, _discard, self._scratch, client.http)

    def layer(self, d: image.Descriptor) -> "RegistryLayer":
        # A manifest may list the same blob twice: download it once.
        if d.digest not in self._futures:
            self._futures[d.digest] = Future()
            # Daemon threads, not a ThreadPoolExecutor: a CLI that fails or is interrupted must
            # exit at once, not after the downloads in flight (the executor joins them at exit).
            threading.Thread(target=self._run, args=(self._futures[d.digest], d), daemon=True,
                             name=f"download {d.digest[:19]}").start()
        return RegistryLayer(d, self._futures[d.digest], self)

    def _run(self, future: Future, d: image.Descriptor) -> None:
        with self._slots:  # `jobs` at a time, roughly in manifest order
            future.set_running_or_notify_cancel()
            try:
                future.set_result(self._fetch(d))
            except BaseException as e:
                future.set_exception(e)

    def _fetch(self, d: image.Descriptor) -> str:
        alg, hex_ = d.digest.split(":", 1)
        if not self._cache:
            path = os.path.join(self._scratch, hex_)
            self._client.download(d, path, self._progress)
            return path
        path = os.path.join(self._cache, alg, hex_)
        if os.path.exists(path):
            try:
                with open(path, "rb") as f:
                    VerifyingReader(f, d.digest, d.size, "cached layer").verify()
                self._progress(d.size)
                return path
            except InvalidImageError as e:
                log.warning("%s; downloading it again", e)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{hex_}.", dir=os.path.dirname(path))
        os.close(fd)
        try:
            self._client.download(d, tmp, self._progress)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def _progress(self, n: int) -> None:
        if self._on_bytes:
            with self._lock:  # the callback need not be thread-safe
                self._on_bytes(n)


@dataclass
class RegistryLayer:
    descriptor: image.Descriptor
    file: Future       # the path, once downloaded and verified
    owner: _Downloads  # keeps the scratch directory alive as long as the image

    def open(self):
        """Waits for the download; re-verifies while reading so the file on disk is not trusted blindly."""
        path = self.file.result()
        return VerifyingReader(open(path, "rb"), self.descriptor.digest, self.descriptor.size, "layer")


def _discard(scratch: str, http: httpx.Client) -> None:
    shutil.rmtree(scratch, ignore_errors=True)
    http.close()


class _Body:
    """The `read()` VerifyingReader needs, over a streamed response (chunks of any size)."""

    def __init__(self, resp: httpx.Response):
        self._chunks = resp.iter_bytes(READ_SIZE)

    def read(self, n: int = -1) -> bytes:
        return next(self._chunks, b"")

    def close(self) -> None:
        pass


def _read_or_transient(body, n: int) -> bytes:
    try:
        return body.read(n)
    except httpx.TransportError as e:
        raise _Transient(f"connection broken mid-transfer ({type(e).__name__})") from None


def _classify(e: httpx.TransportError, host: str) -> Exception:
    """Certificate problems will not fix themselves: fail at once, with a hint. The rest is retried."""
    text = str(e)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        reason = re.search(r"certificate verify failed: ([^(]*)", text)
        return RegistryError(f"{host}: TLS certificate verification failed ({reason[1].strip() if reason else text}); "
                             "pass the registry's CA bundle, or list the registry as insecure if it speaks plain HTTP")
    if "WRONG_VERSION_NUMBER" in text or "RECORD_LAYER_FAILURE" in text:  # as OpenSSL versions word it
        return RegistryError(f"{host}: TLS handshake failed; if the registry speaks plain HTTP, list it as insecure")
    return _Transient(f"{type(e).__name__} talking to {host}: {text or 'no detail'}")


def _fail(resp: httpx.Response, what: str) -> NoReturn:
    """Turn an unexpected status into an error naming `what`, with the registry's error codes."""
    try:
        resp.read()
        detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in resp.json().get("errors") or []
                           if isinstance(e, dict))[:300]
    except (httpx.HTTPError, ValueError, AttributeError, TypeError):
        detail = ""
    status = f"HTTP {resp.status_code}" + (f", {detail}" if detail else "")
    if resp.status_code in (401, 403):
        raise AuthError(f"{what}: access denied ({status})")
    if resp.status_code == 404:
        raise RegistryError(f"{what}: not found ({status})")
    raise RegistryError(f"{what}: unexpected {status}")


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _plain_http(ref: Reference, insecure: tuple[str, ...]) -> bool:
    hostname = ref.registry.rsplit(":", 1)[0] if not ref.registry.endswith("]") else ref.registry
    return bool({ref.registry, ref.host, hostname} & {h.strip().lower() for h in insecure})


def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca_file:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as e:
            raise UsageError(f"cannot load CA bundle {ca_file}: {e}") from None
    return ctx


def _known(media_type: str) -> str:
    """The media type if it is a manifest or index type; else "" so `image.kind` looks at the document."""
    return media_type if media_type in image.MANIFEST_TYPES + image.INDEX_TYPES else ""


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


def _digest(data: bytes, expect: str | None) -> str:
    """The digest of a manifest, in the algorithm of the digest it was asked by, checked against it."""
    h = digests.hasher(expect or "sha256:")
    h.update(data)
    found = f"{h.name}:{h.hexdigest()}"
    if expect and found != expect:
        raise InvalidImageError(f"manifest {expect}: the registry served content with digest {found}")
    return found


def _hash_file(f) -> str:
    h = digests.hasher("sha256:")
    while chunk := f.read(READ_SIZE):
        h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def _file_chunks(path: str, offset: int, length: int, on_bytes: Callable[[int], None] | None) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(offset)
        while length > 0:
            chunk = f.read(min(READ_SIZE, length))
            if not chunk:
                raise OutputError(f"{path} shrank while it was being pushed")
            length -= len(chunk)
            if on_bytes:
                on_bytes(len(chunk))
            yield chunk


def _created() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    try:
        moment = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH={epoch!r} is not a number of seconds") from None
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
