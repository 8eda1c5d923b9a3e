"""MONAI pipelines: deterministic preprocessing (cached) and per-sample random augmentation.

Sample dict after preprocessing:
  image      (1, X, Y, Z) float32 in [0, 1] (HU window), RAS, model spacing
  label      (2, X, Y, Z) uint8: catalog class map and tumour parent map (labels.py)
  annotated  (C,) bool partial-label template of the case's dataset
  organ_idx / tumor_idx / synthetic_idx / bg_idx   flat voxel indices for crop sampling
  (subsampled)

Anomaly exposure (training/exposure.py) paints synthetic lesions into the HU image after
resampling and before the window, deterministically per case (seeded by the case id), so the
cached sample holds them; spatial and intensity augmentation then vary them per epoch.
"""
from __future__ import annotations

import zlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    MapTransform,
    Orientationd,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    Randomizable,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)

from model.catalog import Catalog

from .exposure import ExposureConfig, paint_lesions
from .labels import LabelError, map_labels, parent_map, read_nifti, read_raw_label
from .registry import Registry

# Cap on stored crop-centre candidates per set: a 300^3 grid would otherwise cache ~100 MB of
# background indices per case.
MAX_INDICES = 20000


@dataclass(frozen=True)
class AugmentConfig:
    prob_affine: float = 0.3
    rotate_deg: float = 15.0
    scale: float = 0.1
    prob_elastic: float = 0.1
    elastic_sigma: tuple[float, float] = (5.0, 7.0)
    elastic_magnitude: tuple[float, float] = (50.0, 150.0)
    prob_shift: float = 0.3
    shift: float = 0.1
    prob_gamma: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)


@dataclass(frozen=True)
class CropConfig:
    samples_per_volume: int = 1
    pos: float = 2.0  # RandCropByPosNegLabel pos:neg ratio
    neg: float = 1.0
    tumor_prob: float = 0.5  # of positive crops, share centred on an annotated tumour when present
    synthetic_prob: float = 0.0  # of positive crops, share centred on a synthetic exposure lesion


@dataclass(frozen=True)
class PipelineConfig:
    spacing: tuple[float, float, float]
    roi: tuple[int, int, int]
    hu_window: tuple[float, float] = (-175.0, 250.0)
    orientation: str = "RAS"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    crop_margin: int = 2  # voxels around the body (model config preprocessing.crop_margin)
    exposure: ExposureConfig = field(default_factory=ExposureConfig)
    exposure_seed: int = 0


def body_foreground(x: torch.Tensor) -> torch.Tensor:
    """Voxels above the lower HU window edge (scaled image > 0): the body."""
    return x > 0


class LoadCased(MapTransform):
    """Read image + label (paths or in-memory arrays), map raw labels to the catalog.

    Input keys: image (path | HU array), label (path | raw array | None), affine (for arrays),
    dataset (registry key). Arrays are useful for generated phantoms (evaluation without files).
    """

    def __init__(self, registry: Registry, affine_tol_mm: float = 1e-2) -> None:
        super().__init__(keys=["image", "label"])
        self.registry = registry
        self.catalog: Catalog = registry.catalog
        self.tol = affine_tol_mm

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        spec = self.registry[d["dataset"]]
        if isinstance(d["image"], (str, Path)):
            src = str(d["image"])
            img, aff = read_nifti(d["image"], np.float32)
        else:
            src = d.get("case", "array")
            img, aff = np.asarray(d["image"], np.float32), np.asarray(d["affine"], np.float64)
        if img.ndim == 4 and img.shape[-1] == 1:
            img = img[..., 0]
        lab = d.get("label")
        if lab is None or (isinstance(lab, (str, Path)) and str(lab) in ("", ".")):
            classes = np.zeros(img.shape, np.uint8)
        else:
            if isinstance(lab, (str, Path)):
                raw, laff = read_raw_label(lab, spec)
            else:
                raw, laff = np.asarray(lab).astype(np.int32), aff
            if raw.shape != img.shape:
                raise LabelError(f"{src}: label shape {raw.shape} != image shape {img.shape}")
            if np.abs(laff - aff).max() > self.tol:
                raise LabelError(f"{src}: label affine differs from the image affine")
            classes = map_labels(raw, spec, self.catalog, aff, img)
        parents = parent_map(classes, self.catalog, aff, img)
        def meta() -> dict:
            return {"filename_or_obj": src, "affine": torch.as_tensor(aff)}

        d["image"] = MetaTensor(torch.from_numpy(np.ascontiguousarray(img[None])), meta=meta())
        d["label"] = MetaTensor(torch.from_numpy(np.stack([classes, parents])), meta=meta())
        d["annotated"] = torch.tensor(spec.annotated_vector(self.catalog), dtype=torch.bool)
        d.pop("affine", None)
        return d


