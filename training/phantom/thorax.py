"""Thorax: diaphragm, lungs with vessels, mediastinal fat, heart with chambers, airways,
esophagus, thyroid.

Lungs fill the rib cage above the diaphragm around the mediastinum, so they reach the apices,
wrap the heart and run down the posterior recesses behind the liver and spleen. The heart,
mediastinal fat, airways and thyroid are painted with label 0: they must not look like an
organ the model knows.
"""
from __future__ import annotations

import numpy as np

from .body import Body
from .geometry import BG, Canvas, Noise, ellipsoid, sub_seed, tube
from .tissues import T


def below_diaphragm(cv: Canvas, B: Body, sl, margin: float = 3.0) -> np.ndarray:
    X, Y, Z = cv.xyz(sl)
    return Z < B.diaphragm(X, Y) - margin


class Heart:
    """Heart frame: centre, rotation (first axis base -> apex) and size."""

    def __init__(self, B: Body, rng):
        s = B.s ** 0.5
        self.size = rng.uniform(0.88, 1.12) * s
        self.c = np.array((-0.16 * B.a_chest + rng.uniform(-8, 8), B.y_back + 1.2 * B.b_chest + rng.uniform(-8, 8),
                           B.dome_l + 20 * self.size + rng.uniform(-5, 10)))
        d = np.array((-0.62, 0.55, -0.52)) + rng.normal(0, 0.06, 3)
        e1 = d / np.linalg.norm(d)
        up = np.array((0.0, 0.0, 1.0))
        e2 = up - e1 * (up @ e1)
        e2 /= np.linalg.norm(e2)
        e3 = np.cross(e1, e2)
        self.rot = np.stack([e1, e2, e3], axis=1)  # columns: local axes in world coordinates
        self.radii = np.array((62.0, 46.0, 38.0)) * self.size

    def at(self, local) -> np.ndarray:
        """World point of heart-local offsets (mm along base->apex, up-ish, across)."""
        return self.c + self.rot @ (np.asarray(local, float) * self.size)


def paint_diaphragm(cv: Canvas, B: Body) -> None:
    lo = (-B.a_chest, B.y_back, B.dome_l - 150)
    hi = (B.a_chest, B.y_back + 2 * B.b_chest + 30, max(B.dome_r, B.dome_l) + 5)
    sl = cv.box(lo, hi)
    if sl is None:
        return
    X, Y, Z = cv.xyz(sl)
    zd = B.diaphragm(X, Y)
    m = (Z < zd + 1.5) & (Z > zd - 4.5)
    cv.paint(sl, m, tissue="muscle", block=True)


def mediastinum(cv: Canvas, B: Body, H: Heart, sl) -> np.ndarray:
    """Central compartment between the lungs (heart with its fat, great vessels, posterior strip),
    evaluated in the central part of the box only."""
    out = np.zeros(tuple(s.stop - s.start for s in sl), bool)
    sub = cv.box((-110.0, -1e4, -1e4), (100.0, 1e4, 1e4))
    if sub is None:
        return out
    ix = slice(max(sl[0].start, sub[0].start), min(sl[0].stop, sub[0].stop))
    if ix.stop <= ix.start:
        return out
    box = (ix, sl[1], sl[2])
    X, Y, Z = cv.xyz(box)
    yv, rv = (np.asarray(v, np.float32) for v in B.spine(Z))
    _, bi, yi = B.cavity(Z)
    front = np.asarray(yi + bi, np.float32)
    # heart and pericardial fat
    r = (H.radii + 7).astype(np.float32)
    R = H.rot.astype(np.float32)
    dx, dy, dz = X - H.c[0], Y - H.c[1], Z - H.c[2]
    q = sum(((R[0, k] * dx + R[1, k] * dy + R[2, k] * dz) / r[k]) ** 2 for k in range(3))
    m = q < 1
    # superior mediastinum: from spine to sternum, widest at the arch
    z_arch = B.lv("T4", 0.4)
    w = np.where(Z > z_arch, 22 + 18 * np.exp(-((Z - z_arch) / 35) ** 2), 28 + 12 * np.clip((z_arch - Z) / 40, 0, 1))
    ym = (yv + front) / 2
    hd = (front - yv) / 2 + 4
    m |= (((X + 6) / w) ** 2 + ((Y - ym) / hd) ** 2 < 1) & (Z > H.c[2])
    # posterior: aorta and esophagus in front of and left of the spine
    m |= ((X + 14) ** 2 / 28 ** 2 + (Y - (yv + rv + 10)) ** 2 / 22 ** 2) < 1
    # anterior: retrosternal fat above the heart
    m |= (np.abs(X + 4) < 14) & (Y > front - 25) & (Z > H.c[2] + 20)
    out[ix.start - sl[0].start:ix.stop - sl[0].start] = m
    return out


