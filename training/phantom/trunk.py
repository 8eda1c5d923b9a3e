"""Body outline: trunk with subcutaneous fat and muscle wall, neck, breasts, thighs, arms, and
the curved CT table with its mattress. None of it is labelled."""
from __future__ import annotations

import numpy as np

from .body import Body, Protocol
from .geometry import Canvas, catmull_rom, ellipsoid, sweep
from .tissues import T


def _squircle(X, Y, a, b, yc, sq):
    """< 1 inside the rounded rectangle u^2 + v^2 - sq u^2 v^2 = 1 (|u|, |v| <= 1); the max
    removes the curve's far branches, where sq u^2 v^2 outgrows u^2 + v^2."""
    u2 = (X / a) ** 2
    v2 = ((Y - yc) / b) ** 2
    q = u2 + v2 - sq * u2 * v2
    return np.maximum(np.maximum(q, u2, out=q), v2, out=q)


def paint_trunk(cv: Canvas, B: Body, rng: np.random.Generator) -> None:
    """Skin, subcutaneous fat, muscle and the body cavity, slab by slab (cache-sized chunks)."""
    g = cv.grid
    ph = rng.uniform(0, 2 * np.pi, 2)
    fr = rng.uniform(1.0 / 260, 1.0 / 140, 2)
    full = tuple(slice(0, n) for n in g.shape)
    X, Y, _ = cv.xyz(full)
    zs = g.coords(2, full[2]).astype(np.float64)
    a, b, yc, sq, F = B.skin(zs)
    a = a * (1 + 0.03 * np.sin(zs * fr[0] * 2 * np.pi + ph[0]))
    b = b * (1 + 0.025 * np.sin(zs * fr[1] * 2 * np.pi + ph[1]))
    ai, bi, yi = B.cavity(zs)
    trunk_z = zs > B.crotch - 15  # below the crotch only the thighs remain
    # crotch: the trunk's bottom is rounded into the buttocks
    a = np.where(zs < B.crotch + 25, a * np.sqrt(np.clip((zs - B.crotch + 15) / 40, 0.05, 1)), a)
    pelvic = (zs > B.head - 45) & (zs < B.head + 45)
    f = lambda v: v.astype(np.float32)[None, None, :]  # noqa: E731
    chunk = max(1, int(4e6 // (g.shape[0] * g.shape[1])))
    fat, muscle, vfat = T["fat"], T["muscle"], T["visceral_fat"]
    for k0 in range(0, g.shape[2], chunk):
        ks = slice(k0, min(k0 + chunk, g.shape[2]))
        if not trunk_z[ks].any():
            continue
        A, Bb, YC, SQ, FF = f(a[ks]), f(b[ks]), f(yc[ks]), f(sq[ks]), f(F[ks])
        skin = (_squircle(X, Y, A, Bb, YC, SQ) < 1) & (Y > np.float32(B.y_back)) & f(trunk_z[ks]).astype(bool)
        # fat: thick in front, thinner laterally, thin on the back
        under = _squircle(X, Y, A - 0.7 * FF, Bb - 0.675 * FF, YC - 0.325 * FF, SQ) < 1
        cav = _squircle(X, Y, f(ai[ks]), f(bi[ks]), f(yi[ks]), SQ) < 1
        t = cv.tissue[:, :, ks]
        t[skin] = fat
        t[skin & under] = muscle
        inside = skin & under & cav
        if pelvic[ks].any():
            # obturator internus and levator ani line the true pelvis
            wall = f(np.where(pelvic[ks], 9.0, 0.0))
            lining = _squircle(X, Y, f(ai[ks]) - wall, f(bi[ks]) - 0.5 * wall, f(yi[ks]) + 0.5 * wall, SQ) >= 1
            inside &= ~lining
        t[inside] = vfat
        cv.inside[:, :, ks] = inside


def paint_limbs(cv: Canvas, B: Body, proto: Protocol, rng: np.random.Generator) -> dict:
    """Thighs, breasts and arms (soft tissue only; bones in skeleton.py). Returns the arm
    and thigh axes for the skeleton."""
    s = B.s
    lv = B.lv
    out: dict = {}
    # Thighs: on the table, touching medially; fat layer over a muscle core.
    thighs = []
    for side in (1, -1):
        r0 = 0.5 * B.a_hip * rng.uniform(0.95, 1.05)
        r1 = r0 * rng.uniform(0.72, 0.85)
        xt = side * 0.5 * B.a_hip
        ctrl = np.array([(xt, B.y_back + r0, B.crotch + 70), (xt * 0.97, B.y_back + r0 * 0.98, B.crotch - 40),
                         (xt * 0.9, B.y_back + r1, B.bottom - 10)])
        path = catmull_rom(ctrl, 3.0)
        rad = np.interp(path[:, 2], [B.bottom - 10, B.crotch - 40, B.crotch + 70], [r1, r0 * 0.98, r0])
        thighs.append((side, path, rad))
        sl, fld = sweep(cv, path, rad)
        if sl is None:
            continue
        Y = cv.xyz(sl)[1]
        body = (fld < 1) & (Y > B.y_back)
        fat_t = 0.8 * B.fat * (1.25 if B.female else 1.0)
        cv.paint(sl, body & (cv.tissue[sl] == T["air"]), tissue="fat", clip=False)
        core = body & (fld < 1 - fat_t / rad.mean()) & np.isin(cv.tissue[sl], [T["air"], T["fat"]])
        cv.paint(sl, core, tissue="muscle", clip=False)
    out["thighs"] = thighs

    # Female breasts over the pectorals.
    for side in (1, -1):
        rb = (45 + 35 * B.breast) * s ** 0.5
        proj = (20 + 55 * B.breast) * (0.6 + 0.4 * B.fat / 42)
        c = np.array((side * 0.48 * B.a_chest, B.front(lv("T5", 0.3)) - 0.25 * proj, lv("T5", 0.3) - 10))
        sl, fld = ellipsoid(cv, rng, c, (rb, proj, rb * 0.9), 8, 0.06)  # drawn for both sexes
        if sl is not None and B.breast > 0:
            Y = cv.xyz(sl)[1]
            m = (fld < 1) & (Y > c[1] - 0.2 * proj)
            cv.paint(sl, m, tissue="fat", clip=False, over=["air", "fat"])
            cv.paint(sl, m & (fld < 0.75), tissue="breast", clip=False, over=["fat"])

    out["arms"] = _arms(cv, B, proto, rng)
    return out


def _arms(cv: Canvas, B: Body, proto: Protocol, rng) -> list:
    """Arms beside the trunk or raised above the head: (side, shoulder, path, radius) per arm."""
    s = B.s
    lv = B.lv
    arms = []
    r_up = rng.uniform(40, 52) * s ** 0.6 * (0.8 + 0.4 * B.fat / 42)
    gap = rng.uniform(-5, 25)
    lift = rng.uniform(1.0, 1.3)
    spread = rng.uniform(-15, 25)
    for side in (1, -1):
        jit = rng.normal(0, 6, (5, 3))
        zs = lv("T1", 0.2)
        a_s = B.skin(zs)[0]
        shoulder = np.array((side * (B.a_chest * 0.88), B.y_back + 0.95 * B.b_chest, zs))
        if proto.arms == "down":
            pts, rads = [shoulder], [r_up * 1.1]
            for z, rr in ((lv("T6"), r_up), (lv("L1", 0.8), r_up * 0.8), (lv("L4"), r_up * 0.75),
                          (B.head + 40, r_up * 0.55)):
                a_z = float(B.skin(z)[0])
                pts.append((side * (a_z + gap + rr + 0.02 * spread * abs(z - zs) / 10), B.y_back + rr * lift, z))
                rads.append(rr)
            ctrl = np.array(pts) + jit
            ctrl[0] = shoulder
        else:
            an = B.a_neck
            top = B.top + 120
            ctrl = np.array([shoulder, (side * (a_s * 0.95 + 10), shoulder[1] + 5, zs + 60),
                             (side * (an + r_up + 25 + spread), B.y_back + B.b_chest + 10, B.top + 10),
                             (side * (an + r_up + 30 + spread), B.y_back + B.b_chest + 20, top)]) + jit[:4]
            ctrl[0] = shoulder
            rads = [r_up * 1.15, r_up * 1.05, r_up, r_up * 0.85]
        path = catmull_rom(ctrl, 3.0)
        seg = np.r_[0, np.cumsum(np.linalg.norm(np.diff(ctrl, axis=0), axis=1))]
        arc = np.r_[0, np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))]
        rad = np.interp(arc / arc[-1], seg / seg[-1], rads)
        arms.append((side, shoulder, path, rad))
        sl, fld = sweep(cv, path, rad)
        if sl is None:
            continue
        Y = cv.xyz(sl)[1]
        m = (fld < 1) & (Y > B.y_back)
        cv.paint(sl, m, tissue="fat", clip=False, over=["air"])
        fat_a = 0.3 * B.fat + 4
        cv.paint(sl, m & (fld < 1 - fat_a / rad.mean()), tissue="muscle", clip=False, over=["air", "fat"])
    return arms


