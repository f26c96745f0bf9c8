"""The CLI against real registries: pull, push, inspect, credentials, and the original tool's flags."""

import base64
import hashlib
import json
import subprocess

from fixtures.images import E, Layout
from fixtures.registry import unique_repo
from initramfs_operator import cli
from initramfs_operator.oci.registry import transport
from test_cli import run

GREETING = [E("etc", "dir"), E("etc/greeting", data=b"from the registry\n"), E("bin", "dir"),
            E("bin/sh", data=b"#!", mode=0o755)]


def pushed(registry, tmp_path, tag="v1") -> tuple[str, str]:
    lay = Layout(tmp_path / "layout")
    lay.tag(lay.image([GREETING], config={"Cmd": ["/bin/sh"]}), tag)
    repo = unique_repo("cli")
    return registry.push(lay.root, tag, repo), repo


def test_build_from_registry_and_push_back_with_subject(registry, tmp_path):
    ref, repo = pushed(registry, tmp_path)
    out = tmp_path / "initrd.zst"
    p = run("build", ref, "-o", out, "-c", "zstd", "--insecure-registry", registry.host, "--json",
            "--cache-dir", tmp_path / "cache", "--source-date-epoch", "1700000000")
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["image"] == ref and result["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert subprocess.run(["bsdtar", "-xOf", str(out), "etc/greeting"], capture_output=True).stdout == \
        b"from the registry\n"

    target = f"{registry.host}/{repo}:initramfs"
    p = run("build", ref, "--push", target, "-c", "zstd", "--insecure-registry", registry.host, "--json",
            "--source-date-epoch", "1700000000")
    assert p.returncode == 0, p.stderr
    push = json.loads(p.stdout)
    assert push["sha256"] == result["sha256"]  # same image, same options: same bytes, pushed or written
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{target}"],
                         capture_output=True, text=True, check=True).stdout
    manifest = json.loads(raw)
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == push["digest"]
    assert manifest["artifactType"] == "application/vnd.initramfs.v1"
    assert manifest["layers"][0]["mediaType"] == "application/vnd.initramfs.v1.cpio+zstd"
    assert manifest["layers"][0]["digest"] == "sha256:" + result["sha256"]
    assert manifest["subject"]["digest"] == result["imageDigest"]
    assert manifest["annotations"]["org.opencontainers.image.base.digest"] == result["imageDigest"]
    assert manifest["annotations"]["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z"
    referrers = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                                f"docker://{registry.host}/{repo}:sha256-{result['imageDigest'][7:]}"],
                               capture_output=True, text=True, check=True).stdout
    assert push["digest"] in referrers


