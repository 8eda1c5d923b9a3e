"""Bones: spine and sacrum, ribs with costal cartilage, sternum, clavicles, scapulae, humeri and
forearm bones, pelvis (ilium, acetabulum, pubis, ischium) and whole femora.

Only the femoral heads are labelled (catalog "Left/Right Head of Femur"); every other bone is
painted and left 0, so that the model learns that a rib is not liver. Bones are taken out of
the body cavity, so organs painted later never overwrite them.
"""
from __future__ import annotations

import math

import numpy as np

from .body import Body
from .geometry import Canvas, catmull_rom, ellipsoid, sweep, tube
from .tissues import T

_MARROWS = ("marrow", "yellow_marrow")
_SOFT = tuple(t for t in T if t not in ("cortical_bone",) + _MARROWS)


def _bone(cv: Canvas, sl, f, r_mm: float, cortex: float = 2.5, marrow: str = "marrow", label=None) -> None:
    """Cortex shell over a marrow core; overlapping bones merge (cortex never covers marrow)."""
    if sl is None:
        return
    m = f < 1
    if label is not None:
        cv.paint(sl, m, label=label, clip=False)
    cv.paint(sl, m, tissue="cortical_bone", clip=False, block=True, over=_SOFT)
    cv.paint(sl, f < 1 - min(cortex / r_mm, 0.9), tissue=marrow, clip=False)


def _squircle_radius(sq, cu, cv_):
    """Boundary of u^2 + v^2 - sq u^2 v^2 = 1 along the unit direction (cu, cv_)."""
    c = sq * (cu * cu) * (cv_ * cv_)
    with np.errstate(divide="ignore", invalid="ignore"):
        t2 = np.where(c > 1e-6, (1 - np.sqrt(np.clip(1 - 4 * c, 0, None))) / (2 * np.maximum(c, 1e-6)), 1.0)
    return np.sqrt(t2)


def cage_point(B: Body, z, phi, side: int, offset: float = 0.0):
    """Point on the body-cavity outline at height z, angle phi from the back (0) to the front (pi)."""
    ai, bi, yi = B.cavity(z)
    sq = B.skin(z)[3]
    t = _squircle_radius(sq, np.sin(phi), np.cos(phi))
    x = side * (ai * t + offset) * np.sin(phi)
    y = yi - (bi * t + offset) * np.cos(phi)
    return x, y


