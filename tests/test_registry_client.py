"""The registry client's transport rules, hermetically: httpx.MockTransport in place of the network.

An image served from memory by `Registry`, behind the authentication and faults each test sets
up; every request is recorded so the tests can assert what was sent where, and with which
Authorization. The same rules are exercised against real registries in test_registry_*.py.
"""

import base64
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import httpx
import pytest

from initramfs_operator.errors import AuthError, InvalidImageError, RegistryError
from initramfs_operator.oci import digests, image
from initramfs_operator.oci import registry as reg
from initramfs_operator.oci.registry import downloads, transport

HOST = "registry.test"
REF = f"{HOST}/app:v1"
SCOPE = "repository:app:pull"
USER, PASSWORD = "alice", "pa55-in-memory"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
KEYCHAIN = reg.Keychain({HOST: reg.Credentials(USER, PASSWORD)})

LAYER = b"layer blob: the client does not look inside"
CONFIG = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/app"]},
                     "rootfs": {"type": "layers", "diff_ids": []}}).encode()
MANIFEST = json.dumps({
    "schemaVersion": 2, "mediaType": image.OCI_MANIFEST,
    "config": {"mediaType": image.OCI_CONFIG, "digest": digests.of(CONFIG), "size": len(CONFIG)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digests.of(LAYER),
                "size": len(LAYER)}]}).encode()
BLOBS = {digests.of(CONFIG): CONFIG, digests.of(LAYER): LAYER}

Handler = Callable[[httpx.Request], httpx.Response]


