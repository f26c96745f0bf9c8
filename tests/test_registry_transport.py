"""Talking to registries over an unreliable network: retries, corruption, redirects, TLS, proxies."""

import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fixtures.images import E, Layout
from fixtures.registry import free_port, unique_repo
from initramfs_operator import build
from initramfs_operator.errors import InvalidImageError, RegistryError, UsageError
from initramfs_operator.oci import registry as reg
from initramfs_operator.oci.registry import transport
from test_registry import AMD64, blob, manifest_of, pull


@pytest.fixture
def pushed(tmp_path):
    """Push a two-layer image to a registry; returns (layout, repo, manifest descriptor, layer descriptors)."""
    def push(registry, tag="t"):
        layout = Layout(tmp_path / f"layout-{tag}")
        desc = layout.tag(layout.image([[E("one", data=b"1" * 4000)], [E("two", data=b"2" * 9000)]]), tag)
        repo = unique_repo()
        registry.push(layout.root, tag, repo)
        return layout, repo, desc, manifest_of(layout, desc)["layers"]
    return push


def test_503_then_success_is_retried(registry, fault_proxy, pushed):
    layout, repo, desc, layers = pushed(registry)
    fault_proxy.inject("GET", "/manifests/", "status", status=503, times=2)
    fault_proxy.inject("GET", f"/blobs/{layers[1]['digest']}", "status", status=502, times=1)
    want = [blob(layout, layer) for layer in layers]
    assert pull(fault_proxy.ref(repo, "t"), AMD64, fault_proxy.options())[1] == want


def test_429_retry_after_is_honoured(registry, fault_proxy, pushed):
    _, repo, desc, _ = pushed(registry)
    fault_proxy.inject("HEAD", "/manifests/", "status", status=429, headers={"Retry-After": "2"})
    started = time.monotonic()
    assert reg.current_digest(fault_proxy.ref(repo, "t"), fault_proxy.options()) == desc["digest"]
    assert time.monotonic() - started >= 2


def test_unreachable_registry_is_retried_then_named(monkeypatch):
    monkeypatch.setattr(transport, "BACKOFF", 0.01)
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(RegistryError, match=f"{host}/a/b:c: ConnectError talking to {host}.*gave up after 5 attempts"):
        pull(f"{host}/a/b:c", AMD64, reg.RegistryOptions(insecure=(host,)))


def test_build_prefetches_the_layers_in_parallel(registry, fault_proxy, tmp_path):
    layout = Layout(tmp_path / "four")
    layout.tag(layout.image([[E(f"f{i}", data=bytes([i]) * 100)] for i in range(4)]), "four")
    repo = unique_repo()
    registry.push(layout.root, "four", repo)
    fault_proxy.inject("GET", "/blobs/", "delay", seconds=0.6, times=None)
    init = tmp_path / "init"
    init.write_bytes(b"#!/bin/sh\n")

    def build_seconds(jobs: int) -> float:
        started = time.monotonic()
        with reg.load(fault_proxy.ref(repo, "four"), AMD64, fault_proxy.options(jobs=jobs)) as img:
            result = build.build_file(img, str(tmp_path / f"initramfs-{jobs}"), build.BuildOptions(init=str(init)))
        assert result.entries > 4
        return time.monotonic() - started

    one_by_one = build_seconds(jobs=1)
    assert one_by_one >= 5 * 0.6  # the config, then each layer
    assert build_seconds(jobs=4) < one_by_one - 2 * 0.6  # the four layers at once save three delays


def test_a_failing_program_exits_without_waiting_for_downloads(registry, fault_proxy, pushed):
    _, repo, _, layers = pushed(registry)
    fault_proxy.inject("GET", "/blobs/(" + "|".join(layer["digest"] for layer in layers) + ")", "delay", seconds=30,
                       times=None)
    script = textwrap.dedent(f"""
        from initramfs_operator.oci import image
        from initramfs_operator.oci import registry as reg
        options = reg.RegistryOptions(insecure=({fault_proxy.host!r},))
        with reg.load({fault_proxy.ref(repo, "t")!r}, image.DEFAULT_PLATFORM, options) as img:
            for layer in img.layers:
                layer.prefetch()
            raise SystemExit("build failed")
    """)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr.strip()) == (1, "build failed")
    assert time.monotonic() - started < 10


def test_persistent_5xx_gives_up_with_the_reference_named(registry, fault_proxy, pushed):
    _, repo, _, _ = pushed(registry)
    fault_proxy.inject("GET", "/manifests/", "status", status=500, times=None, headers={"Retry-After": "0"})
    with pytest.raises(RegistryError, match=rf"{fault_proxy.host}/{repo}:t: HTTP 500 .*gave up after 5 attempts"):
        pull(fault_proxy.ref(repo, "t"), AMD64, fault_proxy.options())


def test_connection_cut_mid_blob_is_retried(registry, fault_proxy, pushed):
    layout, repo, _, layers = pushed(registry)
    fault_proxy.inject("GET", f"/blobs/{layers[0]['digest']}", "cut")
    want = [blob(layout, layer) for layer in layers]
    assert pull(fault_proxy.ref(repo, "t"), AMD64, fault_proxy.options())[1] == want