class SyntheticLesionsd(MapTransform):
    """Anomaly exposure on a loaded sample whose image is still in HU (before the window).

    The case's own lesions are a function of (seed, case id), so caching and resuming keep them.
    Lesion voxels become class 0 with the host organ in the parent map (losses.synthetic_lesions).
    """

    def __init__(self, catalog: Catalog, cfg: ExposureConfig, seed: int = 0) -> None:
        super().__init__(keys=["image", "label"])
        self.cfg = cfg
        self.seed = seed
        self.organs = [e.index for e in catalog if e.is_organ]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        image, label = d["image"], d["label"]
        case = str(d.get("case") or image.meta.get("filename_or_obj", ""))
        rng = np.random.default_rng([self.seed, zlib.crc32(case.encode("utf-8")), 0xE05E])
        spacing = [float(v) for v in np.asarray(image.pixdim)[:3]]
        classes = np.asarray(label[0])
        painted, host, _ = paint_lesions(np.asarray(image[0]), classes, spacing, self.organs, rng, self.cfg)
        hit = torch.from_numpy(host > 0)
        img = image.clone()
        img[0] = torch.from_numpy(painted)
        lab = label.clone()
        lab[0][hit] = 0
        lab[1][hit] = torch.from_numpy(host)[hit].to(lab.dtype)
        d["image"], d["label"] = img, lab
        return d


class CropIndicesd(MapTransform):
    """Crop-centre candidates: organ voxels, annotated-tumour voxels, synthetic-lesion voxels,
    background voxels."""

    def __init__(self, catalog: Catalog, seed: int = 0) -> None:
        super().__init__(keys=["label"])
        self.is_tumor = torch.tensor([False] + [e.is_tumor for e in catalog], dtype=torch.bool)
        self.seed = seed

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        cls = torch.as_tensor(d["label"][0]).long().flatten()
        par = torch.as_tensor(d["label"][1]).long().flatten()
        ann = torch.cat([torch.zeros(1, dtype=torch.bool), torch.as_tensor(d["annotated"])])
        fg = cls > 0
        tum = self.is_tumor[cls] & ann[cls]
        syn = (cls == 0) & (par > 0)
        rng = np.random.default_rng(self.seed)
        for key, m in (("organ_idx", fg), ("tumor_idx", tum), ("synthetic_idx", syn), ("bg_idx", ~fg & ~syn)):
            idx = torch.nonzero(m).flatten().numpy()
            if len(idx) > MAX_INDICES:
                idx = np.sort(rng.choice(idx, MAX_INDICES, replace=False))
            d[key] = idx.astype(np.int64)
        return d


