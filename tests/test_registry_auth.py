"""Authentication against real registries: htpasswd basic auth and the bearer token flow."""

import base64
import json
import logging
import re

import pytest

from fixtures.images import E, Layout
from fixtures.registry import PASSWORD, USER, unique_repo
from initramfs_operator.errors import AuthError, UsageError
from initramfs_operator.oci import registry as reg
from test_registry import AMD64, blob, manifest_of, pull

SECRETS = (PASSWORD, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text
        assert "eyJ" not in text  # the start of every JWT


@pytest.fixture
def image_in(tmp_path):
    def push(registry):
        layout = Layout(tmp_path / "layout")
        desc = layout.tag(layout.image([[E("a", data=b"a" * 100)], [E("b", data=b"b" * 200)],
                                        [E("c", data=b"c" * 300)]]), "v1")
        repo = unique_repo("private")
        layers = [blob(layout, layer) for layer in manifest_of(layout, desc)["layers"]]
        return registry.push(layout.root, "v1", repo), repo, layers
    return push


def write_auth_file(path, key: str, entry: dict) -> str:
    path.write_text(json.dumps({"auths": {key: entry}}))
    return str(path)


# -- basic

def test_basic_auth_anonymous_is_refused_clearly(auth_registry, image_in):
    ref, _, _ = image_in(auth_registry)
    with pytest.raises(AuthError, match=f"{auth_registry.host}: authentication required .* no credentials"):
        pull(ref, AMD64, auth_registry.options(keychain=reg.Keychain()))


def test_basic_auth_with_explicit_credentials(auth_registry, image_in):
    ref, _, want = image_in(auth_registry)
    assert pull(ref, AMD64, auth_registry.options())[1] == want


def test_basic_auth_wrong_password_names_the_host_not_the_secret(auth_registry, image_in, caplog):
    caplog.set_level(logging.DEBUG)
    ref, _, _ = image_in(auth_registry)
    with pytest.raises(AuthError, match=f"{auth_registry.host}: access to .* refused: credentials rejected") as e:
        pull(ref, AMD64, auth_registry.options(keychain=auth_registry.keychain(password="not-" + PASSWORD)))
    assert_no_secret(str(e.value), repr(e.value), caplog.text)
    assert "not-" + PASSWORD not in str(e.value) + caplog.text


@pytest.mark.parametrize("key, entry", [
    ("{host}", {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}),
    ("http://{host}", {"username": USER, "password": PASSWORD}),
    ("https://{host}/v2/", {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(), "email": "x@y"}),
])
def test_basic_auth_from_docker_config_and_kubernetes_secret_files(auth_registry, image_in, tmp_path, key, entry):
    ref, _, want = image_in(auth_registry)
    auth_file = write_auth_file(tmp_path / ".dockerconfigjson", key.format(host=auth_registry.host), entry)
    options = auth_registry.options(keychain=reg.Keychain.from_file(auth_file))
    assert pull(ref, AMD64, options)[1] == want


def test_injected_401_is_an_auth_error_without_secrets(registry, make_fault_proxy, image_in, caplog):
    caplog.set_level(logging.DEBUG)
    proxy = make_fault_proxy(registry)
    _, repo, _ = image_in(registry)
    proxy.inject("GET", "/v2/", "status", status=401, times=None, body=b"denied",
                 headers={"WWW-Authenticate": 'Basic realm="proxy"'})
    keychain = reg.Keychain({proxy.host: reg.Credentials(USER, PASSWORD)})
    with pytest.raises(AuthError, match=f"{proxy.host}: access to repository:{repo}:pull refused: credentials") as e:
        pull(proxy.ref(repo, "v1"), AMD64, proxy.options(keychain=keychain))
    assert_no_secret(str(e.value), caplog.text)


# -- bearer tokens

def pull_tokens(registry, repo: str) -> list:
    """Tokens issued for pulling `repo` (skopeo's pushes ask for pull,push)."""
    return [t for t in registry.token_server.issued if t[1] == [f"repository:{repo}:pull"]]


def test_token_flow_fetches_one_token_per_scope(token_registry, image_in, caplog):
    caplog.set_level(logging.DEBUG)
    ref, repo, want = image_in(token_registry)
    assert pull(ref, AMD64, token_registry.options(jobs=3))[1] == want
    assert pull_tokens(token_registry, repo) == [(USER, [f"repository:{repo}:pull"])]
    assert_no_secret(caplog.text)


def test_token_flow_anonymous_gets_no_access(token_registry, image_in):
    ref, repo, _ = image_in(token_registry)
    with pytest.raises(AuthError, match=f"access to repository:{repo}:pull refused to anonymous requests"):
        pull(ref, AMD64, token_registry.options(keychain=reg.Keychain()))


def test_token_flow_wrong_password(token_registry, image_in, caplog):
    caplog.set_level(logging.DEBUG)
    ref, repo, _ = image_in(token_registry)
    with pytest.raises(AuthError, match="token service 127.0.0.1 refused the credentials") as e:
        pull(ref, AMD64, token_registry.options(keychain=token_registry.keychain(password="wrong")))
    assert_no_secret(str(e.value), caplog.text)


def test_token_flow_with_an_identity_token(token_registry, image_in, tmp_path):
    ref, repo, want = image_in(token_registry)
    refresh_token = next(iter(token_registry.token_server.refresh_tokens))
    auth_file = write_auth_file(tmp_path / "config.json", token_registry.host, {"identitytoken": refresh_token})
    options = token_registry.options(keychain=reg.Keychain.from_file(auth_file))
    assert pull(ref, AMD64, options)[1] == want


def test_token_is_renewed_when_the_registry_refuses_it(token_registry, make_fault_proxy, image_in):
    proxy = make_fault_proxy(token_registry)
    ref, repo, want = image_in(token_registry)
    server = token_registry.token_server
    # What an expired token gets: a 401 with a fresh challenge, in the middle of the pull.
    challenge = f'Bearer realm="{server.realm}",service="{server.service}",scope="repository:{repo}:pull"'
    proxy.inject("GET", "/blobs/", "status", status=401, headers={"WWW-Authenticate": challenge})
    assert pull(proxy.ref(repo, "v1"), AMD64, proxy.options(jobs=1))[1] == want
    assert len(pull_tokens(token_registry, repo)) == 2


# -- keychains

def test_docker_hub_keys_map_to_docker_io(tmp_path):
    for key in ("https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io", "docker.io"):
        keychain = reg.Keychain.from_file(write_auth_file(tmp_path / "config.json", key,
                                                          {"username": "u", "password": "p"}))
        assert keychain.resolve("docker.io") == reg.Credentials("u", "p")
        assert keychain.resolve("quay.io") is None


def test_keychain_from_a_kubernetes_secret_in_memory_and_from_explicit_credentials(auth_registry, image_in):
    ref, _, want = image_in(auth_registry)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    dockerconfigjson = {"auths": {f"https://{auth_registry.host}/v2/": {"auth": token},
                                  "other.example": {"username": "x", "password": "y"}}}
    keychain = reg.Keychain.from_docker_config(dockerconfigjson, "secret pull")
    assert pull(ref, AMD64, auth_registry.options(keychain=keychain))[1] == want
    everywhere = reg.Keychain(fallback=reg.Credentials(USER, PASSWORD))  # --username/--password-stdin
    assert everywhere.resolve("quay.io") == everywhere.resolve(auth_registry.host) == reg.Credentials(USER, PASSWORD)
    assert pull(ref, AMD64, auth_registry.options(keychain=everywhere))[1] == want
    for shown in (repr(keychain), repr(everywhere), repr(keychain.resolve(auth_registry.host)),
                  repr(auth_registry.options(keychain=keychain))):
        assert_no_secret(shown)
    assert repr(keychain) == f"Keychain(['{auth_registry.host}', 'other.example'])"


def test_identity_tokens_stay_out_of_repr(tmp_path):
    keychain = reg.Keychain.from_file(write_auth_file(tmp_path / "config.json", "quay.io",
                                                      {"identitytoken": "refresh-hunter2"}))
    assert keychain.resolve("quay.io") == reg.Credentials("", "", "refresh-hunter2")
    assert "hunter2" not in repr(keychain.resolve("quay.io"))


@pytest.mark.parametrize("content", ['{"auths": {"quay.io": {"auth": "not base64!"}}}', '{"auths": ["x"]}',
                                     'not json hunter2', '["hunter2"]', '{"auths": {"quay.io": {"password": 7}}}',
                                     '{"auths": {"quay.io": {"auth": "h\u00fcnter2"}}}'])
def test_malformed_auth_files_are_usage_errors_without_content(tmp_path, content):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=str(path)) as e:
        reg.Keychain.from_file(str(path))
    assert "hunter2" not in str(e.value)


