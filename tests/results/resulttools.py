"""Helpers of the result tests: dciodvfy with the expected-warning list, dcmqi round trips."""
import re
import subprocess
from pathlib import Path

import numpy as np

from tests.segment_truth import expected_segment_masks  # noqa: F401 (re-exported for the result tests)
from tests.tools import require_extra_tool, require_tool

# dciodvfy warnings that are expected on our SEG/SR and why (docs/results.md):
#  - Device UID in the Contributing Equipment item: the IHE AIR algorithm item uses it and newer
#    editions of PS3.3 allow it there; this dicom3tools snapshot (2022) predates that
#    -> "Standard Extended SOP Class" (docs/results.md, "Validation status").
#  - Study ID / Patient's Name form: copied from the source images (empty StudyID, a
#    single-component name in the TCIA data).
#  - 99DSMNODE: the local coding scheme of the SR's Measurement Method codes (what an organ
#    volume includes) and of site classes without codes; dciodvfy knows no private scheme.
#  - empty Laterality on key images whose source has no BodyPartExamined: unknown there.
EXPECTED_WARNINGS = (
    r"Unrecognized defined term <99DSMNODE> for value 1 of attribute <Coding Scheme Designator>",
    r"is only permitted to be empty when actually unknown.*attribute <Laterality>",
    r"Attribute is not present in standard DICOM IOD - \(0x0018,0x1002\) UI Device UID",
    r"Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard Extended SOP Class",
    r"Missing attribute or value that would be needed to build DICOMDIR - Study ID",
    r"Value dubious for this VR - \(0x0010,0x0010\) PN Patient's Name .* Retired Person Name form",
)


def dciodvfy(path) -> tuple[list[str], list[str]]:
    """(errors, unexpected warnings) reported by dciodvfy for one file."""
    tool = require_tool("dciodvfy")
    out = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    lines = [l.strip() for l in (out.stdout + out.stderr).splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("Error")]
    warnings = [l for l in lines if l.startswith("Warning") and not any(re.search(p, l) for p in EXPECTED_WARNINGS)]
    return errors, warnings


def dcmqi_tool(name: str) -> str:
    return require_extra_tool(name)


def dcmqi_masks(seg_path, out_dir, volume, *, raw: bool = False) -> dict[int, np.ndarray]:
    """segimage2itkimage -> {segment number: bool (z, y, x) mask on the volume's grid}.

    ``raw``: the images' values instead of masks (a LABELMAP SEG comes back as ONE image "1"
    holding the segment numbers)."""
    import nibabel as nib

    from dsm_node.volume import label_image_to_volume_grid

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([dcmqi_tool("segimage2itkimage"), "--inputDICOM", str(seg_path), "--outputDirectory", str(out_dir),
                    "--outputType", "nifti"], check=True, capture_output=True, timeout=300)
    masks = {}
    for f in sorted(out_dir.glob("*.nii.gz")):
        number = int(f.name.split(".")[0])
        arr = label_image_to_volume_grid(nib.load(f), volume, partial=True)
        masks[number] = arr if raw else arr > 0
    return masks

