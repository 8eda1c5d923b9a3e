"""Vessels: the whole aorta (root, arch, descending, abdominal, bifurcation), the postcava
(IVC) from the iliac confluence to the right atrium, hepatic veins, portal and splenic veins,
and the unlabelled rest: supra-aortic arteries, SVC and brachiocephalic veins, pulmonary trunk
and arteries, pulmonary veins, azygos, celiac trunk, SMA and SMV, renal and iliac/femoral
vessels.

Labels: Aorta over the whole aorta in the field of view, Postcava over the IVC, "Portal Vein and
Splenic Vein" outside the liver, "Hepatic Vessel" for the hepatic veins and the portal branches
inside the liver (>= 3 mm radius: 2 voxels across at 3-4 mm). The celiac trunk (a 1-2 cm stub)
is painted but not labelled: at 3-4 mm it is a handful of voxels the model cannot learn.
Vessel HU follows the contrast phase through their tissues (render.py).
"""
from __future__ import annotations

import numpy as np

from .body import Body
from .geometry import BG, Canvas, tube
from .thorax import _NOT_BONE, Heart

_SOFT = _NOT_BONE


_KEEP = ("Aorta", "Postcava")


def _vessel(cv, rng, ctrl, r, tissue, label=BG, jitter=2.0, over=_SOFT, within=None):
    """A tube of vessel tissue; branches never cut into the labelled aorta and postcava."""
    sl, f, path = tube(cv, rng, ctrl, r, jitter, 0.04)
    if sl is not None:
        keep = None if label in _KEEP else _KEEP
        cv.paint(sl, f < 1, label=label, tissue=tissue, clip=False, over=over, within=within, keep=keep)
    return path


