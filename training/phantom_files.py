"""Write phantom sets to disk: NIfTI pairs, a dataset list and optional DICOM series."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .data import tumor_types
from .datalist import write_datalist
from .phantoms import generate, write_dicom_series, write_nifti_pair


def write_phantom_set(out: Path, n: int, seed: int, spacing: float | None = None, shape: Sequence[int] | None = None,
                      tumors: str = "all", dataset: str = "phantom_all", dicom: bool = False,
                      val: int = 0, fov: str | None = None, phase: str | None = None) -> list[tuple[str, str, str, str]]:
    """Phantoms seed .. seed+n-1 as imagesTr/phantom_SSSSS.nii.gz + labelsTr/ (same name), the
    list out/datalist.csv (paths relative to out), out/phantoms.json (each case's protocol,
    patient and lesions) and, with dicom, dicom/phantom_SSSSS/CT*.dcm. fov/phase: fixed for the
    whole set instead of drawn per phantom."""
    types = tumor_types(tumors)
    rows = []
    infos = {}
    for i, s in enumerate(range(seed, seed + n)):
        ph = generate(s, shape=shape, spacing=spacing, tumor_types=types, fov=fov, phase=phase)
        infos[f"phantom_{s:05d}"] = ph.info | {"tumours": ph.tumors}
        name = f"phantom_{s:05d}.nii.gz"
        write_nifti_pair(ph.image, ph.label, ph.affine, out / "imagesTr" / name, out / "labelsTr" / name)
        if dicom:
            write_dicom_series(ph.image, ph.affine, out / "dicom" / f"phantom_{s:05d}",
                               patient_name=f"PHANTOM^{s:03d}", patient_id=f"PHANTOM{s:03d}",
                               uid_seed=f"dsm-phantom-{s}")
        rows.append((f"imagesTr/{name}", f"labelsTr/{name}", dataset, "val" if i >= n - val else "train"))
    write_datalist(out / "datalist.csv", rows)
    (out / "phantoms.json").write_text(json.dumps(infos, indent=1))
    return rows