def paint_table(cv: Canvas, B: Body, rng: np.random.Generator) -> None:
    """Curved carbon-fibre table with a foam core, and the mattress the patient lies on."""
    m_thick = rng.uniform(25, 60)
    R = rng.uniform(500, 900)
    half = rng.uniform(200, 240)
    shell = rng.uniform(3, 6)
    core = rng.uniform(25, 45)
    y0 = B.y_back - m_thick  # table top under the spine
    sl = cv.box((-half - 10, y0 - shell * 2 - core - 5, -1e5), (half + 10, B.y_back + 80, 1e5))
    if sl is None:
        return
    X, Y, _ = cv.xyz(sl)
    X, Y = X[:, :, 0], Y[:, :, 0]
    top = y0 + X ** 2 / (2 * R)  # concave: rises towards the sides
    inside_w = np.abs(X) < half
    layers = np.zeros(X.shape[:1] + Y.shape[1:], np.uint8)
    d = top - Y  # depth below the table top
    layers[inside_w & (d >= 0) & (d < shell)] = T["table"]
    layers[inside_w & (d >= shell) & (d < shell + core)] = T["table_core"]
    layers[(np.abs(X) < half * 0.8) & (d >= shell + core) & (d < 2 * shell + core)] = T["table"]
    layers[(np.abs(X) < half - 15) & (d < 0) & (d > -m_thick)] = T["mattress"]
    t = cv.tissue[sl]
    lay = np.broadcast_to(layers[:, :, None], t.shape)
    put = (lay > 0) & (t == T["air"])
    t[put] = lay[put]
    cv.notes["table_top"] = y0