def paint_lungs(cv: Canvas, B: Body, H: Heart, rng) -> None:
    seeds = [sub_seed(rng) for _ in range(2)]
    width = rng.uniform(0.22, 0.3)
    lo = (-B.a_chest, B.y_back, B.dome_l - 160)
    hi = (B.a_chest, B.y_back + 2 * B.b_chest + 20, B.apex + 5)
    sl = cv.box(lo, hi)
    if sl is None:
        return
    X, Y, Z = cv.xyz(sl)
    cavity_top = Z < B.apex
    above = ~below_diaphragm(cv, B, sl, -4.0)  # 4 mm of diaphragm between lung and abdomen
    mask = cv.inside[sl] & above & cavity_top & ~mediastinum(cv, B, H, sl)
    right = np.broadcast_to(X > -5, mask.shape)
    cv.paint(sl, mask & right, "Right Lung", "lung")
    cv.paint(sl, mask & ~right, "Left Lung", "lung")
    # Bronchovascular tree: where the zero sets of two smooth fields cross, they trace a
    # tangle of tubes; thicker and denser towards the hila, thin in the periphery.
    n1 = Noise(seeds[0], lo, hi, 22.0).sample(cv, sl)
    n2 = Noise(seeds[1], lo, hi, 22.0).sample(cv, sl)
    d_hil = ((np.abs(X) - 50) ** 2 + (Y - (B.spine(Z)[0] + 45)) ** 2 + (Z - B.lv("T6")) ** 2) / (2 * 80.0 ** 2)
    e = np.float32(width) * (0.5 + 0.9 * np.exp(-d_hil))
    vessels = mask & (np.abs(n1) < e) & (np.abs(n2) < e)
    cv.paint(sl, vessels, tissue="lung_vessel")
    # central vessels to the hila are painted in vessels.py; mediastinal fat fills the rest
    med = cv.inside[sl] & above & cavity_top & ~mask
    cv.paint(sl, med, label=BG, tissue="visceral_fat")


def paint_heart(cv: Canvas, B: Body, H: Heart, rng) -> None:
    """Epicardial fat, myocardium and the four chambers (right/left heart blood), all label 0."""
    env_sl, env = ellipsoid(cv, rng, H.c, H.radii, 0, 0.05, grow=0.25, rot=H.rot)
    specs = {  # heart-local centre, radii, tissue
        "lv_wall": ((12, -6, -8), (42, 28, 26), "myocardium"),
        "lv": ((16, -6, -10), (30, 17, 15), "blood_left"),
        "rv": ((6, 6, 18), (40, 24, 14), "blood_right"),
        "ra": ((-32, -4, 24), (24, 22, 20), "blood_right"),
        "la": ((-36, 8, -20), (20, 16, 24), "blood_left"),
    }
    parts = {name: ellipsoid(cv, rng, H.at(c), np.array(r) * H.size, 0, 0.06, rot=H.rot)
             for name, (c, r, _) in specs.items()}
    if env_sl is None:
        return

    def allowed(sl):  # inside the chest cavity, above the diaphragm
        return cv.inside[sl] & ~below_diaphragm(cv, B, sl, 0.0)

    cv.paint(env_sl, (env < 1.12) & (env >= 1.0) & allowed(env_sl), label=BG, tissue="visceral_fat")
    cv.paint(env_sl, (env < 1.0) & allowed(env_sl), label=BG, tissue="myocardium")
    for name in ("ra", "la"):  # atria bulge out of the ventricular mass with a thin wall
        sl, f = parts[name]
        if sl is not None:
            cv.paint(sl, (f < 1.15) & allowed(sl), label=BG, tissue="myocardium")
    lvw_sl, lvw = parts["lv_wall"]
    for name in ("rv", "ra", "la", "lv"):
        sl, f = parts[name]
        if sl is None:
            continue
        m = (f < 1) & allowed(sl)
        if name == "rv":  # crescent in front of the septum, inside a thin free wall
            m &= ~_on(sl, lvw_sl, lvw < 1) & _on(sl, env_sl, env < 0.93)
        if name == "lv":
            m &= _on(sl, env_sl, env < 0.95)
        cv.paint(sl, m, label=BG, tissue=specs[name][2])
    # taken out of the cavity: nothing painted later (abdomen, lesions) may enter the heart
    for sl, f in [(env_sl, env)] + [parts[n] for n in ("ra", "la")]:
        if sl is not None:
            cv.inside[sl][f < 1.0] = False


