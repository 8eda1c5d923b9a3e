"""Pelvic organs: bladder, rectum, and either prostate with seminal vesicles (male) or uterus,
cervix, vagina and ovaries (female). Bladder, rectum and prostate are labelled; the female
organs and the seminal vesicles are painted with label 0, and a female phantom has no prostate.
"""
from __future__ import annotations

import numpy as np

from .body import Body
from .geometry import BG, Canvas, Noise, ellipsoid, frame, sub_seed, tube

_FREE = ("visceral_fat",)


def _sacrum_front(B: Body, z: float) -> float:
    yv, _ = B.spine(z)
    th = float(np.interp(z, [B.lv("Co", 0.0) - 20, B.lv("Co", 0.0), B.lv("S1", 1.0)], [5, 7, 17])) * B.spine_r
    return float(yv) + th


def paint_pelvis_organs(cv: Canvas, B: Body, rng: np.random.Generator) -> None:
    s, hz, lv = B.s, B.hz, B.lv
    head = B.head
    y_sym = B.y_symphysis

    # Rectum along the sacral curve to the anal canal; stool and gas inside.
    r_r = rng.uniform(14, 19) * s ** 0.5
    zs = [lv("S3", 0.6), lv("S5", 0.5), lv("Co", 0.0) - 10]
    ctrl = [(0, _sacrum_front(B, z) + r_r + 5, z) for z in zs] + [(0, B.y_head - 22, head - 48), (0, B.y_head - 30, head - 78)]
    sl, f, path = tube(cv, rng, ctrl, (r_r, r_r, r_r * 0.9, r_r * 0.65, 8.0), 3.0, 0.1)
    seed = sub_seed(rng)
    if sl is not None:
        m = f < 1
        cv.paint(sl, m, "Rectum", "gi_wall", over=_FREE + ("muscle",), clip=False, keep=("Colon",))
        c = Noise(seed, path.min(0) - 30, path.max(0) + 30, 12.0).sample(cv, sl)
        lumen = m & (f < 1 - 3.0 / r_r)
        cv.paint(sl, lumen & (c > 0.6), tissue="gas", within="Rectum", clip=False)
        cv.paint(sl, lumen & (c <= 0.6) & (c > -0.8), tissue="stool", within="Rectum", clip=False)

    # Bladder above the symphysis; its size follows the filling.
    fill = rng.uniform(0.3, 1.1)
    g = fill ** (1 / 1.6)
    c = np.array((rng.uniform(-6, 6), y_sym - 22 - 16 * g, head + 2 + 32 * g))
    sl, f = ellipsoid(cv, rng, c, np.array((40, 32, 32)) * g * s ** 0.5, 8, 0.08)
    if sl is not None:
        m = f < 1
        cv.paint(sl, m, "Bladder", "gi_wall", over=_FREE + ("muscle",))
        cv.paint(sl, m & (f < 1 - 3.0 / (34 * g)), tissue="urine", within="Bladder")
    bladder_back = c[1] - 32 * g * s ** 0.5

    # The sex-specific organs draw from their own stream: the rest of the anatomy stays the
    # same when only the sex is overridden.
    rng = np.random.default_rng(sub_seed(rng))
    if not B.female:
        size = rng.uniform(0.85, 1.45)
        sl, f = ellipsoid(cv, rng, (0, y_sym - 26, head - 24), np.array((20, 16, 18)) * size * s ** 0.3, 8, 0.08)
        cv.paint(sl, None if f is None else f < 1, "Prostate", "prostate", over=_FREE + ("muscle",), clip=False,
                 keep=("Rectum", "Bladder"))
        for side in (1, -1):
            sl, f = ellipsoid(cv, rng, (side * 18, bladder_back - 8, head + 6), (16, 6, 8), 10, 0.1,
                              rot=frame((side * 1.0, -0.3, 0.3), (0, 0, 1)))
            cv.paint(sl, None if f is None else f < 1, BG, "prostate", over=_FREE)
        return

    # Female: anteverted uterus over the bladder dome, cervix and vagina down to the perineum,
    # ovaries at the pelvic side walls with follicles.
    size = rng.uniform(0.7, 1.2)
    tilt = rng.uniform(0.35, 0.9)
    axis = np.array((rng.uniform(-0.2, 0.2), tilt, 1.0))
    cu = np.array((0.0, bladder_back - 8, head + 40 * hz + 15 * g))
    rot = frame(axis, (1, 0, 0))
    sl, f = ellipsoid(cv, rng, cu + rot[:, 2] * 15 * size, np.array((30, 22, 40)) * size, 0, 0.08, rot=rot)
    if sl is not None:
        cv.paint(sl, f < 1, BG, "uterus", over=_FREE)
        cv.paint(sl, f < 0.35, tissue="endometrium", over=("uterus",))
    cervix = cu - rot[:, 2] * 28 * size
    vag = [cervix, (0, 0.5 * (y_sym - 30 + B.y_head - 10), head - 30), (0, y_sym - 30, head - 65)]
    sl, f, _ = tube(cv, rng, [cu, cervix] + vag[1:], (14 * size, 12, 9, 8), 2.0, 0.05)
    cv.paint(sl, None if f is None else f < 1, BG, "uterus", over=_FREE + ("muscle",), clip=False,
             keep=("Rectum", "Bladder"))
    for side in (1, -1):
        co = np.array((side * rng.uniform(42, 58) * s ** 0.5, B.y_head - rng.uniform(0, 20), head + rng.uniform(30, 55)))
        sl, f = ellipsoid(cv, rng, co, np.array((13, 9, 17)) * rng.uniform(0.6, 1.1), 20, 0.1)
        fol = sub_seed(rng)
        if sl is not None:
            m = f < 1
            cv.paint(sl, m, BG, "ovary", over=_FREE)
            spots = Noise(fol, co - 25, co + 25, 5.0).sample(cv, sl) > 1.1
            cv.paint(sl, m & spots & (f < 0.85), tissue="fluid", over=("ovary",))
