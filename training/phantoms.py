"""Synthetic abdominal CT phantoms with 45-class labels.

A phantom is built in patient RAS millimetres around the body centre and painted onto a voxel
grid whose array axes run towards patient Left, Posterior and Superior (the DICOM axial order:
array[i, j, k] is column i, row j of slice k), so the DICOM writer needs no reslicing and the
NIfTI affine is diagonal with negative x/y entries.

Shapes are analytic (deformed ellipsoids, tubes swept along jittered paths) and are evaluated
only inside their bounding boxes, which keeps a 512x512x300 study to a few seconds. Label values
are 1-based indices of the class catalog; tissue HU values are drawn per phantom so that no two
phantoms share the same contrast.

Only numpy/scipy (and pydicom/nibabel in the writers) are imported: the DICOM node's tests use
this module to make studies and must not pay for torch or MONAI.
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

# Tumour types, their parent organ(s) and which are supervised in Stage 2 (mirrors the paper:
# liver and kidney tumours come with labels, pancreas/colon/lung tumours are zero-shot).
TUMOUR_TYPES: dict[str, dict] = {
    "liver_tumor": {"cls": "Liver Tumor", "parents": ("Liver",)},
    "kidney_tumor": {"cls": "Kidney Tumor", "parents": ("Right Kidney", "Left Kidney")},
    "kidney_cyst": {"cls": "Kidney Cyst", "parents": ("Right Kidney", "Left Kidney")},
    "pancreas_tumor": {"cls": "Pancreas Tumor", "parents": ("Pancreas",)},
    "colon_tumor": {"cls": "Colon Tumor", "parents": ("Colon",)},
    "lung_tumor": {"cls": "Lung Tumor", "parents": ("Right Lung", "Left Lung")},
}
SEEN_TUMOURS: tuple[str, ...] = ("liver_tumor", "kidney_tumor", "kidney_cyst")
UNSEEN_TUMOURS: tuple[str, ...] = ("pancreas_tumor", "colon_tumor", "lung_tumor")

# Organs the phantom paints (catalog names). Adrenal glands, hepatic vessels and the celiac
# trunk are left out: at the 3 mm demo spacing they would be a handful of voxels.
PHANTOM_ORGANS: tuple[str, ...] = (
    "Spleen", "Right Kidney", "Left Kidney", "Gall Bladder", "Esophagus", "Liver", "Stomach",
    "Aorta", "Postcava", "Portal Vein and Splenic Vein", "Pancreas", "Duodenum", "Right Lung",
    "Left Lung", "Colon", "Intestine", "Rectum", "Bladder", "Prostate", "Left Head of Femur",
    "Right Head of Femur",
)

# Tissue ids (image appearance), independent of label values.
_T = {name: i for i, name in enumerate((
    "air", "fat", "muscle", "visceral_fat", "cortical_bone", "marrow", "disc", "canal", "lung",
    "lung_vessel", "heart", "liver", "gallbladder", "spleen", "kidney_cortex", "kidney_medulla",
    "gi_wall", "fluid", "gas", "stool", "pancreas", "portal_vein", "aorta", "ivc", "esophagus",
    "bowel_wall", "bladder", "prostate", "table", "liver_lesion", "lesion_rim", "kidney_tumor",
    "necrosis", "cyst", "pancreas_lesion", "colon_lesion", "lung_nodule",
))}

# (mean HU, per-phantom jitter, texture amplitude)
_HU = {
    "air": (-1000, 0, 0), "fat": (-100, 12, 6), "muscle": (50, 8, 6),
    "visceral_fat": (-90, 12, 8), "cortical_bone": (750, 150, 40), "marrow": (250, 60, 30),
    "disc": (90, 15, 5), "canal": (20, 8, 3), "lung": (-860, 30, 25), "lung_vessel": (-200, 100, 30),
    "heart": (45, 10, 5), "liver": (110, 20, 8), "gallbladder": (10, 8, 3), "spleen": (115, 20, 6),
    "kidney_cortex": (185, 30, 8), "kidney_medulla": (135, 25, 8), "gi_wall": (70, 15, 6),
    "fluid": (15, 8, 4), "gas": (-950, 30, 20), "stool": (-120, 60, 80), "pancreas": (95, 15, 8),
    "portal_vein": (165, 30, 5), "aorta": (200, 50, 5), "ivc": (140, 25, 5), "esophagus": (50, 10, 5),
    "bowel_wall": (95, 20, 10), "bladder": (8, 6, 2), "prostate": (45, 8, 4), "table": (250, 50, 5),
    "liver_lesion": (55, 15, 8), "lesion_rim": (140, 20, 6), "kidney_tumor": (105, 20, 12),
    "necrosis": (30, 10, 6), "cyst": (8, 6, 2), "pancreas_lesion": (45, 10, 6),
    "colon_lesion": (60, 12, 8), "lung_nodule": (35, 15, 10),
}

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
    tumours: list[str] = field(default_factory=list)  # tumour types actually placed

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(np.linalg.norm(self.affine[:3, a])) for a in range(3))


def make_phantom(
    seed: int,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | float | None = None,
    tumour_types: Iterable[str] | None = None,
    tumour_prob: float = 0.6,
    noise: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate one phantom: (image HU float32, label uint8 catalog indices, affine 4x4).

    shape/spacing: give both for a fixed grid centred on the body (parts may fall outside), one
    of them to derive the other from the field of view, or neither for a random clinical grid.
    tumour_types: keys of TUMOUR_TYPES to draw from (default: all); each appears with
    probability tumour_prob.
    """
    ph = generate(seed, shape, spacing, tumour_types, tumour_prob, noise)
    return ph.image, ph.label, ph.affine