def _on(sl, other_sl, other_mask) -> np.ndarray:
    """other_mask (defined on other_sl) resampled onto the box sl (False outside other_sl)."""
    out = np.zeros(tuple(s.stop - s.start for s in sl), bool)
    if other_sl is None:
        return out
    inter = [slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(sl, other_sl)]
    if any(s.stop <= s.start for s in inter):
        return out
    dst = tuple(slice(s.start - a.start, s.stop - a.start) for s, a in zip(inter, sl))
    src = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(inter, other_sl))
    out[dst] = other_mask[src]
    return out


def airway_points(B: Body) -> dict:
    """Trachea and main bronchi centre lines (used by the esophagus and vessels too)."""
    z_car = B.lv("T5", 0.9)
    yv_c, rv_c = (float(v) for v in B.spine(z_car))
    y_tr = lambda z: float(B.spine(z)[0] + B.spine(z)[1]) + 24  # noqa: E731
    trachea = [(0, y_tr(B.top + 40), B.top + 40), (0, y_tr(B.apex), B.apex), (-2, y_tr(B.lv("T3")), B.lv("T3")),
               (0, yv_c + rv_c + 24, z_car)]
    carina = np.array(trachea[-1], float)
    right = [carina, carina + (22, -4, -14), carina + (42, -8, -30)]
    left = [carina, carina + (-24, -2, -10), carina + (-48, -6, -24)]
    return {"trachea": trachea, "carina": carina, "right": right, "left": left}


def paint_airways(cv: Canvas, B: Body, rng) -> dict:
    pts = airway_points(B)
    r_tr = rng.uniform(8, 10.5) * B.s ** 0.3
    out = {}
    for key, ctrl, r in (("trachea", pts["trachea"], r_tr), ("right", pts["right"], 0.78 * r_tr),
                         ("left", pts["left"], 0.7 * r_tr)):
        sl, f, path = tube(cv, rng, ctrl, r, 1.0, 0.04)
        out[key] = path
        if sl is None:
            continue
        cv.paint(sl, f < 1, label=BG, tissue="airway_wall", clip=False, over=_NOT_BONE)
        cv.paint(sl, f < 1 - 2.2 / r, label=BG, tissue="air", clip=False, over=_NOT_BONE)
    return out


_NOT_BONE = tuple(t for t in T if t not in ("cortical_bone", "marrow", "yellow_marrow", "cartilage", "disc", "canal"))


def esophagus_path(B: Body, gej: np.ndarray) -> list:
    def behind(z, dx=0.0, gap=9.0):
        yv, rv = (float(v) for v in B.spine(z))
        return (dx, yv + rv + gap, z)

    return [behind(B.top + 40, -4), behind(B.apex, -6), behind(B.lv("T4"), -8, 10), behind(B.lv("T7"), -4, 14),
            behind(B.lv("T9"), -8, 28), behind(B.lv("T10", 0.7), -20, 36), tuple(gej)]


def paint_esophagus(cv: Canvas, B: Body, gej: np.ndarray, rng) -> None:
    r = rng.uniform(7, 9.5) * B.s ** 0.3
    sl, f, _ = tube(cv, rng, esophagus_path(B, gej), r, 2.0, 0.1)
    if sl is None:
        return
    cv.paint(sl, f < 1, "Esophagus", "esophagus", clip=False, over=_NOT_BONE)
    gas = (f < 0.3) & (cv.tissue[sl] == T["esophagus"])
    if rng.random() < 0.4:
        cv.paint(sl, gas, tissue="gas", clip=False, within="Esophagus")


def paint_thyroid(cv: Canvas, B: Body, rng) -> None:
    z0 = B.lv("T1", 0.7)
    yv, rv = (float(v) for v in B.spine(z0))
    ytr = yv + rv + 20
    size = rng.uniform(0.75, 1.25)
    for side in (1, -1):
        sl, f = ellipsoid(cv, rng, (side * 17, ytr + 4, z0 + 30), np.array((8, 11, 22)) * size, 10, 0.1)
        cv.paint(sl, f < 1 if f is not None else None, label=BG, tissue="thyroid", clip=False,
                 over=["muscle", "fat", "visceral_fat"])
    sl, f = ellipsoid(cv, rng, (0, ytr + 13, z0 + 18), np.array((14, 4, 6)) * size, 5, 0.1)
    cv.paint(sl, f < 1 if f is not None else None, label=BG, tissue="thyroid", clip=False, over=["muscle", "fat"])
