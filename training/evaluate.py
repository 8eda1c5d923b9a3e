"""dsm-train eval: per-case / per-class DSC and tumour OOD metrics, JSON + Markdown + overlays.

Everything is measured on the model's preprocessing grid (RAS, model spacing, cropped to the
body), labels resampled there with nearest neighbour. Masks are the class probabilities
thresholded at each class's catalog threshold, without post-processing (no connected-component
filtering), so the figures describe the network itself.

OOD metrics (tumour classes): voxel-wise AUROC and FPR at 95 % TPR of the anomaly channel,
inside the evaluation region = the ground-truth parent organ(s) of the tumour (tumour voxels
included, as they count for their parent) dilated by ``dilation_mm``. Positives are the voxels
of that tumour class, negatives every other region voxel.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from scipy import ndimage

from model.catalog import Catalog, load_catalog
from model.checkpoint import LoadedCheckpoint, load_checkpoint
from model.inference import Predictor

from .data import case_items, parse_phantom_spec, phantom_items
from .datalist import read_datalist
from .losses import multi_hot
from .metrics import auroc, dice_score, fpr_at_tpr, nanmean
from .plots import plot_overlay
from .registry import Registry, load_registry
from .transforms import PipelineConfig, preprocess_transforms

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "dsm-small-demo.pt"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def seen_tumours(ckpt: LoadedCheckpoint, registry: Registry, catalog: Catalog) -> set[str]:
    """Tumour classes the checkpoint was trained with labels for (its training templates)."""
    tr = ckpt.training or {}
    if tr.get("seen_tumours") is not None:
        return set(tr["seen_tumours"])
    seen: set[str] = set()
    for key in tr.get("datasets", []) or []:
        if key in registry:
            seen |= {c for c in registry[key].annotated if catalog.by_name(c).is_tumor}
    return seen


def _items(data: str, root: str | None, spacing: float) -> list[dict]:
    spec = parse_phantom_spec(data)
    if spec is not None:
        spec.setdefault("tumours", "all")
        spec.setdefault("spacing", spacing)
        return phantom_items(dataset="phantom_all", **spec)
    return case_items(read_datalist(data, root))


def _ball(radius_vox: np.ndarray) -> np.ndarray:
    r = np.maximum(np.floor(radius_vox).astype(int), 0)
    grids = np.ogrid[tuple(slice(-n, n + 1) for n in r)]
    return sum((g / max(rv, 1e-6)) ** 2 for g, rv in zip(grids, radius_vox)) <= 1.0


def evaluate(checkpoint: Path, data: str, out: Path, root: str | None = None, device: str | None = None,
             overlays: int = 3, dilation_mm: float = 10.0, max_cases: int | None = None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    catalog = load_catalog()
    registry = load_registry(catalog=catalog)
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    predictor = Predictor.from_checkpoint(ckpt).to(dev).eval()
    names = predictor.class_names
    n_out = len(names)
    cfg = ckpt.config
    pp = ckpt.preprocessing
    pipe = PipelineConfig(spacing=tuple(pp["spacing"]), roi=tuple(pp["roi_size"]), hu_window=tuple(pp["hu_window"]),
                          orientation=pp["orientation"])
    items = _items(data, root, float(np.mean(pp["spacing"])))
    if max_cases:
        items = items[:max_cases]
    pre = preprocess_transforms(registry, pipe, for_training=False)
    seen = seen_tumours(ckpt, registry, catalog)
    voxel_mm = np.asarray(pipe.spacing, float)
    ball = _ball(dilation_mm / voxel_mm)
    thresholds = torch.tensor([catalog.by_name(n).threshold if n in catalog.names else 0.5 for n in names])

    per_case = []
    for ci, item in enumerate(items):
        s = pre(item)
        image = torch.as_tensor(s["image"]).unsqueeze(0).float().to(dev)
        with torch.no_grad():
            pred = sliding_window_inference(image, pipe.roi, cfg.inference.sw_batch_size, predictor,
                                            overlap=cfg.inference.overlap, mode="gaussian")[0].cpu()
        probs, anomaly = pred[:n_out], pred[n_out]
        masks = probs > thresholds[:, None, None, None]
        target = multi_hot(torch.as_tensor(s["label"]).unsqueeze(0), len(catalog))[0] > 0.5
        ann = torch.as_tensor(s["annotated"]).bool()
        rec: dict[str, Any] = {"case": s.get("case", item.get("case")), "dataset": s["dataset"], "dsc": {}, "auroc": {},
                               "fpr95": {}, "auroc_pc": {}, "tumour_voxels": {}}
        for c, name in enumerate(names[: len(catalog)]):
            if not ann[c] or not target[c].any():
                continue
            rec["dsc"][name] = dice_score(masks[c], target[c])
            entry = catalog[c]
            if entry.is_tumor:
                rec["tumour_voxels"][name] = int(target[c].sum())
                parents = [catalog.index_of(p) for p in entry.parents]
                if not all(ann[p] for p in parents):
                    continue  # parent organ not labelled: no evaluation region
                region = target[parents].any(0).numpy()
                region = ndimage.binary_dilation(region, structure=ball)
                scores = anomaly.numpy()[region]
                labels = target[c].numpy()[region]
                rec["auroc"][name] = auroc(scores, labels)
                rec["fpr95"][name] = fpr_at_tpr(scores, labels, 0.95)
                # Second score, same region: the class's own probability P_c (for an unseen class
                # it comes from text alignment alone). Reported beside the anomaly score because
                # tumour voxels count for their parent organ, so the organ queries claim them.
                rec["auroc_pc"][name] = auroc(probs[c].numpy()[region], labels)
        per_case.append(rec)
        if ci < overlays:
            _overlay(s, masks, probs, anomaly, catalog, out / f"overlay_{ci:02d}_{rec['case']}.png")

    summary = _summarise(per_case, catalog, seen)
    summary.update({
        "checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(Path(checkpoint)),
        "checkpoint_version": ckpt.version, "data": data, "n_cases": len(per_case),
        "grid": f"RAS, {list(pipe.spacing)} mm, cropped to the body (HU > {pipe.hu_window[0]:g})",
        "masks": "class probability > catalog threshold (0.5), no post-processing",
        "ood_region": f"ground-truth parent organ(s) incl. tumour voxels, dilated by {dilation_mm:g} mm",
        "ood_score": "anomaly channel of the Predictor: 1 - max over organ queries of sigmoid(M_q)",
        "pc_score": "the tumour class's own probability P_c (text alignment only for unseen classes), same region",
        "seen_tumour_classes": sorted(seen),
    })
    (out / "per_case.json").write_text(json.dumps(per_case, indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(markdown_report(summary))
    return summary


def _per_class(per_case: list[dict], key: str) -> dict[str, float | None]:
    names = sorted({n for r in per_case for n in r.get(key, {})})
    return {n: nanmean([r[key][n] for r in per_case if n in r.get(key, {})]) for n in names}


def _summarise(per_case: list[dict], catalog: Catalog, seen: set[str]) -> dict[str, Any]:
    dsc, au, fp = _per_class(per_case, "dsc"), _per_class(per_case, "auroc"), _per_class(per_case, "fpr95")
    au_pc = _per_class(per_case, "auroc_pc")
    counts = {n: sum(1 for r in per_case if n in r["dsc"]) for n in dsc}
    organs = [n for n in catalog.names if catalog.by_name(n).is_organ and n in dsc]
    tumours = [n for n in catalog.names if catalog.by_name(n).is_tumor and n in dsc]
    seen_t = [n for n in tumours if n in seen]
    unseen_t = [n for n in tumours if n not in seen]
    return {
        "organ_dsc_mean": nanmean([dsc[n] for n in organs]),
        "seen_tumor_dsc_mean": nanmean([dsc[n] for n in seen_t]),
        "unseen_tumor_dsc_mean": nanmean([dsc[n] for n in unseen_t]),
        "seen_tumor_auroc_mean": nanmean([au[n] for n in seen_t if n in au]),
        "unseen_tumor_auroc_mean": nanmean([au[n] for n in unseen_t if n in au]),
        "unseen_tumor_fpr95_mean": nanmean([fp[n] for n in unseen_t if n in fp]),
        "seen_tumor_auroc_pc_mean": nanmean([au_pc[n] for n in seen_t if n in au_pc]),
        "unseen_tumor_auroc_pc_mean": nanmean([au_pc[n] for n in unseen_t if n in au_pc]),
        "per_class": {n: {"kind": catalog.by_name(n).kind, "seen": (n in seen) if n in tumours else None,
                          "dsc": dsc[n], "auroc": au.get(n), "fpr95": fp.get(n), "auroc_pc": au_pc.get(n),
                          "cases": counts[n]}
                      for n in organs + tumours},
    }


def _fmt(v: float | None, pct: bool = True) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


def markdown_report(s: dict[str, Any]) -> str:
    """Tables laid out like the paper's Table 2 (organ DSC) and Table 3 (tumours, seen/unseen)."""
    pc = s["per_class"]
    organs = [n for n, v in pc.items() if v["kind"] == "organ"]
    tumours = [n for n, v in pc.items() if v["kind"] == "tumor"]
    lines = [
        f"# Evaluation of `{Path(s['checkpoint']).name}` ({s['checkpoint_version']})", "",
        f"- data: `{s['data']}` ({s['n_cases']} cases)",
        f"- checkpoint sha256: `{s['checkpoint_sha256']}`",
        f"- grid: {s['grid']}", f"- masks: {s['masks']}",
        f"- OOD region: {s['ood_region']}; score: {s['ood_score']}",
        f"- second score (column AUROC P_c): {s.get('pc_score', '-')}", "",
        "## Table 2 layout: organ segmentation, DSC (%)", "",
    ]
    if organs:
        lines += ["| Model | " + " | ".join(organs) + " | Mean |",
                  "|---|" + "---|" * (len(organs) + 1),
                  f"| {s['checkpoint_version']} | " + " | ".join(_fmt(pc[n]["dsc"]) for n in organs)
                  + f" | {_fmt(s['organ_dsc_mean'])} |", ""]
    else:
        lines += ["(no organ ground truth in these cases)", ""]
    lines += ["## Table 3 layout: tumours (seen = trained with labels, unseen = zero-shot)", "",
              "| Tumour | Setting | DSC (%) | AUROC (%) | FPR95 (%) | AUROC P_c (%) | Cases |", "|---|---|---|---|---|---|---|"]
    for n in tumours:
        v = pc[n]
        lines.append(f"| {n} | {'seen' if v['seen'] else 'unseen'} | {_fmt(v['dsc'])} | {_fmt(v['auroc'])} | "
                     f"{_fmt(v['fpr95'])} | {_fmt(v.get('auroc_pc'))} | {v['cases']} |")
    lines += ["", "| Summary | value |", "|---|---|"]
    for k in ("organ_dsc_mean", "seen_tumor_dsc_mean", "unseen_tumor_dsc_mean", "seen_tumor_auroc_mean",
              "unseen_tumor_auroc_mean", "unseen_tumor_fpr95_mean", "seen_tumor_auroc_pc_mean",
              "unseen_tumor_auroc_pc_mean"):
        lines.append(f"| {k} | {_fmt(s.get(k), pct=False)} |")
    return "\n".join(lines) + "\n"


def _overlay(s: dict, masks: torch.Tensor, probs: torch.Tensor, anomaly: torch.Tensor, catalog: Catalog,
             path: Path) -> None:
    n = len(catalog)
    truth = np.asarray(s["label"][0]).astype(np.int32)
    m = np.zeros((n, *truth.shape), bool)
    p = np.zeros((n, *truth.shape), np.float32)
    k = min(n, masks.shape[0])  # a Stage-1 model has organ channels only
    m[:k], p[:k] = masks[:k].numpy(), probs[:k].numpy()
    # Prediction map: most probable organ above threshold, tumours drawn on top.
    organ_ix = [i for i, e in enumerate(catalog) if e.is_organ]
    tum_ix = [i for i, e in enumerate(catalog) if e.is_tumor]
    pred = np.zeros(truth.shape, np.int32)
    po = np.where(m[organ_ix], p[organ_ix], -1)
    best = po.argmax(0)
    pred[po.max(0) > 0] = np.asarray(organ_ix)[best[po.max(0) > 0]] + 1
    for i in tum_ix:
        pred[m[i]] = i + 1
    plot_overlay(np.asarray(s["image"][0]), truth, pred, [e.color for e in catalog], path,
                 title=str(s.get("case", "")), anomaly=anomaly.numpy())
