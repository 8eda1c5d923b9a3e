"""The class catalog: which classes the model segments, in which order, and how they are coded.

The catalog is data (``config/classes.yaml``); sites append classes with a second YAML file
(``extra=``) holding a ``classes:`` list in the same format. This module imports only PyYAML so
that the node's web/DICOM layers can read the catalog without loading torch.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .resources import package_file

DEFAULT_CATALOG_PATH = package_file("model", "configs", "classes.yaml")
PROMPT_TEMPLATE = "A computerized tomography of a {name}"
# libyaml parses the 45-class file ~5x faster than the pure-Python loader.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_KINDS = ("organ", "tumor")
_LATERALITIES = ("left", "right", None)
SEXES = ("female", "male")
COMPONENT_RULES = ("largest", "all")
_CODING_KEYS = ("category", "type", "modifier", "anatomic_region")
_REQUIRED_KEYS = ("name", "kind", "color")
_ALLOWED_KEYS = {
    "index", "name", "prompt_name", "kind", "parents", "laterality", "color",
    "min_volume_ml", "components", "threshold", "coding", "sex",
}


class CatalogError(ValueError):
    """A catalog file is malformed; the message names the class and the key."""


@dataclass(frozen=True)
class Code:
    """A coded concept (scheme designator, code value, code meaning)."""

    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class Coding:
    """DICOM SEG segment coding: category, type, type modifier, anatomic region."""

    category: Code | None = None
    type: Code | None = None
    modifier: Code | None = None
    anatomic_region: Code | None = None


@dataclass(frozen=True)
class ClassEntry:
    index: int  # 1-based
    name: str
    prompt_name: str
    kind: str  # "organ" | "tumor"
    parents: tuple[str, ...] = ()
    laterality: str | None = None
    color: tuple[int, int, int] = (255, 255, 255)
    min_volume_ml: float = 0.0
    components: str = "largest"  # organs: keep the "largest" connected component, or "all" above min_volume_ml
    threshold: float = 0.5
    coding: Coding = field(default_factory=Coding)
    # "female" | "male": a class only this sex has (prostate); not drawn for a patient known to be
    # of the other sex (model.segment: patient_sex). None: any patient.
    sex: str | None = None

    @property
    def prompt(self) -> str:
        return PROMPT_TEMPLATE.format(name=self.prompt_name)

    def drawn_for(self, patient_sex: str | None) -> bool:
        """False for a class of the other sex than a known ``patient_sex`` ("female" / "male";
        None: unknown, every class is drawn)."""
        return not (patient_sex and self.sex and self.sex != patient_sex)

    @property
    def is_organ(self) -> bool:
        return self.kind == "organ"

    @property
    def is_tumor(self) -> bool:
        return self.kind == "tumor"


class Catalog(Sequence[ClassEntry]):
    """An ordered, validated list of classes (position i <-> tensor row i)."""

    def __init__(self, entries: Iterable[ClassEntry]):
        self._entries = tuple(entries)
        self._by_name = {e.name: e for e in self._entries}
        _validate(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, i: int) -> ClassEntry:  # type: ignore[override]  # by position only, no slices
        return self._entries[i]

    def __iter__(self) -> Iterator[ClassEntry]:
        return iter(self._entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Catalog) and self._entries == other._entries

    def __repr__(self) -> str:
        return f"Catalog({len(self)} classes: {len(self.organs)} organs, {len(self.tumors)} tumors)"

    @property
    def names(self) -> list[str]:
        return [e.name for e in self._entries]

    @property
    def prompt_names(self) -> list[str]:
        return [e.prompt_name for e in self._entries]

    @property
    def organs(self) -> list[ClassEntry]:
        return [e for e in self._entries if e.is_organ]

    @property
    def tumors(self) -> list[ClassEntry]:
        return [e for e in self._entries if e.is_tumor]

    def by_name(self, name: str) -> ClassEntry:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no class named {name!r} in the catalog; known: {', '.join(self.names)}") from None

    def index_of(self, name: str) -> int:
        """0-based tensor row of a class."""
        return self.by_name(name).index - 1

    def parents_of(self, name: str) -> list[ClassEntry]:
        return [self.by_name(p) for p in self.by_name(name).parents]

    def extended(self, entries: Iterable[ClassEntry]) -> Catalog:
        return Catalog([*self._entries, *entries])


def load_catalog(path: str | Path | None = None, extra: str | Path | None = None) -> Catalog:
    """Read and validate a catalog; ``extra`` appends a site's classes (indices continue)."""
    path = Path(path) if path is not None else DEFAULT_CATALOG_PATH
    entries = _read_entries(path, start=1)
    if extra is not None:
        entries += _read_entries(Path(extra), start=len(entries) + 1)
    return Catalog(entries)


