"""The one inference path: a CT volume on its own grid in; labels, the anomaly map and class
probabilities on the same grid out (DSM spec, "Inference — one path for the node and for
evaluation").

``dsm-node serve``, ``dsm-node infer`` and ``dsm-train eval`` all call ``VolumeSegmenter``, so
an evaluation figure measures exactly what the node sends to a PACS. Everything that changes
the result comes from the checkpoint (``InferenceSettings.from_checkpoint``): orientation,
spacing, HU window, crop margin, ROI, overlap, blend mode, per-class thresholds and the
zero-shot threshold calibrated at the end of training, the envelope radius, the seen tumours.

Steps: reorient to RAS and resample to the model spacing in index space (model/grid.py), HU
window, crop to the body with the training margin, pad to the ROI, MONAI sliding window
(outputs blended on the CPU; AMP on CUDA), post-processing on the model grid
(model/postprocess.py), then each kept class's gated score upsampled to the source grid and
thresholded there; where organ masks overlap the smaller one wins (inference.organ_overlap),
tumours are drawn over organs.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import grid, slabs, spill
from .catalog import Catalog, ClassEntry, load_catalog
from .checkpoint import LoadedCheckpoint, load_checkpoint
from .inference import Predictor
from .postprocess import Decisions, postprocess

DEFAULT_ZERO_SHOT_THRESHOLD = 0.5


@dataclass(frozen=True)
class InferenceSettings:
    """What inference must reproduce, read from a checkpoint (typed)."""

    orientation: str
    spacing: tuple[float, float, float]
    hu_window: tuple[float, float]
    roi_size: tuple[int, int, int]
    crop_margin: int
    overlap: float
    blend_mode: str
    sw_batch_size: int
    close_mm: float
    thresholds: dict[str, float] = field(default_factory=dict)  # calibrated; others: catalog threshold
    zero_shot_threshold: float = DEFAULT_ZERO_SHOT_THRESHOLD
    seen_tumors: tuple[str, ...] | None = None  # None: not recorded -> no zero-shot path
    # Organ -> its own zero-shot threshold (infinite: no zero-shot tumour drawn in it), where the
    # calibration measured too much zero-shot volume on lesion-free validation tissue at
    # ``zero_shot_threshold`` (model.postprocess.ZeroShot, training.calibration).
    zero_shot_organs: dict[str, float] = field(default_factory=dict)
    gate_fraction: float = 0.5
    organ_overlap: str = "nested"  # model.config.InferenceConfig.organ_overlap
    # Classes the calibration did not find on the validation cases (best Dice below
    # training.calibration.MIN_CALIBRATION_DICE at every threshold): never drawn. At the
    # catalog's threshold such a channel only takes other organs' voxels; a candidate's
    # hepatic-vessel channel fired on bile and, being the smaller mask, took 79 % of a
    # validation phantom's gall bladder (docs/model.md).
    not_found: tuple[str, ...] = ()
    # The classes a training set of these weights labelled (checkpoint ``training.labelled``;
    # None: the file does not say). An organ class outside it has a query that never learned
    # anything: not drawn. The catalog's Celiac Trunk is labelled by no registered dataset, and
    # 0.6 drew it at the catalog's threshold over 15 % of a validation phantom's small right
    # kidney (docs/model.md). Tumour classes outside it take the zero-shot path instead.
    labelled: tuple[str, ...] | None = None

    @classmethod
    def from_checkpoint(cls, ckpt: LoadedCheckpoint, overlap: float | None = None,
                        sw_batch_size: int | None = None) -> InferenceSettings:
        pp, inf = ckpt.preprocessing, ckpt.config.inference
        cal = ckpt.calibration or {}
        if pp.get("orientation", "RAS") != "RAS":
            raise ValueError(f"{ckpt.path}: orientation {pp['orientation']!r} is not supported (RAS only)")
        seen = ckpt.seen_tumors
        return cls(
            orientation="RAS",
            spacing=tuple(float(s) for s in pp["spacing"]),  # type: ignore[arg-type]
            hu_window=tuple(float(v) for v in pp["hu_window"]),  # type: ignore[arg-type]
            roi_size=tuple(int(r) for r in pp["roi_size"]),  # type: ignore[arg-type]
            crop_margin=int(pp.get("crop_margin", 2)),
            overlap=inf.overlap if overlap is None else float(overlap),
            blend_mode=inf.blend_mode,
            sw_batch_size=int(sw_batch_size or inf.sw_batch_size),
            close_mm=float(ckpt.config.amvp.close_mm),
            thresholds={str(k): float(v) for k, v in (cal.get("thresholds") or {}).items()},
            zero_shot_threshold=float(cal.get("zero_shot_threshold", DEFAULT_ZERO_SHOT_THRESHOLD)),
            seen_tumors=None if seen is None else tuple(seen),
            zero_shot_organs=zero_shot_organs(cal),
            organ_overlap=inf.organ_overlap,
            not_found=tuple(str(n) for n in cal.get("not_found") or ()),
            labelled=None if ckpt.labelled is None else tuple(ckpt.labelled),
        )

    def zero_shot_off(self) -> list[str]:
        """Organs in which no zero-shot tumour is drawn (the calibration switched the path off)."""
        return [n for n, t in self.zero_shot_organs.items() if math.isinf(t)]

    def zero_shot_raised(self) -> dict[str, float]:
        """Organs whose zero-shot threshold the calibration raised, with that threshold."""
        return {n: t for n, t in self.zero_shot_organs.items() if math.isfinite(t)}

    def untrained(self, entry: ClassEntry) -> bool:
        """An organ class that no training set of these weights labelled (False when the
        checkpoint does not record its labelled classes)."""
        return self.labelled is not None and not entry.is_tumor and entry.name not in self.labelled

    def threshold_of(self, entry: ClassEntry) -> float:
        """The calibrated threshold, else the catalog's; infinite for a class the calibration
        did not find or an organ class no training set labelled (its P_c / t is then 0
        everywhere: no mask, no tumour score)."""
        if entry.name in self.not_found or self.untrained(entry):
            return math.inf
        return self.thresholds.get(entry.name, entry.threshold)


def zero_shot_organs(calibration: dict[str, Any]) -> dict[str, float]:
    """The calibration block's ``zero_shot_organs`` (organ -> threshold, null: off) as
    organ -> float with infinity for off."""
    return {str(k): math.inf if v is None else float(v) for k, v in (calibration.get("zero_shot_organs") or {}).items()}


@dataclass
class ModelGridOutput:
    """Network output on the model grid (the body box), before post-processing."""

    probs: np.ndarray | None  # (C, X, Y, Z) float32 P_c (None: let go, see segment())
    anomaly_raw: np.ndarray | None  # (X, Y, Z) float32: 1 - max organ probability, ungated
    gmap: grid.GridMap
    box: tuple[slice, slice, slice]


@dataclass
class VolumeSegmentation:
    """Result on the source grid (same axes and shape as the input array)."""

    labels: np.ndarray  # 1-based index into ``catalog`` per voxel, 0 = background
    catalog: Catalog  # the classes of the channels, in channel order
    anomaly: np.ndarray | None  # float32 in [0, 1], gated by the predicted organ envelope
    found: dict[str, int]  # class name -> voxels on the source grid
    timings: dict[str, float]
    decisions: Decisions = field(repr=False)
    model_output: ModelGridOutput = field(repr=False)

    def probability(self, name: str, output: bool = False) -> np.ndarray:
        """P_c of one class on the source grid (float32). ``output=True``: for zero-shot classes
        the output probability max(P_c, Z_c) instead of the raw P_c."""
        c = self.catalog.names.index(name)
        m = self.model_output
        if m.probs is None:
            raise ValueError("the model-grid probabilities were not kept (segment(keep_model_output=False))")
        values = m.probs[c]
        if output and c in self.decisions.zero_shot:
            values = np.maximum(values, self.decisions.zero_shot[c])
        return to_source(values, m.gmap, m.box)

    def anomaly_slabs(self) -> Iterator[tuple[int, np.ndarray]]:
        """The gated anomaly map on the source grid as blocks of planes (``to_source_slabs``):
        the same values as ``segment(want_anomaly=True)`` gives, without a source-sized array."""
        m = self.model_output
        return to_source_slabs(self.decisions.anomaly, m.gmap, m.box)


def _upsampler(values: np.ndarray, gmap: grid.GridMap, box: tuple[slice, ...]) -> slabs.Upsampled:
    """A model-grid (box) map, zero outside the box, ready to be upsampled slab by slab."""
    full = np.zeros(gmap.model_shape, dtype=np.float32)
    full[box] = values
    return slabs.Upsampled(full, gmap.oriented_shape)


def to_source(values: np.ndarray, gmap: grid.GridMap, box: tuple[slice, ...],
              like: np.ndarray | None = None) -> np.ndarray:
    """A model-grid (box) map onto the source grid, trilinear, zero outside the body box (float32).

    Computed in slabs (model/slabs.py: the same values as one whole-volume interpolation), so
    the only source-sized array is the result; ``like``: an array whose memory layout the
    result takes (the input volume), so that a caller's transpose back needs no copy."""
    up = _upsampler(values, gmap, box)
    out = np.zeros(gmap.source_shape, dtype=np.float32) if like is None else np.zeros_like(like, dtype=np.float32, subok=False)
    view = gmap.oriented_view(out)
    X, Y, Z = gmap.oriented_shape
    for z0, z1 in slabs.slab_ranges(Z, X * Y):
        part = up.slab(z0, z1)
        if part is not None:
            y, z, vals = part
            view[:, y, z] = vals
    return out


def to_source_slabs(values: np.ndarray, gmap: grid.GridMap,
                    box: tuple[slice, ...]) -> Iterator[tuple[int, np.ndarray]]:
    """``to_source`` one block of source planes at a time: (k0, block) in ascending k0, block
    (I, J, k1 - k0) float32 holding planes k0 .. k1 - 1 of the source-grid map, the same values.

    Made for writers that stream a volume (NIfTI stores planes along the last axis one after
    the other): only one block of about ``slabs.SLAB_VOXELS`` exists at a time. Blocks follow
    the oriented S axis; when the source's last axis is not S (a sagittal or coronal series),
    the whole map comes as one block."""
    if int(gmap.ornt[2, 0]) != 2:
        yield 0, to_source(values, gmap, box)
        return
    flipped = float(gmap.ornt[2, 1]) < 0
    up = _upsampler(values, gmap, box)
    I, J, K = gmap.source_shape
    Z = gmap.oriented_shape[2]
    for k0, k1 in slabs.slab_ranges(K, I * J):
        block = np.zeros((I, J, k1 - k0), dtype=np.float32)
        view = gmap.oriented_view(block)  # (X, Y, k1 - k0); reversed along S when flipped
        z0 = Z - k1 if flipped else k0
        part = up.slab(z0, z0 + (k1 - k0))
        if part is not None:
            y, z, vals = part
            view[:, y, z.start - z0:z.stop - z0] = vals
        yield k0, block