def paint_vessels(cv: Canvas, B: Body, H: Heart, air: dict, L: dict, rng: np.random.Generator,
                  right_arm_injection: bool) -> dict:
    s, lv = B.s, B.lv
    rs = s ** 0.3 * rng.uniform(0.9, 1.15)  # vessel calibre (and age: the aorta widens)

    def ant(z, gap, dx):
        yv, rv = (float(v) for v in B.spine(z))
        return (dx, yv + rv + gap, z)

    out = {}
    # Aorta: root over the left ventricle, ascending to the right, arch over the left bronchus,
    # descending left of the spine, through the hiatus, abdominal down to the bifurcation at L4.
    root = H.at((-22, 22, -6))
    z_arch = lv("T4", 0.6) + rng.uniform(-8, 8)
    car = air["carina"]
    ctrl = [root, (12, root[1] + 6, H.c[2] + 55), (10, car[1] + 25, z_arch - 10), (-6, car[1] + 8, z_arch + 4),
            (-24, car[1] - 14, z_arch - 6), ant(lv("T5", 0.3), 4, -26), ant(lv("T8"), 6, -22),
            ant(lv("T11"), 10, -12), ant(lv("L1"), 12, -8), ant(lv("L3"), 12, -6), ant(lv("L4", 0.5), 12, -4)]
    radii = np.array((16, 16, 14.5, 13.5, 13, 12.5, 12, 11, 10.5, 10, 9.5)) * rs
    path = _vessel(cv, rng, ctrl, radii, "blood_left", "Aorta", 1.5)
    out["aorta"] = path
    bif = np.array(ctrl[-1])
    # supra-aortic arteries from the arch to the neck (and the left arm)
    arch_pts = {"bct": np.array(ctrl[2]) + (0, -4, 6), "lcca": np.array(ctrl[3]) + (-2, -2, 8),
                "lsa": np.array(ctrl[4]) + (0, 0, 8)}
    yneck = lambda z: float(B.spine(z)[0] + B.spine(z)[1]) + 20  # noqa: E731
    _vessel(cv, rng, [arch_pts["bct"], (18, yneck(B.apex) + 8, lv("T1", 0.5)), (28, yneck(B.top), B.top + 30)],
            6.5 * rs, "blood_left")
    _vessel(cv, rng, [arch_pts["lcca"], (-20, yneck(B.apex) + 6, lv("T1", 0.5)), (-28, yneck(B.top), B.top + 30)],
            4.5 * rs, "blood_left")
    _vessel(cv, rng, [arch_pts["lsa"], (-32, car[1] - 20, lv("T1")), (-0.55 * B.a_chest, car[1] - 10, lv("T1", 0.7)),
                      (-0.9 * B.a_chest, car[1] - 5, lv("T1", 0.2))], 5.0 * rs, "blood_left")

    # Veins of the upper body: jugulars, brachiocephalic, SVC into the right atrium; the
    # injected arm's veins carry dense contrast in the arterial phase.
    inj_r, inj_l = ("svc", "vein") if right_arm_injection else ("vein", "svc")
    ra_top = H.at((-38, 0, 32))
    svc_top = np.array((32, car[1] + 30, lv("T2", 0.5)))
    _vessel(cv, rng, [ra_top + (0, 0, 8), (30, car[1] + 26, z_arch), svc_top], 9.5 * rs, "svc")
    _vessel(cv, rng, [svc_top, (40, yneck(B.apex) + 10, lv("T1", 0.9)), (0.8 * B.a_chest, car[1] + 10, lv("T1", 0.2))],
            7.0 * rs, inj_r)
    _vessel(cv, rng, [svc_top + (-4, 2, 4), (-10, car[1] + 45, z_arch + 22), (-45, yneck(B.apex) + 10, lv("T1", 0.9)),
                      (-0.8 * B.a_chest, car[1] + 10, lv("T1", 0.2))], 6.5 * rs, inj_l)
    for side in (1, -1):
        _vessel(cv, rng, [(side * 42, yneck(B.apex) + 8, lv("T1", 0.9)), (side * 32, yneck(B.top) + 4, B.top + 30)],
                7.0 * rs, "vein")
    # azygos arching over the right main bronchus into the SVC
    _vessel(cv, rng, [ant(lv("T10"), 2, 10), ant(lv("T6"), 2, 12), ant(lv("T4", 0.8), 6, 18), svc_top + (0, -10, -25)],
            4.0 * rs, "vein")

    # Pulmonary trunk from the right ventricle, branches to the hila; pulmonary veins to the LA.
    pt0 = H.at((-12, 30, 36))
    bif_pa = np.array((-14, car[1] + 14, lv("T5", 0.6)))
    _vessel(cv, rng, [pt0, pt0 + (-12, -4, 26), bif_pa], 13.5 * rs, "blood_right")
    hil_r = np.array((58, car[1] - 2, lv("T6", 0.9)))
    hil_l = np.array((-56, car[1] - 8, lv("T5", 0.7)))
    _vessel(cv, rng, [bif_pa, (8, car[1] + 10, lv("T5", 0.4)), (34, car[1] + 4, lv("T6", 0.9)), hil_r],
            (10.5 * rs, 8 * rs), "blood_right")
    _vessel(cv, rng, [bif_pa, (-34, car[1] + 2, lv("T5", 0.8)), hil_l], (10 * rs, 8 * rs), "blood_right")
    for hil, side in ((hil_r, 1), (hil_l, -1)):
        for k, dz in enumerate((-30, 15)):  # lower-lobe and upper-lobe pulmonary arteries
            _vessel(cv, rng, [hil, hil + (side * 18, -10 + 4 * k, dz), hil + (side * 35, -20 + 12 * k, 2.2 * dz)],
                    (6 * rs, 3.5 * rs), "blood_right", label=None, over=("lung", "lung_vessel"))
    la = H.at((-40, 8, -22))
    for hil, side in ((hil_r, 1), (hil_l, -1)):
        for dz in (-14, -40):
            _vessel(cv, rng, [la, (side * 30, la[1] - 4, la[2] + dz * 0.5), hil + (side * 6, 4, dz)], 5.5 * rs,
                    "blood_left")

    # Postcava: iliac confluence at L5, right of the aorta, through the liver, into the RA.
    ra_bottom = H.at((-30, -10, 18)) + (0, 0, -22)
    z_ren = lv("L1", 0.1)
    ctrl = [ant(lv("L5", 0.5), 10, 12), ant(lv("L3"), 14, 22), ant(z_ren, 18, 24), ant(lv("T12"), 26, 22),
            ant(lv("T11"), 36, 20), (20, ra_bottom[1] - 10, B.dome_r - 12), ra_bottom]
    r_ivc = rng.uniform(9.5, 12.5) * rs
    sl, f, path = tube(cv, rng, ctrl, r_ivc, 2.0, 0.08)
    if sl is not None:
        Z = cv.xyz(sl)[2]
        m = f < 1
        cv.paint(sl, m, label="Postcava", tissue="ivc_upper", clip=False, over=_SOFT, keep="Aorta")
        cv.paint(sl, m & (Z < z_ren - 15), tissue="vein", clip=False, within="Postcava")
    out["ivc"] = path
    ivc_hep = np.array(ctrl[5])
    # Hepatic veins (right, middle, left) fan out from the IVC below the diaphragm.
    for dx, dy in ((55, -25), (30, 35), (-25, 40)):
        end = ivc_hep + (dx * s, dy * s, -55 * B.hz)
        _vessel(cv, rng, [ivc_hep + (0, 0, -4), ivc_hep + (dx * 0.5 * s, dy * 0.5 * s, -18), end],
                (6.0 * rs, 3.2 * rs), "hepatic_vein", label="Hepatic Vessel", within="Liver", over=None)

    # Portal venous system: SMV and splenic vein meet behind the pancreatic neck; the portal
    # vein runs to the porta hepatis, then right and left branches inside the liver.
    pan = L["pancreas_path"]
    conf = np.array(ant(lv("L1", 0.4), 34, 10))
    porta = L["porta"]
    _vessel(cv, rng, [conf, 0.5 * (conf + porta) + (0, 6, 0), porta], 7.5 * rs, "portal_vein",
            "Portal Vein and Splenic Vein")
    sp = [conf] + [p + (0, -17, 3) for p in pan[:: max(1, len(pan) // 5)][::-1] if p[0] < conf[0] - 15]
    if len(sp) < 3:
        sp = [conf, conf + (-40, -8, 10), L["spleen_hilum"]]
    _vessel(cv, rng, sp + [L["spleen_hilum"]], 5.0 * rs, "portal_vein", "Portal Vein and Splenic Vein")
    _vessel(cv, rng, [conf, conf + (2, 10, -30), conf + (-4, 18, -70), conf + (-8, 25, -110)], (6 * rs, 4 * rs),
            "portal_vein")  # SMV (unlabelled)
    for dx, dz in ((60, -10), (-45, 15)):
        _vessel(cv, rng, [porta, porta + (dx * 0.4 * s, 5, dz * 0.4), porta + (dx * s, 10, dz)], (5.5 * rs, 3.2 * rs),
                "portal_vein", label="Hepatic Vessel", within="Liver", over=None)

    # Celiac trunk (hepatic and splenic arteries) and SMA from the front of the aorta; renal
    # arteries and veins; all unlabelled.
    cel = np.array(ant(lv("T12", 0.1), 22, -6))
    _vessel(cv, rng, [cel + (0, -10, 0), cel + (0, 4, 2), cel + (2, 12, 4)], 3.8 * rs, "blood_left")
    _vessel(cv, rng, [cel + (2, 12, 4), porta + (-10, 4, -12)], 2.8 * rs, "blood_left")
    _vessel(cv, rng, [cel + (2, 12, 4), cel + (-30, 10, 12), L["spleen_hilum"] + (6, 6, 8)], 2.8 * rs, "blood_left", jitter=6)
    sma = np.array(ant(lv("L1", 0.6), 22, -6))
    _vessel(cv, rng, [sma + (0, -10, 0), sma + (0, 14, -10), sma + (2, 26, -50), sma + (6, 30, -120)], (4 * rs, 3 * rs),
            "blood_left")
    for kid, side in (("Right Kidney", 1), ("Left Kidney", -1)):
        h = L[kid]["hilum"]
        a0 = np.array(ant(lv("L1", 0.1), 4, -8))
        _vessel(cv, rng, [a0, 0.5 * (a0 + h) + (0, -6, 0), h], 3.2 * rs, "blood_left")
        if side == 1:
            rv_ctrl = [h + (0, 4, 0), 0.5 * (h + np.array(ant(z_ren, 18, 24))), ant(z_ren, 18, 24)]
        else:
            rv_ctrl = [h + (0, 4, 0), (-25, a0[1] + 16, z_ren + 2), (-4, a0[1] + 22, z_ren), ant(z_ren, 18, 24)]
        _vessel(cv, rng, rv_ctrl, 5.0 * rs, "renal_vein", over=_SOFT)

    # Iliac and femoral vessels to the thighs.
    heads = cv.notes.get("femoral_heads") or [np.array((B.head_x, B.y_back + B.b_hip, B.head)),
                                              np.array((-B.head_x, B.y_back + B.b_hip, B.head))]
    for hc in heads:
        side = 1 if hc[0] > 0 else -1
        ing = np.array((side * (B.head_x - 12), hc[1] + 30, B.head + 8))
        thigh = np.array((side * (B.head_x - 25), hc[1] + 22, B.bottom - 20))
        _vessel(cv, rng, [bif, (side * 35, bif[1] - 2, lv("S1", 0.6)), (side * 0.8 * B.head_x, hc[1] + 20, B.head + 45),
                          ing, thigh], (7 * rs, 4.5 * rs), "blood_left")
        _vessel(cv, rng, [np.array(ctrl[0]), (side * 30, bif[1] - 14, lv("S1", 0.4)),
                          (side * 0.75 * B.head_x, hc[1] + 10, B.head + 40), ing + (-side * 10, -8, 0),
                          thigh + (-side * 10, -8, 0)], (8 * rs, 5.5 * rs), "vein")
    return out