def generate(
    seed: int,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | float | None = None,
    tumour_types: Iterable[str] | None = None,
    tumour_prob: float = 0.6,
    noise: bool = True,
) -> Phantom:
    """Like make_phantom, returning a Phantom with the list of tumour types it contains."""
    # Separate streams: the anatomy and the tumour draws do not depend on the grid size (the
    # texture fields consume a grid-dependent amount of randomness).
    r_body, r_anat, r_tum, r_img = (np.random.default_rng(s) for s in
                                    np.random.SeedSequence([int(seed), 0x0D5A]).spawn(4))
    body = _Body(r_body)
    grid = _make_grid(r_body, body, shape, spacing)
    canvas = _Canvas(grid)
    hu = {k: v[0] + r_body.uniform(-v[1], v[1]) for k, v in _HU.items()}
    _paint_anatomy(canvas, body, r_anat)
    types = list(TUMOUR_TYPES) if tumour_types is None else list(tumour_types)
    for t in types:
        if t not in TUMOUR_TYPES:
            raise ValueError(f"unknown tumour type {t!r}; known: {sorted(TUMOUR_TYPES)}")
    placed = _paint_tumours(canvas, body, r_tum, types, tumour_prob)
    image = _render(canvas, r_img, hu, noise)
    return Phantom(image=image, label=canvas.label, affine=grid.affine, seed=int(seed), tumours=placed)


# --------------------------------------------------------------------------------------------
# geometry


class _Body:
    """Patient habitus: size of the trunk and the anatomy's z extent (mm)."""

    def __init__(self, rng: np.random.Generator):
        self.W = rng.uniform(300.0, 380.0)  # left-right width
        self.D = self.W * rng.uniform(0.66, 0.80)  # antero-posterior depth
        self.L = rng.uniform(390.0, 450.0)  # femoral heads .. lung bases
        self.a, self.b = self.W / 2, self.D / 2
        self.s = self.W / 340.0  # organ scale follows habitus
        self.z0 = -self.L / 2
        self.male = bool(rng.random() < 0.5)
        self.fat = rng.uniform(10.0, 35.0)
        self.wall = rng.uniform(7.0, 12.0)

    def z(self, zn: float) -> float:
        return self.z0 + zn * self.L


@dataclass
class _Grid:
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]  # RAS mm of voxel (0,0,0)

    @property
    def affine(self) -> np.ndarray:
        a = np.diag([-self.spacing[0], -self.spacing[1], self.spacing[2], 1.0])
        a[:3, 3] = self.origin
        return a

    def coords(self, axis: int, sl: slice) -> np.ndarray:
        idx = np.arange(sl.start, sl.stop, dtype=np.float32)
        sign = -1.0 if axis < 2 else 1.0
        return (self.origin[axis] + sign * idx * self.spacing[axis]).astype(np.float32)


def _make_grid(rng, body: _Body, shape, spacing) -> _Grid:
    fov_xy = max(body.W, body.D) * rng.uniform(1.08, 1.3)
    fov_z = body.L * rng.uniform(0.95, 1.05)
    if spacing is not None:
        sp = (float(spacing),) * 3 if np.isscalar(spacing) else tuple(float(s) for s in spacing)
    if shape is not None:
        shp = tuple(int(s) for s in shape)
        if spacing is None:
            sxy = fov_xy / max(shp[0], shp[1])
            sp = (sxy, sxy, fov_z / shp[2])
    else:
        if spacing is None:
            sxy = rng.uniform(0.65, 0.95)
            sp = (sxy, sxy, float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0])))
        shp = (
            int(math.ceil(fov_xy / sp[0])),
            int(math.ceil(fov_xy / sp[1])),
            int(math.ceil(fov_z / sp[2])),
        )
    if len(shp) != 3 or min(shp) < 1 or min(sp) <= 0:
        raise ValueError(f"bad grid shape={shp} spacing={sp}")
    # Position jitter: the body is not always centred in the field of view.
    shift = rng.uniform(-0.04, 0.04, 3) * np.array([shp[0] * sp[0], shp[1] * sp[1], shp[2] * sp[2]])
    shift[1] += body.b * 0.05  # patients lie slightly posterior of the gantry centre
    origin = (
        (shp[0] - 1) * sp[0] / 2 + shift[0],
        (shp[1] - 1) * sp[1] / 2 + shift[1],
        -(shp[2] - 1) * sp[2] / 2 + shift[2],
    )
    return _Grid(shp, sp, origin)