def sex_of(value: str | None) -> str | None:
    """"female" / "male" from DICOM PatientSex ("F" / "M") or those words; None for anything else
    ("O", empty, missing): then every class may be drawn."""
    v = (value or "").strip().lower()
    return {"f": "female", "female": "female", "m": "male", "male": "male"}.get(v)


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available on this machine")
    return device


class VolumeSegmenter:
    """A loaded model and its inference settings; ``segment`` runs one volume."""

    def __init__(self, predictor: Predictor, catalog: Catalog, settings: InferenceSettings,
                 device: torch.device | str = "cpu", amp: bool = True, model_version: str = "") -> None:
        if list(catalog.names) != list(predictor.class_names):
            raise ValueError("catalog order must equal the predictor's channels")
        self.device = torch.device(device)
        self.predictor = predictor.to(self.device).eval()
        self.catalog = catalog
        self.settings = settings
        self.amp = amp and self.device.type == "cuda"
        self.model_version = model_version

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path | LoadedCheckpoint,
        catalog: Catalog | None = None,
        device: str = "auto",
        overlap: float | None = None,
        sw_batch_size: int | None = None,
        amp: bool = True,
        clip_checkpoint: str | Path | None = None,
        extra_names: Sequence[str] = (),
    ) -> VolumeSegmenter:
        """``catalog``: the site's catalog (the checkpoint's classes first, appended classes become
        zero-shot channels); default: the shipped catalog."""
        site = catalog if catalog is not None else load_catalog()
        loaded = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load_checkpoint(
            checkpoint, map_location="cpu", expect_catalog=site)
        predictor = Predictor.from_checkpoint(loaded, catalog=site, clip_checkpoint=clip_checkpoint,
                                              extra_names=extra_names)
        by_name = {e.name: e for e in site}
        missing = [n for n in predictor.class_names if n not in by_name]
        if missing:
            raise ValueError(f"classes {missing} need catalog entries (kind, parents, coding)")
        channels = Catalog([by_name[n] for n in predictor.class_names])
        settings = InferenceSettings.from_checkpoint(loaded, overlap=overlap, sw_batch_size=sw_batch_size)
        return cls(predictor, channels, settings, pick_device(device), amp, loaded.version)

    def with_settings(self, **changes: Any) -> VolumeSegmenter:
        """The same model with other inference settings (calibration, experiments)."""
        return VolumeSegmenter(self.predictor, self.catalog, replace(self.settings, **changes), self.device,
                               self.amp, self.model_version)

    # ---------------------------------------------------------------- stages
    @torch.no_grad()
    def predict(self, image_hu: np.ndarray, affine_ras: np.ndarray, progress: bool = False,
                timings: dict[str, float] | None = None) -> ModelGridOutput:
        """Preprocess and run the sliding window; probabilities on the model grid (body box)."""
        from monai.inferers import sliding_window_inference

        timings = timings if timings is not None else {}
        s = self.settings
        t0 = time.perf_counter()
        gmap = grid.plan(tuple(image_hu.shape), affine_ras, s.spacing)
        # The source stays in its own dtype (int16 HU from the assembly); only the model grid
        # and a chunk of planes at a time exist as float32 (model/slabs.py, same values).
        hu = slabs.downsample(gmap.oriented_view(image_hu), gmap.model_shape)
        spill.release(image_hu)  # a file-backed source (model/spill.py) leaves memory until read again
        image = grid.window(hu, *s.hu_window)
        del hu
        box = grid.foreground_box(image, s.crop_margin)
        crop = np.ascontiguousarray(image[box])
        pad = [max(0, r - n) for r, n in zip(s.roi_size, crop.shape)]
        x = torch.from_numpy(np.pad(crop, [(0, p) for p in pad]))[None, None].to(self.device)
        timings["preprocess_s"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        dtype = torch.bfloat16 if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
        with torch.autocast(self.device.type, dtype=dtype, enabled=self.amp):
            out = sliding_window_inference(
                x, s.roi_size, s.sw_batch_size, self.predictor, overlap=s.overlap, mode=s.blend_mode,
                sw_device=self.device, device=torch.device("cpu"), progress=progress,
            )
        channels = out[0].float()[(slice(None), *(slice(0, n) for n in crop.shape))].numpy()
        timings["inference_s"] = time.perf_counter() - t1
        n = len(self.catalog)
        return ModelGridOutput(probs=channels[:n], anomaly_raw=channels[n], gmap=gmap, box=box)

    def decide(self, output: ModelGridOutput, patient_sex: str | None = None) -> Decisions:
        """Post-processing on the model grid; ``patient_sex`` (DICOM M / F / O or the words, see
        ``sex_of``): classes of the other sex (catalog ``sex``) are not drawn."""
        s = self.settings
        seen = None if s.seen_tumors is None else set(s.seen_tumors)
        thresholds = self.channel_thresholds(patient_sex)
        # decide() runs before segment() lets the model-grid arrays go, so both are set here
        return postprocess(
            output.probs, output.anomaly_raw,  # type: ignore[arg-type]
            list(self.catalog), thresholds, seen,
            s.zero_shot_threshold, output.gmap.model_spacing, s.close_mm, s.gate_fraction,
            {i: s.zero_shot_organs[e.name] for i, e in enumerate(self.catalog) if e.name in s.zero_shot_organs},
        )

    def channel_thresholds(self, patient_sex: str | None = None) -> list[float]:
        """Each channel's threshold for this patient: calibrated or the catalog's, infinite for a
        class not drawn (not found, never labelled, or of the other sex)."""
        sex = sex_of(patient_sex)
        return [self.settings.threshold_of(e) if e.drawn_for(sex) else math.inf for e in self.catalog]

    def segment(self, image_hu: np.ndarray, affine_ras: np.ndarray, want_anomaly: bool = True,
                progress: bool = False, keep_model_output: bool = True,
                patient_sex: str | None = None) -> VolumeSegmentation:
        """image_hu: (i, j, k) HU array; affine_ras: its 4x4 voxel -> RAS mm affine.

        ``keep_model_output=False``: the class probabilities on the model grid are let go once
        post-processing has decided (the node does not need them): the source-grid stage then
        runs without them in memory (``model_output`` keeps the grid map, ``probs`` is None).
        ``patient_sex``: "female", "male" or None (unknown; ``sex_of`` reads DICOM's M / F / O)."""
        timings: dict[str, float] = {}
        output = self.predict(image_hu, affine_ras, progress, timings)
        t2 = time.perf_counter()
        decisions = self.decide(output, patient_sex)
        if not keep_model_output:
            output = ModelGridOutput(probs=None, anomaly_raw=None, gmap=output.gmap, box=output.box)
        labels, found = self._labels(output, decisions, like=image_hu)
        anomaly = to_source(decisions.anomaly, output.gmap, output.box, like=image_hu) if want_anomaly else None
        timings["postprocess_s"] = time.perf_counter() - t2
        return VolumeSegmentation(labels=labels, catalog=self.catalog, anomaly=anomaly, found=found, timings=timings,
                                  decisions=decisions, model_output=output)

    def _labels(self, output: ModelGridOutput, d: Decisions,
                like: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, int]]:
        """Label volume on the source grid: each kept class's score, gated by its (1-voxel dilated)
        mask on the model grid, upsampled and thresholded at 1.0; where organs overlap the smaller
        mask wins ("nested") or the higher score ("score": settings.organ_overlap); tumours are
        drawn over organs (and compete among themselves).

        Slab by slab along the last oriented axis (model/slabs.py gives the values of one
        whole-volume interpolation): the scores exist on the source grid one slab at a time, the
        only source-sized array is the uint8 label map (laid out like ``like``)."""
        gmap, box = output.gmap, output.box
        dtype = np.uint8 if len(self.catalog) < 256 else np.uint16
        organs = [i for i, e in enumerate(self.catalog) if e.is_organ]
        nested = self.settings.organ_overlap == "nested"
        if nested:  # drawn largest first: a smaller organ's voxels are drawn over a larger one's
            organs.sort(key=lambda i: -int(d.masks[i].sum()))
        order = organs + [i for i, e in enumerate(self.catalog) if not e.is_organ]
        maps: list[tuple[ClassEntry, slabs.Upsampled]] = []
        for i in order:
            if i not in d.scores:
                continue
            maps.append((self.catalog[i], _upsampler(d.scores[i].gated(d.masks[i], 1), gmap, box)))
        source = np.zeros(gmap.source_shape, dtype=dtype) if like is None else np.zeros_like(like, dtype=dtype, subok=False)
        view = gmap.oriented_view(source)
        counts = np.zeros(len(self.catalog) + 1, dtype=np.int64)
        X, Y, Z = gmap.oriented_shape
        for z0, z1 in slabs.slab_ranges(Z, X * Y):
            labels = np.zeros((X, Y, z1 - z0), dtype=dtype)
            best = np.zeros(labels.shape, dtype=np.float32)
            tumor_best = np.zeros(labels.shape, dtype=np.float32)
            for entry, up in maps:
                part = up.slab(z0, z1)
                if part is None:  # the class's score is 0 throughout the slab: never >= 1.0
                    continue
                y, z, vals = part
                at = (slice(None), y, slice(z.start - z0, z.stop - z0))
                lab, bst, tum = labels[at], best[at], tumor_best[at]
                above = vals >= 1.0
                if entry.is_organ:
                    sel = above & (tum == 0)
                    if not nested:  # the best organ score so far is only read by this rule
                        sel &= vals > bst
                        bst[sel] = vals[sel]
                else:
                    sel = above & (vals > tum)
                    tum[sel] = vals[sel]
                lab[sel] = entry.index
            view[..., z0:z1] = labels
            counts += np.bincount(labels.ravel(), minlength=len(counts))[:len(counts)]
        found = {e.name: int(counts[e.index]) for e in self.catalog if counts[e.index] > 0}
        return source, found