def paint_spine(cv: Canvas, B: Body) -> None:
    """Vertebral bodies with discs, canal, arches, spinous and transverse processes, sacrum, coccyx."""
    z_lo = B.lv("Co", 0.0) - 25
    sl = cv.box((-62, B.y_back - 5, z_lo), (62, B.y_back + 150, B.top + 40))
    if sl is None:
        return
    X, Y, Z = cv.xyz(sl)
    z = Z[0, 0, :].astype(np.float64)
    yv, rv = B.spine(z)
    names = list(B.levels)
    lo = np.array([B.levels[n][0] for n in names])
    hi = np.array([B.levels[n][1] for n in names])
    hit = (lo[None, :] <= z[:, None]) & (z[:, None] < hi[None, :])
    li = np.argmax(hit, axis=1)
    frac = (z - lo[li]) / (hi[li] - lo[li])
    kind = np.array([names[i][0] for i in li])
    top_c = B.levels["C3"][1]
    above = z >= top_c  # upper cervical spine: 16 mm units above C3
    kind[above] = "C"
    frac[above] = ((z[above] - top_c) % 16.0) / 16.0
    disc_frac = np.where(kind == "L", 0.24, np.where(kind == "T", 0.18, np.where(kind == "C", 0.22, 0.0)))
    disc = frac < disc_frac
    sacral = z < B.levels["S1"][1]
    below = z < B.lv("Co", 0.0) - 20

    f32 = lambda v: np.asarray(v, np.float32)[None, None, :]  # noqa: E731
    YV, RV = f32(yv), f32(rv)
    t = cv.tissue[sl]
    ins = cv.inside[sl]
    dy = Y - YV
    # vertebral bodies (oval, wider than deep) and discs
    e = (X / (1.2 * RV)) ** 2 + (dy / RV) ** 2
    inner = (X / (1.2 * RV - 1.2)) ** 2 + (dy / (RV - 1.2)) ** 2  # thin cortex
    col = ~f32(sacral).astype(bool) & ~f32(below).astype(bool)
    body = (e < 1) & col
    t[body] = T["cortical_bone"]
    t[body & (inner < 1)] = T["marrow"]
    t[body & (inner < 1.15) & f32(disc).astype(bool)] = T["disc"]
    # canal, arch (pedicles and laminae), spinous and transverse processes
    RC = 0.35 * RV + 4
    yc = YV - RV - RC - 1
    dc = np.sqrt(X ** 2 + (Y - yc) ** 2)
    FR = f32(frac)
    KT, KL = f32(kind == "T").astype(bool), f32(kind == "L").astype(bool)
    arch = (dc < RC + 4.5) & (Y < YV - 0.6 * RV) & col & (FR > 0.08)
    length = f32(np.where(kind == "L", 24.0, np.where(kind == "T", 20.0, 14.0)) * B.spine_r)
    along = np.clip((yc - RC - Y) / length, 0, 1)  # 0 at the lamina, 1 at the tip
    spinous = (np.abs(X) < 3.5 - 1.5 * along) & (Y < yc - RC) & (Y > yc - RC - length) & col
    ax_ = np.abs(X) - RC
    slope = np.where(KT, 0.6, 0.15)  # thoracic transverse processes point backwards to the ribs
    transverse = ((ax_ > 0) & (ax_ < length * np.where(KL, 1.15, 0.9)) & (np.abs(Y - (yc + 2 - slope * ax_)) < 3.5)
                  & col & (FR > 0.45) & (FR < 0.75))
    bone = arch | spinous | transverse
    t[bone] = T["cortical_bone"]
    canal = (dc < RC) & col
    t[canal] = T["canal"]
    # sacrum: a tilted wedge with alae, tapering to the coccyx; its canal runs posteriorly
    zs1 = B.lv("S1", 1.0)
    zco = B.lv("Co", 0.0)
    w = np.interp(z, [zco - 20, zco, B.lv("S4", 0.5), B.lv("S2", 0.5), zs1], [6, 12, 22, 48, 52]) * B.spine_r
    th = np.interp(z, [zco - 20, zco, zs1], [5, 7, 17]) * B.spine_r
    sac = f32(sacral & ~below).astype(bool)
    W, TH = f32(w), f32(th)
    bow = 0.25 * TH * (X / W) ** 2  # anterior surface concave
    es = (X / W) ** 2 + ((dy + bow) / TH) ** 2
    sacrum = (es < 1) & sac
    t[sacrum] = T["cortical_bone"]
    t[sacrum & (((X / (W - 3)) ** 2 + ((dy + bow) / (TH - 3)) ** 2) < 1)] = T["marrow"]
    t[sacrum & ((X ** 2 + (dy + 0.5 * TH) ** 2) < 25)] = T["canal"]
    ins[body | bone | canal | sacrum] = False


