"""Benchmark the key images (Secondary Capture) on the real CT of ../shared/data/01.

    .venv/bin/python bench/keyimages.py [--repeat 3] [--data ../shared/data/01_tcia_pancreatic-ct-cbct-seg_CB001]

The 79-slice CT with its expert labels (labels_dsm45.nii.gz) plus the hand-made tumours of
tests/handmade.py (two lesions in the right lung, one in the stomach: an overview and three
lesion images), built with the node's own code (``keyimages.build_key_images``: render with
matplotlib, encode with highdicom) and written with its durable save. Prints the best of
``--repeat`` runs per phase (render, encode, write) and per image. The SEG/SR are built once
beforehand and not timed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from dsm_node.results.common import save  # noqa: E402
from dsm_node.results.keyimages import build_key_images  # noqa: E402
from dsm_node.results.options import ResultOptions  # noqa: E402
from dsm_node.results.seg import build_seg  # noqa: E402
from dsm_node.results.sr import build_sr  # noqa: E402
from dsm_node.volume import assemble_volume, load_labels  # noqa: E402
from model.catalog import load_catalog  # noqa: E402
from tests import handmade  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "01_tcia_pancreatic-ct-cbct-seg_CB001"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    data = Path(args.data)
    catalog = load_catalog()
    with tempfile.TemporaryDirectory() as tmp:
        labels_path = Path(tmp) / "labels.nii.gz"
        handmade.write_with_tumors(data / "labels_dsm45.nii.gz", labels_path, catalog)
        volume = assemble_volume(sorted((data / "ct").glob("*.dcm")))
        labels = load_labels(labels_path, volume)
        options = ResultOptions(model_version="bench")
        seg = build_seg(volume, labels, catalog, options)
        sr = build_sr(volume, labels, catalog, options, seg)
        best = {"render_s": np.inf, "encode_s": np.inf, "write_s": np.inf, "total_s": np.inf}
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            result = build_key_images(volume, labels, seg, sr, options)
            t1 = time.perf_counter()
            for ds in result.datasets:
                save(ds, Path(tmp) / f"SC_{ds.SOPInstanceUID}.dcm")
            t2 = time.perf_counter()
            run = {**result.timings, "write_s": t2 - t1, "total_s": t2 - t0}
            best = {k: min(best[k], run[k]) for k in best}
        n = len(result.datasets)
        mb = sum(len(ds.PixelData) for ds in result.datasets) / 1e6
    print(f"key images on {data.name}: {n} images ({', '.join(i.name for i in result.images)}), {mb:.1f} MB pixel data")
    print("best of {}: render {render_s:.2f} s, encode {encode_s:.2f} s, write {write_s:.2f} s, total {total_s:.2f} s "
          "({per:.2f} s per image)".format(args.repeat, per=best["total_s"] / n, **best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
