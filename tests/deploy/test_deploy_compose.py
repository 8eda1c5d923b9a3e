"""Static checks of deploy/: every YAML parses, and the compose demo is wired consistently
(files and build contexts exist, the node, the worker and Orthanc agree on addresses, AE titles
and ports). Offline; Docker is not needed."""
from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

import pytest

from tests.deploy.deploy_files import (
    DEPLOY,
    REPO,
    Tagged,
    check_node_config,
    image_tag_ok,
    interpolate,
    load_yaml,
    load_yaml_all,
    yaml_files,
)

COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_CPU = DEPLOY / "compose.cpu.yaml"


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch):
    for key in list(os.environ):
        if key.startswith("DSM_NODE__"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


def test_every_yaml_under_deploy_parses():
    files = yaml_files()
    assert COMPOSE in files and COMPOSE_CPU in files
    assert any(p.parent.name == "k8s" for p in files)
    for path in files:
        docs = load_yaml_all(path)
        assert docs, f"{path} is empty"
        for doc in docs:
            assert isinstance(doc, dict), f"{path}: a document is not a mapping"


def _services(doc: dict) -> dict[str, dict]:
    services = doc.get("services")
    assert isinstance(services, dict) and services
    return services


def _volume_source(entry) -> tuple[str | None, str]:
    if isinstance(entry, dict):
        return entry.get("source"), entry["target"]
    parts = entry.split(":")
    if len(parts) == 1:
        return None, parts[0]
    return parts[0], parts[1]


def test_compose_references_exist(compose):
    base = COMPOSE.parent
    services = _services(compose)
    declared_volumes = set(compose.get("volumes") or {})
    declared_networks = set(compose.get("networks") or {})
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, f"{name}: neither image nor build"
        if "build" in svc:
            build = svc["build"]
            context = (base / build["context"]).resolve()
            assert context.is_dir(), f"{name}: build context {context} missing"
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        if "image" in svc:
            assert image_tag_ok(interpolate(svc["image"])), f"{name}: image {svc['image']} is not pinned"
        for entry in svc.get("volumes", []):
            source, target = _volume_source(entry)
            assert target.startswith("/"), f"{name}: volume target {target}"
            if source is None:
                continue
            if source.startswith((".", "/")):
                assert (base / source).exists(), f"{name}: bind mount source {source} missing"
            else:
                assert source in declared_volumes, f"{name}: named volume {source} not declared"
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name}: depends_on unknown service {dep}"
        nets = svc.get("networks", [])
        for net in nets if isinstance(nets, list) else nets.keys():
            assert net in declared_networks, f"{name}: unknown network {net}"
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: port {port} published beyond loopback"


def test_compose_demo_is_complete(compose):
    services = _services(compose)
    for needed in ("dsm-node", "worker", "postgres", "redis", "orthanc", "viewer"):
        assert needed in services, f"compose demo lacks {needed}"
    node, worker = services["dsm-node"], services["worker"]
    assert node["command"][0] == "serve" and worker["command"][0] == "worker"
    # One GPU for the worker.
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    # Same spool and same database / broker for node and worker.
    def mounts(svc):
        return {_volume_source(v)[1]: _volume_source(v)[0] for v in svc["volumes"]}
    assert mounts(node)["/var/lib/dsm-node"] == mounts(worker)["/var/lib/dsm-node"]
    assert mounts(node)["/etc/dsm-node/node.yaml"] == mounts(worker)["/etc/dsm-node/node.yaml"]
    for key in ("DSM_NODE__DATABASE__URL", "DSM_NODE__EXECUTOR__BROKER_URL"):
        assert node["environment"][key] == worker["environment"][key]
    assert worker["healthcheck"].get("disable") is True, "the worker has no HTTP endpoint"
    assert worker["depends_on"]["dsm-node"]["condition"] == "service_healthy"


def _orthanc_json() -> dict:
    return json.loads((DEPLOY / "orthanc" / "orthanc.json").read_text())


