"""The delivery agent's own API client (kube/client.py): the kubeconfig forms it reads and the rotated
ServiceAccount token it sends, seen from the server's side. The server is a local HTTPS (or plain HTTP)
server of the test's that requires what the config says (a client certificate signed by its CA), and
answers with who called: the certificate's subject and the Authorization header.
"""

import base64
import json
import os
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from fixtures.kube import issue_cert, openssl, write_kubeconfig
from initramfs_operator.kube import api, client


class WhoAmI(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        subject = dict(pair[0] for pair in peer["subject"]) if peer else {}
        body = json.dumps({"cn": subject.get("commonName"), "authorization": self.headers.get("Authorization"),
                           "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, the server's certificate for 127.0.0.1, a client certificate, and a second, unrelated CA."""
    pki = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={ca}",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout", str(pki / f"{ca}.key"), "-out", str(pki / f"{ca}.crt"))
    issue_cert(pki, "server", "/CN=server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    issue_cert(pki, "agent", "/O=agents/CN=delivery-agent", "extendedKeyUsage=clientAuth\n")
    return pki


def serve(tls: ssl.SSLContext | None) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), WhoAmI)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def https_server(pki: Path) -> Iterator[str]:
    """Asks for a client certificate of its CA, and does not insist: a token may be all a client has."""
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pki / "server.crt", pki / "server.key")
    tls.load_verify_locations(pki / "ca.crt")
    tls.verify_mode = ssl.CERT_OPTIONAL
    yield from serve(tls)


@pytest.fixture
def http_server() -> Iterator[str]:
    yield from serve(None)


def who(config: client.Config) -> dict:
    transport = client.HttpxTransport(config)
    try:
        return api.Kube(transport).get("/api/v1/namespaces/default")
    finally:
        transport.close()


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_client_certificate_and_ca_as_data(pki: Path, https_server: str, tmp_path: Path):
    write_kubeconfig(tmp_path / "config", https_server, pki / "ca.crt", "agent",
                     {"client-certificate-data": b64(pki / "agent.crt"), "client-key-data": b64(pki / "agent.key")})
    assert who(client.from_kubeconfig(tmp_path / "config")) == {
        "cn": "delivery-agent", "authorization": None, "path": "/api/v1/namespaces/default"}


def test_files_named_relative_to_the_kubeconfig_and_the_current_context(pki: Path, https_server: str,
                                                                        tmp_path: Path):
    for name in ("ca.crt", "agent.crt", "agent.key"):
        (tmp_path / name).write_bytes((pki / name).read_bytes())
    (tmp_path / "config").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "as-agent",
        "clusters": [{"name": "elsewhere", "cluster": {"server": "https://192.0.2.1:6443"}},
                     {"name": "here", "cluster": {"server": https_server + "/", "certificate-authority": "ca.crt"}}],
        "users": [{"name": "admin", "user": {"token": "not-this-one"}},
                  {"name": "agent", "user": {"client-certificate": "agent.crt", "client-key": "agent.key"}}],
        "contexts": [{"name": "as-admin", "context": {"cluster": "elsewhere", "user": "admin"}},
                     {"name": "as-agent", "context": {"cluster": "here", "user": "agent"}}]}))
    assert who(client.from_kubeconfig(tmp_path / "config"))["cn"] == "delivery-agent"


def test_a_token_and_a_token_file(pki: Path, https_server: str, tmp_path: Path):
    write_kubeconfig(tmp_path / "inline", https_server, pki / "ca.crt", "u", {"token": "inline-token"})
    assert who(client.from_kubeconfig(tmp_path / "inline")) == {
        "cn": None, "authorization": "Bearer inline-token", "path": "/api/v1/namespaces/default"}
    (tmp_path / "token").write_text("file-token\n")
    write_kubeconfig(tmp_path / "from-file", https_server, pki / "ca.crt", "u", {"tokenFile": "token"})
    assert who(client.from_kubeconfig(tmp_path / "from-file"))["authorization"] == "Bearer file-token"


def test_a_server_not_signed_by_the_configured_ca_is_refused(pki: Path, https_server: str, tmp_path: Path):
    write_kubeconfig(tmp_path / "config", https_server, pki / "other-ca.crt", "u", {"token": "t"})
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        who(client.from_kubeconfig(tmp_path / "config"))


def test_what_it_cannot_use_is_said(pki: Path, tmp_path: Path):
    write_kubeconfig(tmp_path / "exec", "https://127.0.0.1:1", pki / "ca.crt", "u",
                     {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "login-helper"}})
    with pytest.raises(client.ConfigError, match="authenticates through a plugin"):
        client.from_kubeconfig(tmp_path / "exec")
    write_kubeconfig(tmp_path / "half", "https://127.0.0.1:1", pki / "ca.crt", "u",
                     {"client-certificate-data": b64(pki / "agent.crt")})
    with pytest.raises(client.ConfigError, match="no client key"):
        client.from_kubeconfig(tmp_path / "half")


def test_the_serviceaccount_token_is_read_again_when_the_kubelet_replaces_it(http_server: str, tmp_path: Path):
    """The kubelet writes a projected token into a new timestamped directory and swaps the `..data` symlink;
    `token` is a symlink through it. Each request sends the token the file holds then."""
    mount = tmp_path / "serviceaccount"
    mount.mkdir()

    def project(token: str, generation: int) -> None:
        (mount / f"..{generation}").mkdir()
        (mount / f"..{generation}" / "token").write_text(token)
        os.symlink(f"..{generation}", mount / "..data_tmp")
        os.replace(mount / "..data_tmp", mount / "..data")

    project("first-token", 1)
    (mount / "token").symlink_to("..data/token")
    config = client.Config(http_server, None, client.TokenFile(mount / "token"))
    transport = client.HttpxTransport(config)
    kube = api.Kube(transport)
    try:
        assert kube.get("/version")["authorization"] == "Bearer first-token"
        project("rotated-token", 2)
        assert kube.get("/version")["authorization"] == "Bearer rotated-token"
    finally:
        transport.close()


def test_in_cluster_reads_the_mounted_ca_and_the_service_address(pki: Path, https_server: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch):
    mount = tmp_path / "serviceaccount"
    mount.mkdir()
    (mount / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())
    (mount / "token").write_text("pod-token")
    host, port = https_server.removeprefix("https://").split(":")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    assert who(client.in_cluster(mount))["authorization"] == "Bearer pod-token"