class Registry:
    """Serves the image at `registry.test/app:v1`; `gate` may answer instead (a challenge, a fault)."""

    def __init__(self, gate: Callable[[httpx.Request], httpx.Response | None] = lambda _: None,
                 **other_hosts: Handler):
        self.gate = gate
        self.other_hosts = {name.replace("_", "."): handler for name, handler in other_hosts.items()}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.host != HOST:
            return self.other_hosts[request.url.host](request)
        return self.gate(request) or self.content(request)

    def content(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path in ("/v2/app/manifests/v1", f"/v2/app/manifests/{digests.of(MANIFEST)}"):
            return httpx.Response(200, content=MANIFEST, headers={"Content-Type": image.OCI_MANIFEST,
                                                                  "Docker-Content-Digest": digests.of(MANIFEST)})
        blob = BLOBS.get(path.removeprefix("/v2/app/blobs/"))
        return httpx.Response(200, content=blob) if blob else httpx.Response(404)

    def options(self, tmp_path, keychain: reg.Keychain = KEYCHAIN) -> reg.RegistryOptions:
        return reg.RegistryOptions(transport=httpx.MockTransport(self), keychain=keychain, scratch_dir=str(tmp_path))

    def to(self, host: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.host == host]


class TokenService:
    """Grants `token-N` to anonymous requests and to USER's Basic credentials."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("authorization", BASIC) != BASIC:
            return httpx.Response(401)
        return httpx.Response(200, json={"token": f"token-{len(self.requests)}"})


def bearer(realm: str, accepted: Callable[[str], bool]) -> Callable[[httpx.Request], httpx.Response | None]:
    """A gate asking for a token from `realm`, letting through requests whose token is `accepted`."""
    def gate(request: httpx.Request) -> httpx.Response | None:
        header = request.headers.get("authorization", "")
        if header.startswith("Bearer ") and accepted(header.removeprefix("Bearer ")):
            return None
        return httpx.Response(401, headers={
            "WWW-Authenticate": f'Bearer realm="{realm}",service="{HOST}",scope="{SCOPE}"'})
    return gate


def pull(options: reg.RegistryOptions) -> tuple[image.Image, bytes]:
    with reg.load(REF, image.DEFAULT_PLATFORM, options) as img:
        return img, img.layers[0].open().read()


@pytest.fixture
def delays(monkeypatch) -> list[float]:
    """The retry delays the client waits, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(transport, "sleep", waited.append)
    return waited


# -- authentication

def test_bearer_challenge_then_one_token_for_every_request(tmp_path):
    tokens = TokenService()
    gate = bearer(f"https://{HOST}/token", lambda token: token == "token-1")
    registry = Registry(lambda request: tokens(request) if request.url.path == "/token" else gate(request))
    img, layer = pull(registry.options(tmp_path))
    assert (img.config.cmd, layer) == (["/app"], LAYER)
    [token_request] = tokens.requests
    assert token_request.headers["authorization"] == BASIC
    assert token_request.url.params.multi_items() == [("scope", SCOPE), ("service", HOST)]
    served = [r for r in registry.requests if r.url.path != "/token"]
    # manifest, config and layer: each refused once without a token, then sent with it (cached for the rest)
    assert [r.headers.get("authorization") for r in served] == [None, "Bearer token-1", "Bearer token-1",
                                                                 "Bearer token-1"]


def test_anonymous_token(tmp_path):
    tokens = TokenService()
    registry = Registry(bearer("https://auth.test/token", lambda token: token == "token-1"), auth_test=tokens)
    assert pull(registry.options(tmp_path, keychain=reg.Keychain()))[1] == LAYER
    [token_request] = tokens.requests
    assert "authorization" not in token_request.headers


def test_basic_auth(tmp_path):
    def gate(request: httpx.Request) -> httpx.Response | None:
        if request.headers.get("authorization") == BASIC:
            return None
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="registry"'})

    registry = Registry(gate)
    assert pull(registry.options(tmp_path))[1] == LAYER
    assert [r.headers.get("authorization") for r in registry.requests] == [None, BASIC, BASIC, BASIC]
    with pytest.raises(AuthError, match=f"{HOST}: authentication required for {SCOPE} and no credentials"):
        pull(Registry(gate).options(tmp_path, keychain=reg.Keychain()))


def test_a_refused_token_is_renewed_once_then_a_clear_error(tmp_path):
    # An expired token: accepted for the manifest, refused after; the renewed one works.
    tokens = TokenService()
    served = []

    def accepted(token: str) -> bool:
        served.append(token)
        return token == "token-1" and len(served) <= 1 or token == "token-2"

    registry = Registry(bearer("https://auth.test/token", accepted), auth_test=tokens)
    assert pull(registry.options(tmp_path))[1] == LAYER
    assert len(tokens.requests) == 2

    # A token that is never good enough: one renewal, then an AuthError that names no secret.
    tokens = TokenService()
    registry = Registry(bearer("https://auth.test/token", lambda _: False), auth_test=tokens)
    with pytest.raises(AuthError, match=f"{HOST}: access to {SCOPE} refused: credentials rejected") as e:
        pull(registry.options(tmp_path))
    assert len(tokens.requests) == 1 and len(registry.to(HOST)) == 2
    assert PASSWORD not in str(e.value) and "token-" not in str(e.value)


def test_token_service_refusing_the_credentials(tmp_path):
    registry = Registry(bearer("https://auth.test/token", lambda _: True), auth_test=TokenService())
    wrong = reg.Keychain({HOST: reg.Credentials(USER, "wrong")})
    with pytest.raises(AuthError, match=f"{HOST}: token service auth.test refused the credentials for {SCOPE}"):
        pull(registry.options(tmp_path, keychain=wrong))


def test_token_realm_on_another_host_gets_the_credentials_only_as_basic_auth(tmp_path):
    tokens = TokenService()
    registry = Registry(bearer("https://auth.test/token", lambda token: token == "token-1"), auth_test=tokens)
    assert pull(registry.options(tmp_path))[1] == LAYER
    [token_request] = registry.to("auth.test")
    assert token_request.headers["authorization"] == BASIC
    assert token_request.url.params.get("scope") == SCOPE
    assert {r.headers.get("authorization") for r in registry.to(HOST)} == {None, "Bearer token-1"}


# -- retries

def test_429_waits_as_retry_after_says(tmp_path, delays):
    limited = iter([httpx.Response(429, headers={"Retry-After": "7"}),
                    httpx.Response(429, headers={"Retry-After": "3600"})])  # capped: reported rather than waited
    registry = Registry(lambda request: next(limited, None))
    assert reg.head(REF, registry.options(tmp_path)).digest == digests.of(MANIFEST)
    assert delays == [7.0, transport.MAX_RETRY_AFTER]


def test_5xx_is_retried_with_backoff_then_given_up(tmp_path, delays):
    failures = iter([httpx.Response(503), httpx.Response(502)])
    registry = Registry(lambda request: next(failures, None))
    assert reg.current_digest(REF, registry.options(tmp_path)) == digests.of(MANIFEST)
    assert delays == [transport.BACKOFF, transport.BACKOFF * 2]

    delays.clear()
    registry = Registry(lambda request: httpx.Response(500))
    with pytest.raises(RegistryError, match=f"{HOST}/app:v1: HTTP 500 from {HOST} \\(gave up after 5 attempts\\)"):
        reg.current_digest(REF, registry.options(tmp_path))
    assert delays == [transport.BACKOFF * 2 ** n for n in range(transport.RETRIES)]
    assert len(registry.requests) == transport.RETRIES + 1


def test_a_broken_connection_is_retried(tmp_path, delays):
    broken = iter([True])

    def gate(request: httpx.Request) -> httpx.Response | None:
        if next(broken, False):
            raise httpx.ReadError("connection reset by peer", request=request)
        return None

    assert pull(Registry(gate).options(tmp_path))[1] == LAYER
    assert delays == [transport.BACKOFF]


# -- redirects

def test_a_redirect_to_another_host_does_not_carry_authorization(tmp_path):
    def gate(request: httpx.Request) -> httpx.Response | None:
        if request.headers.get("authorization") != BASIC:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="registry"'})
        if request.url.path == f"/v2/app/blobs/{digests.of(LAYER)}":
            return httpx.Response(307, headers={"Location": "https://storage.test/layer?signature=abc"})
        return None

    def storage(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=LAYER)

    registry = Registry(gate, storage_test=storage)
    assert pull(registry.options(tmp_path))[1] == LAYER
    [download] = registry.to("storage.test")
    assert "authorization" not in download.headers
    assert download.url.params["signature"] == "abc"


def test_too_many_redirects(tmp_path):
    registry = Registry(lambda request: httpx.Response(302, headers={"Location": request.url.path + "x"}))
    with pytest.raises(RegistryError, match=f"{HOST}: more than {transport.MAX_REDIRECTS} redirects"):
        reg.current_digest(REF, registry.options(tmp_path))


class ClosableTransport(httpx.MockTransport):
    closed = False

    def close(self) -> None:
        self.closed = True


def test_the_injected_transport_stays_open_for_its_owner(tmp_path):
    mock = ClosableTransport(Registry())
    options = reg.RegistryOptions(transport=mock, scratch_dir=str(tmp_path))
    assert reg.current_digest(REF, options) == digests.of(MANIFEST)
    assert pull(options)[1] == LAYER
    assert not mock.closed


# -- layers read while they arrive

BIG_LAYER = bytes(range(256)) * (3 << 12)  # 3 MiB: the client hands on what arrives in 1 MiB pieces
FIRST = 1 << 20


class ArrivingLayer:
    """Serves an image whose one layer is BIG_LAYER, sent by `attempts` in turn: each a list of pieces,
    and "pause" (wait for `go`) or "break" (the connection drops) between them. A range asked for is
    ignored (the answer is 200), or with `ranged` the pieces are sent as that range (206, with
    `content_range` as given, or the one asked for)."""

    def __init__(self, *attempts: list, ranged: bool = False, content_range: str | None = None):
        self.attempts = list(attempts)
        self.ranged, self.content_range = ranged, content_range
        self.go = threading.Event()
        self.requests = 0
        self.ranges: list[str | None] = []  # the Range header of each request for the layer
        manifest = json.loads(MANIFEST)
        manifest["layers"][0].update(digest=digests.of(BIG_LAYER), size=len(BIG_LAYER))
        self.manifest = json.dumps(manifest).encode()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith("/v2/app/manifests/"):
            return httpx.Response(200, content=self.manifest, headers={"Content-Type": image.OCI_MANIFEST})
        if path.endswith(digests.of(CONFIG)):
            return httpx.Response(200, content=CONFIG)
        self.requests += 1
        asked = request.headers.get("Range")
        self.ranges.append(asked)
        body = self.body(self.attempts.pop(0), request)
        if asked and self.ranged:
            start = int(asked.removeprefix("bytes=").rstrip("-"))
            found = self.content_range or f"bytes {start}-{len(BIG_LAYER) - 1}/{len(BIG_LAYER)}"
            return httpx.Response(206, content=body, headers={"Content-Range": found})
        return httpx.Response(200, content=body)

    def body(self, pieces: list, request: httpx.Request):
        for piece in pieces:
            if piece == "pause":
                assert self.go.wait(10), "the test never let the rest of the layer go"
            elif piece == "break":
                raise httpx.ReadError("connection reset by peer", request=request)
            else:
                yield piece

    def options(self, tmp_path) -> reg.RegistryOptions:
        return reg.RegistryOptions(transport=httpx.MockTransport(self), scratch_dir=str(tmp_path))


def read_exactly(reader, n: int) -> bytes:
    data = b""
    while len(data) < n and (more := reader.read(n - len(data))):
        data += more
    return data


def test_a_layer_is_read_while_it_arrives(tmp_path):
    served = ArrivingLayer([BIG_LAYER[:FIRST], "pause", BIG_LAYER[FIRST:]])
    with reg.load(REF, image.DEFAULT_PLATFORM, served.options(tmp_path)) as img:
        reader = img.layers[0].open()
        # The first MiB is read while the registry holds the rest back.
        assert read_exactly(reader, FIRST) == BIG_LAYER[:FIRST] and not served.go.is_set()
        served.go.set()
        assert BIG_LAYER[:FIRST] + reader.read() == BIG_LAYER
        reader.verify()
        reader.close()


@pytest.mark.parametrize("second, ranged", [
    ([BIG_LAYER[FIRST:]], True),  # 206: only the rest is sent
    ([BIG_LAYER[:FIRST], BIG_LAYER[FIRST:]], False),  # 200, the range ignored: what the file has is skipped
], ids=["range answered", "range ignored"])
def test_a_broken_download_resumes_where_it_broke_off(tmp_path, delays, second, ranged):
    # The connection breaks after the first MiB, which was already read; the new attempt asks for the rest.
    served = ArrivingLayer([BIG_LAYER[:FIRST], "pause", "break"], second, ranged=ranged)
    with reg.load(REF, image.DEFAULT_PLATFORM, served.options(tmp_path)) as img:
        reader = img.layers[0].open()
        assert read_exactly(reader, FIRST) == BIG_LAYER[:FIRST]
        served.go.set()
        assert BIG_LAYER[:FIRST] + reader.read() == BIG_LAYER
        reader.verify()
        reader.close()
    assert served.ranges == [None, f"bytes={FIRST}-"] and delays == [transport.BACKOFF]


def test_a_connection_broken_after_the_last_byte_is_not_asked_again(tmp_path, delays):
    served = ArrivingLayer([BIG_LAYER, "break"])
    with reg.load(REF, image.DEFAULT_PLATFORM, served.options(tmp_path)) as img:
        reader = img.layers[0].open()
        assert reader.read() == BIG_LAYER
        reader.verify()
        reader.close()
    assert served.requests == 1 and delays == [transport.BACKOFF]


def test_a_range_answered_with_other_bytes_is_refused(tmp_path, delays):
    served = ArrivingLayer([BIG_LAYER[:FIRST], "break"], [BIG_LAYER], ranged=True,
                           content_range=f"bytes 0-{len(BIG_LAYER) - 1}/{len(BIG_LAYER)}")
    with reg.load(REF, image.DEFAULT_PLATFORM, served.options(tmp_path)) as img:
        reader = img.layers[0].open()
        with pytest.raises(RegistryError, match=rf"asked for the bytes from {FIRST} on, the registry sent "
                                                rf"Content-Range 'bytes 0-"):
            reader.read()
            reader.read()
        reader.close()


def test_bytes_read_while_arriving_are_those_the_download_verifies(tmp_path, delays):
    # A first attempt sends a forged first MiB, which is read, then breaks; the second sends the real blob,
    # whole. The file keeps what it has, so the forged bytes are among those verified: the download fails,
    # and so does its reader.
    forged = bytes(FIRST)
    served = ArrivingLayer([forged, "pause", "break"], [BIG_LAYER])
    with reg.load(REF, image.DEFAULT_PLATFORM, served.options(tmp_path)) as img:
        reader = img.layers[0].open()
        assert read_exactly(reader, FIRST) == forged
        served.go.set()
        with pytest.raises(InvalidImageError, match="digest mismatch"):
            reader.read()
            reader.verify()
        reader.close()


def test_a_failed_download_fails_its_reader(tmp_path, delays):
    served = ArrivingLayer(*[[BIG_LAYER[:FIRST], "pause", "break"]] * (transport.RETRIES + 1))
    with reg.load(REF, image.DEFAULT_PLATFORM, served.options(tmp_path)) as img:
        reader = img.layers[0].open()
        assert read_exactly(reader, FIRST) == BIG_LAYER[:FIRST]
        served.go.set()
        with pytest.raises(RegistryError, match="gave up after"):
            reader.read()
        reader.close()


def test_a_blob_moved_into_the_cache_before_its_reader_opens_it_is_read_from_the_cache(tmp_path):
    # The download wrote the whole blob to its temp file and renamed it into the cache just before the
    # reader first opened the temp file's name: the reader waits for the download's result and reads that.
    cached = tmp_path / "blob"
    cached.write_bytes(LAYER)
    arrival, download = downloads._Arrival(), Future()
    download.add_done_callback(lambda _: arrival.changed())
    arrival.begin(str(tmp_path / ".blob.tmp"))  # gone: renamed to `cached`
    arrival.grew(len(LAYER))
    reader = downloads.ArrivingBlob(arrival, download, lambda: os.open(download.result(), os.O_RDONLY))
    threading.Timer(0.2, download.set_result, args=(str(cached),)).start()
    assert reader.read() == LAYER
    reader.close()


def test_a_cached_layer_is_hashed_once_even_when_opened_during_its_check(tmp_path, monkeypatch):
    served = ArrivingLayer([BIG_LAYER], [BIG_LAYER])
    options = reg.RegistryOptions(transport=httpx.MockTransport(served), cache_dir=str(tmp_path / "cache"))
    with reg.load(REF, image.DEFAULT_PLATFORM, options) as img:
        img.layers[0].open().verify()  # downloaded into the cache
    hashed: list[int] = []
    real, layer = digests.hasher, digests.of(BIG_LAYER)

    class Counting:
        """The real hash, counting the layer's bytes; the cache check (on a download thread) starts slowly, so
        that the layer is opened while its cached file is being checked."""

        def __init__(self, digest: str) -> None:
            self._hash, self._counted = real(digest), digest == layer

        def update(self, data: bytes) -> None:
            if self._counted:
                if not hashed and threading.current_thread().name.startswith("download"):
                    time.sleep(0.3)
                hashed.append(len(data))
            self._hash.update(data)

        def __getattr__(self, name: str):
            return getattr(self._hash, name)

    monkeypatch.setattr(digests, "hasher", Counting)
    with reg.load(REF, image.DEFAULT_PLATFORM, options) as img:
        reader = img.layers[0].open()
        assert reader.read() == BIG_LAYER
        reader.verify()
        reader.close()
    assert sum(hashed) == len(BIG_LAYER) and served.requests == 1  # checked once, never downloaded again
