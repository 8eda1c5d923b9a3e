"""Benchmark the result writers: SEG (BINARY, LABELMAP) + SR for 45 segments on a CT-sized grid.

    .venv/bin/python bench/results.py [--slices 300] [--size 512] [--skip-naive] [--repeat 1]

Synthetic inputs: 300 CT header datasets (no pixel data, as the node keeps them) on a
512x512x300 grid and a label map with all 45 catalog classes (organ-sized and lesion-sized
ellipsoids). Timings:

* ours: ``dsm_node.results.seg.build_seg`` / ``save`` and ``sr.build_sr`` / ``save``;
* naive (the in-run baseline): ONE ``highdicom.seg.Segmentation(...)`` with default arguments,
  fed the usual way - a stacked (z, y, x, 45) boolean array, one channel per class - then
  ``save_as``. Same source headers, same transfer syntax.

Ratios are naive / ours (higher = ours faster). Peak memory of the naive run is about
45 x the label map (3.5 GB at full size); use --slices to scale down.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import CTImageStorage, generate_uid  # noqa: E402

from dsm_node.results.common import save  # noqa: E402
from dsm_node.results.options import ResultOptions  # noqa: E402
from dsm_node.results.seg import build_seg  # noqa: E402
from dsm_node.results.sr import build_sr  # noqa: E402
from dsm_node.volume.assembly import SourceFrame, Volume  # noqa: E402
from model.catalog import load_catalog  # noqa: E402


def synthetic_case(slices: int, size: int, seed: int = 0):
    catalog = load_catalog()
    study, series, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
    spacing = (1.5, 0.8, 0.8)
    headers = []
    for k in range(slices):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_ref
        ds.Modality = "CT"
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "BENCH", "Bench^Case", "", "O"
        ds.AccessionNumber, ds.StudyID, ds.StudyDate, ds.StudyTime = "", "1", "20240101", "101010"
        ds.ReferringPhysicianName = ""
        ds.Manufacturer = "Synthetic"
        ds.Rows = ds.Columns = size
        ds.ImagePositionPatient = [-200.0, -200.0, k * spacing[0]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        headers.append(ds)
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    affine[:3, 3] = [-200.0, -200.0, 0.0]
    rng = np.random.default_rng(seed)
    labels = np.zeros((slices, size, size), np.uint8)
    shape = np.array(labels.shape)
    for e in catalog:  # organs ~ 6-14 cm, lesions ~ 1.5-3 cm (radii in mm)
        radii_mm = rng.uniform(30, 70, 3) if e.kind == "organ" else rng.uniform(8, 15, 3)
        radii = radii_mm / np.array(spacing)
        centre = rng.uniform(0.2, 0.8, 3) * shape
        lo = np.maximum(0, (centre - radii).astype(int))
        hi = np.minimum(shape, (centre + radii).astype(int) + 1)
        z, y, x = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        mask = ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((x - centre[2]) / radii[2]) ** 2 <= 1
        labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][mask] = e.index
    hu = rng.normal(40, 20, size=(slices, size, size)).astype(np.float32)
    frames = tuple(SourceFrame(CTImageStorage, h.SOPInstanceUID, None, "") for h in headers)
    volume = Volume(hu=hu, affine_lps=affine, spacing=spacing, frames=frames, study_instance_uid=study,
                    series_instance_uid=series, frame_of_reference_uid=frame_of_ref, headers=headers)
    return volume, labels, catalog


def run_ours(volume, labels, catalog, seg_type: str, out: Path) -> dict[str, float]:
    opts = ResultOptions(model_version="bench", seg_type=seg_type)
    t0 = time.perf_counter()
    seg = build_seg(volume, labels, catalog, opts)
    t1 = time.perf_counter()
    path = save(seg.dataset, out / f"ours_{seg_type}.dcm")
    t2 = time.perf_counter()
    sr = build_sr(volume, labels, catalog, opts, seg)
    t3 = time.perf_counter()
    save(sr.dataset, out / f"ours_{seg_type}_sr.dcm")
    t4 = time.perf_counter()
    return {"build": t1 - t0, "write": t2 - t1, "sr_build": t3 - t2, "sr_write": t4 - t3,
            "frames": int(seg.dataset.NumberOfFrames), "mb": path.stat().st_size / 1e6, "segments": len(seg.segments)}


def run_naive(volume, stacked, catalog, seg_type: str, out: Path) -> dict[str, float]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1, segment_label=e.name, segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Tissue, algorithm_type="AUTOMATIC",
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name="DSM", version="bench", family=codes.DCM.ArtificialIntelligence))
        for i, e in enumerate(catalog)
    ]
    t0 = time.perf_counter()
    seg = hd.seg.Segmentation(
        source_images=volume.headers, pixel_array=stacked, segmentation_type=seg_type,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=1,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="bench", manufacturer_model_name="bench",
        software_versions="1", device_serial_number="1")
    t1 = time.perf_counter()
    path = save(seg, out / f"naive_{seg_type}.dcm")  # same durable write path as ours (fsync + rename)
    t2 = time.perf_counter()
    return {"build": t1 - t0, "write": t2 - t1, "frames": int(seg.NumberOfFrames), "mb": path.stat().st_size / 1e6}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--repeat", type=int, default=2, help="runs per variant; the best of N per phase is shown")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    t = time.perf_counter()
    volume, labels, catalog = synthetic_case(args.slices, args.size)
    print(f"grid {args.size}x{args.size}x{args.slices}, {len(np.unique(labels)) - 1} classes present, "
          f"case built in {time.perf_counter() - t:.1f} s, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="dsm-bench-") as tmp:
        out = Path(tmp)
        # warm-up on a 4-slice case: one-time costs (highdicom's IOD tables, pydicom's
        # dictionaries, lazy imports) must not be charged to whichever run comes first
        w_vol, w_labels, _ = synthetic_case(4, 64, seed=1)
        w_stacked = np.stack([w_labels == e.index for e in catalog], axis=-1)
        for seg_type in ("BINARY", "LABELMAP"):
            run_ours(w_vol, w_labels, catalog, seg_type, out)
            run_naive(w_vol, w_stacked, catalog, seg_type, out)
        del w_vol, w_labels, w_stacked
        stacked = None
        if not args.skip_naive:
            stacked = np.zeros((*labels.shape, len(catalog)), dtype=bool)
            for e in catalog:
                stacked[..., e.index - 1] = labels == e.index
        runs: dict[tuple[str, str], list[dict]] = {}
        for _ in range(args.repeat):  # interleaved, so that load from other processes hits both
            for seg_type in ("BINARY", "LABELMAP"):
                runs.setdefault(("ours", seg_type), []).append(run_ours(volume, labels, catalog, seg_type, out))
                gc.collect()
                if stacked is not None:
                    runs.setdefault(("naive", seg_type), []).append(run_naive(volume, stacked, catalog, seg_type, out))
                    gc.collect()
        del stacked
        # best of N per phase (the machine is shared: the minimum is the least disturbed run)
        order = [("ours", "BINARY"), ("ours", "LABELMAP"), ("naive", "BINARY"), ("naive", "LABELMAP")]
        rows = {key: {k: min(r[k] for r in runs[key]) for k in runs[key][0]} for key in order if key in runs}
    print(f"load average at the end {os.getloadavg()[0]:.1f}; best of {args.repeat} per phase")
    print(f"\n{'run':<18}{'build s':>9}{'write s':>9}{'total s':>9}{'frames':>8}{'MB':>8}   SR build/write s")
    for (who, seg_type), r in rows.items():
        sr = f"   {r['sr_build']:.2f} / {r['sr_write']:.2f}" if "sr_build" in r else ""
        print(f"{who + ' ' + seg_type:<18}{r['build']:>9.2f}{r['write']:>9.2f}{r['build'] + r['write']:>9.2f}"
              f"{r['frames']:>8}{r['mb']:>8.1f}{sr}")
    if not args.skip_naive:
        print("\nratio naive / ours (build, write, total):")
        for seg_type in ("BINARY", "LABELMAP"):
            n, o = rows[("naive", seg_type)], rows[("ours", seg_type)]
            print(f"  {seg_type:<9} {n['build'] / o['build']:6.2f}x {n['write'] / o['write']:6.2f}x "
                  f"{(n['build'] + n['write']) / (o['build'] + o['write']):6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
