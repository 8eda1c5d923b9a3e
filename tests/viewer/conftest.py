"""Fixtures for the radiologist's-view tests (OHIF in headless Chromium, offline).

One viewer session serves the whole module: Orthanc + the same-origin OHIF server + Chromium
run inside a private network namespace, every study (our CT with our SEG + SR, the SEG + SR
the node itself returned after running the demo model over the whole loop, the dcmqi
reference SEG, and the deliberately broken copies of our SEG) is uploaded once, and the
driver opens each SEG in turn. Screenshots, observations and the check report are kept in
``$DSM_TEST_ARTIFACTS/viewer`` (default ``tests/artifacts/viewer``); the path is printed at
the end of the run.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests import handmade
from tests.segment_truth import expected_segment_masks
from tests.tools import REPO, SHARED, find_tool, missing
from tests.viewer import broken_segs
from tests.viewer import ohif_checks as checks

HERE = Path(__file__).resolve().parent

ARTIFACTS = Path(os.environ.get("DSM_TEST_ARTIFACTS") or REPO / "tests" / "artifacts") / "viewer"
DRIVER = HERE / "ohif_driver.cjs"
CATALOG = REPO / "config" / "classes.yaml"
TCIA = SHARED / "data" / "01_tcia_pancreatic-ct-cbct-seg_CB001"
DCMQI = SHARED / "data" / "03_dcmqi_liver_seg_sr_reference"

BROKEN = broken_segs.PLAN
DEMO = "demo_loop"
LESIONS = "lesions"  # hand-made tumours inside their organs: lesion lines, tumour over organ
BROKEN_LESION_SR = "broken_lesion_lines_shifted"
LESION_MIN_ML = 0.5  # results.lesion_min_volume_ml (default), as dsm-node export uses it
# Segments of a model output can be tiny (an island of a few voxels on the slice OHIF jumps
# to). Overlay coverage and inside-organ fraction must be >= 0.85: for a blob of side s px,
# one boundary row or column of pixels rounded the other way at a half-pixel tie is 1/s of
# its area, more than that 15 % tolerance once s < 7, i.e. below ~50 px. So, for the
# demo-model case only, a segment whose mask projects to fewer than DEMO_MIN_SCREEN_PX screen
# pixels on the slice shown has coverage / inside-organ / centroid recorded in report.json
# but not asserted; the slice shown must still contain it, its colours, labelmap, SEG
# geometry and boundary-slice probes are checked as for every case, and the demo test
# requires at least half of the segments to get the full comparison. (The viewport maps about
# 1 voxel to 1 px here, so 50 px is about 7x7 voxels.) The hand-made cases keep 0.
DEMO_MIN_SCREEN_PX = 50

_RUN_INFO: dict = {}


def require_viewer_stack() -> None:
    """Fail under CI, skip elsewhere, unless everything the viewer session needs is here."""
    from dsm_node.viewer.netns import netns_available
    from dsm_node.viewer.ohif import node_modules, ohif_dist
    from dsm_node.viewer.orthanc import find_dicomweb_plugin, find_orthanc
    from dsm_node.viewer.session import find_chromium

    if find_orthanc() is None:
        missing("Orthanc is not installed (Debian: orthanc orthanc-dicomweb)")
    if find_dicomweb_plugin() is None:
        missing("the Orthanc DICOMweb plugin is not installed (Debian: orthanc-dicomweb)")
    if find_chromium() is None:
        missing("chromium is not installed (Debian: chromium)")
    if find_tool("node") is None:
        missing("node is not installed")
    if ohif_dist(required=False) is None or node_modules(required=False) is None:
        missing("OHIF / playwright-core not installed: run scripts/install-viewer.sh")
    ok, why = netns_available()
    if not ok:
        missing(f"cannot run the viewer in a private network namespace: {why}")


@dataclass
class Study:
    name: str
    source: str
    ct: checks.CtSeries
    truth: checks.Truth
    seg: Path
    sr: Path | None = None
    extra_files: list[Path] = field(default_factory=list)  # e.g. the key images
    lesions: list = field(default_factory=list)  # checks.LesionTruth
    tumor_values: dict = field(default_factory=dict)  # label value -> tumour class name


def _catalog():
    from model.catalog import load_catalog

    return load_catalog(CATALOG)


def with_segment_overrides(truth: checks.Truth, organs_include_tumors: bool = False) -> checks.Truth:
    """What each segment holds as the SEG encodes it (results.organs_include_tumors, default
    off: each class's own voxels; on: organs hold their tumours, holes filled), computed by
    tests/segment_truth.py on the label volume, not by the node."""
    expected = expected_segment_masks(truth.labels, _catalog(), organs_include_tumors)
    truth.overrides = {v: m for v, m in expected.items() if not np.array_equal(m, truth.labels == v)}
    return truth


def _phantom_inputs(work: Path) -> tuple[Path, Path]:
    """A small generated CT study + label volume (training.phantoms) when ../shared is absent."""
    from training import phantoms

    ph = phantoms.generate(11, shape=(192, 192, 36), spacing=(2.0, 2.0, 5.0), tumor_types=[],
                           noise=True)
    ct_dir = work / "phantom_ct"
    phantoms.write_dicom_series(ph.image, ph.affine, ct_dir, uid_seed="dsm-viewer-test")
    labels = work / "phantom_labels.nii.gz"
    phantoms.write_nifti_pair(ph.image, ph.label, ph.affine, work / "phantom_image.nii.gz", labels)
    return ct_dir, labels


def export_ours(ct_dir: Path, labels: Path, out: Path, model_version: str | None = None) -> tuple[Path, Path]:
    """Our SEG + SR (+ key images SC_*.dcm), made by the node's own command line (dsm-node export)."""
    cmd = [sys.executable, "-m", "dsm_node", "export", "--source", str(ct_dir), "--labels",
           str(labels), "--out", str(out), *(["--model-version", model_version] if model_version else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"dsm-node export failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    segs, srs = sorted(out.glob("SEG_*.dcm")), sorted(out.glob("SR_*.dcm"))
    if len(segs) != 1 or len(srs) != 1:
        raise RuntimeError(f"dsm-node export wrote {segs} / {srs}, expected one SEG and one SR")
    return segs[0], srs[0]


def our_study(work: Path) -> Study:
    want = os.environ.get("DSM_VIEWER_STUDY", "")
    if want != "phantom" and (TCIA / "ct").is_dir():
        ct_dir, labels, source = TCIA / "ct", TCIA / "labels_dsm45.nii.gz", "tcia-01"
    else:
        ct_dir, labels = _phantom_inputs(work)
        source = "phantom"
    seg, sr = export_ours(ct_dir, labels, work / "ours")
    ct = checks.read_ct(sorted(p for p in ct_dir.iterdir() if p.is_file()))
    truth = with_segment_overrides(checks.truth_from_catalog(ct, labels, CATALOG))
    return Study("ours", source, ct, truth, seg, sr)


def lesion_study(ours: Study, labels_path: Path, work: Path) -> Study:
    """The same CT with hand-made tumours inside two organs (tests/handmade.py): two lesions of
    one class and one of another, plus a fragment below the lesion minimum; exported with
    dsm-node export under another model version (its own UIDs in the same study)."""
    catalog = _catalog()
    labels = work / "lesion_labels.nii.gz"
    handmade.write_with_tumors(labels_path, labels, catalog)
    out = work / "lesions"
    seg, sr = export_ours(ours.ct.paths[0].parent, labels, out, model_version="viewer-lesions")
    truth = with_segment_overrides(checks.truth_from_catalog(ours.ct, labels, CATALOG))
    tumors = {e.index: e.name for e in catalog if e.kind == "tumor"}
    present = {s.value for s in truth.segments}
    tumor_values = {v: n for v, n in tumors.items() if v in present}
    lesions = checks.lesion_truth(truth, tumor_values, LESION_MIN_ML)
    return Study(LESIONS, f"{ours.source} + hand-made tumours", ours.ct, truth, seg, sr,
                 extra_files=sorted(out.glob("SC_*.dcm")), lesions=lesions, tumor_values=tumor_values)


def lesion_centres(study: Study) -> list[list[float]]:
    """World position (LPS) of the middle of each lesion, for the views with every segment shown."""
    ct = study.ct
    out = []
    for les in study.lesions:
        k, r, c = np.argwhere(les.mask).mean(axis=0)
        k = int(round(k))
        out.append((ct.ipp[k] + c * ct.spacing[1] * ct.iop[:3] + r * ct.spacing[0] * ct.iop[3:]).tolist())
    return out


def reference_study() -> Study | None:
    """The dcmqi liver SEG over its 3 CT slices: a SEG we did not write (harness proof)."""
    if not (DCMQI / "liver_seg.dcm").exists():
        return None
    ct = checks.read_ct(sorted((DCMQI / "ct-3slice").glob("*.dcm")))
    arr, aff = checks.load_label_volume(DCMQI / "liver_seg.nrrd")
    labels = checks.labels_on_ct(ct, arr, aff)
    table = checks.seg_segment_table(DCMQI / "liver_seg.dcm")
    values = sorted(set(labels.ravel().tolist()) - {0})
    segs = [checks.ExpectedSegment(t["number"], t["label"],
                                   tuple(int(round(v)) for v in t["rgb"]), v)
            for t, v in zip(table, values)]
    truth = checks.Truth(ct, labels, segs, colour_source="seg")
    return Study("reference_dcmqi_liver", "dcmqi-03", ct, truth, DCMQI / "liver_seg.dcm")


def demo_loop_study(ct: checks.CtSeries, source: str, work: Path) -> tuple[Study | None, dict]:
    """The node's whole loop with the bundled demo weights, once per session.

    ``dsm_node.demo.run_once``: a node on embedded defaults (no inference section: the bundled
    demo checkpoint, CPU here) in a temporary data dir, the CT sent with DCMTK storescu (the
    demo falls back to pynetdicom without it), the SEG + SR it returned kept as the local
    receiver stored them. The truth is the SEG's own mask content (``truth_from_seg``). Any
    failure is reported by the demo-case tests only (the other cases still run).
    """
    from dsm_node.demo import run_once

    ct_dir = ct.paths[0].parent
    info: dict = {"source": source, "sender": "storescu" if find_tool("storescu") else "pynetdicom"}
    t0 = time.monotonic()
    try:
        if any(p.parent != ct_dir for p in ct.paths) or \
                len([p for p in ct_dir.iterdir() if p.is_file()]) != len(ct.paths):
            raise RuntimeError("the CT folder holds files other than the CT series")
        report = run_once(ct_dir, work / "demo_loop", quiet_period_s=2.0)
        info.update({k: report[k] for k in ("model_version", "instances", "send_s",
                                              "after_quiet_period_s", "stages_s", "other_s",
                                              "node_peak_rss_mb")})
        info["segments"] = [s["name"] for s in report["segments"]]
        received = report["received"]
        if "SEG" not in received or "SR" not in received:
            raise RuntimeError(f"the node returned {sorted(received)}, expected a SEG and an SR "
                               f"(segments in the job summary: {info['segments']})")
        seg, sr = Path(received["SEG"]), Path(received["SR"])
        truth = checks.truth_from_seg(ct, seg, CATALOG)
        info["seg_voxels"] = {s.label: int(truth.mask(s).sum()) for s in truth.segments}
    except Exception as e:  # reported by the demo-case tests
        info["error"] = f"{type(e).__name__}: {e}"
        return None, info
    finally:
        info["seconds"] = round(time.monotonic() - t0, 1)
    return Study(DEMO, f"{source}, whole loop, {info['model_version']}", ct, truth, seg, sr), info


@dataclass
class ViewerRun:
    results: dict[str, checks.CaseResult]
    session: dict
    studies: dict[str, Study]
    seg_paths: dict[str, Path]
    artifacts: Path
    seconds: dict[str, float]
    demo: dict = field(default_factory=dict)  # what the whole loop did (or its error)


@pytest.fixture(scope="session")
def viewer_run(tmp_path_factory) -> ViewerRun:
    require_viewer_stack()
    from dsm_node.viewer.session import run_session

    t0 = time.monotonic()
    work = tmp_path_factory.mktemp("viewer")
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    _RUN_INFO["artifacts"] = str(ARTIFACTS)

    ours = our_study(work)
    studies = {"ours": ours}
    demo, demo_info = demo_loop_study(ours.ct, ours.source, work)
    ref = reference_study()
    if ref is not None:
        studies[ref.name] = ref
    seg_paths = {"ours": ours.seg}
    files = [*ours.ct.paths, ours.seg, ours.sr]
    cases = [{"name": "ours", "study": ours.ct.study_uid, "series": _series(ours.seg),
              "srSeries": _series(ours.sr), "probes": ours.truth.probe_positions()}]
    if ref is not None:
        files += [*ref.ct.paths, ref.seg]
        seg_paths[ref.name] = ref.seg
        cases.append({"name": ref.name, "study": ref.ct.study_uid, "series": _series(ref.seg),
                      "probes": ref.truth.probe_positions()})
    if demo is not None:
        studies[DEMO] = demo
        seg_paths[DEMO] = demo.seg
        files += [demo.seg, demo.sr]  # same CT as ours (uploaded once)
        if demo.ct.paths != ours.ct.paths:
            files += demo.ct.paths
        cases.append({"name": DEMO, "study": demo.ct.study_uid, "series": _series(demo.seg),
                      "srSeries": _series(demo.sr), "probes": demo.truth.probe_positions()})
    labels_path = TCIA / "labels_dsm45.nii.gz" if ours.source == "tcia-01" else work / "phantom_labels.nii.gz"
    les = lesion_study(ours, labels_path, work)
    studies[LESIONS] = les
    seg_paths[LESIONS] = les.seg
    files += [les.seg, les.sr, *les.extra_files]
    cases.append({"name": LESIONS, "study": les.ct.study_uid, "series": _series(les.seg),
                  "srSeries": _series(les.sr), "srView": _series(les.sr),
                  "probes": les.truth.probe_positions(),
                  "driverOptions": {"overlapProbes": lesion_centres(les),
                                    "scSeriesUID": _series(les.extra_files[0]) if les.extra_files else None}})
    shifted = broken_segs.shifted_lesion_sr(les.sr, work / "broken")
    files.append(shifted)
    cases.append({"name": BROKEN_LESION_SR, "study": les.ct.study_uid, "series": None,
                  "srView": _series(shifted), "driverOptions": {"skipSeg": True}})
    for variant, plan in BROKEN.items():
        path = broken_segs.make_variant(ours.seg, variant, work / "broken", ours.ct)
        name = f"broken_{variant}"
        seg_paths[name] = path
        files.append(path)
        cases.append({"name": name, "study": ours.ct.study_uid, "series": _series(path),
                      "maxSegments": plan["maxSegments"],
                      "probes": ours.truth.probe_positions() if plan["probes"] else {}})
    t_prep = time.monotonic() - t0

    session = run_session({"files": [str(f) for f in files], "driver": str(DRIVER),
                           "out": str(ARTIFACTS), "width": 1100, "height": 720,
                           "cases": cases}, isolate=True, timeout=900)
    t_view = time.monotonic() - t0 - t_prep
    observations = {c["name"]: c for c in (session.get("observations") or {}).get("cases", [])}
    results = {}
    for c in cases:
        name = c["name"]
        if name == BROKEN_LESION_SR:
            study = studies[LESIONS]
        else:
            study = studies["ours"] if name.startswith("broken_") or name == "ours" else studies[name]
        obs = observations.get(name)
        if obs is None:
            r = checks.CaseResult(name, {"driver": [f"no observations (driver rc "
                                                    f"{session.get('returncode')}): "
                                                    f"{session.get('log', '')[-1500:]}"]})
        elif name == BROKEN_LESION_SR:
            r = checks.check_case(obs, study.truth, ARTIFACTS, sr_path=shifted, session=session,
                                  lesions=study.lesions, only_sr_view=True)
        elif name == LESIONS:
            r = checks.check_case(obs, study.truth, ARTIFACTS, seg_path=study.seg, sr_path=study.sr,
                                  session=session, lesions=study.lesions,
                                  tumor_values=set(study.tumor_values),
                                  key_image_files=len(study.extra_files))
        else:
            r = checks.check_case(obs, study.truth, ARTIFACTS, seg_path=seg_paths[name],
                                  sr_path=study.sr if name in ("ours", DEMO) else None,
                                  session=session,
                                  min_screen_px=DEMO_MIN_SCREEN_PX if name == DEMO else 0)
        results[name] = r
    seconds = {"prepare": round(t_prep, 1), "viewer_session": round(t_view, 1),
               "viewer_session_cpu": session.get("cpuSeconds"),
               "checks": round(time.monotonic() - t0 - t_prep - t_view, 1),
               "total": round(time.monotonic() - t0, 1)}
    checks.write_report(list(results.values()), ARTIFACTS / "report.json")
    summary = "\n".join(r.summary() for r in results.values())
    (ARTIFACTS / "summary.txt").write_text(
        f"study: {ours.source}\nseconds: {json.dumps(seconds)}\n"
        f"demo loop: {json.dumps(demo_info)}\n"
        f"session timings: {json.dumps(session.get('timings'))}\n\n{summary}\n")
    _RUN_INFO.update(seconds=seconds, source=ours.source)
    print(f"\nviewer artifacts: {ARTIFACTS}\ndemo loop: {json.dumps(demo_info)}\n{summary}")
    return ViewerRun(results, session, studies, seg_paths, ARTIFACTS, seconds, demo_info)


def _series(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def pytest_terminal_summary(terminalreporter):
    if _RUN_INFO.get("artifacts"):
        terminalreporter.write_line(
            f"viewer screenshots and report: {_RUN_INFO['artifacts']} "
            f"(study: {_RUN_INFO.get('source')}, seconds: {_RUN_INFO.get('seconds')})")
