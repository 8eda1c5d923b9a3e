"""dsm-train check-data / make-list: validate a dataset folder against a list and the registry."""
from __future__ import annotations

import fnmatch
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .datalist import Case, DatalistError, read_datalist, write_datalist
from .labels import LabelError, read_raw_label
from .registry import DatasetSpec, label_path_for, load_registry

AFFINE_TOL_MM = 1e-2


@dataclass
class Finding:
    level: str  # error | warning
    path: str
    message: str


@dataclass
class Report:
    cases: int = 0
    findings: list[Finding] = field(default_factory=list)
    per_dataset: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not any(f.level == "error" for f in self.findings)

    def add(self, level: str, path: Path | str, message: str) -> None:
        self.findings.append(Finding(level, str(path), message))

    def text(self) -> str:
        errors = sum(f.level == "error" for f in self.findings)
        warnings = len(self.findings) - errors
        lines = [f"{f.level.upper():7s} {f.path}: {f.message}" for f in self.findings]
        per = ", ".join(f"{k}: {v}" for k, v in sorted(self.per_dataset.items()))
        lines.append(f"{self.cases} cases ({per}); {errors} error(s), {warnings} warning(s): "
                     + ("OK" if self.ok else "FAILED"))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "cases": self.cases, "per_dataset": dict(self.per_dataset),
                "findings": [f.__dict__ for f in self.findings]}


def _header(path: Path):
    import nibabel as nib

    img = nib.load(str(path))
    shape = img.shape[:3] if len(img.shape) >= 3 else img.shape
    return tuple(int(s) for s in shape), np.asarray(img.affine, float), img


def _check_case(case: Case, spec: DatasetSpec, report: Report) -> None:
    if not case.image.exists():
        report.add("error", case.image, "image file is missing")
        return
    try:
        ishape, iaff, img = _header(case.image)
    except Exception as exc:  # nibabel raises many types for damaged files
        report.add("error", case.image, f"unreadable image ({type(exc).__name__}: {exc})")
        return
    if len(img.shape) == 4 and img.shape[3] != 1:
        report.add("error", case.image, f"4-D image with {img.shape[3]} volumes (CT must be one volume)")
    if str(case.label) in ("", "."):
        report.add("warning", case.image, "no label (usable for inference only)")
        return
    if not case.label.exists():
        report.add("error", case.label, "label file is missing")
        return
    try:
        raw, laff = read_raw_label(case.label, spec)
    except LabelError as exc:
        report.add("error", case.label, str(exc))
        return
    except Exception as exc:
        report.add("error", case.label, f"unreadable label ({type(exc).__name__}: {exc})")
        return
    if raw.shape != ishape:
        report.add("error", case.label, f"label shape {raw.shape} != image shape {ishape}")
    elif np.abs(laff - iaff).max() > AFFINE_TOL_MM:
        report.add("error", case.label, f"label affine differs from the image affine (max |diff| "
                                        f"{np.abs(laff - iaff).max():.4g} mm)")
    values = [int(v) for v in np.unique(raw) if v != 0]
    vmap = spec.value_map()
    unknown = [v for v in values if v not in vmap]
    if unknown:
        report.add("error", case.label, f"label values {unknown} are outside the {spec.key} mapping "
                                        f"(known: {sorted(vmap)})")
    if not values:
        report.add("warning", case.label, "label is empty (no annotated voxel)")
    if raw.min() < 0:
        report.add("error", case.label, "negative label values")


def check_data(list_path: Path, root: Path | None = None) -> Report:
    """Every list row: files exist and load, dataset key known, label values inside the
    registry mapping, label grid (shape and affine) equal to the image grid. Also: duplicate
    rows, and files of the registry layout under the root that the list does not mention."""
    registry = load_registry()
    report = Report()
    try:
        cases = read_datalist(list_path, root)
    except (DatalistError, OSError) as exc:
        report.add("error", list_path, str(exc))
        return report
    report.cases = len(cases)
    seen_images: Counter = Counter(c.image.resolve() for c in cases)
    for img, n in seen_images.items():
        if n > 1:
            report.add("error", img, f"listed {n} times")
    for case in cases:
        report.per_dataset[case.dataset] += 1
        if case.dataset not in registry:
            report.add("error", case.image, f"dataset {case.dataset!r} is not in the registry")
            continue
        _check_case(case, registry[case.dataset], report)
    base = root if root is not None else list_path.parent
    listed = set(seen_images)
    for key in sorted({c.dataset for c in cases if c.dataset in registry}):
        layout = registry[key].layout
        if not layout:
            continue
        for p in _layout_images(base, layout):
            if p.resolve() not in listed:
                report.add("warning", p, f"matches the {key} layout but is not in the list")
        for odd in _excluded(base, layout):
            report.add("warning", odd, "stray file (excluded by the layout, e.g. a macOS '._' fork)")
    return report


def _layout_images(root: Path, layout: dict) -> list[Path]:
    excl = layout.get("exclude", [])
    return sorted(p for p in root.glob(layout["image"])
                  if p.is_file() and not any(fnmatch.fnmatch(p.relative_to(root).as_posix(), e) or
                                             fnmatch.fnmatch(p.name, e.split("/")[-1]) for e in excl))


def _excluded(root: Path, layout: dict) -> list[Path]:
    out = []
    for e in layout.get("exclude", []):
        folder = Path(layout["image"]).parent
        out += [p for p in (root / folder).glob(e.split("/")[-1]) if p.is_file()]
    return sorted(out)


def make_list(dataset: str, root: Path, out: Path, val_fraction: float = 0.0, seed: int = 0) -> int:
    """List every image of the registry layout with its label path (paths relative to root)."""
    spec = load_registry()[dataset]
    if not spec.layout:
        raise ValueError(f"dataset {dataset!r} has no layout in the registry")
    images = _layout_images(root, spec.layout)
    rows = []
    for p in images:
        rel = p.relative_to(root).as_posix()
        rows.append([rel, label_path_for(rel, spec.layout["label"]), dataset, "train"])
    n_val = int(round(val_fraction * len(rows)))
    for i in random.Random(seed).sample(range(len(rows)), n_val):
        rows[i][3] = "val"
    write_datalist(out, [tuple(r) for r in rows])
    return len(rows)
