"""The real CTs of ../shared/data as evaluation cases (``dsm-train eval --data real``).

For evaluation only, never for training or tuning (spec, "Evaluation data"). Two cases:

* ``01`` TCIA Pancreatic-CT-CBCT-SEG CB001: 79-slice DICOM series + ``labels_dsm45.nii.gz``
  (expert RTSTRUCT rasterised: lungs, stomach+duodenum, small bowel) — registry ``tcia_cb001``;
* ``02`` TotalSegmentator example ``example_ct_sm.nii.gz`` + ``example_seg.nii.gz`` (its own v2
  "total" output, a silver standard) — registry ``totalseg_v2_example`` holds the documented v2
  label numbering -> DSM mapping.

The shared folder is ``$DSM_SHARED_DATA`` or ``../shared/data`` beside the checkout.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Evaluated classes whose reference merges several DSM classes: the prediction is merged the
# same way before the DSC (CB001's "Stomach_duo" ROI is stomach and duodenum together).
MERGED_REFERENCES: dict[str, dict[str, tuple[str, ...]]] = {
    "tcia_cb001": {"Stomach": ("Stomach", "Duodenum")},
}


def shared_data_dir() -> Path:
    env = os.environ.get("DSM_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def read_dicom_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """One axial CT series -> (HU array (column, row, slice) float32, RAS affine).

    Slices are sorted along the slice normal; only what evaluation needs (no gantry tilt, one
    orientation; the node's own reader in dsm_node.volume handles the general case).
    """
    import pydicom

    slices = [pydicom.dcmread(p) for p in sorted(Path(folder).iterdir()) if p.is_file()]
    if not slices:
        raise ValueError(f"{folder}: no DICOM files")
    iop = np.asarray(slices[0].ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    slices.sort(key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=np.float64), normal)))
    dy, dx = (float(v) for v in slices[0].PixelSpacing)
    pos = [np.asarray(ds.ImagePositionPatient, dtype=np.float64) for ds in slices]
    step = (pos[-1] - pos[0]) / max(len(pos) - 1, 1)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_dir * dx, col_dir * dy, step, pos[0]
    hu = np.stack([ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1))
                   + float(getattr(ds, "RescaleIntercept", 0)) for ds in slices], axis=-1)
    return np.ascontiguousarray(hu.transpose(1, 0, 2)), LPS_TO_RAS @ lps


def real_items(root: Path | None = None) -> list[dict[str, Any]]:
    """Items for training.transforms.LoadCased (arrays + affine), one per real CT."""
    import nibabel as nib

    base = Path(root) if root else shared_data_dir()
    cb = base / "01_tcia_pancreatic-ct-cbct-seg_CB001"
    ts = base / "02_totalsegmentator_example"
    missing = [p for p in (cb / "ct", cb / "labels_dsm45.nii.gz", ts / "example_ct_sm.nii.gz", ts / "example_seg.nii.gz")
               if not p.exists()]
    if missing:
        raise FileNotFoundError(f"real evaluation data missing: {[str(p) for p in missing]} "
                                f"(set DSM_SHARED_DATA to the shared data folder)")
    hu, affine = read_dicom_series(cb / "ct")
    lab = nib.load(str(cb / "labels_dsm45.nii.gz"))
    if lab.shape != hu.shape or np.abs(lab.affine - affine).max() > 0.05:
        raise ValueError(f"{cb}: labels_dsm45.nii.gz does not lie on the CT grid")
    items = [{"image": hu, "affine": affine, "label": np.asarray(lab.dataobj).astype(np.int32),
              "dataset": "tcia_cb001", "case": "01_tcia_cb001"}]
    img = nib.load(str(ts / "example_ct_sm.nii.gz"))
    seg = nib.load(str(ts / "example_seg.nii.gz"))
    items.append({"image": np.asarray(img.dataobj, dtype=np.float32), "affine": np.asarray(img.affine, np.float64),
                  "label": np.asarray(seg.dataobj).astype(np.int32), "dataset": "totalseg_v2_example",
                  "case": "02_totalseg_example_sm"})
    return items
