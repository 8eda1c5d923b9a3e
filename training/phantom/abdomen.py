"""Abdominal organs: kidneys, adrenals, spleen, liver, gallbladder, stomach, duodenum, pancreas,
colon, small bowel, psoas muscles, ascites.

Organs are clipped to the body cavity below the diaphragm, so the liver fills the right dome
and lies partly inside the lower rib cage, the spleen sits posterolaterally under the left dome.
An organ painted earlier wins over a later one (later organs only fill retroperitoneal or
mesenteric fat), so organs never overlap; vessels (vessels.py) are painted over them.
Returns landmarks (hila, porta hepatis, ...) that the vessels connect to.
"""
from __future__ import annotations

import numpy as np

from .body import Body
from .geometry import BG, Canvas, Noise, ellipsoid, frame, sub_seed, tube
from .thorax import below_diaphragm

_FREE = ("visceral_fat",)


def _abd(cv: Canvas, B: Body, sl) -> np.ndarray:
    return cv.inside[sl] & below_diaphragm(cv, B, sl, 0.0)


def paint_abdomen(cv: Canvas, B: Body, rng: np.random.Generator) -> dict:
    s, hz, lv = B.s, B.hz, B.lv
    a, b = B.a_abd, B.b_abd
    y_mid = B.y_back + b

    def sp(z):
        yv, rv = B.spine(z)
        return float(yv), float(rv)

    L: dict = {}

    # Psoas: from the lumbar spine down along the pelvic brim (taken out of the cavity).
    for side in (1, -1):
        z1 = lv("T12", 0.3)
        yv, rv = sp(lv("L3"))
        ctrl = [(side * (sp(z1)[1] + 6), sp(z1)[0] + 4, z1), (side * (rv + 16), yv + 2, lv("L3")),
                (side * (rv + 28), yv + 8, lv("L5")), (side * (B.head_x * 0.72), yv + 30, B.head + 40)]
        sl, f, _ = tube(cv, rng, ctrl, (7 * s, 16 * s, 22 * s, 18 * s), 2.0, 0.05)
        cv.paint(sl, f < 1 if f is not None else None, tissue="muscle", over=_FREE + ("fat",), block=True)

    # Kidneys: retroperitoneal at T12-L3, the right one lower; cortex, medulla, sinus fat.
    for name, side in (("Right Kidney", 1), ("Left Kidney", -1)):
        drop = rng.uniform(8, 28) if side == 1 else 0.0
        zc = lv("L1", 0.35) - drop + rng.uniform(-10, 10) * hz
        yv, rv = sp(zc)
        c = np.array((side * (rv + 50 * s + rng.uniform(-6, 6)), yv - 8 + rng.uniform(-6, 6), zc))
        rot = frame((-side * 0.22, -0.25, 1.0), (-side * 0.8, 0.55, 0.0))
        radii = np.array((27, 21, 54)) * s * rng.uniform(0.88, 1.1)
        sl, f = ellipsoid(cv, rng, c, radii, 0, 0.06, rot=rot)
        med_seed = sub_seed(rng)
        L[name] = {"centre": c, "rot": rot, "radii": radii,
                   "hilum": c + rot[:, 0] * radii[0] * 0.7, "top": c + rot[:, 2] * radii[2]}
        if sl is None:
            continue
        X, Y, Z = cv.xyz(sl)
        u_hil = ((X - c[0]) * rot[0, 0] + (Y - c[1]) * rot[1, 0] + (Z - c[2]) * rot[2, 0]) / radii[0]
        u_long = ((X - c[0]) * rot[0, 2] + (Y - c[1]) * rot[1, 2] + (Z - c[2]) * rot[2, 2]) / radii[2]
        m = (f < 1) & _abd(cv, B, sl)
        cv.paint(sl, m, name, "kidney_cortex", over=_FREE + ("muscle",))
        cols = Noise(med_seed, c - radii.max(), c + radii.max(), 9.0).sample(cv, sl)
        cv.paint(sl, m & (f < 0.8) & (f > 0.35) & (cols > -0.5), tissue="kidney_medulla", within=name)
        sinus = m & (u_hil > 0.15) & (f < 0.7) & (np.abs(u_long) < 0.45)  # opens at the hilum
        cv.paint(sl, sinus, tissue="visceral_fat", within=name)
        cv.paint(sl, sinus & (f < 0.45) & (u_hil > 0.35), tissue="urine", within=name)

    # Adrenal glands: thin inverted-Y limbs superomedial to the upper poles.
    for name, kid, side in (("Right Adrenal Gland", "Right Kidney", 1), ("Left Adrenal Gland", "Left Kidney", -1)):
        top = L[kid]["top"]
        body = top + np.array((-side * 16, 16 if side == 1 else 20, 12 * hz))
        body[2] = min(body[2], float(B.diaphragm(body[0], body[1])) - 16)  # under the dome's slope
        r = rng.uniform(3.2, 4.2) * s ** 0.3
        for end in ((-side * 8, -22, -14), (side * 10, -20, -18), (0, 10, 6)):
            sl, f, _ = tube(cv, rng, [body, body + np.array(end) * hz], (r * 1.15, r * 0.8), 1.0, 0.05)
            # retroperitoneal, under the crura: only the body cavity limits them, not the
            # height of the domes
            cv.paint(sl, f < 1 if f is not None else None, name, "adrenal", over=_FREE)
        L[name] = body

    # Spleen: posterolateral left under the dome, long axis along the ribs.
    zc = B.dome_l - rng.uniform(50, 70) * hz
    ai, bi, yi = (float(v) for v in B.cavity(zc))
    c = np.array((-(ai - 26 * s), yi - 0.45 * bi, zc))
    rot = frame((0.25, 0.3, 1.0), (-0.75, -0.6, 0.0))
    sl, f = ellipsoid(cv, rng, c, np.array((24, 50, 58)) * s * rng.uniform(0.85, 1.2), 8, 0.12, rot=rot)
    if sl is not None:
        cv.paint(sl, (f < 1) & _abd(cv, B, sl), "Spleen", "spleen", over=_FREE + ("muscle",))
    L["spleen_hilum"] = c + np.array((28 * s, 25 * s, 0))

    # Liver: right lobe filling the right dome, left lobe under the heart, caudate at the IVC.
    zr = B.dome_r
    # right lobe: its long axis tilts so that the lower tip lies lateral (wedge under the dome)
    tilt = frame((-0.35, 0.05, 1.0), (1, 0, 0))
    lobes = [((0.3 * a + 22 * s, y_mid - 0.05 * b, zr - 72 * hz), (88 * s, 0.7 * b + 10, 92 * hz), tilt),
             ((-0.05 * a, y_mid + 0.3 * b, zr - 40 * hz), (70 * s, 0.25 * b + 12, 42 * hz), None),
             ((0.1 * a, sp(lv("T11"))[0] + 48, lv("T11", 0.2)), (24 * s, 22 * s, 40 * hz), None)]
    L["liver"] = []
    for c, r, rot in lobes:
        sl, f = ellipsoid(cv, rng, c, np.array(r) * rng.uniform(0.92, 1.08), 10, 0.1, grow=0.2, rot=rot)
        L["liver"].append((sl, f))
        if sl is not None:
            cv.paint(sl, (f < 1) & _abd(cv, B, sl), "Liver", "liver", over=_FREE)
    yv, rv = sp(lv("T12", 0.3))
    L["porta"] = np.array((0.16 * a, yv + rv + 55, lv("T12", 0.4)))

    # Gallbladder in the fossa under the right lobe, fundus anterior-inferior.
    c = np.array((0.26 * a + rng.uniform(-10, 10), y_mid + 0.3 * b, lv("L1", 0.9)))
    rot = frame((0.1, -0.6, 0.8), (1, 0, 0))
    sl, f = ellipsoid(cv, rng, c, np.array((15, 15, 38)) * s * rng.uniform(0.7, 1.15), 5, 0.08, rot=rot)
    if sl is not None:
        cv.paint(sl, (f < 1) & _abd(cv, B, sl), "Gall Bladder", "gallbladder", over=_FREE + ("liver",))

    # The stomach's ends are fixed points (the duodenum starts at the pylorus); it is painted
    # after the retroperitoneal duodenum and pancreas, so it wraps them and not the reverse.
    yv, rv = sp(lv("T11"))
    gej = np.array((-0.2 * a, yv + rv + 40, lv("T11", 0.4)))
    L["gej"] = gej
    L["pylorus"] = np.array((0.16 * a, y_mid + 0.35 * b, lv("L1", 0.9)))

    # Duodenum: bulb, descending, horizontal (between aorta and SMA), ascending to the flexure.
    def dpt(x, dy, z):
        yv_, rv_ = sp(z)
        return (x * a, yv_ + rv_ + dy, z)

    ctrl = [L["pylorus"], dpt(0.26, 52, lv("L1", 0.6)), dpt(0.33, 36, lv("L2", 0.6)), dpt(0.3, 28, lv("L3", 0.5)),
            dpt(0.02, 20, lv("L3", 0.6)), dpt(-0.13, 26, lv("L2", 0.4)), dpt(-0.16, 45, lv("L2", 0.95))]
    r_d = rng.uniform(10, 13) * s
    sl, f, _ = tube(cv, rng, ctrl, r_d, 3.0, 0.1)
    if sl is not None:
        m = (f < 1) & _abd(cv, B, sl)
        cv.paint(sl, m, "Duodenum", "gi_wall", over=_FREE)
        cv.paint(sl, m & (f < 0.6), tissue="gi_fluid" if rng.random() < 0.7 else "gas", within="Duodenum")
    else:
        rng.random()
    L["dj"] = np.array(ctrl[-1])

    # Pancreas: tail at the splenic hilum, body over the aorta, head in the duodenal C-loop.
    ctrl = [L["spleen_hilum"] + (10, 5, 0), dpt(-0.28, 28, lv("T12", 0.1)), dpt(-0.08, 42, lv("L1", 0.55)),
            dpt(0.07, 46, lv("L1", 0.35)), dpt(0.2, 34, lv("L2", 0.6)), dpt(0.12, 24, lv("L2", 0.2))]
    sl, f, path = tube(cv, rng, ctrl, np.array((11, 11, 11, 13, 17, 12)) * s * rng.uniform(0.85, 1.15), 3.0, 0.12)
    if sl is not None:
        lob = Noise(sub_seed(rng), path.min(0) - 30, path.max(0) + 30, 6.0).sample(cv, sl)
        cv.paint(sl, (f < 1 - 0.12 * np.clip(lob, 0, None)) & _abd(cv, B, sl), "Pancreas", "pancreas", over=_FREE)
    else:
        sub_seed(rng)
    L["pancreas_path"] = path

    # Stomach: cardia at the gastro-oesophageal junction, fundus under the left dome, body and
    # antrum to the pylorus; gas rises anteriorly, fluid (or oral contrast) lies dependent.
    fill = rng.uniform(0.75, 1.2)
    ctrl = [gej, (-0.4 * a, y_mid - 0.1 * b, B.dome_l - 40), (-0.42 * a, y_mid + 0.3 * b, lv("T12", 0.3)),
            (-0.22 * a, y_mid + 0.55 * b, lv("L1", 0.3)), (0.04 * a, y_mid + 0.55 * b, lv("L1", 0.6)),
            L["pylorus"]]
    radii = np.array((12, 40, 40, 32, 22, 12)) * s * np.r_[1, fill, fill, fill, 1, 1]
    sl, f, _ = tube(cv, rng, ctrl, radii, 4.0, 0.08)
    level = rng.uniform(0.1, 0.6)
    if sl is not None:
        m = (f < 1) & _abd(cv, B, sl)
        cv.paint(sl, m, "Stomach", "gi_wall", over=_FREE)
        lumen = m & (f < 1 - 4.0 / (30 * s))
        Y = cv.xyz(sl)[1]
        cap = Y > y_mid + level * b
        cv.paint(sl, lumen & cap, tissue="gas", within="Stomach")
        cv.paint(sl, lumen & ~cap, tissue="gi_fluid", within="Stomach")

    # Colon: caecum, ascending, hepatic flexure, transverse (hanging), splenic flexure,
    # descending, sigmoid into the pelvis; gas anteriorly, stool and fluid dependent.
    sag = rng.uniform(0.0, 1.0)
    ai_l = float(B.cavity(lv("L3"))[0])
    ctrl = [(0.62 * ai_l, y_mid + 0.05 * b, lv("L5", 0.2)), (0.72 * ai_l, y_mid - 0.25 * b, lv("L3", 0.5)),
            (0.68 * ai_l, y_mid - 0.05 * b, lv("L1", 0.3)), (0.35 * a, y_mid + 0.5 * b, lv("L2", 0.5) - 40 * sag),
            (-0.1 * a, y_mid + 0.6 * b, lv("L3", 0.5) - 60 * sag), (-0.4 * a, y_mid + 0.45 * b, lv("L2", 0.5) - 20 * sag),
            (-0.75 * ai_l, y_mid - 0.2 * b, lv("T12", 0.5)), (-0.78 * ai_l, y_mid - 0.3 * b, lv("L3", 0.5)),
            (-0.66 * ai_l, y_mid - 0.1 * b, lv("L5", 0.5)), (-0.4 * a, y_mid + 0.2 * b, lv("S1", 0.2)),
            (-0.05 * a, y_mid + 0.1 * b, lv("S2", 0.5)), (0.0, y_mid - 0.45 * b, lv("S3", 0.5))]
    r_col = rng.uniform(17, 24) * s
    radii = r_col * np.array((1.35, 1.2, 1.05, 1.05, 1.0, 0.95, 0.9, 0.85, 0.8, 0.8, 0.75, 0.8))
    sl, f, path = tube(cv, rng, ctrl, radii, 7.0, 0.12)
    L["colon_path"] = path
    content = sub_seed(rng)
    if sl is not None:
        m = (f < 1) & _abd(cv, B, sl)
        cv.paint(sl, m, "Colon", "gi_wall", over=_FREE)
        lumen = m & (f < 1 - 3.0 / r_col)
        c = Noise(content, path.min(0) - 40, path.max(0) + 40, 16.0).sample(cv, sl)
        Y = cv.xyz(sl)[1]
        up = (Y - y_mid) / b  # gas collects anteriorly
        cv.paint(sl, lumen & (c + 0.8 * up > 0.2), tissue="gas", within="Colon")
        cv.paint(sl, lumen & (c + 0.8 * up <= 0.2) & (c > -0.9), tissue="stool", within="Colon")
        cv.paint(sl, lumen & (c <= -0.9), tissue="colon_fluid", within="Colon")

    # Small bowel: loops carved out of the central abdomen by a thresholded smooth field.
    c = np.array((rng.uniform(-0.06, 0.06) * a, y_mid + 0.12 * b, lv("L4", 0.6)))
    radii = np.array((0.62 * a, 0.62 * b, 115 * hz))
    sl, region = ellipsoid(cv, rng, c, radii, 5, 0.1)
    seeds = (sub_seed(rng), sub_seed(rng))
    if sl is not None:
        loops = Noise(seeds[0], c - radii * 1.2, c + radii * 1.2, 13.0).sample(cv, sl)
        m = (region < 1) & (loops > -0.3) & _abd(cv, B, sl)
        cv.paint(sl, m, "Intestine", "bowel_wall", over=_FREE)
        cont = Noise(seeds[1], c - radii * 1.2, c + radii * 1.2, 7.0).sample(cv, sl)
        lumen = m & (loops > 0.35)
        cv.paint(sl, lumen & (cont > -0.2), tissue="gi_fluid", within="Intestine")
        cv.paint(sl, lumen & (cont < -1.3), tissue="gas", within="Intestine")
    return L


def paint_ascites(cv: Canvas, B: Body, L: dict, rng) -> None:
    """Free fluid around the liver and spleen, in the paracolic gutters and the pelvis."""
    amt = B.ascites_amount
    pelvic = np.array((0, B.y_back + 0.8 * B.b_abd, B.head + 55))
    gutters = [((0.85 * side * B.a_abd * 0.8, B.y_back + 0.6 * B.b_abd, B.lv("L3")), (28, 30, 90)) for side in (1, -1)]
    draws = [ellipsoid(cv, rng, pelvic, np.array((55, 40, 40)) * (0.6 + 0.6 * amt), 10, 0.15)]
    draws += [ellipsoid(cv, rng, c, np.array(r) * (0.6 + 0.5 * amt), 10, 0.15) for c, r in gutters]
    if not B.ascites:
        return
    band = 0.04 + 0.12 * amt
    for sl, f in L["liver"]:
        if sl is not None:
            cv.paint(sl, (f >= 1) & (f < 1 + band) & _abd(cv, B, sl), tissue="fluid", over=_FREE, within=BG)
    for sl, f in draws:
        if sl is not None:
            cv.paint(sl, (f < 1) & _abd(cv, B, sl), tissue="fluid", over=_FREE, within=BG)
