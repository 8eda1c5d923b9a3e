"""Patient habitus, vertebral levels, scan protocol and the voxel grid.

World frame: RAS millimetres, x towards the patient's right, y anterior, z superior. The spine
runs along x = 0, the back lies on the table at y = y_back, z = 0 is the top of L1. Organs are
placed by vertebral level (liver dome at T9, kidneys T12-L3, bifurcation at L4, ...), so they
move together when the stature changes. The body spans from the lower neck to mid-thigh; the
field of view picks a slab of it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .geometry import Grid

_LEVELS: tuple[str, ...] = (("C3", "C4", "C5", "C6", "C7") + tuple(f"T{i}" for i in range(1, 13))
                            + tuple(f"L{i}" for i in range(1, 6)) + ("S1", "S2", "S3", "S4", "S5", "Co"))


def _level_height(name: str) -> float:
    """Vertebral body plus the disc below it (mm, average adult); sacral segments as projected."""
    if name[0] == "C":
        return 16.0
    if name[0] == "T":
        n = int(name[1:])
        return 22.0 if n <= 4 else 24.5 if n <= 8 else 27.0
    if name[0] == "L":
        return 36.0
    return 17.0 if name[0] == "S" else 22.0


class Body:
    """One patient: sex, size, vertebral levels and the outline profiles along z."""

    def __init__(self, rng: np.random.Generator, sex: str | None = None):
        female = rng.random() < 0.5
        if sex is not None:
            if sex not in ("female", "male"):
                raise ValueError(f"sex must be 'female' or 'male', got {sex!r}")
            female = sex == "female"
        self.female = bool(female)
        self.hz = rng.uniform(0.92, 1.08)  # stature (vertebral heights)
        self.W = rng.uniform(290.0, 390.0)  # abdominal width
        self.D = self.W * rng.uniform(0.68, 0.86)  # abdominal depth
        # Subcutaneous fat grows with the girth; the skeleton and organs follow the frame
        # (girth without fat), not the girth.
        self.fat = rng.uniform(6.0, 18.0) + (self.W - 290.0) * rng.uniform(0.12, 0.3)
        self.s = float(np.clip((self.W - 1.4 * self.fat) / 300.0, 0.85, 1.15))
        self.a_abd, self.b_abd = self.W / 2, self.D / 2
        self.a_chest = self.a_abd * rng.uniform(0.92, 1.03)
        self.b_chest = max(self.b_abd * rng.uniform(0.8, 1.0), 98.0)
        hip = rng.uniform(1.05, 1.18) if self.female else rng.uniform(0.98, 1.08)
        self.a_hip = self.a_abd * hip
        self.b_hip = self.b_abd * rng.uniform(0.85, 0.95)
        self.a_neck, self.b_neck = rng.uniform(52, 66) * self.s ** 0.5, rng.uniform(52, 62) * self.s ** 0.5
        self.wall = rng.uniform(8.0, 13.0)  # abdominal wall muscle
        self.square = rng.uniform(0.25, 0.6)  # squareness of the abdominal outline
        self.y_back = -self.b_abd
        self.breast = rng.uniform(0.4, 1.0) * (1.0 if self.female else 0.0)
        self.spine_r = rng.uniform(0.9, 1.1) * self.s ** 0.3

        # vertebral levels: name -> (bottom, top) z, L1 top at 0
        h = {n: _level_height(n) * self.hz * rng.uniform(0.95, 1.05) for n in _LEVELS}
        i1 = _LEVELS.index("L1")
        self.levels: dict[str, tuple[float, float]] = {}
        z = 0.0
        for n in reversed(_LEVELS[:i1]):
            self.levels[n] = (z, z + h[n])
            z += h[n]
        z = 0.0
        for n in _LEVELS[i1:]:
            self.levels[n] = (z - h[n], z)
            z -= h[n]

        lv = self.lv
        self.apex = lv("T1", 1.0) + rng.uniform(12, 28) * self.hz  # lung apices
        self.top = self.apex + 130.0
        self.dome_r = lv("T9", 0.5) + rng.uniform(-18, 12) * self.hz  # right hemidiaphragm dome
        self.dome_l = self.dome_r - rng.uniform(8, 25)
        self.head = lv("S1", 1.0) - rng.uniform(92, 112) * self.hz  # femoral head centres
        self.head_x = rng.uniform(82, 94) * self.s ** 0.5 * (1.06 if self.female else 1.0)
        self.y_head = self.y_back + self.b_hip * rng.uniform(0.9, 1.0)  # femoral head centres (y)
        self.crotch = self.head - rng.uniform(65, 85)
        self.bottom = self.head - 270.0
        self.fatty_liver = bool(rng.random() < 0.15)
        self.ascites = bool(rng.random() < 0.12)
        self.ascites_amount = rng.uniform(0.3, 1.0)

        a, b, ac, bc, ah, bh = self.a_abd, self.b_abd, self.a_chest, self.b_chest, self.a_hip, self.b_hip
        an, bn = self.a_neck, self.b_neck
        # Skin outline knots (z, half-width, half-depth, squareness, subcutaneous fat factor).
        self._skin = np.array(sorted([
            (self.top + 50, an, bn, 0.0, 0.35),
            (lv("T1", 1.0) + 28, an * 1.15, bn * 1.05, 0.0, 0.4),
            (lv("T1", 0.3), 0.80 * ac, 0.70 * bc, 0.2, 0.5),
            (lv("T3", 0.5), 0.93 * ac, 0.88 * bc, 0.25, 0.55),
            (lv("T6", 0.5), ac, bc, 0.3, 0.6),
            (lv("T10", 0.5), 0.5 * (ac + a), 0.5 * (bc + b), 0.35, 0.8),
            (lv("L1", 0.5), a, b, self.square, 1.0),
            (lv("L4", 0.5), a, 0.98 * b, self.square, 1.0),
            (lv("S1", 1.0), 0.5 * (a + ah), 0.5 * (b + bh), self.square, 1.05),
            (self.head, ah, bh, 0.5, 1.15 if self.female else 1.0),
            (self.crotch, 0.9 * ah, 0.85 * bh, 0.5, 1.1),
            (self.crotch - 60, 0.85 * ah, 0.8 * bh, 0.5, 1.0),
        ]), np.float64)
        # Body cavity knots (z, half-width, front y, back y): rib cage, abdomen, true pelvis.
        yb = self.y_back
        fb = 0.35 * self.fat  # fat on the back is thinner than in front
        front_c = yb + 2 * bc - 0.6 * self.fat - 16
        back_c = yb + fb + 34
        front_a = yb + 2 * b - self.fat - self.wall
        back_a = yb + fb + 30
        ai_c = ac - 0.5 * self.fat - 15
        ai_a = a - 0.7 * self.fat - self.wall
        self._cavity = np.array(sorted([
            (self.apex + 2, 6.0, yb + 0.55 * bc + 30, yb + fb + 40),
            (self.apex - 12, 0.33 * ai_c, yb + 0.75 * bc + 10, back_c + 4),
            (lv("T1", 0.0), 0.48 * ai_c, yb + 1.05 * bc, back_c + 2),
            (lv("T3", 0.5), 0.78 * ai_c, front_c - 10, back_c),
            (lv("T6", 0.5), 0.97 * ai_c, front_c, back_c),
            (lv("T10", 0.5), 0.5 * (ai_c + ai_a), 0.5 * (front_c + front_a), 0.5 * (back_c + back_a)),
            (lv("L1", 0.5), ai_a, front_a, back_a),
            (lv("L4", 0.5), ai_a, front_a, back_a),
            # false pelvis (iliac fossae) narrowing to the true pelvis below the brim
            (lv("L5", 0.5), 0.93 * ai_a, front_a, back_a + 6),
            (lv("S1", 1.0), 0.86 * ai_a, front_a, yb + fb + 55),
            (lv("S2", 0.5), 0.74 * ai_a, front_a - 0.04 * b, yb + fb + 50),
            (self.head + 40, 0.52 * ai_a, yb + b * 1.7, yb + fb + 45),
            (self.head, 0.36 * ai_a + 0.1 * self.head_x, yb + b * 1.55, yb + fb + 45),
            (self.head - 40, 0.25 * ai_a, yb + b * 1.2, yb + fb + 55),
            (self.head - 55, 1.0, yb + b * 1.1, yb + fb + 60),
        ]), np.float64)
        # Vertebral body centre (y) and radius along z.
        self._spine = np.array(sorted([
            (self.top + 50, yb + 85, 8.0), (lv("C7", 0.5), yb + 64, 9.5), (lv("T1", 0.5), yb + 60, 11.0),
            (lv("T6", 0.5), yb + 58, 13.0), (lv("T12", 0.5), yb + 70, 16.0), (lv("L3", 0.5), yb + 86, 19.0),
            (lv("L5", 0.5), yb + 80, 20.5), (lv("S1", 1.0), yb + 74, 20.0), (lv("S3", 0.5), yb + 50, 15.0),
            (lv("Co", 0.5), yb + 40, 8.0), (lv("Co", 0.0) - 40, yb + 40, 6.0),
        ]), np.float64)
        self._spine[:, 1] += fb * 0.8
        self._spine[:, 2] *= self.spine_r

    # -- levels and profiles -----------------------------------------------------------------

    def lv(self, name: str, frac: float = 0.5) -> float:
        """z of a vertebral level: frac 0 = bottom of the body+disc unit, 1 = top."""
        lo, hi = self.levels[name]
        return lo + frac * (hi - lo)

    def skin(self, z):
        """(half-width, half-depth, centre y, squareness, fat thickness) of the trunk at z."""
        k = self._skin
        z = np.asarray(z, np.float64)
        a, b, sq, ff = (np.interp(z, k[:, 0], k[:, i]) for i in (1, 2, 3, 4))
        # The neck lifts off the table (head rest); the trunk's back lies on it.
        lift = np.clip((z - self.lv("T1", 0.6)) / 90.0, 0, 1) * 25.0
        yc = self.y_back + b + lift
        return a, b, yc, sq, ff * self.fat

    def cavity(self, z):
        """(half-width, half-depth, centre y) of the body cavity (rib cage, abdomen, pelvis)."""
        k = self._cavity
        z = np.asarray(z, np.float64)
        ai = np.interp(z, k[:, 0], k[:, 1])
        front = np.interp(z, k[:, 0], k[:, 2])
        back = np.interp(z, k[:, 0], k[:, 3])
        return ai, np.maximum((front - back) / 2, 1.0), (front + back) / 2

    def spine(self, z):
        """(y of the vertebral body centre, body radius) at z."""
        k = self._spine
        z = np.asarray(z, np.float64)
        return np.interp(z, k[:, 0], k[:, 1]), np.interp(z, k[:, 0], k[:, 2])

    @property
    def y_symphysis(self) -> float:
        return self.y_back + 2 * self.b_hip - 0.8 * self.fat - 22

    def front(self, z) -> np.ndarray:
        """y of the skin in the anterior midline at z."""
        _, b, yc, _, _ = self.skin(z)
        return yc + b

    def diaphragm(self, X, Y):
        """z of the diaphragm surface over (X, Y): two domes, lower centrally and posteriorly;
        the posterior costophrenic recesses reach lowest laterally, not beside the spine (where
        the crura and adrenal glands lie)."""
        a, bc = self.a_chest, self.b_chest
        yc = self.y_back + bc
        post = np.clip(-(Y - yc) / bc, 0, None)
        lat = np.clip((np.abs(X) - 30) / (0.4 * a), 0.2, 1.0)
        out = None
        for xd, zd in ((0.42 * a, self.dome_r), (-0.45 * a, self.dome_l)):
            dx = (X - xd) / (0.62 * a)
            dy = (Y - (yc + 0.1 * bc)) / (0.95 * bc)
            z = zd - 70.0 * dx * dx - 55.0 * dy * dy
            out = z if out is None else np.maximum(out, z)
        return out - 45.0 * post * post * lat


# --------------------------------------------------------------------------------------------
# scan protocol


FIELDS_OF_VIEW: dict[str, float] = {  # name -> probability of a random phantom
    "chest": 0.08,
    "chest_abdomen": 0.10,
    "chest_abdomen_pelvis": 0.27,
    "abdomen_pelvis": 0.25,
    "abdomen": 0.10,
    "upper_abdomen": 0.12,
    "trunk_thighs": 0.08,
}
PHASE_P: dict[str, float] = {"non_contrast": 0.22, "arterial": 0.23, "portal_venous": 0.55}


@dataclass
class Protocol:
    fov: str
    phase: str
    oral_contrast: bool
    arms: str  # "up" (raised above the head) or "down" (beside the trunk)
    z_range: tuple[float, float]  # scanned slab, world z (mm)
    fov_xy: float  # reconstruction field of view (mm), may be narrower than the body
    centre_xy: tuple[float, float]  # reconstruction centre (world mm)

    def as_dict(self) -> dict:
        return {"fov": self.fov, "phase": self.phase, "oral_contrast": self.oral_contrast, "arms": self.arms,
                "z_range": tuple(round(float(v), 1) for v in self.z_range), "fov_xy": round(float(self.fov_xy), 1),
                "centre_xy": tuple(round(float(v), 1) for v in self.centre_xy)}


def draw_protocol(rng: np.random.Generator, body: Body, fov: str | None = None, phase: str | None = None,
                  oral_contrast: bool | None = None, arms: str | None = None) -> Protocol:
    """Random protocol; every draw happens whatever is overridden, so overrides change only
    what they name."""
    names = list(FIELDS_OF_VIEW)
    d_fov = names[int(rng.choice(len(names), p=list(FIELDS_OF_VIEW.values())))]
    d_phase = list(PHASE_P)[int(rng.choice(len(PHASE_P), p=list(PHASE_P.values())))]
    d_oral = bool(rng.random() < 0.3)
    d_arms = "up" if rng.random() < 0.7 else "down"
    j = rng.uniform(0, 1, 2)
    mode, fit, fixed, tight = rng.random(), rng.uniform(1.03, 1.18), rng.uniform(360, 500), rng.uniform(0.8, 0.97)
    cap = rng.uniform(470, 520)
    off = rng.uniform(-1, 1, 2)

    fov = fov or d_fov
    phase = phase or d_phase
    oral = d_oral if oral_contrast is None else bool(oral_contrast)
    arms = arms or d_arms
    if fov not in FIELDS_OF_VIEW:
        raise ValueError(f"unknown field of view {fov!r}; known: {sorted(FIELDS_OF_VIEW)}")
    if phase not in PHASE_P:
        raise ValueError(f"unknown phase {phase!r}; known: {sorted(PHASE_P)}")
    if arms not in ("up", "down"):
        raise ValueError(f"arms must be 'up' or 'down', got {arms!r}")

    lv = body.lv
    sym_low = body.head - 45
    top_chest = body.apex + 15 + 40 * j[0]
    top_abd = body.dome_r + 12 + 40 * j[0]
    lo, hi = {
        "chest": (lv("L1", 0.5) - 30 + 60 * j[1], top_chest),
        "chest_abdomen": (lv("L4", 0.5) - 25 + 45 * j[1], top_chest),
        "chest_abdomen_pelvis": (sym_low - 5 - 35 * j[1], top_chest),
        "abdomen_pelvis": (sym_low - 5 - 35 * j[1], top_abd),
        "abdomen": (lv("L5", 0.5) - 20 + 40 * j[1], top_abd),
        "upper_abdomen": (lv("L3", 0.5) - 30 + 50 * j[1], top_abd - 10),
        "trunk_thighs": (body.head - 180 - 60 * j[1], top_chest + 10),
    }[fov]

    # Reconstruction field of view: fitted to the body (capped like a scanner's), a fixed
    # clinical size, or tight (the body is truncated at the edges).
    width = 2 * max(body.a_abd, body.a_chest, body.a_hip) + (2 * (20 + 2 * 50 * body.s) if arms == "down" else 0)
    depth = 2 * body.b_abd + 40
    if mode < 0.55:
        fov_xy = min(max(width, depth) * fit, cap)
    elif mode < 0.85:
        fov_xy = fixed
    else:
        fov_xy = 2 * max(body.a_abd, body.a_chest) * tight
    cx = off[0] * 0.06 * fov_xy
    cy = body.y_back + body.b_abd * 0.95 + off[1] * 0.05 * fov_xy
    return Protocol(fov, phase, oral, arms, (float(lo), float(hi)), float(fov_xy), (float(cx), float(cy)))


_SLICE_MM = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)


def make_grid(rng: np.random.Generator, proto: Protocol, shape, spacing) -> Grid:
    """Voxel grid over the protocol's slab: shape and/or spacing given, or a random clinical grid."""
    fov_xy = proto.fov_xy
    zlo, zhi = proto.z_range
    fov_z = zhi - zlo
    sxy_r, sz_choice = rng.uniform(0.65, 0.95), rng.random()
    if spacing is not None:
        sp = (float(spacing),) * 3 if np.isscalar(spacing) else tuple(float(s) for s in spacing)
    if shape is not None:
        shp = tuple(int(s) for s in shape)
        if spacing is None:
            sxy = fov_xy / max(shp[0], shp[1])
            sp = (sxy, sxy, fov_z / shp[2])
    else:
        if spacing is None:
            sxy = min(max(fov_xy / 512, 0.62 + 0.1 * sxy_r), 0.98)  # 512 columns up to a 500 mm FOV
            # thin slices only where the slab stays below ~500 slices (memory)
            ok = [s for s in _SLICE_MM if fov_z / s <= 500] or [_SLICE_MM[-1]]
            sp = (sxy, sxy, float(ok[int(sz_choice * len(ok))]))
        shp = tuple(int(math.ceil(f / s)) for f, s in zip((fov_xy, fov_xy, fov_z), sp))
    if len(shp) != 3 or min(shp) < 1 or min(sp) <= 0:
        raise ValueError(f"bad grid shape={shp} spacing={sp}")
    cx, cy = proto.centre_xy
    zc = (zlo + zhi) / 2
    origin = (cx + (shp[0] - 1) * sp[0] / 2, cy + (shp[1] - 1) * sp[1] / 2, zc - (shp[2] - 1) * sp[2] / 2)
    return Grid(shp, sp, origin)
