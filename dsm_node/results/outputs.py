"""Everything the node delivers for one processed series, written in one call.

The node's pipeline, ``dsm-node export`` and ``dsm-node infer`` all call
:func:`write_results`, so the three write the same objects: the DICOM-SEG (unless nothing was
found), the TID 1500 SR, and, when ``options.key_images`` (default on) and something was
found, the Secondary Capture key images.
"""
from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
from pydicom.dataset import Dataset

from .keyimages import KeyImagesResult, write_key_images
from .lesions import KnownLesion
from .options import ResultOptions
from .seg import SegResult, write_seg
from .sr import SRResult, known_lesions, write_sr

if TYPE_CHECKING:
    from model.catalog import Catalog

    from ..volume.assembly import Volume

_REVISION_DIR = re.compile(r"^r(\d+)$")


@dataclass
class ResultSet:
    seg: SegResult | None
    sr: SRResult
    key_images: KeyImagesResult | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def files(self) -> list[tuple[str, Dataset, Path]]:
        """(kind, dataset, path) of every written object: SEG, SR, then SC."""
        out: list[tuple[str, Dataset, Path]] = []
        # The write_* functions set the paths (only a built, unwritten result has none).
        if self.seg is not None:
            out.append(("SEG", self.seg.dataset, cast(Path, self.seg.path)))
        out.append(("SR", self.sr.dataset, cast(Path, self.sr.path)))
        if self.key_images is not None:
            out += [("SC", ds, path) for ds, path in zip(self.key_images.datasets, self.key_images.paths)]
        return out


def write_results(volume: Volume, labels: np.ndarray, catalog: Catalog, options: ResultOptions,
                  out_dir: str | os.PathLike[str], *, seg_type: str | None = None,
                  known: Sequence[KnownLesion] = ()) -> ResultSet:
    """SEG + SR (+ key images) for ``labels`` on ``volume``'s grid, written under ``out_dir``.

    ``known``: lesions reported for earlier revisions of the study (:func:`earlier_lesions`),
    whose tracking numbers and UIDs the same lesions keep."""
    t0 = time.perf_counter()
    seg = write_seg(volume, labels, catalog, options, out_dir, seg_type=seg_type)
    t1 = time.perf_counter()
    sr = write_sr(volume, labels, catalog, options, seg, out_dir, known=known)
    t2 = time.perf_counter()
    key = None
    if options.key_images and seg is not None and seg.plan is not None:
        key = write_key_images(volume, labels, seg, sr, options, out_dir)
    t3 = time.perf_counter()
    return ResultSet(seg, sr, key, timings={"seg_s": t1 - t0, "sr_s": t2 - t1, "key_images_s": t3 - t2})


def earlier_lesions(study_dir: str | os.PathLike[str], revision: int, volume: Volume) -> list[KnownLesion]:
    """Lesions of the SRs written for earlier revisions of a study (``study_dir/r<N>/SR_*.dcm``,
    newest revision first), placed on ``volume``. Missing or removed folders give nothing."""
    root = Path(study_dir)
    if not root.is_dir():
        return []
    earlier: list[tuple[int, Path]] = []
    for child in root.iterdir():
        m = _REVISION_DIR.match(child.name)
        if m and int(m.group(1)) < revision:
            earlier.append((int(m.group(1)), child))
    paths = [p for _, d in sorted(earlier, reverse=True) for p in sorted(d.glob("SR_*.dcm"))]
    return known_lesions(paths, volume) if paths else []
