"""Tissue map -> CT image in HU: mean per tissue and phase, tissue texture, lesion overlays,
partial-volume blur and quantum noise."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .geometry import Canvas, Noise, sub_seed


def render(cv: Canvas, rng: np.random.Generator, base: np.ndarray, tex_amp: np.ndarray, noise: bool,
           noise_scale: float = 1.0) -> np.ndarray:
    g = cv.grid
    tex_seed, sigma_n = sub_seed(rng), rng.uniform(7, 15) * noise_scale
    img = base[cv.tissue]
    if noise:
        full = tuple(slice(0, n) for n in g.shape)
        lo = [float(min(g.coords(a, slice(0, 1))[0], g.coords(a, slice(n - 1, n))[0])) for a, n in enumerate(g.shape)]
        hi = [float(max(g.coords(a, slice(0, 1))[0], g.coords(a, slice(n - 1, n))[0])) for a, n in enumerate(g.shape)]
        tex = Noise(tex_seed, lo, hi, 8.0).sample(cv, full)
        tex *= tex_amp[cv.tissue]
        img += tex
        del tex
    for ov in cv.overlays:
        add = np.float32(ov.shift)
        if noise and ov.amplitude > 0:
            lo = [float(c.min()) for c in cv.xyz(ov.sl)]
            hi = [float(c.max()) for c in cv.xyz(ov.sl)]
            add = add + ov.amplitude * Noise(ov.seed, lo, hi, ov.cell_mm).sample(cv, ov.sl)[ov.mask]
        img[ov.sl][ov.mask] += add
    if noise:
        # Partial-volume blur of about half a millimetre (skipped along coarse axes), then noise.
        for ax, s in enumerate(g.spacing):
            sig = min(0.7 / s, 0.8)
            if sig >= 0.3:  # three-tap Gaussian: finer grids only
                w = float(np.exp(-0.5 / sig ** 2))
                ndimage.correlate1d(img, np.array([w, 1.0, w], np.float32) / (1 + 2 * w), axis=ax, output=img)
        img += rng.standard_normal(g.shape, dtype=np.float32) * np.float32(sigma_n)
    return np.clip(img, -1024, 3071, out=img).astype(np.float32, copy=False)
