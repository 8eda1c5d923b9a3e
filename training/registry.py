"""The dataset registry (config/datasets.yaml): label mappings and partial-label templates."""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from model.catalog import Catalog, load_catalog
from model.resources import package_file

DEFAULT_REGISTRY = package_file("training", "configs", "datasets.yaml")
ROLES = ("organ", "tumor", "unseen_tumor", "phantom", "evaluation")


class RegistryError(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    """Where one raw value goes: a single class, a left/right split, or nowhere (None)."""

    cls: str | None = None
    split: tuple[str, str] | None = None  # (right class, left class)

    @property
    def classes(self) -> tuple[str, ...]:
        if self.split:
            return self.split
        return (self.cls,) if self.cls else ()


@dataclass(frozen=True)
class DatasetSpec:
    key: str
    name: str
    role: str
    labels: dict[int, Target] = field(default_factory=dict)  # raw value -> target
    masks: dict[str, str] = field(default_factory=dict)  # mask file stem -> class (masks mode)
    annotated: tuple[str, ...] = ()
    layout: dict[str, Any] = field(default_factory=dict)
    url: str = ""
    notes: str = ""
    # Raw values missing from ``labels`` are background instead of an error (multi-structure
    # references such as TotalSegmentator's, where most structures have no DSM class).
    unmapped_background: bool = False

    @property
    def uses_masks(self) -> bool:
        return bool(self.masks)

    def value_map(self) -> dict[int, Target]:
        """Raw value -> target. In masks mode the i-th mask (1-based, registry order) is value i."""
        if self.uses_masks:
            return {i + 1: Target(cls=c) for i, c in enumerate(self.masks.values())}
        return dict(self.labels)

    def mapped_classes(self) -> set[str]:
        return {c for t in self.value_map().values() for c in t.classes}

    def annotated_vector(self, catalog: Catalog) -> list[bool]:
        names = set(self.annotated)
        return [n in names for n in catalog.names]


@dataclass(frozen=True)
class Registry:
    datasets: dict[str, DatasetSpec]
    catalog: Catalog
    path: Path

    def __getitem__(self, key: str) -> DatasetSpec:
        try:
            return self.datasets[key]
        except KeyError:
            raise KeyError(f"dataset {key!r} is not in {self.path.name}; known: {', '.join(sorted(self.datasets))}") from None

    def annotated_by(self, keys: Iterable[str]) -> set[str]:
        """The classes any of these datasets annotates."""
        return {c for k in set(keys) for c in self[k].annotated}

    def __contains__(self, key: object) -> bool:
        return key in self.datasets

    def __iter__(self):
        return iter(self.datasets.values())


def load_registry(path: str | Path | None = None, catalog: Catalog | None = None) -> Registry:
    """Read and validate the registry against the catalog (unknown class names are errors)."""
    path = Path(path) if path is not None else DEFAULT_REGISTRY
    catalog = catalog or load_catalog()
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries = raw.get("datasets")
    if not isinstance(entries, Mapping) or not entries:
        raise RegistryError(f"{path}: no 'datasets' mapping")
    specs = {key: _parse(key, value, catalog, path) for key, value in entries.items()}
    return Registry(specs, catalog, path)


def _parse(key: str, raw: Any, catalog: Catalog, path: Path) -> DatasetSpec:
    where = f"{path.name}: dataset {key!r}"
    if not isinstance(raw, Mapping):
        raise RegistryError(f"{where}: expected a mapping")
    known = set(catalog.names)

    def check(name: Any, what: str) -> str:
        if not isinstance(name, str) or name not in known:
            raise RegistryError(f"{where}: {what} {name!r} is not a catalog class")
        return name

    role = raw.get("role")
    if role not in ROLES:
        raise RegistryError(f"{where}: role must be one of {ROLES}, got {role!r}")
    labels: dict[int, Target] = {}
    masks: dict[str, str] = {}
    if ("labels" in raw) == ("masks" in raw):
        raise RegistryError(f"{where}: give exactly one of 'labels' or 'masks'")
    for value, target in (raw.get("labels") or {}).items():
        if not isinstance(value, int) or value <= 0:
            raise RegistryError(f"{where}: raw label value {value!r} must be a positive integer")
        if target is None:
            labels[value] = Target()
        elif isinstance(target, str):
            labels[value] = Target(cls=check(target, f"label {value} class"))
        elif isinstance(target, Mapping) and set(target) == {"split"}:
            pair = target["split"]
            if not (isinstance(pair, list) and len(pair) == 2):
                raise RegistryError(f"{where}: label {value}: split needs [right class, left class]")
            right, left = (check(c, f"label {value} split class") for c in pair)
            lat = (catalog.by_name(right).laterality, catalog.by_name(left).laterality)
            if lat != ("right", "left"):
                raise RegistryError(f"{where}: label {value}: split must list the right then the left class, got {pair}")
            labels[value] = Target(split=(right, left))
        else:
            raise RegistryError(f"{where}: label {value}: expected a class name, {{split: [...]}} or null")
    for stem, cls in (raw.get("masks") or {}).items():
        masks[str(stem)] = check(cls, f"mask {stem!r} class")
    annotated = tuple(check(c, "annotated class") for c in raw.get("annotated") or [])
    if len(set(annotated)) != len(annotated):
        raise RegistryError(f"{where}: annotated lists a class twice")
    layout = dict(raw.get("layout") or {})
    spec = DatasetSpec(
        key=key, name=str(raw.get("name", key)), role=role, labels=labels, masks=masks,
        annotated=annotated, layout=layout, url=str(raw.get("url", "")), notes=str(raw.get("notes", "")).strip(),
        unmapped_background=bool(raw.get("unmapped_background", False)),
    )
    mapped = spec.mapped_classes()
    extra = set(annotated) - mapped
    if extra:
        raise RegistryError(f"{where}: annotated classes with no raw value: {sorted(extra)}")
    missing = {c for c in mapped if catalog.by_name(c).is_organ} - set(annotated)
    if missing:
        raise RegistryError(f"{where}: mapped organs missing from 'annotated': {sorted(missing)}")
    if layout and not {"image", "label"} <= set(layout):
        raise RegistryError(f"{where}: layout needs 'image' and 'label'")
    return spec


_NII = re.compile(r"\.nii(\.gz)?$")


def label_path_for(image_rel: str, template: str) -> str:
    """Fill a layout label template for one image path (relative to the dataset root)."""
    p = Path(image_rel)
    stem = _NII.sub("", p.name)
    digits = re.search(r"\d+", stem)
    fields = {
        "name": p.name, "stem": stem, "dir": p.parent.as_posix(), "case": p.parent.name,
        "id": digits.group(0) if digits else "",
    }
    return template.format(**fields)
