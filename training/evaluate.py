"""dsm-train eval: per-case / per-class DSC and tumour OOD metrics, JSON + Markdown + overlays.

Everything is measured on each case's own grid, with the node's inference path
(``model.segment.VolumeSegmenter``: preprocessing, sliding window, calibrated thresholds,
post-processing, zero-shot tumours, back to the source grid), so a figure here is a figure of
what the node sends to a PACS.

DSC: per class where the reference is non-empty, of the final label map (organs = tissue,
tumours drawn over organs; unseen tumour classes come from the zero-shot path).

OOD metrics (tumour classes): voxel-wise AUROC and FPR at 95 % TPR of the anomaly output A
(1 - max organ probability inside the predicted organ envelope) against the tumour's reference
voxels, in two regions built from the reference:
* primary: the parent envelope = parent organ(s) plus their tumours, hole-filled, no dilation;
* secondary: that envelope dilated by ``dilation_mm``, with its *oracle ceiling*: the AUROC a
  perfect organ segmentation (score 1 outside every reference organ, 0 inside) reaches there —
  half of that shell is fat and muscle, which no organ claims.

``--data real``: the two real CTs of ../shared/data (evaluation only): per-organ DSC with the
documented reference mappings (config/datasets.yaml ``tcia_cb001``, ``totalseg_v2_example``) and
the volume of abdominal organs predicted above the diaphragm (the lungs' base surface).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from model.catalog import Catalog, load_catalog
from model.envelope import ball, ball_radius_vox
from model.resources import package_file
from model.segment import InferenceSettings, VolumeSegmentation, VolumeSegmenter

from .calibration import Case, load_cases
from .data import spec_items
from .metrics import auroc, dice_score, fpr_at_tpr, nanmean
from .plots import plot_overlay
from .real_data import MERGED_REFERENCES
from .registry import load_registry

DEFAULT_WEIGHTS = package_file("model", "weights", "dsm-small-demo.pt")
# Organs that lie below the diaphragm (the esophagus, aorta and postcava cross it; lungs above).
ABDOMINAL = ("Spleen", "Right Kidney", "Left Kidney", "Gall Bladder", "Liver", "Stomach", "Portal Vein and Splenic Vein",
             "Pancreas", "Right Adrenal Gland", "Left Adrenal Gland", "Duodenum", "Hepatic Vessel", "Colon",
             "Intestine", "Rectum", "Bladder", "Prostate", "Celiac Trunk")
DIAPHRAGM_MARGIN_MM = 10.0
SUMMARY_KEYS = ("organ_dsc_mean", "seen_tumor_dsc_mean", "unseen_tumor_dsc_mean", "seen_tumor_auroc_mean",
                "unseen_tumor_auroc_mean", "unseen_tumor_fpr95_mean", "unseen_tumor_auroc_dilated_mean",
                "unseen_tumor_oracle_auroc_dilated_mean", "seen_tumor_auroc_pc_mean", "unseen_tumor_auroc_pc_mean")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _items(data: str, root: str | None, spacing: float) -> list[dict]:
    # Phantoms are scored as "phantom_all" whatever tumour types a spec asks for: the generator
    # labels every lesion it places, so a type it did not place is truly absent.
    return spec_items(data, root, spacing, tumours="all", real=True, dataset="phantom_all")


def parent_envelope(case: Case, parents: list[int]) -> np.ndarray:
    """Reference parent envelope: the parent organs' voxels plus the tumour voxels whose parent
    they are, hole-filled (no dilation)."""
    region = np.isin(case.classes, parents) | np.isin(case.parents, parents) & (case.classes > 0)
    return ndimage.binary_fill_holes(region) if region.any() else region


def evaluate(checkpoint: Path, data: str, out: Path, root: str | None = None, device: str | None = None,
             overlays: int = 3, dilation_mm: float = 10.0, max_cases: int | None = None,
             segmenter: VolumeSegmenter | None = None, save_labels: bool = False) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``data`` and write per_case.json, summary.json, report.md,
    overlay PNGs and, with ``save_labels``, each case's label map as ``labels/<case>.nii.gz``
    on the case grid (what ``dsm-node infer`` writes for the same image)."""
    out.mkdir(parents=True, exist_ok=True)
    catalog = load_catalog()
    registry = load_registry(catalog=catalog)
    seg = segmenter or VolumeSegmenter.from_checkpoint(checkpoint, catalog=catalog, device=device or "auto")
    s = seg.settings
    items = _items(data, root, float(np.mean(s.spacing)))
    if max_cases:
        items = items[:max_cases]
    seen = set(s.seen_tumors or ())
    per_case = []
    known_sex = 0
    for ci, item in enumerate(items):
        case = load_cases([item], registry)[0]
        known_sex += case.sex is not None
        result = seg.segment(case.image, case.affine, want_anomaly=True, patient_sex=case.sex)
        rec = _score_case(case, result, catalog, item["dataset"], dilation_mm)
        per_case.append(rec)
        if save_labels:
            import nibabel as nib

            (out / "labels").mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(result.labels, case.affine), str(out / "labels" / f"{rec['case']}.nii.gz"))
        if ci < overlays:
            _overlay(case, result, catalog, out / f"overlay_{ci:02d}_{rec['case']}.png")

    summary = _summarise(per_case, catalog, seen)
    untrained = [e.name for e in catalog if s.untrained(e)]
    summary.update({
        "checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(Path(checkpoint)),
        "checkpoint_version": seg.model_version, "data": data, "n_cases": len(per_case),
        "grid": "each case's own grid (the node's inference path: model.segment)",
        "masks": ("final labels of model.segment: calibrated thresholds "
                  f"({len(s.thresholds)} classes; others the catalog's"
                  + (f"; not drawn, not found by the calibration: {', '.join(s.not_found)}" if s.not_found else "")
                  + (f"; not drawn, labelled by no training set: {', '.join(untrained)}" if untrained else "")
                  + f"), classes of the other sex not drawn (catalog 'sex'; {known_sex} of {len(per_case)} cases "
                  "of known sex), post-processing, "
                  f"zero-shot tumours (threshold {s.zero_shot_threshold:g}" + _zero_shot_organs(s) + ")"),
        "ood_region": "primary: reference parent envelope (parent organ(s) + their tumours, hole-filled, no "
                      f"dilation); secondary: that envelope dilated by {dilation_mm:g} mm (with its oracle ceiling)",
        "ood_score": "anomaly output A: 1 - max organ probability inside the predicted organ envelope "
                     f"(closed {s.close_mm:g} mm, hole-filled), 0 outside",
        "pc_score": "the tumour class's own probability P_c (text alignment only for unseen classes), primary region",
        "seen_tumour_classes": sorted(seen),
    })
    (out / "per_case.json").write_text(json.dumps(per_case, indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(markdown_report(summary))
    return summary


def _zero_shot_organs(s: InferenceSettings) -> str:
    """The organs whose zero-shot threshold the calibration raised or switched off, in words."""
    raised = [f"{n} {t:g}" for n, t in s.zero_shot_raised().items()]
    off = s.zero_shot_off()
    return ((f"; raised in {', '.join(raised)}" if raised else "")
            + (f"; none drawn in {', '.join(off)}" if off else ""))


def _score_case(case: Case, result: VolumeSegmentation, catalog: Catalog, dataset: str,
                dilation_mm: float) -> dict[str, Any]:
    labels = result.labels
    voxel_mm = np.sqrt((case.affine[:3, :3] ** 2).sum(axis=0))
    voxel_ml = float(np.prod(voxel_mm)) / 1000.0
    ann = case.annotated
    merged = MERGED_REFERENCES.get(dataset, {})
    rec: dict[str, Any] = {"case": case.name, "dataset": dataset, "dsc": {}, "auroc": {}, "fpr95": {},
                           "auroc_dilated": {}, "fpr95_dilated": {}, "oracle_auroc_dilated": {}, "auroc_pc": {},
                           "tumour_voxels": {}, "predicted_ml": {}}
    for name, n in result.found.items():
        rec["predicted_ml"][name] = round(n * voxel_ml, 2)
    organ_ref = np.isin(case.classes, [e.index for e in catalog if e.is_organ])
    shell = ball(ball_radius_vox(dilation_mm, voxel_mm))
    outputs = set(result.catalog.names)  # a Stage-1 model outputs organs only
    for entry in catalog:
        c = entry.index - 1
        truth = case.classes == entry.index
        if not ann[c] or not truth.any():
            continue
        if entry.name in outputs:
            pred_classes = [catalog.by_name(n).index for n in merged.get(entry.name, (entry.name,))]
            rec["dsc"][entry.name] = dice_score(np.isin(labels, pred_classes), truth)
        if not entry.is_tumor:
            continue
        rec["tumour_voxels"][entry.name] = int(truth.sum())
        parents = [catalog.by_name(p).index for p in entry.parents]
        if not all(ann[p - 1] for p in parents):
            continue  # parent organ not labelled: no evaluation region
        primary = parent_envelope(case, parents)
        a = result.anomaly
        rec["auroc"][entry.name] = auroc(a[primary], truth[primary])
        rec["fpr95"][entry.name] = fpr_at_tpr(a[primary], truth[primary], 0.95)
        if entry.name in outputs:
            rec["auroc_pc"][entry.name] = auroc(result.probability(entry.name)[primary], truth[primary])
        dilated = ndimage.binary_dilation(primary, structure=shell)
        rec["auroc_dilated"][entry.name] = auroc(a[dilated], truth[dilated])
        rec["fpr95_dilated"][entry.name] = fpr_at_tpr(a[dilated], truth[dilated], 0.95)
        oracle = (~organ_ref).astype(np.float32)
        rec["oracle_auroc_dilated"][entry.name] = auroc(oracle[dilated], truth[dilated])
    tumour_values = [e.index for e in catalog if e.is_tumor]
    drawn = np.isin(labels, tumour_values)
    if any(ann[v - 1] for v in tumour_values):
        # A case whose dataset labels lesions: every tumour voxel drawn outside all of them is a
        # false lesion (a dataset labelling some tumour types may hold others unlabelled; the
        # phantoms hold only the types they label).
        outside = drawn & ~np.isin(case.classes, tumour_values)
        rec["false_tumour_ml"] = {e.name: round(float((outside & (labels == e.index)).sum()) * voxel_ml, 2)
                                  for e in catalog if e.is_tumor and (outside & (labels == e.index)).any()}
    above = _above_diaphragm(case, labels, catalog, voxel_mm)
    if above is not None:
        rec["abdominal_above_diaphragm_ml"] = round(float(above.sum()) * voxel_ml, 2)
        rec["abdominal_above_diaphragm_by_class_ml"] = {
            e.name: round(float((above & (labels == e.index)).sum()) * voxel_ml, 2)
            for e in catalog if (above & (labels == e.index)).any()}
    return rec


def _above_diaphragm(case: Case, labels: np.ndarray, catalog: Catalog, voxel_mm: np.ndarray) -> np.ndarray | None:
    """Predicted abdominal-organ voxels (and their tumours) lying more than DIAPHRAGM_MARGIN_MM
    above the reference lungs' base surface in their (x, y) column; None without reference lungs.

    The base surface z_base(x, y) is the lowest lung voxel of each column that holds lung;
    columns without lung (mediastinum, heart) take the value of the nearest lung column.
    """
    lungs = [catalog.by_name(n).index for n in ("Right Lung", "Left Lung")]
    if not all(case.annotated[i - 1] for i in lungs):
        return None
    lung = np.isin(case.classes, lungs)
    if not lung.any():
        return None
    # Oriented so that axis 2 runs inferior -> superior (the affines here are axis-aligned).
    s_axis = int(np.argmax(np.abs(case.affine[2, :3])))
    up = case.affine[2, s_axis] > 0
    lung_o = np.moveaxis(lung, s_axis, 2)
    lab_o = np.moveaxis(labels, s_axis, 2)
    if not up:
        lung_o, lab_o = lung_o[..., ::-1], lab_o[..., ::-1]
    nz = lung_o.shape[2]
    has = lung_o.any(axis=2)
    base = np.where(has, np.argmax(lung_o, axis=2), nz)
    if (~has).any():
        _, (ii, jj) = ndimage.distance_transform_edt(~has, return_indices=True)
        base = base[ii, jj]
    margin = int(round(DIAPHRAGM_MARGIN_MM / float(voxel_mm[s_axis])))
    z = np.arange(nz)[None, None, :]
    abdominal = [catalog.by_name(n).index for n in ABDOMINAL if n in catalog.names]
    abdominal += [e.index for e in catalog if e.is_tumor and any(p in ABDOMINAL for p in e.parents)]
    above_o = np.isin(lab_o, abdominal) & (z > base[..., None] + margin)
    if not up:
        above_o = above_o[..., ::-1]
    return np.moveaxis(above_o, 2, s_axis)


def _per_class(per_case: list[dict], key: str) -> dict[str, float | None]:
    names = sorted({n for r in per_case for n in r.get(key, {})})
    return {n: nanmean([r[key][n] for r in per_case if n in r.get(key, {})]) for n in names}


def _summarise(per_case: list[dict], catalog: Catalog, seen: set[str]) -> dict[str, Any]:
    dsc, au, fp = _per_class(per_case, "dsc"), _per_class(per_case, "auroc"), _per_class(per_case, "fpr95")
    au_d, fp_d = _per_class(per_case, "auroc_dilated"), _per_class(per_case, "fpr95_dilated")
    oracle, au_pc = _per_class(per_case, "oracle_auroc_dilated"), _per_class(per_case, "auroc_pc")
    counts = {n: sum(1 for r in per_case if n in r["dsc"] or n in r.get("auroc", {})) for n in set(dsc) | set(au)}
    organs = [n for n in catalog.names if catalog.by_name(n).is_organ and n in dsc]
    tumors = [n for n in catalog.names if catalog.by_name(n).is_tumor and (n in dsc or n in au)]
    seen_t = [n for n in tumors if n in seen]
    unseen_t = [n for n in tumors if n not in seen]
    out: dict[str, Any] = {
        "organ_dsc_mean": nanmean([dsc[n] for n in organs]),
        "seen_tumor_dsc_mean": nanmean([dsc[n] for n in seen_t if n in dsc]),
        "unseen_tumor_dsc_mean": nanmean([dsc[n] for n in unseen_t if n in dsc]),
        "seen_tumor_auroc_mean": nanmean([au[n] for n in seen_t if n in au]),
        "unseen_tumor_auroc_mean": nanmean([au[n] for n in unseen_t if n in au]),
        "unseen_tumor_fpr95_mean": nanmean([fp[n] for n in unseen_t if n in fp]),
        "unseen_tumor_auroc_dilated_mean": nanmean([au_d[n] for n in unseen_t if n in au_d]),
        "unseen_tumor_oracle_auroc_dilated_mean": nanmean([oracle[n] for n in unseen_t if n in oracle]),
        "seen_tumor_auroc_pc_mean": nanmean([au_pc[n] for n in seen_t if n in au_pc]),
        "unseen_tumor_auroc_pc_mean": nanmean([au_pc[n] for n in unseen_t if n in au_pc]),
        "per_class": {n: {"kind": catalog.by_name(n).kind, "seen": (n in seen) if n in tumors else None,
                          "dsc": dsc.get(n), "auroc": au.get(n), "fpr95": fp.get(n), "auroc_dilated": au_d.get(n),
                          "fpr95_dilated": fp_d.get(n), "oracle_auroc_dilated": oracle.get(n),
                          "auroc_pc": au_pc.get(n), "cases": counts[n]}
                      for n in organs + tumors},
    }
    false = [r["false_tumour_ml"] for r in per_case if "false_tumour_ml" in r]
    if false:
        classes = sorted({n for f in false for n in f}, key=catalog.names.index)
        out["false_tumor_ml_mean"] = float(np.mean([sum(f.values()) for f in false]))
        out["false_zero_shot_tumor_ml_mean"] = float(np.mean([sum(v for n, v in f.items() if n not in seen)
                                                              for f in false]))
        out["false_tumor_ml_by_class"] = {n: {"mean": float(np.mean([f.get(n, 0.0) for f in false])),
                                              "max": max(f.get(n, 0.0) for f in false),
                                              "cases": sum(1 for f in false if n in f)} for n in classes}
        out["false_tumor_cases"] = len(false)
    # Cases that label no lesion (the real CTs): what was drawn, for the reader to judge.
    unlabelled = {r.get("case", str(i)): {n: v for n, v in r["predicted_ml"].items()
                                          if n in catalog.names and catalog.by_name(n).is_tumor}
                  for i, r in enumerate(per_case) if "false_tumour_ml" not in r and "predicted_ml" in r}
    if unlabelled:
        out["tumor_drawn_ml_unlabelled_cases"] = unlabelled
    above = [r["abdominal_above_diaphragm_ml"] for r in per_case if "abdominal_above_diaphragm_ml" in r]
    if above:
        out["abdominal_above_diaphragm_ml_max"] = max(above)
    out["per_case_dsc"] = {r.get("case", str(i)): r["dsc"] for i, r in enumerate(per_case)}
    return out


def _fmt(v: float | None, pct: bool = True) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


def markdown_report(s: dict[str, Any]) -> str:
    """Tables laid out like the paper's Table 2 (organ DSC) and Table 3 (tumours, seen/unseen)."""
    pc = s["per_class"]
    organs = [n for n, v in pc.items() if v["kind"] == "organ"]
    tumors = [n for n, v in pc.items() if v["kind"] == "tumor"]
    lines = [
        f"# Evaluation of `{Path(s['checkpoint']).name}` ({s['checkpoint_version']})", "",
        f"- data: `{s['data']}` ({s['n_cases']} cases)",
        f"- checkpoint sha256: `{s['checkpoint_sha256']}`",
        f"- grid: {s['grid']}", f"- masks: {s['masks']}",
        f"- OOD regions: {s['ood_region']}", f"- OOD score: {s['ood_score']}",
        f"- column AUROC P_c: {s.get('pc_score', '-')}", "",
        "## Table 2 layout: organ segmentation, DSC (%)", "",
    ]
    if organs:
        lines += ["| Model | " + " | ".join(organs) + " | Mean |",
                  "|---|" + "---|" * (len(organs) + 1),
                  f"| {s['checkpoint_version']} | " + " | ".join(_fmt(pc[n]["dsc"]) for n in organs)
                  + f" | {_fmt(s['organ_dsc_mean'])} |", ""]
    else:
        lines += ["(no organ reference in these cases)", ""]
    if tumors:
        lines += ["## Table 3 layout: tumours (seen = trained with labels, unseen = zero-shot)", "",
                  "| Tumour | Setting | DSC (%) | AUROC (%) | FPR95 (%) | AUROC 10 mm (%) | FPR95 10 mm (%) "
                  "| oracle AUROC 10 mm (%) | AUROC P_c (%) | Cases |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for n in tumors:
            v = pc[n]
            lines.append(f"| {n} | {'seen' if v['seen'] else 'unseen'} | {_fmt(v['dsc'])} | {_fmt(v['auroc'])} | "
                         f"{_fmt(v['fpr95'])} | {_fmt(v['auroc_dilated'])} | {_fmt(v['fpr95_dilated'])} | "
                         f"{_fmt(v['oracle_auroc_dilated'])} | {_fmt(v.get('auroc_pc'))} | {v['cases']} |")
        lines.append("")
    if "false_tumor_ml_by_class" in s:
        lines += ["## Tumour volume drawn outside every reference lesion (ml per case)", "",
                  f"Cases that label lesions: {s['false_tumor_cases']}; the other tumour types are zero-shot.", "",
                  "| Tumour | Setting | mean | max | Cases with any |", "|---|---|---|---|---|"]
        seen_t = set(s.get("seen_tumour_classes", ()))
        for n, v in s["false_tumor_ml_by_class"].items():
            lines.append(f"| {n} | {'seen' if n in seen_t else 'zero-shot'} | {v['mean']:.2f} | {v['max']:.2f} "
                         f"| {v['cases']} |")
        lines.append("")
    if s.get("tumor_drawn_ml_unlabelled_cases"):
        lines += ["## Tumour volume drawn in cases that label no lesion (ml)", ""]
        for case, d in s["tumor_drawn_ml_unlabelled_cases"].items():
            lines.append(f"- {case}: " + (", ".join(f"{n} {v:.2f}" for n, v in d.items()) or "none"))
        lines.append("")
    if len(s.get("per_case_dsc", {})) <= 4:
        lines += ["## Per case, DSC (%)", ""]
        for case, d in s["per_case_dsc"].items():
            lines.append(f"- {case}: " + ", ".join(f"{n} {_fmt(v)}" for n, v in d.items()))
        lines.append("")
    lines += ["| Summary | value |", "|---|---|"]
    for k in SUMMARY_KEYS + ("false_tumor_ml_mean", "false_zero_shot_tumor_ml_mean", "abdominal_above_diaphragm_ml_max"):
        if k in s:
            lines.append(f"| {k} | {_fmt(s.get(k), pct=False)} |")
    return "\n".join(lines) + "\n"


def _overlay(case: Case, result: VolumeSegmentation, catalog: Catalog, path: Path) -> None:
    """Reference vs prediction on the case grid (axes reoriented to RAS for display)."""
    g = result.model_output.gmap
    image = g.to_oriented(case.image)
    truth = g.to_oriented(case.classes.astype(np.int32))
    pred = g.to_oriented(result.labels.astype(np.int32))
    anomaly = g.to_oriented(result.anomaly) if result.anomaly is not None else None
    plot_overlay(np.clip((image + 175.0) / 425.0, 0, 1), truth, pred, [e.color for e in catalog], path,
                 title=case.name, anomaly=anomaly)