def test_connection_cut_mid_blob_is_resumed_where_it_broke_off(registry, fault_proxy, tmp_path):
    layout = Layout(tmp_path / "layout")
    desc = layout.tag(layout.image([[E("big", data=random.Random(3).randbytes(3 << 20))]]), "t")  # no deflating it
    repo = unique_repo()
    registry.push(layout.root, "t", repo)
    [layer] = manifest_of(layout, desc)["layers"]
    fault_proxy.inject("GET", f"/blobs/{layer['digest']}", "cut")  # half the blob, then the connection is shut
    assert pull(fault_proxy.ref(repo, "t"), AMD64, fault_proxy.options())[1] == [blob(layout, layer)]
    # The second request asks for what the first did not bring, and distribution answers it (206).
    [(path, asked)] = fault_proxy.ranges
    assert path.endswith(layer["digest"]) and asked.startswith("bytes=") and asked.endswith("-")
    assert 0 < int(asked[len("bytes="):-1]) <= layer["size"] // 2


@pytest.mark.parametrize("action, message", [
    ("truncate", "got {half} bytes, descriptor declares {size} \\(truncated\\?\\)"),
    ("flip", "content digest mismatch"),
])
def test_corrupt_blob_is_an_error_naming_the_digest(registry, fault_proxy, pushed, action, message):
    _, repo, _, layers = pushed(registry)
    digest, size = layers[1]["digest"], layers[1]["size"]
    message = message.format(half=size // 2, size=size)
    fault_proxy.inject("GET", f"/blobs/{digest}", action)
    with reg.load(fault_proxy.ref(repo, "t"), AMD64, fault_proxy.options()) as img:
        assert img.layers[0].open().read()  # the other layer is fine
        with pytest.raises(InvalidImageError, match=f"layer {digest}: {message}"):
            img.layers[1].open().verify()  # when opening it, or reading it while it arrives


def test_corrupt_config_and_pinned_manifest_are_errors_naming_the_digest(registry, fault_proxy, pushed):
    layout, repo, desc, _ = pushed(registry)
    config = manifest_of(layout, desc)["config"]["digest"]
    fault_proxy.inject("GET", f"/blobs/{config}", "flip")
    with pytest.raises(InvalidImageError, match=f"config {config}: content digest mismatch"):
        pull(fault_proxy.ref(repo, "t"), AMD64, fault_proxy.options())
    fault_proxy.inject("GET", f"/manifests/{desc['digest']}", "flip")
    with pytest.raises(InvalidImageError, match=f"manifest {desc['digest']}: content digest mismatch"):
        pull(fault_proxy.ref(repo, desc["digest"]), AMD64, fault_proxy.options())


def test_blob_redirect_to_another_host_does_not_carry_authorization(auth_registry, make_fault_proxy, pushed):
    proxy = make_fault_proxy(auth_registry)
    layout, repo, _, layers = pushed(auth_registry)
    proxy.inject("GET", "/blobs/", "redirect", times=None)
    assert pull(proxy.ref(repo, "t"), AMD64, proxy.options())[1] == [blob(layout, layer) for layer in layers]
    assert any(path.startswith("/_storage/") for _, path in proxy.seen)
    assert not proxy.leaked_authorization


def test_proxy_from_the_environment(registry, fault_proxy, pushed, monkeypatch):
    layout, repo, _, layers = pushed(registry)
    # This name does not resolve: only the proxy (which forwards to the registry) can reach it.
    monkeypatch.setenv("HTTP_PROXY", fault_proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    _, pulled = pull(f"registry.invalid:5000/{repo}:t", AMD64, reg.RegistryOptions(insecure=("registry.invalid",)))
    assert pulled == [blob(layout, layer) for layer in layers]


def test_tls_with_an_extra_ca_bundle(tls_registry, pushed):
    layout, repo, desc, layers = pushed(tls_registry)
    img, pulled = pull(tls_registry.ref(repo, "t"), AMD64, tls_registry.options())
    assert img.digest == desc["digest"]
    assert pulled == [blob(layout, layer) for layer in layers]


def test_ca_bundle_read_from_a_file_with_comments_and_bad_bundles_refused(tls_registry, pushed, tmp_path):
    _, repo, desc, _ = pushed(tls_registry)
    bundle = tmp_path / "bundle.pem"  # Mozilla's bundle has comments like this one
    bundle.write_bytes("# Issuer: CN=Főtanúsítvány\n".encode() + Path(tls_registry.ca_file).read_bytes())
    options = reg.RegistryOptions(ca_certs=reg.read_ca_file(str(bundle)))
    assert reg.current_digest(tls_registry.ref(repo, "t"), options) == desc["digest"]
    for content in (b"", b"not a certificate", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"):
        bundle.write_bytes(content)
        with pytest.raises(UsageError, match=f"cannot load CA bundle {bundle}: "):
            reg.read_ca_file(str(bundle))
    with pytest.raises(UsageError, match=f"cannot read CA bundle {tmp_path}/missing.pem: No such file"):
        reg.read_ca_file(str(tmp_path / "missing.pem"))


def test_tls_without_the_ca_fails_at_once_with_a_hint(tls_registry, pushed):
    _, repo, _, _ = pushed(tls_registry)
    started = time.monotonic()
    with pytest.raises(RegistryError, match=f"{tls_registry.host}: TLS certificate verification failed .*CA bundle"):
        reg.current_digest(tls_registry.ref(repo, "t"), reg.RegistryOptions())
    assert time.monotonic() - started < 2  # not retried


def test_https_to_a_plain_http_registry_suggests_insecure(registry, pushed):
    _, repo, _, _ = pushed(registry)
    with pytest.raises(RegistryError, match="list it as insecure"):
        reg.current_digest(registry.ref(repo, "t"), reg.RegistryOptions())