class RandCropTumorOrOrgand(Randomizable, MapTransform):
    """RandCropByPosNegLabel whose positive centres come from annotated tumour voxels with
    probability tumor_prob (when the case has any), from synthetic exposure lesions with
    probability synthetic_prob (when it has any), otherwise from organ voxels."""

    def __init__(self, keys: Sequence[str], roi: Sequence[int], crop: CropConfig) -> None:
        MapTransform.__init__(self, keys)
        self.tumor_prob = crop.tumor_prob
        self.synthetic_prob = crop.synthetic_prob
        common = dict(keys=keys, label_key="label", spatial_size=roi, pos=crop.pos, neg=crop.neg,
                      num_samples=crop.samples_per_volume, bg_indices_key="bg_idx", allow_smaller=False)
        self.organ = RandCropByPosNegLabeld(fg_indices_key="organ_idx", **common)
        self.tumor = RandCropByPosNegLabeld(fg_indices_key="tumor_idx", **common)
        self.synthetic = RandCropByPosNegLabeld(fg_indices_key="synthetic_idx", **common)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.organ.set_random_state(int(self.R.randint(2**31)))
        self.tumor.set_random_state(int(self.R.randint(2**31)))
        self.synthetic.set_random_state(int(self.R.randint(2**31)))
        return self

    def randomize(self, data: Any = None) -> None:
        self._pick = self.R.rand()

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict]:
        d = dict(data)
        self.randomize()
        d.setdefault("synthetic_idx", np.zeros(0, np.int64))
        if not len(d["organ_idx"]):
            d["organ_idx"] = d["bg_idx"]  # an unlabelled scan: every crop is a negative
        if self._pick < self.tumor_prob and len(d["tumor_idx"]):
            cropper = self.tumor
        elif self.tumor_prob <= self._pick < self.tumor_prob + self.synthetic_prob and len(d["synthetic_idx"]):
            cropper = self.synthetic
        else:
            cropper = self.organ
        out = cropper(d)
        for o in out:
            for k in ("organ_idx", "tumor_idx", "synthetic_idx", "bg_idx"):
                o.pop(k, None)
        return out


def preprocess_transforms(registry: Registry, cfg: PipelineConfig, for_training: bool = True) -> Compose:
    """Deterministic part (what CacheDataset/PersistentDataset store)."""
    keys = ["image", "label"]
    t = [
        LoadCased(registry),
        Orientationd(keys=keys, axcodes=cfg.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys=keys, pixdim=cfg.spacing, mode=("bilinear", "nearest")),
    ]
    if for_training and cfg.exposure.enabled:
        t.append(SyntheticLesionsd(registry.catalog, replace(cfg.exposure, hu_window=tuple(cfg.hu_window)),
                                   cfg.exposure_seed))
    t += [
        ScaleIntensityRanged(keys="image", a_min=cfg.hu_window[0], a_max=cfg.hu_window[1], b_min=0.0, b_max=1.0, clip=True),
        CropForegroundd(keys=keys, source_key="image", select_fn=body_foreground, margin=cfg.crop_margin,
                        allow_smaller=True),
        EnsureTyped(keys="label", dtype=torch.uint8),
    ]
    if for_training:
        t += [SpatialPadd(keys=keys, spatial_size=cfg.roi), CropIndicesd(registry.catalog)]
    return Compose(t)


def augment_transforms(cfg: PipelineConfig) -> Compose:
    """Random part, applied per sample after the cache with a per-sample seed."""
    keys = ["image", "label"]
    a = cfg.augment
    rot = np.deg2rad(a.rotate_deg)
    t = [RandCropTumorOrOrgand(keys, cfg.roi, cfg.crop)]
    if a.prob_affine > 0:
        t.append(RandAffined(keys=keys, prob=a.prob_affine, rotate_range=(rot, rot, rot),
                             scale_range=(a.scale,) * 3, mode=("bilinear", "nearest"), padding_mode="zeros"))
    if a.prob_elastic > 0:
        t.append(Rand3DElasticd(keys=keys, prob=a.prob_elastic, sigma_range=a.elastic_sigma,
                                magnitude_range=a.elastic_magnitude, mode=("bilinear", "nearest"), padding_mode="zeros"))
    if a.prob_shift > 0:
        t.append(RandShiftIntensityd(keys="image", offsets=a.shift, prob=a.prob_shift))
    if a.prob_gamma > 0:
        t.append(RandAdjustContrastd(keys="image", gamma=a.gamma, prob=a.prob_gamma))
    t.append(EnsureTyped(keys=keys, track_meta=False))
    return Compose(t)