class _Canvas:
    """Label and tissue volumes plus helpers to paint shapes inside bounding boxes."""

    def __init__(self, grid: _Grid):
        self.grid = grid
        self.label = np.zeros(grid.shape, np.uint8)
        self.tissue = np.zeros(grid.shape, np.uint8)
        self.inside = np.zeros(grid.shape, bool)  # body interior, organs are clipped to it
        self.idx = class_indices()

    def box(self, lo, hi) -> tuple[slice, slice, slice] | None:
        """Voxel slices covering the RAS box [lo, hi] (mm), or None if outside the grid."""
        g = self.grid
        out = []
        for ax in range(3):
            a = (lo[ax] - g.origin[ax]) / g.spacing[ax]
            b = (hi[ax] - g.origin[ax]) / g.spacing[ax]
            if ax < 2:  # index grows towards -x / -y
                a, b = -b, -a
            i0 = max(int(math.floor(a)), 0)
            i1 = min(int(math.ceil(b)) + 1, g.shape[ax])
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)

    def xyz(self, sl):
        g = self.grid
        return (
            g.coords(0, sl[0])[:, None, None],
            g.coords(1, sl[1])[None, :, None],
            g.coords(2, sl[2])[None, None, :],
        )

    def paint(self, sl, mask, label: str | None = None, tissue: str | None = None,
              clip: bool = True, within: int | None = None):
        if sl is None:
            return
        if clip:
            mask = mask & self.inside[sl]
        if within is not None:
            mask = mask & (self.label[sl] == within)
        if label is not None:
            self.label[sl][mask] = self.idx[label]
        if tissue is not None:
            self.tissue[sl][mask] = _T[tissue]


def _rotation(rng, max_deg: float) -> np.ndarray:
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _ellipsoid(cv: _Canvas, rng, centre, radii, max_rot: float = 15.0, wobble: float = 0.12):
    """Deformed ellipsoid: radius modulated by a few random low-order waves over direction."""
    c = np.asarray(centre, np.float32)
    r = np.asarray(radii, np.float32)
    rot = _rotation(rng, max_rot).astype(np.float32)
    # Half-extent of the rotated ellipsoid's bounding box along each world axis.
    ext = np.sqrt(((rot * r[None, :]) ** 2).sum(1)) * (1 + wobble) + 1.0
    sl = cv.box(c - ext, c + ext)
    if sl is None:
        return None, None
    X, Y, Z = cv.xyz(sl)
    dx, dy, dz = X - c[0], Y - c[1], Z - c[2]
    u = [(rot[0, k] * dx + rot[1, k] * dy + rot[2, k] * dz) / r[k] for k in range(3)]
    rho = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2) + 1e-6
    bound = np.ones_like(rho)
    for _ in range(3):
        f = rng.normal(0, 1.8, 3).astype(np.float32)
        bound += wobble / 3 * rng.uniform(0.5, 1.5) * np.cos(
            (f[0] * u[0] + f[1] * u[1] + f[2] * u[2]) / rho + rng.uniform(0, 2 * np.pi))
    return sl, rho < bound


def _catmull_rom(points: np.ndarray, step: float) -> np.ndarray:
    """Smooth path through control points, resampled every ~step mm."""
    p = np.vstack([points[:1], points, points[-1:]])
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        n = max(int(np.linalg.norm(p2 - p1) / step), 1)
        t = np.linspace(0, 1, n, endpoint=False)[:, None]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
    out.append(p[-2][None])
    return np.vstack(out)


def _tube(cv: _Canvas, rng, control, radius, jitter: float = 6.0):
    """Tube swept along a jittered smooth path; radius is a scalar or (start, end)."""
    ctrl = np.asarray(control, np.float64) + rng.normal(0, jitter, (len(control), 3))
    r0, r1 = (radius, radius) if np.isscalar(radius) else radius
    path = _catmull_rom(ctrl, step=max(min(r0, r1) / 2.5, 1.0))
    t = np.linspace(0, 1, len(path))
    rad = (r0 + (r1 - r0) * t) * (1 + 0.12 * np.sin(2 * np.pi * (rng.uniform(1, 3) * t + rng.uniform())))
    lo = (path - rad[:, None]).min(0)
    hi = (path + rad[:, None]).max(0)
    sl = cv.box(lo, hi)
    if sl is None:
        return None, None, path
    mask = np.zeros(tuple(s.stop - s.start for s in sl), bool)
    X, Y, Z = cv.xyz(sl)
    xs, ys, zs = X[:, 0, 0], Y[0, :, 0], Z[0, 0, :]
    for p, r in zip(path, rad):
        i = np.nonzero(np.abs(xs - p[0]) <= r)[0]
        j = np.nonzero(np.abs(ys - p[1]) <= r)[0]
        k = np.nonzero(np.abs(zs - p[2]) <= r)[0]
        if not (len(i) and len(j) and len(k)):
            continue
        sub = (slice(i[0], i[-1] + 1), slice(j[0], j[-1] + 1), slice(k[0], k[-1] + 1))
        d2 = ((xs[sub[0]] - p[0]) ** 2)[:, None, None] + ((ys[sub[1]] - p[1]) ** 2)[None, :, None] \
            + ((zs[sub[2]] - p[2]) ** 2)[None, None, :]
        mask[sub] |= d2 < r * r
    return sl, mask, path


