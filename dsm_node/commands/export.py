"""``dsm-node export``: encode a label map as the node's results (DICOM-SEG, TID 1500 SR, key
images), offline.

    dsm-node export --source DICOM_DIR --labels LABELS.nii.gz --out DIR
                    [--seg-type BINARY|LABELMAP] [--model-version V] [--series-uid UID]

The series is assembled exactly as the node does it; the NIfTI must be on the series' grid
(its RAS affine is compared with the CT's LPS affine converted to RAS; permuted/flipped axes are
accepted, any other difference is an error). Label values are catalog indices (1-based).
Exit codes: 0 written, 2 usage/input error (with the reason on stderr).

Reading and checking the inputs and the summary are dsm_node.results.export; the encoding is
dsm_node.results.outputs.write_results, the same the node runs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, metavar="DICOM_DIR",
                        help="folder (searched recursively) or file list of the CT series")
    parser.add_argument("--labels", required=True, metavar="LABELS.nii.gz",
                        help="label map on the CT grid, values = catalog class indices")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder for SEG_*.dcm, SR_*.dcm and the key images SC_*.dcm")
    parser.add_argument("--seg-type", choices=("BINARY", "LABELMAP"), default=None,
                        help="SEG encoding (default: results.seg_type, BINARY)")
    parser.add_argument("--model-version", default=None,
                        help="algorithm version written to the SEG/SR and used in the UIDs (default: the node version)")
    parser.add_argument("--model-name", default="DSM", help="algorithm name (default: DSM)")
    parser.add_argument("--series-uid", default=None, help="pick this series when DICOM_DIR holds several")
    parser.add_argument("--revision", type=int, default=0, help="study revision (new revision -> new UIDs)")
    parser.add_argument("--catalog", default=None, help="class catalog YAML (default: config/classes.yaml)")
    parser.add_argument("--no-key-images", action="store_true",
                        help="no Secondary Capture key images (default: results.secondary_capture)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from model.catalog import CatalogError, load_catalog

    from .. import __version__
    from ..results.common import ResultError
    from ..results.export import read_label_map, summarize
    from ..results.inputs import InputError
    from ..results.options import ResultOptions
    from ..results.outputs import write_results
    from ..settings import ConfigError, load_settings
    from ..volume import VolumeError, find_series

    def fail(msg: str) -> int:
        print(f"dsm-node export: {msg}", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    try:
        settings = load_settings(getattr(args, "config", None))
    except ConfigError as exc:
        return fail(str(exc))
    try:
        catalog = load_catalog(args.catalog)
    except CatalogError as exc:
        return fail(str(exc))
    source = Path(args.source)
    if not source.exists():
        return fail(f"{source} does not exist")
    labels_path = Path(args.labels)
    if not labels_path.is_file():
        return fail(f"{labels_path} does not exist")
    if source.is_dir():
        groups = find_series(source)
        if args.series_uid is not None:
            files = groups.get(args.series_uid)
            if not files:
                return fail(f"no image of series {args.series_uid} under {source}")
        elif len(groups) == 1:
            files = next(iter(groups.values()))
        elif not groups:
            return fail(f"no DICOM image under {source}")
        else:
            listing = ", ".join(f"{uid or '(empty UID)'} ({len(f)} files)" for uid, f in groups.items())
            return fail(f"{source} holds {len(groups)} series; choose one with --series-uid: {listing}")
    else:
        files = [str(source)]
    try:
        opts = ResultOptions.from_settings(settings, model_version=args.model_version or __version__,
                                           model_name=args.model_name, revision=args.revision)
        if args.no_key_images:
            opts = replace(opts, key_images=False)
        volume, labels = read_label_map(files, labels_path)
    except VolumeError as exc:
        return fail(f"{exc.reason}")
    except InputError as exc:
        return fail(f"{source}: {exc}")
    except ValueError as exc:
        return fail(str(exc))
    t1 = time.perf_counter()
    out = Path(args.out)
    try:
        results = write_results(volume, labels, catalog, opts, out, seg_type=args.seg_type)
    except ResultError as exc:
        return fail(str(exc))
    summary = summarize(volume, results, read_s=t1 - t0, encode_s=time.perf_counter() - t1)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"series {summary['series_instance_uid']} ({summary['slices']} slices)")
    if summary["seg"]:
        print(f"SEG  {summary['seg']}  ({summary['seg_type']}, {summary['seg_frames']} frames)")
    else:
        print("SEG  none (no catalog class found)")
    print(f"SR   {summary['sr']}" + ("  (no findings)" if summary["no_findings"] else ""))
    for s in summary["segments"]:
        extra = f"  (incl. {', '.join(s['includes'])})" if s["includes"] else ""
        if s["volume_incl_tumours_cm3"] is not None and s["volume_incl_tumours_cm3"] != s["volume_cm3"]:
            extra += f"  (with its tumours {s['volume_incl_tumours_cm3']:.2f} cm3)"
        print(f"  {s['number']:>2}  {s['class']:<28} {s['volume_cm3']:>10.2f} cm3  mean {s['mean_hu']} HU{extra}")
    for les in summary["lesions"]:
        print(f"  lesion {les['tracking_identifier']:<28} {les['volume_cm3']:>8.2f} cm3  long {les['long_axis_mm']} mm"
              f"  short {les['short_axis_mm']} mm  (slice {les['slice'] + 1})")
    if summary["key_images"]:
        print(f"SC   {len(summary['key_images'])} key images in {out}")
    print(f"read {summary['seconds']['read']} s, encode+write {summary['seconds']['encode_and_write']} s")
    return 0
