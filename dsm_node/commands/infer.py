"""``dsm-node infer INPUT --out DIR``: run DSM on a DICOM series folder or a NIfTI file, offline.

Writes ``labels.nii.gz`` (catalog indices on the input grid), ``anomaly.nii.gz``, overlay
PNGs (radiological orientation whatever the input's) and, for DICOM input, the same objects
the node would send (DICOM-SEG, TID 1500 SR, key images; dsm_node.results.outputs).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from .common import settings_from_args


def peak_rss_mb() -> int:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="a folder with one CT series (DICOM) or a NIfTI file")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--checkpoint", help="model checkpoint (default: the bundled demo weights)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N (default: inference.device)")
    parser.add_argument("--catalog-extra", help="YAML of extra (zero-shot) classes with their coding")
    parser.add_argument("--exclude-class", action="append", metavar="NAME",
                        help="leave this class out of every output (repeatable; a catalog name or the groups "
                             "'tumors' and 'zero-shot'; default: inference.exclude_classes)")
    parser.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs")
    parser.add_argument("--model-version", help="override the version written into SEG/SR (default: the checkpoint's)")
    parser.add_argument("--patient-sex", choices=("F", "M", "O"),
                        help="classes of the other sex (catalog 'sex': prostate) are not drawn; default: "
                             "the series' PatientSex for DICOM input, unknown (every class) for NIfTI")


def run(args: argparse.Namespace) -> int:
    import nibabel as nib
    import numpy as np

    from ..infer.memory import spill_folder
    from ..results.inputs import InputError, check_ct_source, checked_reading
    from ..volume import VolumeError, assemble_volume, files_of, ras_to_lps

    settings = settings_from_args(
        args,
        **{
            "inference.checkpoint": args.checkpoint,
            "inference.device": args.device,
            "inference.catalog_extra": args.catalog_extra,
            "inference.exclude_classes": args.exclude_class,
        },
    )
    source = Path(args.input)
    out = Path(args.out)

    made_out = not out.exists()  # the HU spill file may create it; a refused input leaves nothing

    def refuse(why: object) -> int:
        print(f"dsm-node infer: {source}: {why}", file=sys.stderr)
        if made_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        return 2

    # The input is read and checked before the model is loaded: a series that cannot be
    # processed is refused in seconds with one line, not after the inference with a traceback.
    volume = None
    t_read = time.perf_counter()
    if source.is_dir():
        try:
            with checked_reading():
                # file-backed HU in the output folder (an unlinked file: nothing stays there)
                volume = assemble_volume(files_of([source]), spill_dir=spill_folder(settings, out))
            check_ct_source(volume)
        except (VolumeError, InputError) as exc:
            return refuse(exc)
        hu, affine_lps, spacing = volume.hu, volume.affine_lps, volume.spacing
        affine_ras = volume.affine_ras
    elif source.name.endswith((".nii", ".nii.gz")) and source.is_file():
        try:
            img = nib.load(str(source))
            ijk = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - nibabel raises many types on a broken file
            return refuse(f"not a readable NIfTI image ({type(exc).__name__}: {exc})")
        if ijk.ndim != 3:
            return refuse(f"expected a 3D image, got shape {ijk.shape}")
        hu = ijk.transpose(2, 1, 0)  # (i, j, k) -> (z, y, x), a view
        affine_ras = img.affine
        affine_lps = ras_to_lps(affine_ras)
        spacing = tuple(float(s) for s in img.header.get_zooms()[:3][::-1])
    else:
        return refuse("not a DICOM folder or a .nii/.nii.gz file")

    read_s = time.perf_counter() - t_read
    from ..infer.memory import MemoryRefused, segmenter_guard
    from ..infer.nifti import write_blocks
    from ..infer.overlays import write_overlays
    from ..infer.segmenter import segmenter_from_settings
    from ..results.display import radiological
    from ..results.options import ResultOptions
    from ..results.outputs import write_results

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    segmenter = segmenter_from_settings(settings)
    print(f"model {segmenter.model_version} on {segmenter.device} ({time.perf_counter() - t0:.1f} s to load)", file=sys.stderr)
    try:  # the series is read; before the model runs, refuse what this machine cannot hold
        # the anomaly map is streamed plane by plane, except from a series whose slices are
        # not axial (model.segment.to_source_slabs): then it is one source-sized block
        axial = int(nib.orientations.io_orientation(affine_ras)[2, 0]) == 2
        segmenter_guard(settings, segmenter, anomaly=not axial)(hu.shape, spacing)
    except MemoryRefused as exc:
        return refuse(f"memory: {exc}")

    peaks = {"read_and_model_load": peak_rss_mb()}
    t1 = time.perf_counter()
    sex = args.patient_sex or (volume.patient_sex if volume is not None else None)
    result = segmenter.segment(hu, affine_lps, want_anomaly=True, progress=sys.stderr.isatty(), stream_anomaly=True,
                               patient_sex=sex)
    peaks["segment"] = peak_rss_mb()
    timings = {"read_s": read_s, "model_load_s": t1 - t0, "inference_total_s": time.perf_counter() - t1,
               **result.timings}

    def save_nifti(array: np.ndarray, name: str) -> None:
        # The (i, j, k) view of a (z, y, x) array is Fortran-ordered, which is NIfTI's own order:
        # nibabel writes it as it is, without a source-sized copy.
        nib.save(nib.Nifti1Image(array.transpose(2, 1, 0), affine_ras), str(out / name))

    t2 = time.perf_counter()
    save_nifti(result.labels, "labels.nii.gz")
    # Streamed block by block: the float32 source-sized map (629 MB at 600 slices of 512 x 512)
    # never exists whole.
    assert result.anomaly_slabs is not None
    write_blocks(out / "anomaly.nii.gz", hu.transpose(2, 1, 0).shape, affine_ras, np.float32, result.anomaly_slabs())
    result.anomaly_slabs = None  # it holds the model-grid decisions (hundreds of MB on a long series)
    timings["nifti_s"] = time.perf_counter() - t2
    peaks["nifti"] = peak_rss_mb()
    written = ["labels.nii.gz", "anomaly.nii.gz"]
    if volume is not None:
        options = ResultOptions.from_settings(settings, model_version=args.model_version or segmenter.model_version)
        results = write_results(volume, result.labels, result.catalog, options, out)
        timings.update(results.timings)
        written += [path.name for _kind, _ds, path in results.files()]
        del results  # the SEG dataset and its plan (source-sized) are written: let them go
        peaks["seg_sr_key_images"] = peak_rss_mb()
    t3 = time.perf_counter()
    if not args.no_overlays:
        # The overlay writer shows array rows/columns as they are: hand it radiological order.
        display_hu, display_spacing = radiological(hu, affine_lps)
        display_labels, _ = radiological(result.labels, affine_lps)
        pngs = write_overlays(display_hu, display_labels, display_spacing, result.catalog, out / "overlays", title=source.name)
        written += [f"overlays/{p.name}" for p in pngs]
        timings["overlays_s"] = time.perf_counter() - t3
        peaks["overlays"] = peak_rss_mb()
    voxel_ml = float(np.prod(spacing)) / 1000.0
    summary = {
        "input": str(source),
        "model_version": segmenter.model_version,
        "device": str(segmenter.device),
        "segments": {name: round(n * voxel_ml, 2) for name, n in result.found.items()},
        "excluded_classes": segmenter.describe()["excluded_by_site"],
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        # the process's peak resident memory so far, after each stage (where a large series peaks)
        "peak_rss_mb": peaks,
        "files": written,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0
