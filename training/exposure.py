"""Anomaly exposure: generic synthetic lesions painted into organs as *negatives* of the host
organ (DSM spec, "Anomaly exposure (both stages)").

Tissue-only organ targets teach an organ to reject only the lesion types it has seen; the
pancreas of a first fine-tune still claimed unseen pancreas tumours with probability 0.999.
Here any organ may receive lesions that do not look like it, and its channel must learn to say
"not me" there. The lesions are never positives of a tumour class (training/losses.py ignores
tumour channels on them).

The generator has its own appearance model — it does not reuse training/phantoms.py's lesion
code or the held-out tumour types' tissue values, or the zero-shot protocol would be void:

* shape: an ellipsoid with random axes and orientation whose radius is modulated by a smooth
  random field (lobulated), clipped to the host organ;
* intensity, in HU *before* the window: a shift of either sign (hypo/hyper), or near-iso with a
  strong texture change; air-filled hosts (lungs) get a soft-tissue density; optional rim of
  the opposite sign and a fluid-density necrotic core; a soft edge blended over 1-3 mm;
* lesions whose contrast the HU window would clip away are redrawn (an invisible lesion
  labelled "not organ" is label noise);
* the host organ is drawn uniformly among the organs present (not by voxel count, which
  starves the pancreas).

Encoding in the training label: class map 0 and parent map = host organ index on lesion voxels
(training/losses.py ``synthetic_lesions``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class ExposureConfig:
    enabled: bool | None = None  # None: on in Stage 2, off in Stage 1 (TrainConfig.pipeline)
    lesions: tuple[int, int] = (3, 6)  # per case, inclusive range
    radius_mm: tuple[float, float] = (7.0, 25.0)
    shift_hu: tuple[float, float] = (35.0, 160.0)  # magnitude of the mean shift, either sign
    iso_prob: float = 0.2  # near-iso lesion that differs by texture only
    texture_hu: tuple[float, float] = (25.0, 60.0)
    rim_prob: float = 0.25
    necrosis_prob: float = 0.2
    edge_mm: tuple[float, float] = (1.0, 3.0)
    min_contrast_hu: float = 25.0  # after the window; lower lesions are redrawn
    hu_window: tuple[float, float] = (-175.0, 250.0)
    min_host_ml: float = 2.0
    tries: int = 8  # per lesion


@dataclass(frozen=True)
class Lesion:
    host: int  # catalog index (1-based) of the host organ
    voxels: int
    shift_hu: float
    kind: str  # hypo | hyper | iso | solid (in an air-filled organ)


def paint_lesions(
    image_hu: np.ndarray,
    classes: np.ndarray,
    spacing: Sequence[float],
    organ_values: Sequence[int],
    rng: np.random.Generator,
    cfg: ExposureConfig,
) -> tuple[np.ndarray, np.ndarray, list[Lesion]]:
    """Paint lesions into a copy of ``image_hu``.

    classes: catalog class map (0 = background) on the image grid; spacing: mm per array axis;
    organ_values: the class values that may host a lesion. Returns (image, host map (uint8: the
    host's class value on lesion voxels, 0 elsewhere), lesions).
    """
    image = np.array(image_hu, dtype=np.float32, copy=True)
    host_map = np.zeros(classes.shape, dtype=np.uint8)
    sp = np.asarray(spacing, dtype=np.float64)
    voxel_ml = float(np.prod(sp)) / 1000.0
    boxes = ndimage.find_objects(classes.astype(np.int32))
    hosts = [v for v in organ_values if v - 1 < len(boxes) and boxes[v - 1] is not None]
    counts = {v: int((classes[boxes[v - 1]] == v).sum()) for v in hosts}
    hosts = [v for v in hosts if counts[v] * voxel_ml >= cfg.min_host_ml]
    placed: list[Lesion] = []
    if not hosts:
        return image, host_map, placed
    n = int(rng.integers(cfg.lesions[0], cfg.lesions[1] + 1))
    for _ in range(n):
        for _try in range(cfg.tries):
            host = int(hosts[rng.integers(len(hosts))])
            les = _one(image, host_map, classes, boxes[host - 1], host, counts[host] * voxel_ml, sp, rng, cfg)
            if les is not None:
                placed.append(les)
                break
    return image, host_map, placed


def _one(image: np.ndarray, host_map: np.ndarray, classes: np.ndarray, box: tuple[slice, ...], host: int,
         host_ml: float, sp: np.ndarray, rng: np.random.Generator, cfg: ExposureConfig) -> Lesion | None:
    organ = (classes[box] == host) & (host_map[box] == 0)
    pts = np.argwhere(organ)
    if len(pts) == 0:
        return None
    # Radius limited by the organ's size (equivalent-sphere radius), so small organs get small lesions.
    r_eq = (3.0 * host_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    r_hi = min(cfg.radius_mm[1], 0.85 * r_eq)
    if r_hi < cfg.radius_mm[0] * 0.5:
        return None
    radius = rng.uniform(min(cfg.radius_mm[0], r_hi), r_hi)
    centre_vox = pts[rng.integers(len(pts))] + np.array([s.start for s in box])
    axes = radius * rng.uniform(0.65, 1.35, 3)
    edge = rng.uniform(*cfg.edge_mm)
    ext = np.ceil((axes.max() * 1.35 + edge) / sp).astype(int) + 1
    lo = np.maximum(centre_vox - ext, 0)
    hi = np.minimum(centre_vox + ext + 1, classes.shape)
    sub = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    coords = np.meshgrid(*[(np.arange(s.start, s.stop) - c) * d for s, c, d in zip(sub, centre_vox, sp)],
                         indexing="ij", sparse=True)
    rot = _random_rotation(rng)
    u = [sum(rot[k, a] * coords[a] for a in range(3)) / axes[k] for k in range(3)]
    rho = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2)
    lobes = _smooth_noise(rng, rho.shape, max(2.0, radius / 2.0 / float(sp.mean())))
    bound = 1.0 + rng.uniform(0.05, 0.3) * lobes
    # Signed distance (mm, approximately) to the lesion surface: < 0 inside.
    dist = (rho - bound) * radius
    inside_host = (classes[sub] == host) & (host_map[sub] == 0)
    weight = np.clip(0.5 - dist / edge, 0.0, 1.0) * inside_host  # soft edge
    core = weight >= 0.5
    if core.sum() < 3:
        return None

    host_vals = image[sub][inside_host]
    host_mean = float(np.median(host_vals))
    lo_w, hi_w = cfg.hu_window
    if host_mean < -400:  # air-filled organ: a solid nodule of soft-tissue density
        kind = "solid"
        shift = rng.uniform(-60.0, 120.0) - host_mean
    elif rng.random() < cfg.iso_prob:
        kind = "iso"
        shift = rng.uniform(-12.0, 12.0)
    else:
        sign = -1.0 if rng.random() < 0.5 else 1.0
        kind = "hypo" if sign < 0 else "hyper"
        shift = sign * rng.uniform(*cfg.shift_hu)
    # Visibility through the window (clip before comparing).
    seen_host = float(np.clip(host_mean, lo_w, hi_w))
    seen_les = float(np.clip(host_mean + shift, lo_w, hi_w))
    if kind == "iso":
        if not lo_w + 40 < host_mean < hi_w - 40:
            return None
    elif abs(seen_les - seen_host) < cfg.min_contrast_hu:
        return None

    delta = np.full(weight.shape, shift, dtype=np.float32)
    if kind == "iso" or rng.random() < 0.5:
        amp = rng.uniform(*cfg.texture_hu) if kind == "iso" else rng.uniform(5.0, 25.0)
        delta += amp * _smooth_noise(rng, weight.shape, max(1.0, 3.0 / float(sp.mean())))
    if kind in ("hypo", "hyper", "solid") and rng.random() < cfg.rim_prob:
        width = rng.uniform(2.0, 5.0)
        rim = (dist > -width) & (dist <= 0)
        delta[rim] = -0.6 * shift if kind != "solid" else delta[rim] + 60.0
    if radius > 10.0 and rng.random() < cfg.necrosis_prob:
        necrotic = dist < -0.5 * radius
        delta[necrotic] = rng.uniform(0.0, 25.0) - host_mean
    image[sub] += (weight * delta).astype(np.float32)
    host_map[sub][core] = host
    return Lesion(host=host, voxels=int(core.sum()), shift_hu=float(shift), kind=kind)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
    ])


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """Zero-mean, unit-std random field smoothed over ``sigma_vox`` voxels."""
    shape = tuple(int(n) for n in np.broadcast_shapes(shape))
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="reflect")
    std = float(f.std())
    return f / std if std > 0 else f