def _read_entries(path: Path, start: int) -> list[ClassEntry]:
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)
    except FileNotFoundError:
        raise CatalogError(f"catalog file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("classes"), list):
        raise CatalogError(f"{path}: expected a mapping with a 'classes:' list")
    return [_parse_entry(raw, start + i, path) for i, raw in enumerate(doc["classes"])]


def _parse_entry(raw: Any, position: int, path: Path) -> ClassEntry:
    where = f"{path.name}: class #{position}"
    if not isinstance(raw, Mapping):
        raise CatalogError(f"{where}: expected a mapping, got {type(raw).__name__}")
    name = raw.get("name")
    if isinstance(name, str) and name.strip():
        where = f"{path.name}: class {name!r}"
    for key in _REQUIRED_KEYS:
        if raw.get(key) is None:
            raise CatalogError(f"{where}: missing key {key!r}")
    unknown = set(raw) - _ALLOWED_KEYS
    if unknown:
        raise CatalogError(f"{where}: unknown key(s) {sorted(unknown)}")
    if not isinstance(name, str) or not name.strip():
        raise CatalogError(f"{where}: key 'name' must be a non-empty string")
    index = raw.get("index", position)
    if index != position:
        raise CatalogError(f"{where}: key 'index' is {index!r} but the class is at position {position}")
    kind = raw["kind"]
    if kind not in _KINDS:
        raise CatalogError(f"{where}: key 'kind' must be one of {_KINDS}, got {kind!r}")
    laterality = raw.get("laterality")
    if laterality not in _LATERALITIES:
        raise CatalogError(f"{where}: key 'laterality' must be left, right or null, got {laterality!r}")
    parents = raw.get("parents") or []
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise CatalogError(f"{where}: key 'parents' must be a list of class names")
    color = raw["color"]
    if (
        not isinstance(color, (list, tuple))
        or len(color) != 3
        or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)
    ):
        raise CatalogError(f"{where}: key 'color' must be three integers 0-255, got {color!r}")
    threshold = _number(raw.get("threshold", 0.5), where, "threshold")
    if not 0.0 < threshold < 1.0:
        raise CatalogError(f"{where}: key 'threshold' must lie strictly between 0 and 1, got {threshold}")
    min_volume = _number(raw.get("min_volume_ml", 0.0), where, "min_volume_ml")
    if min_volume < 0:
        raise CatalogError(f"{where}: key 'min_volume_ml' must be >= 0, got {min_volume}")
    components = raw.get("components", "largest")
    if components not in COMPONENT_RULES:
        raise CatalogError(f"{where}: key 'components' must be one of {COMPONENT_RULES}, got {components!r}")
    sex = raw.get("sex")
    if sex is not None and sex not in SEXES:
        raise CatalogError(f"{where}: key 'sex' must be female, male or null, got {sex!r}")
    prompt_name = raw.get("prompt_name") or name
    if not isinstance(prompt_name, str):
        raise CatalogError(f"{where}: key 'prompt_name' must be a string")
    return ClassEntry(
        index=position,
        name=name,
        prompt_name=prompt_name,
        kind=kind,
        parents=tuple(parents),
        laterality=laterality,
        color=(int(color[0]), int(color[1]), int(color[2])),
        min_volume_ml=min_volume,
        components=components,
        threshold=threshold,
        coding=_parse_coding(raw.get("coding"), where),
        sex=sex,
    )


def _number(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CatalogError(f"{where}: key {key!r} must be a number, got {value!r}")
    return float(value)


def _parse_coding(raw: Any, where: str) -> Coding:
    if raw is None:
        return Coding()
    if not isinstance(raw, Mapping):
        raise CatalogError(f"{where}: key 'coding' must be a mapping")
    unknown = set(raw) - set(_CODING_KEYS)
    if unknown:
        raise CatalogError(f"{where}: unknown key(s) under 'coding': {sorted(unknown)}")
    codes: dict[str, Code | None] = {}
    for key in _CODING_KEYS:
        item = raw.get(key)
        if item is None:
            codes[key] = None
            continue
        if not isinstance(item, Mapping) or any(not isinstance(item.get(k), str) for k in ("scheme", "value", "meaning")):
            raise CatalogError(f"{where}: key 'coding.{key}' must have string scheme, value and meaning")
        codes[key] = Code(scheme=item["scheme"], value=item["value"], meaning=item["meaning"])
    return Coding(**codes)


def _validate(entries: Sequence[ClassEntry]) -> None:
    seen: dict[str, int] = {}
    colors: dict[tuple[int, int, int], str] = {}
    for pos, e in enumerate(entries, 1):
        if e.index != pos:
            raise CatalogError(f"class {e.name!r}: key 'index' is {e.index} but the class is at position {pos}")
        if e.name in seen:
            raise CatalogError(f"class {e.name!r}: key 'name' duplicates class #{seen[e.name]}")
        seen[e.name] = pos
        if e.color in colors:
            raise CatalogError(f"class {e.name!r}: key 'color' {list(e.color)} is already used by {colors[e.color]!r}")
        colors[e.color] = e.name
    by_name = {e.name: e for e in entries}
    for e in entries:
        for p in e.parents:
            if p not in by_name:
                raise CatalogError(f"class {e.name!r}: key 'parents' names unknown class {p!r}")
            if not by_name[p].is_organ:
                raise CatalogError(f"class {e.name!r}: key 'parents' names {p!r}, which is not an organ")
        if e.is_tumor and not e.parents:
            raise CatalogError(f"class {e.name!r}: key 'parents' is empty; a tumour needs its parent organ(s)")
        if e.is_organ and e.parents:
            raise CatalogError(f"class {e.name!r}: key 'parents' must be empty for an organ")