def test_missing_auth_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match=f"cannot read auth file {tmp_path}/nope.json: No such file"):
        reg.Keychain.from_file(str(tmp_path / "nope.json"))


# --- credential helpers of the user's docker config ---------------------------------------------

def docker_config(path, doc: dict) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def test_credential_helpers_answer_for_their_registries_once_each(credential_helper, tmp_path):
    helper = credential_helper
    helper.answers = {"ghcr.io": ["ghcr-user", "ghcr-secret"], "https://index.docker.io/v1/": ["<token>", "refresh"]}
    helper.save()
    other = base64.b64encode(b"file-user:file-secret").decode()
    path = docker_config(tmp_path / "config.json", {"auths": {"other.example": {"auth": other}},
                                                    "credHelpers": {"https://ghcr.io": "test"}, "credsStore": "test"})
    keychain = reg.Keychain.from_file(path, helpers=True)
    for _ in range(2):
        assert keychain.resolve("ghcr.io") == reg.Credentials("ghcr-user", "ghcr-secret")  # credHelpers
        assert keychain.resolve("docker.io") == reg.Credentials(identity_token="refresh")  # credsStore, "<token>"
        assert keychain.resolve("other.example") == reg.Credentials("file-user", "file-secret")  # the store has none
        assert keychain.resolve("nowhere.example") is None
    assert sorted(helper.asked) == ["ghcr.io", "https://index.docker.io/v1/", "nowhere.example", "other.example"]
    assert "secret" not in repr(keychain) and "refresh" not in repr(keychain)


def test_only_the_users_docker_config_runs_helpers(credential_helper, tmp_path):
    """--registry-config files and Kubernetes Secrets are read as the kubelet reads them: auths only."""
    credential_helper.answers = {"ghcr.io": ["u", "p"]}
    credential_helper.save()
    doc = {"auths": {}, "credHelpers": {"ghcr.io": "test"}, "credsStore": "test"}
    assert reg.Keychain.from_file(docker_config(tmp_path / "config.json", doc)).resolve("ghcr.io") is None
    assert reg.Keychain.from_docker_config(doc, "secret s").resolve("ghcr.io") is None
    assert credential_helper.asked == []


@pytest.mark.parametrize("answer, words", [
    ("crash", "credential helper docker-credential-test failed for ghcr.io (exit status 3)"),
    ("garbage", "did not answer for ghcr.io with a Username and a Secret"),
    ("flood", "answered for ghcr.io with more than 1 MiB"),  # read no further than that
    ("hang", "gave no answer for ghcr.io in 1 s"),
])
def test_a_helper_that_fails_is_an_authentication_error(credential_helper, tmp_path, monkeypatch, answer, words):
    monkeypatch.setattr("initramfs_operator.oci.registry.keychain.HELPER_SECONDS", 1)
    credential_helper.answers = {"ghcr.io": answer}
    credential_helper.save()
    keychain = reg.Keychain.from_file(docker_config(tmp_path / "c.json", {"credsStore": "test"}), helpers=True)
    with pytest.raises(AuthError, match=re.escape(words)):
        keychain.resolve("ghcr.io")


def test_a_missing_or_unsafe_helper_is_named(tmp_path):
    keychain = reg.Keychain.from_file(docker_config(tmp_path / "c.json", {"credsStore": "absent-xyz"}), helpers=True)
    with pytest.raises(AuthError, match="credential helper docker-credential-absent-xyz, which is not on PATH"):
        keychain.resolve("ghcr.io")
    for bad in ({"credsStore": "../../bin/sh"}, {"credHelpers": {"ghcr.io": "a b"}}, {"credHelpers": ["x"]}):
        with pytest.raises(UsageError):
            reg.Keychain.from_file(docker_config(tmp_path / "c.json", bad), helpers=True)