def _smooth_field(rng, shape, cell_vox: Sequence[float]) -> np.ndarray:
    """Zero-mean unit-ish random field with correlation length ~cell_vox voxels.

    A coarse Gaussian grid upsampled by separable linear interpolation (gathers along one
    axis at a time, cheaper than ndimage.zoom on full CT grids).
    """
    coarse = tuple(max(int(math.ceil(n / c)) + 2, 2) for n, c in zip(shape, cell_vox))
    f = rng.standard_normal(coarse).astype(np.float32)
    for ax, (n, c) in enumerate(zip(shape, coarse)):
        pos = (np.arange(n, dtype=np.float32) + 0.5) * ((c - 1) / n)
        i0 = np.minimum(pos.astype(np.int64), c - 2)
        w = (pos - i0).astype(np.float32)
        wshape = [1] * 3
        wshape[ax] = n
        w = w.reshape(wshape)
        f = np.take(f, i0, axis=ax) * (1 - w) + np.take(f, i0 + 1, axis=ax) * w
    return f


# --------------------------------------------------------------------------------------------
# anatomy


def _paint_anatomy(cv: _Canvas, B: _Body, rng: np.random.Generator) -> None:
    a, b, s, z = B.a, B.b, B.s, B.z
    g = cv.grid
    full = tuple(slice(0, n) for n in g.shape)
    X, Y, Z = cv.xyz(full)

    # Trunk: a super-ellipse whose width breathes along z, flattened where it lies on the table.
    zn = (Z - B.z0) / B.L
    aa = a * (1 + 0.05 * np.sin(2 * np.pi * (zn * rng.uniform(0.6, 1.2) + rng.uniform())))
    bb = b * (1 + 0.04 * np.cos(2 * np.pi * (zn * rng.uniform(0.6, 1.2) + rng.uniform())))
    p = rng.uniform(2.1, 2.6)
    yb = np.maximum(Y, -0.92 * b)  # flat back
    q = np.abs(X / aa) ** p + np.abs(yb / bb) ** p
    body = q < 1.0
    inner_fat = (np.abs(X / (aa - B.fat)) ** p + np.abs(yb / (bb - B.fat * 0.8)) ** p) < 1.0
    inner = (np.abs(X / (aa - B.fat - B.wall)) ** p + np.abs(yb / (bb - B.fat * 0.8 - B.wall)) ** p) < 1.0
    body = body & (Y > -b * 1.02)
    cv.tissue[body] = _T["fat"]
    cv.tissue[inner_fat & body] = _T["muscle"]
    cv.tissue[inner & body] = _T["visceral_fat"]
    cv.inside[:] = inner & body
    del q, inner_fat, inner, yb, aa, bb, zn

    # Patient table below the back.
    ty = -b * 1.02 - rng.uniform(5, 25)
    sl = cv.box((-a * 1.2, ty - 12, -1e4), (a * 1.2, ty, 1e4))
    if sl is not None:
        cv.tissue[sl] = _T["table"]

    # Spine: vertebral bodies with discs, canal and posterior elements, all along z.
    sy = -b * 0.55
    sl = cv.box((-45 * s, sy - 75 * s, -1e4), (45 * s, sy + 25 * s, 1e4))
    if sl is not None:
        Xs, Ys, Zs = cv.xyz(sl)
        wob = 4 * np.sin(Zs / 60 + rng.uniform(0, 6))
        rv = 18 * s
        d_body = np.sqrt((Xs) ** 2 + (Ys - sy - wob) ** 2)
        vb = d_body < rv
        disc = (np.mod(Zs + rng.uniform(0, 35), 35 * s) < 7 * s)
        t = cv.tissue[sl]
        t[vb] = _T["marrow"]
        t[vb & (d_body > rv - 3)] = _T["cortical_bone"]
        t[vb & disc & (d_body < rv - 2)] = _T["disc"]
        cy = sy - rv - 12 * s + wob
        d_can = np.sqrt(Xs ** 2 + (Ys - cy) ** 2)
        arch = (d_can < 17 * s) & ~vb
        t[arch] = _T["cortical_bone"]
        t[d_can < 8 * s] = _T["canal"]
        spinous = (np.abs(Xs) < 5 * s) & (Ys < cy - 10 * s) & (Ys > cy - 45 * s) & ~disc
        t[spinous & (t != _T["air"])] = _T["cortical_bone"]
        # Organs never overwrite the spine: take it out of the paintable interior.
        cv.inside[sl][arch | vb | (d_can < 8 * s)] = False

    # Paraspinal and psoas muscles.
    for side in (-1, 1):
        sl, m, _ = _tube(cv, rng, [(side * 42 * s, sy - 35 * s, z(-0.1)), (side * 45 * s, sy - 35 * s, z(1.1))],
                         26 * s, 2)
        cv.paint(sl, m, tissue="muscle")
        sl, m, _ = _tube(cv, rng, [(side * 28 * s, sy + 5, z(0.62)), (side * 40 * s, sy + 10, z(0.4)),
                                   (side * 60 * s, sy + 25, z(0.18))], (8 * s, 22 * s), 2)
        cv.paint(sl, m, tissue="muscle")

    # Pelvic bones: iliac wings as thin tilted shells above the femoral heads.
    for side in (-1, 1):
        c = (side * 0.55 * a, -0.2 * b, z(0.22))
        sl, outer = _ellipsoid(cv, rng, c, (0.32 * a, 0.5 * b, 0.13 * B.L), 8, 0.04)
        if sl is not None:
            inner_ = ndimage.binary_erosion(outer, iterations=max(1, int(round(7 / g.spacing[0]))))
            Xs = cv.xyz(sl)[0]
            shell = outer & ~inner_ & (side * Xs > side * c[0] - 0.1 * a)
            cv.paint(sl, shell, tissue="cortical_bone")

    # Lungs: domes rising towards the middle; the right dome sits higher over the liver.
    for name, side, lift in (("Right Lung", 1, 0.02), ("Left Lung", -1, 0.0)):
        cx, cy = side * 0.46 * a, -0.05 * b
        rx, ry = 0.42 * a, 0.8 * b
        sl = cv.box((cx - rx, cy - ry, z(0.7)), (cx + rx, cy + ry, z(1.0) + 200))
        if sl is None:
            continue
        Xs, Ys, Zs = cv.xyz(sl)
        e = ((Xs - cx) / rx) ** 2 + ((Ys - cy) / ry) ** 2
        dome = z(0.80 + lift + rng.uniform(-0.02, 0.02)) + 0.14 * B.L * np.clip(1 - e, 0, 1) \
            - 0.04 * B.L * (Ys < cy - 0.3 * ry)  # costophrenic recess reaches lower posteriorly
        m = (e < 1) & (Zs > dome)
        cv.paint(sl, m, name, "lung")
        # Bronchovascular tree as scattered bright specks.
        vessels = (_smooth_field(rng, m.shape, [3, 3, 3]) > 1.6) & m
        cv.paint(sl, vessels, tissue="lung_vessel")

    # Heart on the left diaphragm, unlabelled.
    sl, m = _ellipsoid(cv, rng, (-0.15 * a, 0.3 * b, z(1.02)), (0.35 * a, 0.45 * b, 0.1 * B.L), 10, 0.05)
    cv.paint(sl, m, tissue="heart", label=None)
    if sl is not None:
        cv.label[sl][m & cv.inside[sl]] = 0

    # Small bowel: loops carved out of a central region by a thresholded random field.
    c = (rng.uniform(-0.05, 0.05) * a, 0.15 * b, z(0.36))
    sl, region = _ellipsoid(cv, rng, c, (0.62 * a, 0.6 * b, 0.17 * B.L), 5, 0.08)
    if sl is not None:
        loops = _smooth_field(rng, region.shape, [14 / g.spacing[0], 14 / g.spacing[1], 14 / g.spacing[2]])
        m = region & (loops > -0.25)
        cv.paint(sl, m, "Intestine", "bowel_wall")
        content = _smooth_field(rng, region.shape, [6 / g.spacing[0], 6 / g.spacing[1], 6 / g.spacing[2]])
        cv.paint(sl, m & (content > 0.4), tissue="fluid", within=cv.idx["Intestine"])
        cv.paint(sl, m & (content < -1.3), tissue="gas", within=cv.idx["Intestine"])

    # Colon frame: caecum -> ascending -> transverse -> descending -> sigmoid.
    r_col = rng.uniform(18, 26) * s
    ctrl = [
        (0.6 * a, 0.05 * b, z(0.30)), (0.66 * a, -0.05 * b, z(0.52)), (0.6 * a, 0.05 * b, z(0.68)),
        (0.2 * a, 0.5 * b, z(0.6 + rng.uniform(-0.08, 0.04))), (-0.25 * a, 0.5 * b, z(0.63)),
        (-0.62 * a, 0.0 * b, z(0.74)), (-0.68 * a, -0.1 * b, z(0.5)), (-0.6 * a, 0.0 * b, z(0.3)),
        (-0.3 * a, 0.1 * b, z(0.22)), (-0.05 * a, -0.25 * b, z(0.24)),
    ]
    sl, m, colon_path = _tube(cv, rng, ctrl, r_col, 8)
    cv.paint(sl, m, "Colon", "gi_wall")
    if sl is not None:
        lumen = ndimage.binary_erosion(m, iterations=max(1, int(round(3 / g.spacing[0]))))
        f = _smooth_field(rng, m.shape, [20 / g.spacing[0]] * 2 + [20 / g.spacing[2]])
        cv.paint(sl, lumen & (f > 0), tissue="gas", within=cv.idx["Colon"])
        cv.paint(sl, lumen & (f <= 0), tissue="stool", within=cv.idx["Colon"])
    cv.colon_path = colon_path

    # Rectum continuing the sigmoid down to the pelvic floor.
    sl, m, _ = _tube(cv, rng, [(-0.05 * a, -0.25 * b, z(0.25)), (0, -0.5 * b, z(0.12)), (0, -0.45 * b, z(-0.02))],
                     16 * s, 4)
    cv.paint(sl, m, "Rectum", "gi_wall")
    if sl is not None:
        lumen = ndimage.binary_erosion(m, iterations=1)
        cv.paint(sl, lumen, tissue="stool", within=cv.idx["Rectum"])

    # Bladder (fill varies), prostate below it in male phantoms.
    fill = rng.uniform(0.6, 1.2)
    sl, m = _ellipsoid(cv, rng, (0, 0.45 * b, z(0.13)), (45 * s * fill, 36 * s * fill, 38 * s * fill), 10, 0.1)
    cv.paint(sl, m, "Bladder", "bladder")
    if B.male:
        sl, m = _ellipsoid(cv, rng, (0, 0.3 * b, z(0.04)), (20 * s, 16 * s, 18 * s), 10, 0.08)
        cv.paint(sl, m, "Prostate", "prostate")

    # Femoral heads in the acetabula (patient right = +x).
    for name, side in (("Right Head of Femur", 1), ("Left Head of Femur", -1)):
        c = np.array((side * 0.46 * a, 0.0 * b, z(0.08)))
        r = rng.uniform(21, 26) * s
        sl, m = _ellipsoid(cv, rng, c, (r, r, r), 0, 0.02)
        if sl is not None:
            cv.inside[sl] |= m  # the heads sit in the pelvic wall ring; let them be painted
            cv.paint(sl, m, name, "marrow")
            Xs, Ys, Zs = cv.xyz(sl)
            d = np.sqrt((Xs - c[0]) ** 2 + (Ys - c[1]) ** 2 + (Zs - c[2]) ** 2)
            cv.paint(sl, m & (d > r - 3), tissue="cortical_bone")
        sl, m, _ = _tube(cv, rng, [c + (side * r * 0.6, 0, -r * 0.5), c + (side * r * 2.2, 0, -r * 2.2)], 13 * s, 1)
        cv.paint(sl, m, tissue="cortical_bone", clip=False)

    # Kidneys: cortex rim around medulla; the right one sits lower (below the liver).
    for name, side, zk in (("Right Kidney", 1, 0.50), ("Left Kidney", -1, 0.54)):
        c = (side * 0.4 * a, -0.38 * b, z(zk + rng.uniform(-0.03, 0.03)))
        sl, m = _ellipsoid(cv, rng, c, (28 * s, 24 * s, 55 * s), 18, 0.08)
        if sl is None:
            continue
        cv.paint(sl, m, name, "kidney_cortex")
        med = ndimage.binary_erosion(m, iterations=max(1, int(round(6 / g.spacing[0]))))
        cv.paint(sl, med, tissue="kidney_medulla", within=cv.idx[name])

    # Liver: right lobe plus a left lobe reaching across the midline; pushes into the right dome.
    cl = (0.36 * a, 0.0 * b, z(0.8))
    sl, m = _ellipsoid(cv, rng, cl, (0.52 * a, 0.72 * b, 0.16 * B.L), 10, 0.1)
    cv.paint(sl, m, "Liver", "liver")
    sl, m = _ellipsoid(cv, rng, (-0.12 * a, 0.35 * b, z(0.84)), (0.35 * a, 0.32 * b, 0.07 * B.L), 10, 0.1)
    cv.paint(sl, m, "Liver", "liver")

    sl, m = _ellipsoid(cv, rng, (0.25 * a, 0.42 * b, z(0.68)), (16 * s, 15 * s, 32 * s), 25, 0.08)
    cv.paint(sl, m, "Gall Bladder", "gallbladder")

    sl, m = _ellipsoid(cv, rng, (-0.62 * a, -0.35 * b, z(0.76)), (28 * s, 48 * s, 52 * s), 25, 0.12)
    cv.paint(sl, m, "Spleen", "spleen")

    # Stomach: fundus/body with an air cap, antrum towards the pylorus.
    cs = (-0.3 * a, 0.22 * b, z(0.75))
    sl, m = _ellipsoid(cv, rng, cs, (45 * s, 38 * s, 58 * s), 15, 0.1)
    cv.paint(sl, m, "Stomach", "gi_wall")
    sl2, m2, _ = _tube(cv, rng, [(cs[0], cs[1], z(0.7)), (0.0, 0.35 * b, z(0.63)), (0.12 * a, 0.18 * b, z(0.62))],
                       (22 * s, 12 * s), 4)
    cv.paint(sl2, m2, "Stomach", "gi_wall")
    if sl is not None:
        lumen = ndimage.binary_erosion(m, iterations=max(1, int(round(4 / g.spacing[0]))))
        Ys = cv.xyz(sl)[1]
        cap = Ys > cs[1] + rng.uniform(0.2, 0.7) * 38 * s  # supine: gas rises anteriorly
        cv.paint(sl, lumen & cap, tissue="gas", within=cv.idx["Stomach"])
        cv.paint(sl, lumen & ~cap, tissue="fluid", within=cv.idx["Stomach"])

    # Pancreas: head near the duodenal C-loop, tail at the splenic hilum.
    sl, m, _ = _tube(cv, rng, [(0.22 * a, 0.0 * b, z(0.55)), (0.05 * a, 0.12 * b, z(0.585)),
                               (-0.2 * a, 0.02 * b, z(0.615)), (-0.45 * a, -0.2 * b, z(0.65))],
                     (16 * s, 9 * s), 4)
    cv.paint(sl, m, "Pancreas", "pancreas")

    sl, m, _ = _tube(cv, rng, [(0.12 * a, 0.18 * b, z(0.62)), (0.34 * a, 0.05 * b, z(0.59)),
                               (0.36 * a, -0.02 * b, z(0.5)), (0.15 * a, -0.08 * b, z(0.46)),
                               (-0.08 * a, -0.05 * b, z(0.48))], 11 * s, 3)
    cv.paint(sl, m, "Duodenum", "gi_wall")
    if sl is not None:
        cv.paint(sl, ndimage.binary_erosion(m), tissue="fluid", within=cv.idx["Duodenum"])

    sl, m, _ = _tube(cv, rng, [(-0.5 * a, -0.25 * b, z(0.66)), (-0.15 * a, -0.08 * b, z(0.62)),
                               (0.06 * a, -0.02 * b, z(0.61)), (0.22 * a, 0.05 * b, z(0.7))], 6.5 * s, 2)
    cv.paint(sl, m, "Portal Vein and Splenic Vein", "portal_vein")

    # Great vessels along the spine; the aorta splits into (unlabelled) iliac arteries.
    ax_, ay_ = -0.07 * a, sy + 18 * s + 12 * s
    sl, m, _ = _tube(cv, rng, [(ax_, ay_, z(1.1)), (ax_, ay_ + 3, z(0.6)), (ax_, ay_ + 6, z(0.3))], (13 * s, 10 * s), 2)
    cv.paint(sl, m, "Aorta", "aorta")
    for side in (-1, 1):
        sl, m, _ = _tube(cv, rng, [(ax_, ay_ + 6, z(0.3)), (side * 0.3 * a, ay_ + 10, z(0.12))], 6 * s, 2)
        cv.paint(sl, m, tissue="aorta")
    sl, m, _ = _tube(cv, rng, [(0.12 * a, ay_ + 3, z(1.1)), (0.13 * a, ay_ + 2, z(0.6)), (0.1 * a, ay_, z(0.3))],
                     (12 * s, 10 * s), 2)
    cv.paint(sl, m, "Postcava", "ivc")

    sl, m, _ = _tube(cv, rng, [(-0.02 * a, ay_ + 22 * s, z(1.1)), (-0.08 * a, ay_ + 28 * s, z(0.9)),
                               (cs[0] + 25 * s, cs[1] - 10 * s, cs[2] + 30 * s)], 8 * s, 2)
    cv.paint(sl, m, "Esophagus", "esophagus")