def paint_ribs(cv: Canvas, B: Body, rng: np.random.Generator) -> dict:
    """Twelve rib pairs along the cavity outline, costal cartilages and the sternum."""
    lv = B.lv
    s = B.s
    z_notch = lv("T2", 0.0)
    z_angle = lv("T4", 0.0)
    z_xb = lv("T9", 0.3)
    z_xtip = lv("T10", 0.4)
    fat_front = 0.6 * B.fat

    def sternum_y(z):
        return B.front(z) - fat_front - 4

    # Sternum: manubrium, body, xiphoid (half-width, thickness by height)
    zk = [z_xtip - 5, z_xtip, z_xb, z_angle, z_notch - 10, z_notch]
    wk = [3, 7, 14, 15, 24, 22]
    tk = [3, 6, 10, 11, 14, 13]
    st_jit = rng.uniform(0.9, 1.1, 2)
    ys = sternum_y(np.linspace(z_xtip - 6, z_notch + 2, 24))
    sl = cv.box((-30, float(ys.min()) - 25, z_xtip - 6), (30, float(ys.max()) + 5, z_notch + 2))
    if sl is not None:
        X, Y, Z = cv.xyz(sl)
        z = Z[0, 0, :].astype(np.float64)
        wz = np.interp(z, zk, wk) * st_jit[0] * s ** 0.5
        tz = np.interp(z, zk, tk) * st_jit[1]
        yc = sternum_y(z) - tz
        f = np.sqrt((X / wz[None, None, :]) ** 2 + ((Y - yc[None, None, :]) / tz[None, None, :]) ** 2)
        f = np.where((Z > z_xtip - 5) & (Z < z_notch), f, 9)
        _bone(cv, sl, f.astype(np.float32), 10.0, 2.0)

    def attach(n):
        if n == 1:
            return z_notch - 14
        if n == 2:
            return z_angle
        return z_angle - (n - 2) / 5.3 * (z_angle - z_xb)

    drops = np.array([35, 48, 60, 70, 80, 88, 95, 100, 100, 95, 70, 50], float) * B.hz
    ends = np.array([0.80, 0.78, 0.77, 0.76, 0.75, 0.74, 0.73, 0.71, 0.68, 0.64, 0.55, 0.42]) * math.pi
    r_rib = rng.uniform(4.5, 5.5) * s ** 0.3
    ribs = {}
    for n in range(1, 13):
        for side in (1, -1):
            jit = rng.uniform(-1, 1, 4)
            zn = lv(f"T{n}", 0.7)
            yv, rv = (float(v) for v in B.spine(zn))
            drop = drops[n - 1] * (1 + 0.08 * jit[0])
            phi_end = ends[n - 1] + 0.03 * jit[1]
            ai0 = float(B.cavity(zn)[0])
            phi1 = math.asin(min((rv + 42) / max(ai0, rv + 43), 0.95))
            phis = np.linspace(phi1, phi_end, 14)
            u = (phis - phi1) / (phi_end - phi1)
            zz = zn - drop * u ** 1.3 + 4 * np.sin(np.pi * u) * jit[2]
            x, y = cage_point(B, zz, phis, side, r_rib + 1.0)
            pts = [(side * (1.1 * rv + 3), yv - 0.3 * rv, zn), (side * (rv + 26), yv - rv - 12, zn + 2)]
            pts += list(zip(x, y, zz))
            path = catmull_rom(np.array(pts), 2.0)
            rad = np.full(len(path), r_rib) * np.interp(np.arange(len(path)), [0, len(path) - 1], [0.9, 1.15])
            if n == 1:
                rad *= 1.25
            sl, f = sweep(cv, path, rad)
            _bone(cv, sl, f, r_rib, 1.6)
            ribs[(n, side)] = path
            if n > 10:
                continue
            # costal cartilage to the sternum (1-7) or to the cartilage above (8-10)
            e = np.array(pts[-1])
            if n <= 7:
                za = attach(n)
                w = float(np.interp(za, zk, wk)) * s ** 0.5
                end = np.array((side * (w + 2), sternum_y(za) - np.interp(za, zk, tk), za))
            else:
                za = attach(7) - 14 * (n - 7)
                ax_, ay_ = cage_point(B, za, 0.83 * math.pi - 0.03 * (n - 7), side, r_rib)
                end = np.array((float(ax_), float(ay_), za))
            mid = 0.5 * (e + end)
            mx, my = cage_point(B, mid[2], 0.5 * (phi_end + 0.93 * math.pi), side, r_rib)
            mid[:2] = (float(mx), float(my))
            cpath = catmull_rom(np.array([e, mid, end]), 2.0)
            sl, f = sweep(cv, cpath, np.full(len(cpath), r_rib * 1.1))
            if sl is not None:
                cv.paint(sl, f < 1, tissue="cartilage", clip=False, block=True, over=_SOFT)
    return ribs


