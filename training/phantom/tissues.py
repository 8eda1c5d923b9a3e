"""Tissues and their CT numbers per contrast phase.

Textbook attenuation values (Hounsfield units) for an adult at 120 kVp. Phases: non-contrast,
late arterial (~35 s after injection, bolus-tracked on the aorta) and portal-venous (~70 s).
Each phantom draws one offset per tissue (the same fraction of the tissue's spread in every
phase), so a patient keeps its contrast across phases and a phase override changes nothing else.

Label values are not decided here: a tissue says how a voxel looks, the label what it is.
"""
from __future__ import annotations

import numpy as np

PHASES: tuple[str, ...] = ("non_contrast", "arterial", "portal_venous")

# name: ((non-contrast, arterial, portal-venous) mean HU, spread, texture amplitude).
# Spread is the +- range of the per-phantom mean in the non-contrast phase; in contrast phases
# it grows by a fifth of the enhancement (bolus timing and cardiac output vary).
_TABLE: dict[str, tuple[tuple[float, float, float], float, float | tuple[float, float, float]]] = {
    "air": ((-1000, -1000, -1000), 0, 0),
    "fat": ((-100, -100, -100), 12, 6),
    "visceral_fat": ((-95, -95, -95), 12, 10),
    "muscle": ((45, 55, 60), 8, 6),
    "breast": ((-45, -40, -40), 30, 35),
    "cortical_bone": ((1000, 1000, 1000), 250, 60),
    "marrow": ((220, 230, 235), 60, 40),  # trabecular bone with red marrow
    "yellow_marrow": ((-60, -55, -55), 30, 20),  # fatty marrow of long-bone shafts
    "cartilage": ((110, 115, 120), 30, 25),  # costal cartilage (spotty calcification via texture)
    "disc": ((85, 90, 95), 12, 5),
    "canal": ((25, 27, 28), 6, 4),  # cord and CSF
    "lung": ((-860, -855, -855), 40, 25),
    "lung_vessel": ((-330, -230, -250), 80, 30),  # small vessels, partial volume at CT voxels
    "airway_wall": ((40, 55, 60), 10, 6),
    "myocardium": ((45, 110, 105), 8, 6),
    "blood_left": ((42, 320, 170), 6, 5),  # left heart, aorta, systemic arteries
    "blood_right": ((42, 240, 160), 6, 6),  # right heart, pulmonary arteries
    "svc": ((42, 700, 150), 6, 30),  # injected arm: subclavian, brachiocephalic, SVC
    "vein": ((42, 65, 120), 6, 5),  # systemic veins draining late: jugular, iliac, femoral, infrarenal IVC
    "ivc_upper": ((42, 130, 140), 6, 12),  # suprarenal IVC: renal return mixes in early
    "renal_vein": ((42, 180, 160), 6, 6),
    "portal_vein": ((42, 130, 180), 6, 5),  # portal, splenic and superior mesenteric veins
    "hepatic_vein": ((42, 60, 150), 6, 5),
    "liver": ((58, 75, 115), 8, 7),
    "spleen": ((47, 120, 118), 6, (6, 22, 6)),  # arciform enhancement in the arterial phase
    "gallbladder": ((8, 8, 8), 6, 3),
    "kidney_cortex": ((35, 185, 170), 6, 8),
    "kidney_medulla": ((32, 85, 150), 6, 8),
    "urine": ((8, 8, 8), 5, 2),
    "adrenal": ((22, 65, 60), 10, 6),
    "pancreas": ((42, 115, 95), 8, 10),
    "gi_wall": ((40, 95, 90), 8, 8),  # stomach, duodenum, colon wall
    "bowel_wall": ((40, 100, 95), 8, 10),  # small bowel wall and collapsed loops
    "gi_fluid": ((12, 12, 14), 6, 4),  # replaced by positive oral contrast when given
    "colon_fluid": ((12, 12, 14), 6, 4),  # colon content fluid, opacified only sometimes
    "gas": ((-950, -950, -950), 30, 20),
    "stool": ((-60, -60, -60), 40, 90),
    "esophagus": ((42, 80, 85), 8, 6),
    "thyroid": ((95, 180, 150), 15, 8),
    "prostate": ((40, 65, 80), 8, 8),
    "uterus": ((45, 110, 125), 10, 10),
    "endometrium": ((30, 55, 70), 8, 6),
    "ovary": ((30, 60, 70), 8, 8),
    "fluid": ((8, 8, 10), 5, 3),  # ascites, follicles
    "table": ((250, 250, 250), 50, 10),  # carbon-fibre shell
    "table_core": ((-800, -800, -800), 60, 30),  # foam core
    "mattress": ((-880, -880, -880), 40, 25),
    # lesions (appearance per tumour type; see lesions.py)
    "liver_lesion": ((38, 55, 62), 10, 8),
    "lesion_rim": ((40, 115, 125), 12, 6),
    "kidney_tumor": ((35, 140, 110), 10, 15),
    "necrosis": ((20, 22, 25), 8, 6),
    "cyst": ((8, 8, 8), 5, 2),
    "pancreas_lesion": ((38, 62, 72), 8, 6),
    "colon_lesion": ((42, 85, 95), 10, 8),
    "lung_nodule": ((38, 70, 80), 12, 10),
    "ground_glass": ((-600, -590, -590), 60, 40),
}

TISSUES: tuple[str, ...] = tuple(_TABLE)
T: dict[str, int] = {name: i for i, name in enumerate(TISSUES)}
assert len(TISSUES) < 256


def draw_hu(rng: np.random.Generator, phase: str, fatty_liver: bool, oral: bool
            ) -> tuple[np.ndarray, np.ndarray]:
    """(mean HU, texture amplitude) per tissue id for one phantom in one phase.

    The random draws do not depend on phase, fatty_liver or oral: a seed keeps its patient.
    """
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; known: {PHASES}")
    p = PHASES.index(phase)
    u = rng.uniform(-1, 1, len(TISSUES))
    fat_u, oral_u, colon_u = rng.random(), rng.random(), rng.random()
    base = np.empty(len(TISSUES), np.float32)
    tex = np.empty(len(TISSUES), np.float32)
    for i, name in enumerate(TISSUES):
        means, spread, amp = _TABLE[name]
        spread = spread + 0.2 * abs(means[p] - means[0])
        base[i] = means[p] + u[i] * spread
        tex[i] = amp[p] if isinstance(amp, tuple) else amp
    if fatty_liver:
        # Steatosis: liver below spleen in every phase (non-contrast: 15-50 HU below spleen).
        spleen = base[T["spleen"]]
        drop = {0: 15 + 35 * fat_u, 1: 25 + 30 * fat_u, 2: 20 + 35 * fat_u}[p]
        base[T["liver"]] = min(base[T["liver"]], spleen - drop)
    if oral:
        base[T["gi_fluid"]] = 150 + 250 * oral_u
        if colon_u < 0.5:  # the contrast has reached the colon in about half of the studies
            base[T["colon_fluid"]] = 150 + 200 * oral_u
    return base, tex