def _paint_tumours(cv: _Canvas, B: _Body, rng, types: list[str], prob: float) -> list[str]:
    placed = []
    cv.boxes = ndimage.find_objects(cv.label)
    sp = np.array(cv.grid.spacing)
    for t in types:
        # Draw every random number even when the tumour is skipped, so that the tumour set
        # given to make_phantom does not change the rest of the phantom.
        present = rng.random() < prob
        n = 1 + int(rng.random() < 0.4) if t == "liver_tumor" else 1
        spec = TUMOUR_TYPES[t]
        sub = np.random.default_rng(rng.integers(1 << 62))
        if not present:
            continue
        parents = [cv.idx[p] for p in spec["parents"]]
        ok = False
        for _ in range(n):
            ok |= _one_tumour(cv, sub, t, spec, parents, sp)
        if ok:
            placed.append(t)
    return placed


def _one_tumour(cv: _Canvas, rng, t: str, spec: dict, parents: list[int], sp: np.ndarray) -> bool:
    boxes = [cv.boxes[p - 1] for p in parents if p - 1 < len(cv.boxes) and cv.boxes[p - 1] is not None]
    if not boxes:
        return False
    box = tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))
    par = np.isin(cv.label[box], parents)
    if not par.any():
        return False
    # Keep the centre away from the organ surface so the lesion is mostly surrounded by parent.
    core = ndimage.binary_erosion(par, iterations=2) if par.sum() > 200 else par
    pts = np.argwhere(core if core.any() else par)
    i, j, k = pts[rng.integers(len(pts))] + [b.start for b in box]
    centre = np.array([cv.grid.coords(0, slice(i, i + 1))[0], cv.grid.coords(1, slice(j, j + 1))[0],
                       cv.grid.coords(2, slice(k, k + 1))[0]])
    r = {"liver_tumor": (7, 22), "kidney_tumor": (10, 22), "kidney_cyst": (6, 14),
         "pancreas_tumor": (8, 15), "colon_tumor": (10, 17), "lung_tumor": (6, 15)}[t]
    rad = rng.uniform(*r)
    radii = rad * rng.uniform(0.8, 1.2, 3)
    sl, m = _ellipsoid(cv, rng, centre, radii, 30, 0.05 if t == "kidney_cyst" else 0.2)
    if sl is None:
        return False
    m = m & np.isin(cv.label[sl], parents)
    if m.sum() < 2:
        return False
    cls = spec["cls"]
    tissue = {"liver_tumor": "liver_lesion", "kidney_tumor": "kidney_tumor", "kidney_cyst": "cyst",
              "pancreas_tumor": "pancreas_lesion", "colon_tumor": "colon_lesion", "lung_tumor": "lung_nodule"}[t]
    cv.label[sl][m] = cv.idx[cls]
    cv.tissue[sl][m] = _T[tissue]
    # Sub-types: rim-enhancing liver metastases, necrotic kidney cancers.
    if t in ("liver_tumor", "kidney_tumor") and rng.random() < 0.5:
        inner = ndimage.binary_erosion(m, iterations=max(1, int(round(3 / sp[0]))))
        if inner.any():
            if t == "liver_tumor":
                cv.tissue[sl][m & ~inner] = _T["lesion_rim"]
            else:
                cv.tissue[sl][inner] = _T["necrosis"]
    return True


