"""Grid, canvas and analytic shapes, all in patient RAS millimetres.

The voxel grid's array axes run towards patient Left, Posterior and Superior (array[i, j, k] is
column i, row j of slice k, the DICOM axial order), so the affine is diagonal with negative x/y
entries. Shapes are evaluated only inside their bounding boxes, which keeps a 512x512x300 study
to seconds.

Every shape draws all of its random numbers before it looks at the grid: a structure that lies
outside the field of view consumes the same randomness as one inside it, so the anatomy of a
seed does not depend on the grid or the field of view.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .tissues import T

BG = 0  # label argument of Canvas.paint that clears the label (painted, deliberately unlabelled)


@dataclass
class Grid:
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]  # RAS mm of voxel (0, 0, 0)

    @property
    def affine(self) -> np.ndarray:
        a = np.diag([-self.spacing[0], -self.spacing[1], self.spacing[2], 1.0])
        a[:3, 3] = self.origin
        return a

    def coords(self, axis: int, sl: slice) -> np.ndarray:
        idx = np.arange(sl.start, sl.stop, dtype=np.float64)
        sign = -1.0 if axis < 2 else 1.0
        return (self.origin[axis] + sign * idx * self.spacing[axis]).astype(np.float32)

    def index(self, axis: int, mm: np.ndarray) -> np.ndarray:
        """Fractional voxel index of world coordinate(s) along one axis."""
        sign = -1.0 if axis < 2 else 1.0
        return sign * (np.asarray(mm, np.float64) - self.origin[axis]) / self.spacing[axis]


@dataclass
class Overlay:
    """An additive HU pattern the renderer applies inside a mask (lesion texture)."""
    sl: tuple[slice, slice, slice]
    mask: np.ndarray
    seed: int
    cell_mm: float
    amplitude: float
    shift: float = 0.0


class Canvas:
    """Label and tissue volumes, the paintable body interior, and render overlays."""

    def __init__(self, grid: Grid, idx: dict[str, int]):
        self.grid = grid
        self.idx = idx
        self.label = np.zeros(grid.shape, np.uint8)
        self.tissue = np.zeros(grid.shape, np.uint8)
        # Body cavities: organs are clipped to it; bones and the body wall are taken out of it.
        self.inside = np.zeros(grid.shape, bool)
        self.overlays: list[Overlay] = []
        self.notes: dict = {}

    def box(self, lo, hi) -> tuple[slice, slice, slice] | None:
        """Voxel slices covering the RAS box [lo, hi] (mm), or None if it misses the grid."""
        g = self.grid
        out = []
        for ax in range(3):
            a, b = (float(v) for v in g.index(ax, np.array([lo[ax], hi[ax]])))
            a, b = min(a, b), max(a, b)
            i0 = max(int(math.floor(a)), 0)
            i1 = min(int(math.ceil(b)) + 1, g.shape[ax])
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)

    def xyz(self, sl):
        g = self.grid
        return (g.coords(0, sl[0])[:, None, None], g.coords(1, sl[1])[None, :, None],
                g.coords(2, sl[2])[None, None, :])

    def ids(self, labels) -> list[int]:
        if isinstance(labels, (str, int)):
            labels = [labels]
        return [self.idx[x] if isinstance(x, str) else int(x) for x in labels]

    def paint(self, sl, mask, label: str | int | None = None, tissue: str | None = None, clip: bool = True,
              within=None, over: Iterable[str] | None = None, block: bool = False, keep=None) -> None:
        """Set label and/or tissue where mask holds.

        label: catalog name, BG to clear it, None to keep it. clip: only inside the body cavities.
        within: only where the label is one of these (names or values); keep: never where it is
        one of these. over: only where the tissue is one of these. block: take the voxels out of
        the cavities (bones, body wall).
        """
        if sl is None or mask is None:
            return
        if clip:
            mask = mask & self.inside[sl]
        if within is not None:
            mask = mask & np.isin(self.label[sl], self.ids(within))
        if keep is not None:
            mask = mask & ~np.isin(self.label[sl], self.ids(keep))
        if over is not None:
            mask = mask & _lut(tuple(over))[self.tissue[sl]]
        if label is not None:
            self.label[sl][mask] = label if isinstance(label, int) else self.idx[label]
        if tissue is not None:
            self.tissue[sl][mask] = T[tissue]
        if block:
            self.inside[sl][mask] = False


_LUTS: dict[tuple, np.ndarray] = {}


def _lut(names: tuple) -> np.ndarray:
    """Boolean look-up table over tissue ids (one gather instead of np.isin)."""
    if names not in _LUTS:
        t = np.zeros(256, bool)
        t[[T[n] for n in names]] = True
        _LUTS[names] = t
    return _LUTS[names]


# --------------------------------------------------------------------------------------------
# shapes: each returns the bounding-box slices and a normalised distance field f (f < 1 inside)


def rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def frame(long_axis, toward) -> np.ndarray:
    """Rotation whose columns are (toward, third, long) axes in world coordinates: long_axis
    normalised, toward made orthogonal to it (the local x axis of an organ)."""
    e3 = np.asarray(long_axis, float)
    e3 = e3 / np.linalg.norm(e3)
    e1 = np.asarray(toward, float)
    e1 = e1 - e3 * (e1 @ e3)
    e1 /= np.linalg.norm(e1)
    return np.stack([e1, np.cross(e3, e1), e3], axis=1)


def ellipsoid(cv: Canvas, rng, centre, radii, max_rot: float = 15.0, wobble: float = 0.12,
              grow: float = 0.0, rot: np.ndarray | None = None):
    """Deformed ellipsoid: radius modulated by a few random low-order waves over direction.

    f is the normalised radius (1 on the surface); grow > 0 evaluates f out to 1 + grow so that
    callers can cut shells around the shape. rot: a fixed rotation (else random up to max_rot).
    """
    c = np.asarray(centre, np.float32)
    r = np.asarray(radii, np.float32)
    rnd = rotation(rng, max_rot)
    rot = (rnd if rot is None else np.asarray(rot)).astype(np.float32)
    waves = [(rng.normal(0, 1.8, 3).astype(np.float32), rng.uniform(0.5, 1.5), rng.uniform(0, 2 * np.pi))
             for _ in range(3)]
    ext = np.sqrt(((rot * r[None, :]) ** 2).sum(1)) * (1 + wobble) * (1 + grow) + 1.0
    sl = cv.box(c - ext, c + ext)
    if sl is None:
        return None, None
    X, Y, Z = cv.xyz(sl)
    dx, dy, dz = X - c[0], Y - c[1], Z - c[2]
    u = [(rot[0, k] * dx + rot[1, k] * dy + rot[2, k] * dz) / r[k] for k in range(3)]
    rho = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2) + np.float32(1e-6)
    bound = np.ones_like(rho)
    for fr, amp, ph in waves:
        bound += np.float32(wobble / 3 * amp) * np.cos((fr[0] * u[0] + fr[1] * u[1] + fr[2] * u[2]) / rho + ph)
    return sl, rho / bound


def catmull_rom(points: np.ndarray, step: float) -> np.ndarray:
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


def tube(cv: Canvas, rng, control, radius, jitter: float = 6.0, wave: float = 0.12, grow: float = 0.0,
         step: float | None = None):
    """Tube swept along a jittered smooth path through control points.

    radius: scalar, (start, end), or one value per control point. Returns (slices, f, path) with
    f = distance to the path / local radius, evaluated out to 1 + grow.
    """
    ctrl = np.asarray(control, np.float64) + rng.normal(0, jitter, (len(control), 3))
    freq, phase = rng.uniform(1, 3), rng.uniform()
    radius = np.atleast_1d(np.asarray(radius, np.float64))
    rmin = float(radius.min())
    path = catmull_rom(ctrl, step=step or max(rmin / 2.5, 0.8))
    t = np.linspace(0, 1, len(path))
    if len(radius) == len(control) and len(radius) > 2:
        # per control point: interpolate along the arc length of the control polygon
        seg = np.r_[0, np.cumsum(np.linalg.norm(np.diff(ctrl, axis=0), axis=1))]
        arc = np.r_[0, np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))]
        rad = np.interp(arc / max(arc[-1], 1e-6), seg / max(seg[-1], 1e-6), radius)
    else:
        r0, r1 = (radius[0], radius[-1])
        rad = r0 + (r1 - r0) * t
    rad = rad * (1 + wave * np.sin(2 * np.pi * (freq * t + phase)))
    return sweep(cv, path, rad, grow) + (path,)


def sweep(cv: Canvas, path: np.ndarray, rad: np.ndarray, grow: float = 0.0):
    """Normalised distance field of spheres of radius rad centred on the path points."""
    reach = rad * (1 + grow)
    sl = cv.box((path - reach[:, None]).min(0), (path + reach[:, None]).max(0))
    if sl is None:
        return None, None
    g = cv.grid
    shape = tuple(s.stop - s.start for s in sl)
    f2 = np.full(shape, np.float32(np.inf), np.float32)
    X, Y, Z = cv.xyz(sl)
    xs, ys, zs = X[:, 0, 0], Y[0, :, 0], Z[0, 0, :]
    bounds = []
    for ax in range(3):
        a = g.index(ax, path[:, ax] - reach) - sl[ax].start
        b = g.index(ax, path[:, ax] + reach) - sl[ax].start
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        bounds.append((np.clip(np.ceil(lo), 0, shape[ax]).astype(int), np.clip(np.floor(hi) + 1, 0, shape[ax]).astype(int)))
    for n, (p, r) in enumerate(zip(path, rad)):
        i0, i1 = bounds[0][0][n], bounds[0][1][n]
        j0, j1 = bounds[1][0][n], bounds[1][1][n]
        k0, k1 = bounds[2][0][n], bounds[2][1][n]
        if i1 <= i0 or j1 <= j0 or k1 <= k0:
            continue
        inv = np.float32(1.0 / (r * r))
        d2 = (((xs[i0:i1] - p[0]) ** 2 * inv)[:, None, None] + ((ys[j0:j1] - p[1]) ** 2 * inv)[None, :, None]
              + ((zs[k0:k1] - p[2]) ** 2 * inv)[None, None, :])
        sub = f2[i0:i1, j0:j1, k0:k1]
        np.minimum(sub, d2, out=sub)
    return sl, np.sqrt(f2, out=f2)


# --------------------------------------------------------------------------------------------
# smooth random fields anchored in world coordinates


@dataclass
class Noise:
    """Smooth zero-mean, unit-variance random field on a lattice fixed in world millimetres.

    The same seed and box give the same pattern on every grid (bowel loops, lung vessels do not
    move with the field of view). Sampled by separable linear interpolation of a lattice that is
    pre-smoothed, so iso-contours are round rather than polygonal.
    """
    seed: int
    lo: Sequence[float]
    hi: Sequence[float]
    cell: float | Sequence[float]
    _lat: np.ndarray | None = field(default=None, repr=False)

    def lattice(self) -> np.ndarray:
        if self._lat is None:
            cell = np.broadcast_to(np.asarray(self.cell, np.float64), (3,))
            step = cell / 2  # half-cell lattice, smoothed by one lattice unit
            n = [int(math.ceil((h - l) / s)) + 5 for l, h, s in zip(self.lo, self.hi, step)]
            v = np.random.default_rng(self.seed).standard_normal(n).astype(np.float32)
            v = ndimage.gaussian_filter(v, 1.0, mode="wrap")
            v /= max(float(v.std()), 1e-6)
            self._lat = v
            self._step = step
            self._origin = np.asarray(self.lo, np.float64) - 2 * step
        return self._lat

    def sample(self, cv: Canvas, sl) -> np.ndarray:
        f = self.lattice()
        n_out = [s.stop - s.start for s in sl]
        # shrink first, expand last: the intermediate arrays stay small
        for ax in sorted(range(3), key=lambda a: n_out[a] / f.shape[a]):
            c = cv.grid.coords(ax, sl[ax]).astype(np.float64)
            pos = np.clip((c - self._origin[ax]) / self._step[ax], 0, f.shape[ax] - 1.001)
            i0 = pos.astype(np.int64)
            w = (pos - i0).astype(np.float32)
            shp = [1, 1, 1]
            shp[ax] = len(c)
            lo = np.take(f, i0, axis=ax)
            hi = np.take(f, i0 + 1, axis=ax)
            hi -= lo  # lo + w (hi - lo), in place: the last pass runs over the whole box
            hi *= w.reshape(shp)
            lo += hi
            f = lo
        return f


def sub_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(1 << 62))
