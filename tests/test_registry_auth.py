"""Authentication against real registries: htpasswd basic auth and the bearer token flow."""

import base64
import json
import logging

import pytest

from fixtures.images import E, Layout
from fixtures.registry import PASSWORD, USER, unique_repo
from initramfs_operator.oci.registry import auth, client as reg
from initramfs_operator.errors import AuthError, UsageError
from test_registry import AMD64, blob, layer_bytes, manifest_of

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
        layers = [blob(layout, l) for l in manifest_of(layout, desc)["layers"]]
        return registry.push(layout.root, "v1", repo), repo, layers
    return push


def write_auth_file(path, key: str, entry: dict) -> str:
    path.write_text(json.dumps({"auths": {key: entry}}))
    return str(path)


# -- basic

def test_basic_auth_anonymous_is_refused_clearly(auth_registry, image_in):
    ref, _, _ = image_in(auth_registry)
    with pytest.raises(AuthError, match=f"{auth_registry.host}: authentication required .* no credentials"):
        reg.load(ref, AMD64, auth_registry.options(username=None, password=None))


def test_basic_auth_with_explicit_credentials(auth_registry, image_in):
    ref, _, want = image_in(auth_registry)
    assert layer_bytes(reg.load(ref, AMD64, auth_registry.options())) == want


def test_basic_auth_wrong_password_names_the_host_not_the_secret(auth_registry, image_in, caplog):
    caplog.set_level(logging.DEBUG)
    ref, _, _ = image_in(auth_registry)
    with pytest.raises(AuthError, match=f"{auth_registry.host}: access to .* refused: credentials rejected") as e:
        reg.load(ref, AMD64, auth_registry.options(password="not-" + PASSWORD))
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
    options = auth_registry.options(username=None, password=None, auth_file=auth_file)
    assert layer_bytes(reg.load(ref, AMD64, options)) == want


def test_injected_401_is_an_auth_error_without_secrets(registry, make_fault_proxy, image_in, caplog):
    caplog.set_level(logging.DEBUG)
    proxy = make_fault_proxy(registry)
    _, repo, _ = image_in(registry)
    proxy.inject("GET", "/v2/", "status", status=401, times=None, body=b"denied",
                 headers={"WWW-Authenticate": 'Basic realm="proxy"'})
    with pytest.raises(AuthError, match=f"{proxy.host}: access to repository:{repo}:pull refused: credentials") as e:
        reg.load(proxy.ref(repo, "v1"), AMD64, proxy.options(username=USER, password=PASSWORD))
    assert_no_secret(str(e.value), caplog.text)


# -- bearer tokens

def pull_tokens(registry, repo: str) -> list:
    """Tokens issued for pulling `repo` (skopeo's pushes ask for pull,push)."""
    return [t for t in registry.token_server.issued if t[1] == [f"repository:{repo}:pull"]]


def test_token_flow_fetches_one_token_per_scope(token_registry, image_in, caplog):
    caplog.set_level(logging.DEBUG)
    ref, repo, want = image_in(token_registry)
    img = reg.load(ref, AMD64, token_registry.options(jobs=3))
    assert layer_bytes(img) == want
    assert pull_tokens(token_registry, repo) == [(USER, [f"repository:{repo}:pull"])]
    assert_no_secret(caplog.text)


def test_token_flow_anonymous_gets_no_access(token_registry, image_in):
    ref, repo, _ = image_in(token_registry)
    with pytest.raises(AuthError, match=f"access to repository:{repo}:pull refused to anonymous requests"):
        reg.load(ref, AMD64, token_registry.options(username=None, password=None))


def test_token_flow_wrong_password(token_registry, image_in, caplog):
    caplog.set_level(logging.DEBUG)
    ref, repo, _ = image_in(token_registry)
    with pytest.raises(AuthError, match="token service 127.0.0.1 refused the credentials") as e:
        reg.load(ref, AMD64, token_registry.options(password="wrong"))
    assert_no_secret(str(e.value), caplog.text)


def test_token_flow_with_an_identity_token(token_registry, image_in, tmp_path):
    ref, repo, want = image_in(token_registry)
    refresh_token = next(iter(token_registry.token_server.refresh_tokens))
    auth_file = write_auth_file(tmp_path / "config.json", token_registry.host, {"identitytoken": refresh_token})
    options = token_registry.options(username=None, password=None, auth_file=auth_file)
    assert layer_bytes(reg.load(ref, AMD64, options)) == want


def test_token_is_renewed_when_the_registry_refuses_it(token_registry, make_fault_proxy, image_in):
    proxy = make_fault_proxy(token_registry)
    ref, repo, want = image_in(token_registry)
    server = token_registry.token_server
    # What an expired token gets: a 401 with a fresh challenge, in the middle of the pull.
    challenge = f'Bearer realm="{server.realm}",service="{server.service}",scope="repository:{repo}:pull"'
    proxy.inject("GET", "/blobs/", "status", status=401, headers={"WWW-Authenticate": challenge})
    img = reg.load(proxy.ref(repo, "v1"), AMD64, proxy.options(jobs=1))
    assert layer_bytes(img) == want
    assert len(pull_tokens(token_registry, repo)) == 2


# -- credential files

def test_docker_hub_keys_map_to_docker_io(tmp_path):
    for key in ("https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io", "docker.io"):
        path = write_auth_file(tmp_path / "config.json", key, {"username": "u", "password": "p"})
        assert auth.lookup("docker.io", path, None, None) == auth.Credentials("u", "p")
        assert auth.lookup("quay.io", path, None, None) is None


def test_explicit_credentials_win_and_secrets_stay_out_of_repr(tmp_path):
    path = write_auth_file(tmp_path / "config.json", "quay.io", {"username": "file", "password": "p"})
    found = auth.lookup("quay.io", path, "cli", "hunter2")
    assert found == auth.Credentials("cli", "hunter2")
    assert "hunter2" not in repr(found)


@pytest.mark.parametrize("content", ['{"auths": {"quay.io": {"auth": "not base64!"}}}', '{"auths": ["x"]}',
                                     'not json hunter2'])
def test_malformed_auth_files_are_usage_errors_without_content(tmp_path, content):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=str(path)) as e:
        auth.lookup("quay.io", str(path), None, None)
    assert "hunter2" not in str(e.value)