def _render(cv: _Canvas, rng, hu: dict[str, float], noise: bool) -> np.ndarray:
    names = sorted(_T, key=_T.get)
    base = np.array([hu[n] for n in names], np.float32)
    tex_amp = np.array([_HU[n][2] for n in names], np.float32)
    img = base[cv.tissue]
    if noise:
        sp = cv.grid.spacing
        shp = cv.grid.shape
        tex = _smooth_field(rng, shp, [8 / sp[0], 8 / sp[1], 8 / sp[2]])
        img += tex * tex_amp[cv.tissue]
        # Partial-volume blur of about half a millimetre, then quantum noise.
        sig = [min(0.7 / s, 0.8) for s in sp]
        img = ndimage.gaussian_filter(img, sig, truncate=2.0)
        img += rng.standard_normal(shp, dtype=np.float32) * np.float32(rng.uniform(8, 18))
    return np.clip(img, -1024, 3071, out=img).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# writers


def write_nifti_pair(image: np.ndarray, label: np.ndarray, affine: np.ndarray, image_path: Path | str,
                     label_path: Path | str) -> None:
    """Image as int16 HU, label as uint8, both with the same affine (qform and sform)."""
    import nibabel as nib

    for arr, path, dtype in ((np.rint(image), image_path, np.int16), (label, label_path, np.uint8)):
        img = nib.Nifti1Image(np.asarray(arr, dtype=dtype), affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, str(path))