def test_inspect_and_list_layers_from_registry(registry, tmp_path):
    ref, _ = pushed(registry, tmp_path)
    p = run("inspect", ref, "--insecure-registry", registry.host, "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["config"]["Cmd"] == ["/bin/sh"] and len(info["layers"]) == 1
    p = run("list-layers", ref, "--insecure-registry", registry.host)
    assert info["layers"][0]["digest"] in p.stdout


def test_inspect_and_list_layers_download_no_layer(registry, fault_proxy, tmp_path):
    ref, repo = pushed(registry, tmp_path)
    p = run("inspect", fault_proxy.ref(repo, "v1"), "--insecure-registry", fault_proxy.host, "--json")
    assert p.returncode == 0, p.stderr
    layers = {layer["digest"] for layer in json.loads(p.stdout)["layers"]}
    config = fault_proxy.blob_gets()
    assert len(config) == 1 and not layers & set(config)  # the config blob, nothing else
    p = run("list-layers", fault_proxy.ref(repo, "v1"), "--insecure-registry", fault_proxy.host)
    assert p.returncode == 0 and layers <= set(p.stdout.split()), p.stderr
    assert fault_proxy.blob_gets() == config * 2
    p = run("build", fault_proxy.ref(repo, "v1"), "--insecure-registry", fault_proxy.host, "-o", tmp_path / "out")
    assert p.returncode == 0, p.stderr
    assert sorted(fault_proxy.blob_gets()) == sorted(config * 3 + list(layers))


def test_bad_ca_file_is_a_usage_error_only_where_a_registry_is_used(registry, tmp_path):
    ref, _ = pushed(registry, tmp_path)
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    p = run("inspect", ref, "--ca-file", bad)
    assert p.returncode == 2 and f"cannot load CA bundle {bad}" in p.stderr and "Traceback" not in p.stderr
    lay = Layout(tmp_path / "local")
    lay.tag(lay.image([GREETING], config={"Cmd": ["/bin/sh"]}), "v1")
    p = run("inspect", f"oci:{lay.root}:v1", "--ca-file", bad, "--registry-config", tmp_path / "missing.json")
    assert p.returncode == 0, p.stderr


def test_original_credential_flags_and_auth_errors(auth_registry, tmp_path):
    ref, _ = pushed(auth_registry, tmp_path)
    common = ["--insecure-registry", auth_registry.host]
    p = run("build", ref, "-o", tmp_path / "ok", "--username", auth_registry.username, "--password-stdin",
            *common, input=auth_registry.password + "\n")
    assert p.returncode == 0, p.stderr
    p = run("build", ref, "-o", tmp_path / "bad", "--username", auth_registry.username, "--password-stdin",
            *common, "--result-file", tmp_path / "r.json", input="wrong-password-XYZ\n")
    assert p.returncode == 3 and "wrong-password-XYZ" not in p.stderr and auth_registry.host in p.stderr
    assert json.loads((tmp_path / "r.json").read_text())["reason"] == "Unauthorized"
    assert not (tmp_path / "bad").exists()
    config = tmp_path / "docker/config.json"
    config.parent.mkdir()
    token = base64.b64encode(f"{auth_registry.username}:{auth_registry.password}".encode()).decode()
    config.write_text(json.dumps({"auths": {auth_registry.host: {"auth": token}}}))
    p = run("build", ref, "-o", tmp_path / "cfg", "--registry-config", config, *common)
    assert p.returncode == 0, p.stderr


def test_missing_image_and_unreachable_registry(registry, tmp_path, capsys, monkeypatch):
    p = run("build", f"{registry.host}/nothing/here:v1", "--insecure-registry", registry.host, "-o", tmp_path / "x")
    assert p.returncode == 3 and "nothing/here" in p.stderr and "Traceback" not in p.stderr
    # in-process, without the 7.5 s of backoff between the refused retries (test_registry_transport times those)
    monkeypatch.setattr(transport, "sleep", lambda seconds: None)
    code = cli.main(["build", "127.0.0.1:1/app:v1", "--insecure-registry", "127.0.0.1:1", "-o", str(tmp_path / "y")])
    assert code == 3 and "127.0.0.1:1" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_users_docker_config_credential_helper_logs_in(auth_registry, credential_helper, tmp_path, monkeypatch):
    """As after `docker login` with a credential store: config.json names a helper, the helper holds the password."""
    ref, _ = pushed(auth_registry, tmp_path)
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker/config.json").write_text(json.dumps({"auths": {auth_registry.host: {}},
                                                             "credHelpers": {auth_registry.host: "test"}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    credential_helper.answers = {auth_registry.host: [auth_registry.username, auth_registry.password]}
    credential_helper.save()
    p = run("build", ref, "-o", tmp_path / "ok", "--insecure-registry", auth_registry.host)
    assert p.returncode == 0, p.stderr
    credential_helper.answers = {auth_registry.host: [auth_registry.username, "wrong-password-XYZ"]}
    credential_helper.save()
    p = run("build", ref, "-o", tmp_path / "bad", "--insecure-registry", auth_registry.host)
    assert p.returncode == 3 and "wrong-password-XYZ" not in p.stderr and auth_registry.host in p.stderr
    assert credential_helper.asked == [auth_registry.host, auth_registry.host]