def test_compose_node_orthanc_wiring(compose, tmp_path):
    services = _services(compose)
    node = services["dsm-node"]
    cfg_source = next(s for s, t in map(_volume_source, node["volumes"]) if t == "/etc/dsm-node/node.yaml")
    env = {k: interpolate(v) for k, v in node["environment"].items()}
    settings = check_node_config(
        (COMPOSE.parent / cfg_source).read_text(), str(cfg_source), tmp_path=tmp_path,
        overrides={"database.url": env["DSM_NODE__DATABASE__URL"],
                   "executor.broker_url": env["DSM_NODE__EXECUTOR__BROKER_URL"]},
    )
    assert settings.executor.kind == "celery"
    assert settings.database_url.startswith("postgresql")
    assert str(settings.storage.data_dir) == "/var/lib/dsm-node"
    assert settings.dicom.host == "0.0.0.0" and settings.http.host == "0.0.0.0"
    # Published ports are the configured ones.
    published = {p.split(":")[-1] for p in node["ports"]}
    assert {str(settings.dicom.port), str(settings.http.port)} <= published

    orthanc_cfg = _orthanc_json()
    orthanc = services["orthanc"]
    # Orthanc's own files are the ones compose mounts.
    mounted = {t: s for s, t in map(_volume_source, orthanc["volumes"])}
    assert Path(mounted["/etc/orthanc/orthanc.json"]).name == "orthanc.json"
    for script in orthanc_cfg.get("LuaScripts", []):
        assert script in mounted, f"Lua script {script} is not mounted into the orthanc service"
        assert (COMPOSE.parent / mounted[script]).is_file()
    # Orthanc -> node: the modality "dsm" is the node's AE title, service name and port.
    aet, host, port = orthanc_cfg["DicomModalities"]["dsm"][:3]
    assert (aet, host, int(port)) == (settings.dicom.ae_title, "dsm-node", settings.dicom.port)
    # node <- Orthanc: allowed peer, by AE title and by Orthanc's fixed address.
    orthanc_ip = ipaddress.ip_address(orthanc["networks"]["dsm"]["ipv4_address"])
    peers = [p for p in settings.dicom.peers if p.ae_title == orthanc_cfg["DicomAet"]]
    assert peers, "Orthanc's AE title is not a configured peer of the node"
    assert any(orthanc_ip in ipaddress.ip_network(n) for p in peers for n in p.networks)
    subnet = ipaddress.ip_network(compose["networks"]["dsm"]["ipam"]["config"][0]["subnet"])
    assert orthanc_ip in subnet
    # node -> Orthanc: results go back to Orthanc's DICOM port.
    dest = [d for d in settings.delivery.destinations if d.host == "orthanc"]
    assert dest and dest[0].ae_title == orthanc_cfg["DicomAet"] and dest[0].port == orthanc_cfg["DicomPort"]


def test_viewer_is_wired_to_orthanc_dicomweb():
    conf = (DEPLOY / "viewer" / "nginx.conf").read_text()
    app_config = (DEPLOY / "viewer" / "app-config.js").read_text()
    root = _orthanc_json()["DicomWeb"]["Root"]
    assert f"proxy_pass http://orthanc:{_orthanc_json()['HttpPort']}{root}" in conf
    assert "qidoRoot: '/dicom-web'" in app_config and "wadoRoot: '/dicom-web'" in app_config


def test_cpu_override_drops_the_gpu(compose):
    override = load_yaml(COMPOSE_CPU)
    worker = override["services"]["worker"]
    assert set(override["services"]) <= set(_services(compose))
    assert isinstance(worker["deploy"], Tagged) and worker["deploy"].tag == "!reset"
    assert (COMPOSE_CPU.parent / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()
    assert worker["build"]["dockerfile"].endswith("Dockerfile.cpu")
    assert worker["environment"]["DSM_NODE__INFERENCE__DEVICE"] == "cpu"


def test_image_default_config_is_valid(tmp_path):
    settings = check_node_config((DEPLOY / "docker" / "node.yaml").read_text(), "deploy/docker/node.yaml",
                                 tmp_path=tmp_path)
    assert str(settings.storage.data_dir) == "/var/lib/dsm-node"
    assert settings.dicom.peers == []  # secure default: loopback only until peers are configured


def test_dockerignore_keeps_the_context_small():
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    assert lines[lines.index("*") if "*" in lines else -1] == "*", "allow-list expected (first pattern '*')"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert {"pyproject.toml", "constraints.txt", "README.md", "dsm_node", "model", "training", "config"} <= allowed
    assert not allowed & {".venv", "var", ".git", "tests", ".cache"}