def write_dicom_series(
    image: np.ndarray,
    affine: np.ndarray,
    out_dir: Path | str,
    patient_name: str = "PHANTOM^001",
    patient_id: str = "PHANTOM001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_description: str = "Synthetic abdominal CT phantom",
    series_number: int = 1,
    accession_number: str = "",
    study_date: str | None = None,
    uid_seed: str | None = None,
) -> list[Path]:
    """Write a HU volume as a CT Image Storage series, one file per slice along array axis 2.

    The array axes must be (column, row, slice): array[i, j, k] becomes pixel (row j, column i)
    of slice k, and the affine (voxel -> RAS mm) gives orientation, spacing and positions.
    uid_seed makes the UIDs a deterministic function of that string (pydicom generate_uid
    entropy); otherwise they are random. Returns the file paths in slice order.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if image.ndim != 3:
        raise ValueError("image must be 3-D (columns, rows, slices)")

    def uid(tag: str) -> str:
        return generate_uid(entropy_srcs=[uid_seed, tag]) if uid_seed is not None else generate_uid()

    study_uid = study_uid or uid("study")
    series_uid = series_uid or uid("series")
    for_uid = frame_of_reference_uid or uid("for")

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, np.float64)
    col_step, row_step, slice_step = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    dx, dy, dz = (float(np.linalg.norm(v)) for v in (col_step, row_step, slice_step))
    row_dir, col_dir = col_step / dx, row_step / dy  # DICOM "row direction" runs along a row
    normal = np.cross(row_dir, col_dir)
    if abs(abs(float(np.dot(normal, slice_step / dz))) - 1) > 1e-3:
        raise ValueError("slices must be stacked along the slice normal (no gantry tilt)")

    now = _dt.datetime.now()
    date = study_date or now.strftime("%Y%m%d")
    time = now.strftime("%H%M%S")
    stored = np.clip(np.rint(image) + 1024, 0, 4095).astype(np.uint16)
    paths = []
    for k in range(image.shape[2]):
        sop_uid = uid(f"sop{k}")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = time
        ds.AccessionNumber = accession_number
        ds.Modality = "CT"
        ds.Manufacturer = "dsm-node phantom generator"
        ds.InstitutionName = "Synthetic"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "Synthetic abdomen"
        ds.SeriesDescription = series_description
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.BodyPartExamined = "ABDOMEN"
        ds.SliceThickness = f"{dz:.6g}"
        ds.KVP = "120"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = int(series_number)
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        pos = lps[:3, 3] + k * slice_step
        ds.ImagePositionPatient = [f"{v:.6g}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in (*row_dir, *col_dir)]
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{float(np.dot(pos, normal)):.6g}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(image.shape[1]), int(image.shape[0])
        ds.PixelSpacing = [f"{dy:.6g}", f"{dx:.6g}"]  # row spacing, then column spacing
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        path = out / f"CT{k + 1:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths
