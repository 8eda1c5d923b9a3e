"""Synthetic CT phantoms with 45-class labels: the public entry point of the generator.

A phantom is a whole patient from the lower neck to mid-thigh: full thorax (lungs up to the
apices, heart with contrast-filled chambers and myocardium, mediastinal vessels, trachea and
bronchi), ribs, costal cartilage, sternum, scapulae, clavicles, arms beside the trunk or raised,
abdomen and pelvis (male or female), whole femora, a curved CT table with a mattress. A scan
protocol picks the field of view (chest-abdomen-pelvis down to upper-abdomen slabs, sometimes
narrower than the body and off-centre), the contrast phase (non-contrast, arterial,
portal-venous) and oral contrast. Label values are 1-based indices of the class catalog; only
catalog organs are labelled (PHANTOM_ORGANS), everything else is painted and left 0 so that the
model learns what an organ is not.

Geometry: patient RAS millimetres, painted onto a voxel grid whose array axes run towards
patient Left, Posterior and Superior (the DICOM axial order: array[i, j, k] is column i, row j
of slice k), so the DICOM writer needs no reslicing and the NIfTI affine is diagonal with
negative x/y entries. The parts live in training/phantom/ (body, trunk, skeleton, thorax,
vessels, abdomen, pelvis, lesions, render, writers).

Only numpy/scipy (and pydicom/nibabel in the writers) are imported: the DICOM node's tests use
this module to make studies and must not pay for torch or MONAI.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .phantom import abdomen, pelvis, skeleton, thorax, trunk, vessels
from .phantom.body import FIELDS_OF_VIEW, PHASE_P, Body, draw_protocol, make_grid
from .phantom.geometry import Canvas
from .phantom.lesions import SEEN_TUMORS, TUMOR_TYPES, UNSEEN_TUMORS, VARIANTS, paint_tumors
from .phantom.render import render
from .phantom.tissues import TISSUES, draw_hu
from .phantom.writers import write_dicom_series, write_nifti_pair

__all__ = ["FIELDS_OF_VIEW", "PHANTOM_ORGANS", "PHASES", "Phantom", "SEEN_TUMORS", "TISSUES", "TUMOR_TYPES",
           "UNSEEN_TUMORS", "VARIANTS", "class_indices", "generate", "make_phantom", "write_dicom_series",
           "write_nifti_pair"]

PHASES: tuple[str, ...] = tuple(PHASE_P)

# Organs the phantom labels (catalog names). The celiac trunk is painted but left 0: a 1-2 cm
# stub is a handful of voxels at 3-4 mm. Hepatic Vessel covers the hepatic veins and the portal
# branches inside the liver (>= 3 mm radius).
PHANTOM_ORGANS: tuple[str, ...] = (
    "Spleen", "Right Kidney", "Left Kidney", "Gall Bladder", "Esophagus", "Liver", "Stomach",
    "Aorta", "Postcava", "Portal Vein and Splenic Vein", "Pancreas", "Right Adrenal Gland",
    "Left Adrenal Gland", "Duodenum", "Hepatic Vessel", "Right Lung", "Left Lung", "Colon",
    "Intestine", "Rectum", "Bladder", "Prostate", "Left Head of Femur", "Right Head of Femur",
)

_CATALOG_CACHE: dict[str, int] | None = None


def class_indices() -> dict[str, int]:
    """Catalog name -> 1-based index, read from the class catalog (the label values)."""
    global _CATALOG_CACHE
    if _CATALOG_CACHE is None:
        from model.catalog import load_catalog  # yaml only; no torch at import

        cat = load_catalog()
        _CATALOG_CACHE = {name: i + 1 for i, name in enumerate(cat.names)}
    return _CATALOG_CACHE


@dataclass
class Phantom:
    image: np.ndarray  # float32 HU, axes (L, P, S) as described in the module docstring
    label: np.ndarray  # uint8, 1-based catalog indices, 0 = background
    affine: np.ndarray  # 4x4 voxel -> RAS mm
    seed: int
    tumors: list[str] = field(default_factory=list)  # tumour types actually placed
    # protocol and patient: fov, phase, oral_contrast, arms, z_range, fov_xy, centre_xy, sex,
    # fatty_liver, ascites; lesions: one record (type, variants, voxels, centre) per lesion
    info: dict = field(default_factory=dict)
    # tissue id per voxel (names: TISSUES): what each voxel looks like, labelled or not
    tissue: np.ndarray | None = field(default=None, repr=False)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(np.linalg.norm(self.affine[:3, a])) for a in range(3))


def make_phantom(
    seed: int,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | float | None = None,
    tumor_types: Iterable[str] | None = None,
    tumor_prob: float = 0.6,
    noise: bool = True,
    **options,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate one phantom: (image HU float32, label uint8 catalog indices, affine 4x4).

    shape/spacing: give both for a fixed grid centred on the field of view (parts of the body
    may fall outside), one of them to derive the other from the field of view, or neither for a
    random clinical grid. tumor_types: keys of TUMOR_TYPES to draw from (default: all); each
    appears with probability tumor_prob. options: see generate.
    """
    ph = generate(seed, shape, spacing, tumor_types, tumor_prob, noise, **options)
    return ph.image, ph.label, ph.affine


def generate(
    seed: int,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | float | None = None,
    tumor_types: Iterable[str] | None = None,
    tumor_prob: float = 0.6,
    noise: bool = True,
    *,
    fov: str | None = None,
    phase: str | None = None,
    oral_contrast: bool | None = None,
    arms: str | None = None,
    sex: str | None = None,
) -> Phantom:
    """Like make_phantom, returning a Phantom with the tumour types it contains and its protocol.

    fov: one of FIELDS_OF_VIEW (chest, chest_abdomen, chest_abdomen_pelvis, abdomen_pelvis,
    abdomen, upper_abdomen, trunk_thighs); phase: non_contrast, arterial or portal_venous;
    oral_contrast: bright bowel lumen; arms: "up" or "down"; sex: "female" or "male". Each is
    random when None, and fixing one leaves everything else of the seed unchanged.
    """
    types = list(TUMOR_TYPES) if tumor_types is None else list(tumor_types)
    for t in types:
        if t not in TUMOR_TYPES:
            raise ValueError(f"unknown tumour type {t!r}; known: {sorted(TUMOR_TYPES)}")
    # Separate streams: the patient, the protocol, the grid, the anatomy's shapes, the CT
    # numbers, the tumours and the image noise do not consume each other's randomness.
    r_body, r_proto, r_grid, r_anat, r_hu, r_tum, r_img = (
        np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), 0x0D5A, 2]).spawn(7))
    body = Body(r_body, sex)
    proto = draw_protocol(r_proto, body, fov, phase, oral_contrast, arms)
    grid = make_grid(r_grid, proto, shape, spacing)
    cv = Canvas(grid, class_indices())
    _paint_anatomy(cv, body, proto, r_anat)
    placed = paint_tumors(cv, int(r_tum.integers(1 << 62)), types, tumor_prob, proto.phase)
    base, tex = draw_hu(r_hu, proto.phase, body.fatty_liver, proto.oral_contrast)
    image = render(cv, r_img, base, tex, noise, noise_scale=body.s)
    info = proto.as_dict() | {"sex": "female" if body.female else "male", "fatty_liver": body.fatty_liver,
                              "ascites": body.ascites, "lesions": cv.notes.get("lesions", [])}
    return Phantom(image=image, label=cv.label, affine=grid.affine, seed=int(seed), tumors=placed, info=info,
                   tissue=cv.tissue)


def _paint_anatomy(cv: Canvas, B: Body, proto, rng: np.random.Generator) -> None:
    """Paint order matters: body wall, bones (taken out of the cavity), thorax, abdomen,
    vessels over the organs, pelvis, free fluid. Each part gets its own sub-stream, so a part
    that draws a variable amount (a female pelvis) does not shift the others."""
    sub = [np.random.default_rng(s) for s in np.random.SeedSequence(int(rng.integers(1 << 62))).spawn(12)]
    trunk.paint_trunk(cv, B, sub[0])
    limbs = trunk.paint_limbs(cv, B, proto, sub[1])
    trunk.paint_table(cv, B, sub[2])
    skeleton.paint_spine(cv, B)  # no randomness of its own (sub[3] stays spare)
    skeleton.paint_ribs(cv, B, sub[4])
    skeleton.paint_shoulders(cv, B, limbs["arms"], sub[5])
    skeleton.paint_pelvis(cv, B, limbs["thighs"], sub[6])
    H = thorax.Heart(B, sub[7])
    thorax.paint_diaphragm(cv, B)
    thorax.paint_lungs(cv, B, H, sub[7])
    thorax.paint_heart(cv, B, H, sub[7])
    thorax.paint_airways(cv, B, sub[7])
    thorax.paint_thyroid(cv, B, sub[7])
    landmarks = abdomen.paint_abdomen(cv, B, sub[8])
    thorax.paint_esophagus(cv, B, landmarks["gej"], sub[9])
    right_arm = bool(sub[10].random() < 0.75)
    vessels.paint_vessels(cv, B, H, thorax.airway_points(B), landmarks, sub[10], right_arm)
    pelvis.paint_pelvis_organs(cv, B, sub[11])
    abdomen.paint_ascites(cv, B, landmarks, sub[11])
