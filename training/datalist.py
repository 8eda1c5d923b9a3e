"""Dataset list files: one case per row, ``image,label,dataset[,split]`` (CSV with header).

Relative paths resolve against ``root`` (``--root``) or, without one, the list file's folder.
``split`` is ``train`` (default) or ``val``; validation rows are held out of the training order.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

COLUMNS = ("image", "label", "dataset", "split")


@dataclass(frozen=True)
class Case:
    image: Path
    label: Path
    dataset: str
    split: str = "train"

    @property
    def case_id(self) -> str:
        name = self.image.name
        for ext in (".nii.gz", ".nii"):
            if name.endswith(ext):
                name = name[: -len(ext)]
        return name if name not in ("imaging", "ct", "image") else self.image.parent.name


class DatalistError(ValueError):
    pass


def read_datalist(path: str | Path, root: str | Path | None = None) -> list[Case]:
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(row for row in fh if row.strip() and not row.lstrip().startswith("#"))
        if reader.fieldnames is None or not {"image", "label", "dataset"} <= set(reader.fieldnames):
            raise DatalistError(f"{path}: header must contain image,label,dataset (got {reader.fieldnames})")
        cases = []
        for n, row in enumerate(reader, start=2):
            split = (row.get("split") or "train").strip()
            if split not in ("train", "val"):
                raise DatalistError(f"{path}:{n}: split must be train or val, got {split!r}")
            if not row["image"] or not row["dataset"]:
                raise DatalistError(f"{path}:{n}: empty image or dataset column")
            cases.append(Case(_resolve(base, row["image"]), _resolve(base, row["label"]) if row["label"] else Path(),
                              row["dataset"].strip(), split))
    return cases


def write_datalist(path: str | Path, rows: list[tuple[str, str, str, str]]) -> None:
    """rows: (image, label, dataset, split) with paths as they should appear in the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        w.writerows(rows)


def _resolve(base: Path, p: str) -> Path:
    q = Path(p.strip())
    return q if q.is_absolute() else base / q
