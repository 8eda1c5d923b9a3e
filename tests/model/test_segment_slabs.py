"""The source-grid stage of ``VolumeSegmenter`` (labels, anomaly) computed in slabs equals the
whole-volume computation it replaced, voxel for voxel, whatever the orientation and slab size."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import model.slabs as slabs_module
from model import grid
from model.catalog import load_catalog
from model.postprocess import Decisions, crop_score, dilate
from model.segment import ModelGridOutput, VolumeSegmenter, to_source, to_source_slabs

SPACING = (3.0, 3.0, 3.0)
AFFINES = {  # (i, j, k) -> RAS: DICOM axial (LPS, i = column), flipped z, and a sagittal stack
    "axial": np.array([[-0.8, 0, 0, 10], [0, -0.8, 0, 20], [0, 0, 1.5, -30], [0, 0, 0, 1]]),
    "feet_first": np.array([[-0.8, 0, 0, 10], [0, -0.8, 0, 20], [0, 0, -1.5, 30], [0, 0, 0, 1]]),
    "sagittal": np.array([[0, 0, 1.25, 0], [0.9, 0, 0, 0], [0, -0.9, 0, 0], [0, 0, 0, 1]]),
}


def whole_volume_labels(catalog, output: ModelGridOutput, d: Decisions, full_scores,
                        rule: str = "score") -> np.ndarray:
    """The previous implementation (one source-sized float32 interpolation per class, scores on
    the whole model grid); ``rule``: where organs overlap, the higher score or the smaller mask wins."""
    gmap, box = output.gmap, output.box
    labels = np.zeros(gmap.oriented_shape, dtype=np.uint8)
    best = np.zeros(gmap.oriented_shape, dtype=np.float32)
    tumor_best = np.zeros(gmap.oriented_shape, dtype=np.float32)
    organs = [i for i, e in enumerate(catalog) if e.is_organ]
    if rule == "nested":
        organs.sort(key=lambda i: -int(d.masks[i].sum()))
    order = organs + [i for i, e in enumerate(catalog) if not e.is_organ]
    for i in order:
        if i not in d.scores:
            continue
        entry = catalog[i]
        gated = np.zeros(gmap.model_shape, dtype=np.float32)
        gated[box] = np.where(dilate(d.masks[i], 1), full_scores[i], 0.0)
        up = grid.resample(torch.from_numpy(gated)[None], gmap.oriented_shape)[0].numpy()
        above = up >= 1.0
        if entry.is_organ:
            sel = above & (tumor_best == 0) & ((up > best) if rule == "score" else True)
            best[sel] = up[sel]
        else:
            sel = above & (up > tumor_best)
            tumor_best[sel] = up[sel]
        labels[sel] = entry.index
    return gmap.from_oriented(labels)


def whole_volume_to_source(values, gmap, box) -> np.ndarray:
    full = np.zeros(gmap.model_shape, dtype=np.float32)
    full[box] = values
    return gmap.from_oriented(grid.resample(torch.from_numpy(full)[None], gmap.oriented_shape)[0].numpy())


def blob(shape, centre, radius, peak, rng) -> np.ndarray:
    idx = np.indices(shape).astype(np.float32)
    r2 = sum((idx[a] - centre[a]) ** 2 for a in range(3)) / radius ** 2
    return (peak * np.exp(-r2) * rng.uniform(0.9, 1.1, shape)).astype(np.float32)


def case(name: str, source_shape, seed: int):
    """A model-grid output with overlapping organ and tumour scores (ties and near-threshold values)."""
    rng = np.random.default_rng(seed)
    catalog = load_catalog()
    gmap = grid.plan(source_shape, AFFINES[name], SPACING)
    box = tuple(slice(1, n - 1) if n > 4 else slice(0, n) for n in gmap.model_shape)
    shape = tuple(s.stop - s.start for s in box)
    organs = [i for i, e in enumerate(catalog) if e.is_organ][:4]
    tumors = [i for i, e in enumerate(catalog) if not e.is_organ][:2]
    masks = np.zeros((len(catalog), *shape), dtype=bool)
    scores = {}
    for k, i in enumerate(organs + tumors):
        centre = [rng.uniform(0.2, 0.8) * n for n in shape]
        score = blob(shape, centre, max(1.5, min(shape) / 3), 2.5 if i in organs else 1.8, rng)
        if k == 1:
            score = np.round(score * 4) / 4  # exact ties between organs and values exactly 1.0
        scores[i] = score
        masks[i] = score >= 1.0
    anomaly = np.where(scores[organs[0]] > 0.3, rng.uniform(0, 1, shape), 0).astype(np.float32)
    kept = {i: crop_score(v, masks[i]) for i, v in scores.items()}  # as post-processing keeps them
    d = Decisions(masks=masks, scores=kept, anomaly=anomaly, envelope=anomaly > 0)
    output = ModelGridOutput(probs=np.zeros((0, *shape), np.float32), anomaly_raw=anomaly, gmap=gmap, box=box)
    return catalog, output, d, scores


@pytest.mark.parametrize("name", sorted(AFFINES))
@pytest.mark.parametrize("source_shape", [(37, 41, 29), (30, 25, 61)])
@pytest.mark.parametrize("slab_voxels", [1, 2000, 1 << 22])
@pytest.mark.parametrize("rule", ["nested", "score"])
def test_slabbed_labels_and_anomaly_equal_whole_volume(monkeypatch, name, source_shape, slab_voxels, rule):
    monkeypatch.setattr(slabs_module, "SLAB_VOXELS", slab_voxels)
    monkeypatch.setattr(slabs_module.slab_ranges, "__defaults__", (slab_voxels,))
    catalog, output, d, full_scores = case(name, source_shape, seed=slab_voxels % 97 + len(name))
    # the input's layout: a (k, j, i) C-ordered volume seen as (i, j, k), as the node passes it
    like = np.zeros(source_shape[::-1], np.int16).transpose(2, 1, 0)
    owner = SimpleNamespace(catalog=catalog, settings=SimpleNamespace(organ_overlap=rule))
    labels, found = VolumeSegmenter._labels(owner, output, d, like=like)
    ref = whole_volume_labels(catalog, output, d, full_scores, rule)
    assert labels.shape == ref.shape and labels.dtype == ref.dtype
    assert np.array_equal(labels, ref)
    assert len(np.unique(ref)) >= 3  # the case exercises competition, not just background
    counts = np.bincount(ref.ravel(), minlength=len(catalog) + 1)
    assert found == {e.name: int(counts[e.index]) for e in catalog if counts[e.index] > 0}
    assert labels.transpose(2, 1, 0).flags.c_contiguous  # no copy needed to go back to (z, y, x)
    anomaly = to_source(d.anomaly, output.gmap, output.box, like=like)
    assert np.array_equal(anomaly, whole_volume_to_source(d.anomaly, output.gmap, output.box))


@pytest.mark.parametrize("name", sorted(AFFINES))
@pytest.mark.parametrize("slab_voxels", [1, 2000, 1 << 22])
def test_anomaly_blocks_are_the_source_map_plane_by_plane(monkeypatch, name, slab_voxels):
    # The streamed anomaly (dsm-node infer writes it block by block): blocks of source planes in
    # ascending order whose concatenation is to_source's map, also when the slice axis runs
    # feet first (reversed on the oriented grid); a sagittal stack comes as one block.
    monkeypatch.setattr(slabs_module, "SLAB_VOXELS", slab_voxels)
    monkeypatch.setattr(slabs_module.slab_ranges, "__defaults__", (slab_voxels,))
    _catalog, output, d, _scores = case(name, (30, 25, 61), seed=slab_voxels % 89 + len(name))
    blocks = list(to_source_slabs(d.anomaly, output.gmap, output.box))
    starts = [k0 for k0, _ in blocks]
    assert starts == sorted(starts) and starts[0] == 0
    assert all(k0 + b.shape[2] == nxt for (k0, b), nxt in zip(blocks, starts[1:] + [61]))
    whole = np.concatenate([b for _, b in blocks], axis=2)
    ref = to_source(d.anomaly, output.gmap, output.box)
    assert whole.dtype == np.float32 and np.array_equal(whole, ref) and ref.max() > 0
    if name != "sagittal" and slab_voxels < (1 << 22):
        assert len(blocks) > 1