def paint_shoulders(cv: Canvas, B: Body, arms: list, rng: np.random.Generator) -> None:
    """Clavicles, scapulae, humeri (and forearm bones when the arms lie beside the trunk)."""
    lv = B.lv
    s = B.s
    z_notch = lv("T2", 0.0)
    fb = 0.35 * B.fat
    for side, shoulder, path, _ in arms:
        up = path[-1, 2] > shoulder[2] + 100
        jit = rng.uniform(-1, 1, 6)
        # clavicle: sternal end at the notch, lateral end at the acromion
        acrom = np.array((side * (B.a_chest * 0.82), shoulder[1] + 12, shoulder[2] + (38 if up else 14)))
        ctrl = []
        for x, dy, z in ((20, 0, z_notch + 6), (0.42 * B.a_chest, 4 * jit[0], z_notch + 14),
                         (0.68 * B.a_chest, -18, z_notch + 20 + (12 if up else 0))):
            ctrl.append((side * x, float(B.front(z)) - 0.5 * B.fat - 9 + dy, z))
        ctrl.append(acrom)
        sl, f, _ = tube(cv, rng, ctrl, 7.0 * s ** 0.3, 1.5)
        _bone(cv, sl, f, 7.0, 2.0)
        # scapula: a plate on the posterolateral chest wall, its spine, and the glenoid
        ang = math.radians(side * (24 + 6 * jit[1]))
        rot = np.array([[math.cos(ang), -math.sin(ang), 0], [math.sin(ang), math.cos(ang), 0], [0, 0, 1]])
        c = np.array((side * 0.55 * B.a_chest, B.y_back + fb + 32 + 3 * jit[2],
                      lv("T4", 0.5) + (25 if up else 0)))
        sl, f = ellipsoid(cv, rng, c, (44 * s ** 0.5, 3.5, 68 * B.hz), 0, 0.08, rot=rot)
        _bone(cv, sl, f, 4.0, 1.5)
        glen = np.array(shoulder) - np.array((side * 24, 6, 0))
        sl, f, _ = tube(cv, rng, [(side * 0.3 * B.a_chest, B.y_back + fb + 12, lv("T3", 0.4) + (25 if up else 0)),
                                  (side * 0.7 * B.a_chest, B.y_back + fb + 22, lv("T2", 0.7) + (30 if up else 0)),
                                  acrom - (0, 4, 2)], 5.5, 2)
        _bone(cv, sl, f, 5.5, 2.0)
        sl, f = ellipsoid(cv, rng, glen, (12, 14, 16), 10, 0.05)
        _bone(cv, sl, f, 12.0, 2.0)
        # humerus: head at the glenoid, shaft through the arm's axis
        r_head = 22 * s ** 0.3
        arc = np.r_[0, np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))]
        hlen = 290 * B.hz
        head = np.array(shoulder, float)
        sl, f = ellipsoid(cv, rng, head, (r_head,) * 3, 0, 0.02)
        _bone(cv, sl, f, r_head, 2.0)
        shaft = path[(arc > r_head * 0.5) & (arc < hlen)]
        if len(shaft) > 1:
            sl, f = sweep(cv, shaft, np.interp(np.arange(len(shaft)), [0, len(shaft) - 1], [14, 11]) * s ** 0.3)
            _bone(cv, sl, f, 11.0, 4.5, marrow="yellow_marrow")
        if not up:  # radius and ulna
            fore = path[(arc > hlen + 20) & (arc < hlen + 250 * B.hz)]
            for dx, dy in ((9, 4), (-9, -4)):
                if len(fore) > 1:
                    sl, f = sweep(cv, fore + np.array((dx, dy, 0)), np.full(len(fore), 6.5 * s ** 0.3))
                    _bone(cv, sl, f, 6.5, 2.5, marrow="yellow_marrow")


def paint_pelvis(cv: Canvas, B: Body, thighs: list, rng: np.random.Generator) -> None:
    """Iliac wings, acetabula, pubic rami and symphysis, ischia; femora with labelled heads."""
    s = B.s
    lv = B.lv
    hz = B.head
    hx = B.head_x
    y_head = B.y_head
    z_crest = lv("L4", 0.9)
    a_in = B.a_hip - 0.7 * B.fat * (1.2 if B.female else 1.0)
    for side in (1, -1):
        jit = rng.uniform(-1, 1, 6)
        # iliac wing: lower half of an ellipsoidal bowl, open anteromedially
        c = np.array((side * (hx - 5), y_head - 0.05 * B.b_hip, z_crest))
        rx = max(a_in - 22 - (hx - 5), 35)
        ry = 0.62 * B.b_hip
        rz = z_crest - (hz + 18)
        sl, f = ellipsoid(cv, rng, c, (rx, ry, rz), 4, 0.04, grow=0.0)
        if sl is not None:
            X, Y, Z = cv.xyz(sl)
            thick = 7.0 / min(rx, ry)
            keep = (Z < c[2]) & ((side * (X - c[0]) > -0.35 * rx) | (Y < c[1] - 0.25 * ry)) & (Y < c[1] + 0.75 * ry)
            shell = np.where(keep & (f > 1 - thick), f, 9).astype(np.float32)
            _bone(cv, sl, (shell - (1 - thick)) / thick, 7.0, 0.0)  # all cortex: the wing is thin
            cv.paint(sl, keep & (f < 1 - thick) & (f > 1 - 3 * thick), tissue="muscle", over=["visceral_fat"],
                     clip=False, block=True)  # iliacus lines the wing
        # acetabulum: socket around the femoral head
        r_h = rng.uniform(21, 26) * s ** 0.5
        hc = np.array((side * hx, y_head, hz))
        sl, f = ellipsoid(cv, rng, hc, (r_h + 11,) * 3, 0, 0.03)
        if sl is not None:
            X, Y, Z = cv.xyz(sl)
            sock = (f > (r_h + 1.5) / (r_h + 11)) & ((side * (X - hc[0]) < 0.35 * r_h) | (Z > hc[2] + 0.4 * r_h))
            _bone(cv, sl, np.where(sock, f, 9).astype(np.float32), r_h + 11, 3.0)
        # pubic rami to the symphysis, ischium down to the tuberosity
        y_sym = B.y_symphysis
        ctrl = [hc + (-side * 0.6 * r_h, 0.7 * r_h, 0.2 * r_h), (side * 0.55 * hx, y_sym - 8, hz - 8), (side * 7, y_sym, hz - 22)]
        sl, f, _ = tube(cv, rng, ctrl, 9.0 * s ** 0.3, 2)
        _bone(cv, sl, f, 9.0, 2.5)
        ctrl = [(side * 8, y_sym - 2, hz - 30), (side * 0.45 * hx, y_sym - 18, hz - 52),
                (side * (hx - 22), y_head - 38, hz - 50 + 4 * jit[0]), hc + (-side * 0.3 * r_h, -0.8 * r_h, -0.3 * r_h)]
        sl, f, _ = tube(cv, rng, ctrl, (8.5 * s ** 0.3, 13 * s ** 0.3), 2)
        _bone(cv, sl, f, 10.0, 2.5)
        sl, f = ellipsoid(cv, rng, (side * 10, y_sym - 3, hz - 26), (9, 10, 22), 5, 0.05)
        _bone(cv, sl, f, 9.0, 2.5)

        # femur: head (labelled), neck, trochanters, shaft along the thigh
        name = "Right Head of Femur" if side == 1 else "Left Head of Femur"
        sl, f = ellipsoid(cv, rng, hc, (r_h,) * 3, 0, 0.02)
        _bone(cv, sl, f, r_h, 2.5, label=name)
        gt = hc + (side * (r_h + 30), -8, -22)
        sl, f, _ = tube(cv, rng, [hc + (side * 0.5 * r_h, 0, -0.3 * r_h), gt - (side * 8, 0, -4)], 14 * s ** 0.3, 1)
        _bone(cv, sl, f, 14.0, 2.5)
        sl, f = ellipsoid(cv, rng, gt, (16, 20, 24), 8, 0.08)
        _bone(cv, sl, f, 16.0, 2.5)
        sl, f = ellipsoid(cv, rng, hc + (side * 12, -20, -62), (10, 10, 12), 8, 0.08)  # lesser trochanter
        _bone(cv, sl, f, 10.0, 2.5)
        tpath = [t for t in thighs if t[0] == side][0][1]
        below = tpath[tpath[:, 2] < hz - 55]
        if len(below) > 1:
            axis = below + np.array((side * (-0.1 * abs(below[0, 0]) + 12), 10, 0))
            pts = np.vstack([[gt + (-side * 10, 0, -25)], axis])
            shaft = catmull_rom(pts[:: max(1, len(pts) // 6)], 3.0)
            sl, f = sweep(cv, shaft, np.full(len(shaft), 14.0 * s ** 0.3))
            _bone(cv, sl, f, 14.0, 5.5, marrow="yellow_marrow")
        cv.notes.setdefault("femoral_heads", []).append(hc)
