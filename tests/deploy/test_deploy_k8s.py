"""Static checks of deploy/k8s: required fields, references between objects, probes on /healthz,
GPU requests, shared ReadWriteMany spool, and the embedded node.yaml against the schema.
Offline: no cluster. When kubectl is installed, `kubectl kustomize` must render the set too."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess

import pytest
import yaml

from tests.deploy.deploy_files import K8S, check_node_config, image_tag_ok, load_yaml, load_yaml_all
from tests.tools import missing

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch):
    for key in list(os.environ):
        if key.startswith("DSM_NODE__"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def kustomization() -> dict:
    return load_yaml(K8S / "kustomization.yaml")


@pytest.fixture(scope="module")
def objects(kustomization) -> list[dict]:
    docs = []
    for name in kustomization["resources"]:
        docs.extend(load_yaml_all(K8S / name))
    # The Secret is created by the operator; its example documents the expected keys.
    docs.extend(load_yaml_all(K8S / "secret.example.yaml"))
    return docs


def _find(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert found, f"no {kind} {name or ''}"
    return found


def test_kustomization_lists_every_manifest(kustomization):
    listed = set(kustomization["resources"])
    for name in listed:
        assert (K8S / name).is_file(), f"kustomization resource {name} missing"
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    examples = {n for n in on_disk if ".example." in n}
    assert on_disk - examples == listed, "a manifest is not in kustomization.yaml (or vice versa)"


def test_required_fields(objects):
    for obj in objects:
        assert obj.get("apiVersion") and obj.get("kind"), obj
        assert obj.get("metadata", {}).get("name"), obj
        if obj["kind"] in WORKLOADS:
            spec = obj["spec"]
            template = spec["template"]
            selector = spec["selector"]["matchLabels"]
            labels = template["metadata"]["labels"]
            assert selector.items() <= labels.items(), f"{obj['metadata']['name']}: selector does not match"
            pod = template["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for c in pod["containers"]:
                assert c.get("image"), c["name"]
                assert c["resources"]["limits"].get("memory"), f"{c['name']}: no memory limit"
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
                assert sc["capabilities"]["drop"] == ["ALL"]
                for m in c.get("volumeMounts", []):
                    assert m["name"] in volumes, f"{c['name']}: mount of undefined volume {m['name']}"
            for v in volumes.values():
                if "persistentVolumeClaim" in v:
                    _find(objects, "PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"])
                if "configMap" in v:
                    _find(objects, "ConfigMap", v["configMap"]["name"])
            for c in pod["containers"]:
                for ref in c.get("envFrom", []):
                    if "secretRef" in ref:
                        _find(objects, "Secret", ref["secretRef"]["name"])


def test_images_resolve_to_pinned_tags(objects, kustomization):
    mapping = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomization.get("images", [])}
    for obj in objects:
        if obj["kind"] in WORKLOADS:
            for c in obj["spec"]["template"]["spec"]["containers"]:
                image = mapping.get(c["image"], c["image"])
                assert image_tag_ok(image), f"{c['name']}: image {image} is not pinned"


def _node_config(objects, tmp_path):
    cm = _find(objects, "ConfigMap", "dsm-node-config")[0]
    return check_node_config(cm["data"]["node.yaml"], "ConfigMap dsm-node-config", tmp_path=tmp_path)


def test_node_statefulset(objects, tmp_path):
    settings = _node_config(objects, tmp_path)
    assert settings.executor.kind == "celery" and str(settings.storage.data_dir) == "/var/lib/dsm-node"
    sts = _find(objects, "StatefulSet", "dsm-node")[0]
    assert sts["spec"]["replicas"] == 1, "exactly one node (single writer of the spool)"
    pod = sts["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["args"][0] == "serve"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"dicom": settings.dicom.port, "http": settings.http.port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz", probe
        assert ports.get(get["port"], get["port"]) == settings.http.port, probe
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    assert int(ann["prometheus.io/port"]) == settings.http.port
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claim = {v["name"]: v for v in pod["spec"]["volumes"]}[mounts["/var/lib/dsm-node"]]["persistentVolumeClaim"]
    pvc = _find(objects, "PersistentVolumeClaim", claim["claimName"])[0]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "the spool is shared with the workers"


def test_workers_request_a_gpu_and_share_the_spool(objects):
    dep = _find(objects, "Deployment", "dsm-node-worker")[0]
    sts = _find(objects, "StatefulSet", "dsm-node")[0]
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][0] == "worker"
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1

    def spool_claim(podspec):
        c = podspec["containers"][0]
        vol = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}["/var/lib/dsm-node"]
        return {v["name"]: v for v in podspec["volumes"]}[vol]["persistentVolumeClaim"]["claimName"]

    assert spool_claim(pod) == spool_claim(sts["spec"]["template"]["spec"])
    assert container["envFrom"] == sts["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    secret = _find(objects, "Secret", "dsm-node-secrets")[0]
    assert {"DSM_NODE__DATABASE__URL", "DSM_NODE__EXECUTOR__BROKER_URL"} <= set(secret["stringData"])


def test_services_select_the_node(objects):
    sts = _find(objects, "StatefulSet", "dsm-node")[0]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in sts["spec"]["template"]["spec"]["containers"][0]["ports"]}
    services = {s["metadata"]["name"]: s for s in _find(objects, "Service")}
    assert sts["spec"]["serviceName"] in services
    for svc in services.values():
        assert svc["spec"]["selector"].items() <= labels.items(), svc["metadata"]["name"]
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names
    dicom = services["dsm-node-dicom"]
    # The peer allow-list checks source addresses: they must not be rewritten by kube-proxy.
    assert dicom["spec"]["externalTrafficPolicy"] == "Local"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (optional; not a CI tool)")
def test_kustomize_renders(objects):
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(rendered) == len(objects) - 1  # minus the example Secret
    assert all(d["metadata"].get("namespace") == "dsm-node" for d in rendered if d["kind"] != "Namespace")


KUBERNETES_VERSION = "1.32.0"  # the oldest Kubernetes the manifests are meant for


def test_manifests_match_the_kubernetes_schemas(objects):
    """Strict OpenAPI schema validation (unknown fields such as a misspelt probe fail)."""
    if importlib.util.find_spec("kubernetes_validate") is None:
        missing("kubernetes-validate not installed (the test extra installs it)")
    import kubernetes_validate

    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']}: {str(exc).splitlines()[0]}") from None
