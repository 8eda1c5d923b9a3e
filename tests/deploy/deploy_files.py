"""Shared helpers of the deploy/ checks: paths, a YAML loader for compose's custom tags, and
validation of an embedded node.yaml against the configuration schema."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
DOCKER = DEPLOY / "docker"
SYSTEMD = DEPLOY / "systemd"


class Tagged:
    """A value carrying a custom YAML tag (compose's ``!reset`` / ``!override``)."""

    def __init__(self, tag: str, value: Any) -> None:
        self.tag = tag
        self.value = value

    def __repr__(self) -> str:
        return f"Tagged({self.tag!r}, {self.value!r})"


class _Loader(yaml.SafeLoader):
    pass


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Tagged:
    if isinstance(node, yaml.MappingNode):
        value: Any = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return Tagged("!" + suffix, value)


_Loader.add_multi_constructor("!", _tagged)


def load_yaml_all(path: Path) -> list[Any]:
    """Every document of a YAML file (compose tags allowed), empty documents dropped."""
    with open(path, encoding="utf-8") as fh:
        return [doc for doc in yaml.load_all(fh, Loader=_Loader) if doc is not None]


def load_yaml(path: Path) -> Any:
    docs = load_yaml_all(path)
    assert len(docs) == 1, f"{path}: expected one YAML document, found {len(docs)}"
    return docs[0]


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose-style ``${VAR:-default}`` with the defaults (the environment is not consulted)."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def check_node_config(text: str, where: str, overrides: dict[str, Any] | None = None, tmp_path: Path | None = None):
    """Validate a node.yaml against dsm_node.settings (unknown keys are errors there)."""
    from dsm_node.settings import ConfigError, load_settings

    assert tmp_path is not None
    path = tmp_path / "node.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        return load_settings(path, overrides=overrides)
    except ConfigError as exc:  # pragma: no cover - the message is the point
        raise AssertionError(f"{where}: not a valid dsm-node configuration:\n{exc}") from None


def image_tag_ok(image: str) -> bool:
    """A pinned, non-latest tag with at least MAJOR.MINOR (or a digest)."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return False
    return tag != "latest" and re.match(r"v?\d+\.\d+", tag) is not None
