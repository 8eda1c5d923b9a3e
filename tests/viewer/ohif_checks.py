"""Assertion helper for the radiologist's-view tests: what OHIF showed vs. what is true.

The truth is independent of the SEG under test: the CT series (geometry read with pydicom)
and the label volume the SEG was made from (NIfTI/NRRD, resampled onto the CT voxels by world
coordinates), plus the class catalog (names, colours, order). The observations come from
``ohif_driver.cjs`` (page state + screenshots). Every ``check_*`` returns a list of failure
strings (empty = pass), so the negative tests can assert that a broken SEG is reported.
"""
from __future__ import annotations

import gzip
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

# --------------------------------------------------------------------------------------------
# Console messages seen on every healthy run, with the reason they are harmless. Only console
# *errors* and uncaught page errors are checked; warnings are recorded in the artifacts.
KNOWN_HARMLESS_CONSOLE_ERRORS: list[tuple[str, str]] = [
    # Reported when VIEWER_TESTING.md was written: OHIF's image loader logs this once per
    # load for a request it retries; the image shows.
    (r"IMAGE_LOAD_ERROR TypeError: handler is not a function", "OHIF loader retry"),
    # Chromium with no GPU: WebGL falls back to SwiftShader and says so.
    (r"Automatic fallback to software WebGL has been deprecated", "SwiftShader notice"),
    (r"GPU stall due to ReadPixels", "SwiftShader performance notice"),
]
# Since issue 14 every finding of our SR has spatial coordinates (a planar outline beside each
# volumetric group, lines for each lesion), so OHIF's SR loader must load it without error.
# (Before, OHIF 3.13.2 threw "Cannot read properties of undefined (reading
# 'ReferencedSOPSequence')" on any group without SCOORD/SCOORD3D, and the check accepted that.)
OHIF_SR_SKIPPED_NUM_WARNING = "ContentSequence array contains no SCOORD or SCOORD3D entry"


# --------------------------------------------------------------------------------------------
# colour


def dicom_lab_to_rgb(value) -> tuple[float, float, float]:
    """RecommendedDisplayCIELabValue (PS3.3 C.10.7.1.1, scaled 16-bit) -> sRGB 0-255 (D65).

    Written here from the CIE/sRGB definitions (not highdicom's code) so that the round trip
    catalog RGB -> writer -> SEG -> this reader is checked by an independent implementation.
    """
    L = value[0] * 100.0 / 65535.0
    a = value[1] * 255.0 / 65535.0 - 128.0
    b = value[2] * 255.0 / 65535.0 - 128.0
    fy = (L + 16.0) / 116.0
    fx = fy + a / 500.0
    fz = fy - b / 200.0
    eps, kappa = 216.0 / 24389.0, 24389.0 / 27.0

    def finv(t):
        return t ** 3 if t ** 3 > eps else (116.0 * t - 16.0) / kappa

    xr, zr = finv(fx), finv(fz)
    yr = fy ** 3 if L > kappa * eps else L / kappa
    X, Y, Z = xr * 0.95047, yr * 1.0, zr * 1.08883  # D65 white
    lin = (3.2404542 * X - 1.5371385 * Y - 0.4985314 * Z,
           -0.9692660 * X + 1.8760108 * Y + 0.0415560 * Z,
           0.0556434 * X - 0.2040259 * Y + 1.0572252 * Z)

    def gamma(c):
        c = min(max(c, 0.0), 1.0)
        return 12.92 * c if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055

    return tuple(255.0 * gamma(c) for c in lin)


def parse_css_rgb(text: str | None):
    m = re.match(r"rgba?\((\d+),\s*(\d+),\s*(\d+)", text or "")
    return tuple(int(v) for v in m.groups()) if m else None


# --------------------------------------------------------------------------------------------
# truth: CT geometry + label volume


@dataclass
class CtSeries:
    paths: list[Path]
    sop_uids: list[str]
    ipp: np.ndarray  # (n, 3) LPS mm, sorted along the slice normal
    iop: np.ndarray  # (6,)
    spacing: tuple[float, float]  # (row spacing = between rows, column spacing)
    rows: int
    columns: int
    study_uid: str
    series_uid: str

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.iop[:3], self.iop[3:])

    @property
    def slice_spacing(self) -> float:
        d = np.diff(self.ipp @ self.normal)
        return float(np.median(d)) if len(d) else 1.0

    def slice_of(self, ipp, tol: float | None = None) -> int | None:
        """Index of the CT slice at world position ``ipp`` (None if none within tol)."""
        p = np.asarray(ipp, float)
        d = np.linalg.norm(self.ipp - p, axis=1)
        k = int(np.argmin(d))
        tol = tol if tol is not None else max(0.25 * abs(self.slice_spacing), 0.05)
        return k if d[k] <= tol else None


def read_ct(paths) -> CtSeries:
    dss = []
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        if ds.get("Modality") == "CT" or "ImagePositionPatient" in ds:
            dss.append((Path(p), ds))
    if not dss:
        raise ValueError("no CT image")
    iop = np.array(dss[0][1].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    dss.sort(key=lambda t: float(np.dot(normal, np.array(t[1].ImagePositionPatient, float))))
    ds0 = dss[0][1]
    return CtSeries(
        paths=[p for p, _ in dss], sop_uids=[str(d.SOPInstanceUID) for _, d in dss],
        ipp=np.array([d.ImagePositionPatient for _, d in dss], float), iop=iop,
        spacing=(float(ds0.PixelSpacing[0]), float(ds0.PixelSpacing[1])),
        rows=int(ds0.Rows), columns=int(ds0.Columns),
        study_uid=str(ds0.StudyInstanceUID), series_uid=str(ds0.SeriesInstanceUID))


def _read_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = path.read_bytes()
    head, _, body = raw.partition(b"\n\n")
    fields = {}
    for line in head.decode("latin-1").splitlines()[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        k, v = line.split(":", 1)
        fields[k.strip()] = v.strip().lstrip("=").strip()
    sizes = [int(v) for v in fields["sizes"].split()]
    dtype = {"short": "<i2", "unsigned short": "<u2", "uchar": "u1", "unsigned char": "u1",
             "int": "<i4", "unsigned int": "<u4", "float": "<f4"}[fields["type"]]
    if fields.get("endian", "little") == "big":
        dtype = dtype.replace("<", ">")
    data = gzip.decompress(body) if fields.get("encoding") in ("gzip", "gz") else body
    arr = np.frombuffer(data, dtype=dtype).reshape(sizes[::-1]).transpose(2, 1, 0)
    dirs = [[float(x) for x in d.strip("()").split(",")]
            for d in re.findall(r"\([^)]*\)", fields["space directions"])]
    origin = [float(x) for x in fields["space origin"].strip("()").split(",")]
    space = fields.get("space", "left-posterior-superior")
    aff = np.eye(4)
    aff[:3, :3] = np.array(dirs).T
    aff[:3, 3] = origin
    if space in ("right-anterior-superior", "RAS"):
        aff = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff
    return arr, aff


def load_label_volume(path) -> tuple[np.ndarray, np.ndarray]:
    """(array indexed [i, j, k], 4x4 voxel -> LPS mm affine) from NIfTI or NRRD."""
    path = Path(path)
    if path.suffix == ".nrrd":
        return _read_nrrd(path)
    import nibabel as nib

    img = nib.load(str(path))
    arr = np.asarray(img.dataobj)
    return arr, np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine


def labels_on_ct(ct: CtSeries, arr: np.ndarray, affine_lps: np.ndarray) -> np.ndarray:
    """Label value of every CT voxel (n, rows, cols), by world position (nearest voxel)."""
    inv = np.linalg.inv(affine_lps)
    dr, dc = ct.spacing
    A = inv[:3, :3]
    step_c = A @ (dc * ct.iop[:3])  # label-index change per CT column
    step_r = A @ (dr * ct.iop[3:])  # ... per CT row
    r = np.arange(ct.rows, dtype=np.float64)[:, None]
    c = np.arange(ct.columns, dtype=np.float64)[None, :]
    shape = np.array(arr.shape[:3])
    out = np.zeros((len(ct.ipp), ct.rows, ct.columns), dtype=np.int32)
    for k, p in enumerate(ct.ipp):
        base = A @ p + inv[:3, 3]
        idx = [np.rint(base[a] + r * step_r[a] + c * step_c[a]).astype(np.int64) for a in range(3)]
        ok = np.ones((ct.rows, ct.columns), bool)
        for a in range(3):
            ok &= (idx[a] >= 0) & (idx[a] < shape[a])
        out[k][ok] = arr[idx[0][ok], idx[1][ok], idx[2][ok]]
    return out


@dataclass
class ExpectedSegment:
    number: int  # 1-based position in the SEG (catalog order of the classes present)
    label: str
    rgb: tuple[int, int, int]
    value: int  # label value in the label volume


@dataclass
class Truth:
    ct: CtSeries
    labels: np.ndarray  # (n, rows, cols) label values on the CT grid
    segments: list[ExpectedSegment]
    # Colours: "catalog" = compare with ExpectedSegment.rgb; "seg" = only require the viewer
    # to show the SEG's own colours (reference data that has no catalog).
    colour_source: str = "catalog"
    _masks: dict = field(default_factory=dict, repr=False)
    # Segments that are not just their label value (an organ holding its tumours, holes
    # filled): label value -> mask on the CT grid (segment_truth.expected_segment_masks).
    overrides: dict = field(default_factory=dict, repr=False)

    def mask(self, seg: ExpectedSegment) -> np.ndarray:
        if seg.value in self.overrides:
            return self.overrides[seg.value]
        m = self._masks.get(seg.value)
        if m is None:
            m = self._masks[seg.value] = self.labels == seg.value
        return m

    def probe_positions(self) -> dict[str, list[list[float]]]:
        """Per segment number: slices where presence/absence of the overlay proves there is
        no one-slice shift: the organ's first slice and the one before it (or, when the organ
        starts at the first CT slice, its last slice and the one after it)."""
        out = {}
        n = len(self.ct.ipp)
        for s in self.segments:
            ks = np.nonzero(self.mask(s).any(axis=(1, 2)))[0]
            if not len(ks):
                continue
            k0, k1 = int(ks[0]), int(ks[-1])
            if k0 > 0:
                pick = [k0 - 1, k0]
            elif k1 < n - 1:
                pick = [k1, k1 + 1]
            else:
                pick = [k0, k1]
            out[str(s.number)] = [self.ct.ipp[k].tolist() for k in pick]
        return out


def load_catalog(path) -> list[tuple[int, str, tuple[int, int, int]]]:
    """(index, name, rgb) of every class in config/classes.yaml (read with plain YAML)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    classes = data["classes"] if isinstance(data, dict) else data
    out = []
    for pos, c in enumerate(classes, start=1):
        color = c.get("color") or c.get("colour")
        out.append((int(c.get("index", pos)), str(c["name"]), tuple(int(v) for v in color)))
    return out


def truth_from_catalog(ct: CtSeries, label_path, catalog_path) -> Truth:
    arr, aff = load_label_volume(label_path)
    labels = labels_on_ct(ct, arr, aff)
    present = set(np.unique(labels).tolist()) - {0}
    segs = []
    for index, name, rgb in load_catalog(catalog_path):
        if index in present:
            segs.append(ExpectedSegment(len(segs) + 1, name, rgb, index))
    return Truth(ct, labels, segs, "catalog")


def truth_from_seg(ct: CtSeries, seg_path, catalog_path) -> Truth:
    """Truth for a SEG that has no label volume beside it (the node's own output, made by the
    whole loop with the demo model): the mask content of the SEG itself.

    The frames are decoded with highdicom and placed by the CT instance each one references
    (``get_pixels_by_source_instance``), so ``check_seg_file`` (pydicom, placement by
    ImagePositionPatient) stays an independent cross-check of the SEG's geometry. The expected
    segment list is the SEG's segment labels; their order (catalog order, numbered 1..n) and
    colours come from the catalog, so the panel and colour checks still test the writer.
    Segments may overlap (an organ holding its tumour): each segment's own mask is kept as an
    override; the single-valued label volume has the later (catalog order) segment on top.
    """
    import highdicom as hd

    seg = hd.seg.segread(str(seg_path))
    numbers = list(seg.segment_numbers)
    stack = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(ct.sop_uids), segment_numbers=numbers,
        assert_missing_frames_are_empty=True)
    stack = np.asarray(stack)
    if stack.ndim == 3:
        stack = stack[..., None]
    if stack.shape[:3] != (len(ct.ipp), ct.rows, ct.columns):
        raise ValueError(f"SEG decoded to {stack.shape[:3]}, CT is "
                         f"{(len(ct.ipp), ct.rows, ct.columns)}")
    entries = load_catalog(catalog_path)
    catalog = {name: (index, rgb) for index, name, rgb in entries}
    order = {name: pos for pos, (_, name, _) in enumerate(entries)}
    names = [seg.get_segment_description(n).segment_label for n in numbers]
    unknown = [n for n in names if n not in catalog]
    if unknown:
        raise ValueError(f"SEG segment labels not in the catalog: {unknown}")
    labels = np.zeros(stack.shape[:3], dtype=np.int32)
    overrides = {}
    for j in sorted(range(len(names)), key=lambda j: order[names[j]]):
        labels[stack[..., j] > 0] = catalog[names[j]][0]
        overrides[catalog[names[j]][0]] = stack[..., j] > 0
    segs = []
    for name in sorted(names, key=order.__getitem__):
        index, rgb = catalog[name]
        segs.append(ExpectedSegment(len(segs) + 1, name, rgb, index))
    return Truth(ct, labels, segs, "catalog", overrides=overrides)


# --------------------------------------------------------------------------------------------
# SEG / SR files (pydicom)


def seg_segment_table(seg_path) -> list[dict]:
    ds = pydicom.dcmread(seg_path, stop_before_pixels=True)
    out = []
    for s in ds.SegmentSequence:
        lab = [int(v) for v in s.RecommendedDisplayCIELabValue] \
            if "RecommendedDisplayCIELabValue" in s else None
        out.append({"number": int(s.SegmentNumber), "label": str(s.get("SegmentLabel", "")),
                    "lab": lab, "rgb": dicom_lab_to_rgb(lab) if lab else None})
    return out


def read_sr_groups(sr_path) -> list[dict]:
    """TID 1500 measurement groups: tracking id/UID, NUM values, referenced segment."""
    ds = pydicom.dcmread(sr_path)

    def meaning(item):
        return item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""

    def code(item):
        return item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else ""

    groups = []

    def walk(items):
        for it in items:
            if it.ValueType == "CONTAINER" and code(it) == "125007":
                g = {"trackingIdentifier": None, "trackingUID": None, "nums": [],
                     "segment": None}
                for sub in it.get("ContentSequence", []):
                    if code(sub) == "112039":
                        g["trackingIdentifier"] = str(sub.TextValue)
                    elif code(sub) == "112040":
                        g["trackingUID"] = str(sub.UID)
                    elif sub.ValueType == "NUM":
                        mv = sub.MeasuredValueSequence[0]
                        g["nums"].append({"name": meaning(sub), "value": float(mv.NumericValue),
                                          "text": str(mv.NumericValue),
                                          "unit": mv.MeasurementUnitsCodeSequence[0].CodeValue})
                    elif sub.ValueType == "IMAGE" and "ReferencedSOPSequence" in sub \
                            and "ReferencedSegmentNumber" in sub.ReferencedSOPSequence[0]:
                        ref = sub.ReferencedSOPSequence[0]  # a Referenced Segment (not a source image)
                        g["segment"] = (str(ref.ReferencedSOPInstanceUID), int(ref.ReferencedSegmentNumber))
                groups.append(g)
            elif "ContentSequence" in it:
                walk(it.ContentSequence)

    walk(ds.ContentSequence)
    return groups


def check_seg_file(seg_path, truth: Truth, tol_fraction: float = 0.001) -> list[str]:
    """The SEG read as a position-based reader (dcmqi, Slicer, highdicom) reads it: every
    frame's ImagePositionPatient must be a CT slice, agree with the source image it
    references, and the masks placed by position must equal the truth."""
    f = []
    ds = pydicom.dcmread(seg_path)
    ct = truth.ct
    frames = ds.pixel_array
    if frames.ndim == 2:
        frames = frames[None]
    sh = ds.SharedFunctionalGroupsSequence[0]
    if "PlaneOrientationSequence" in sh:
        iop = np.array(sh.PlaneOrientationSequence[0].ImageOrientationPatient, float)
        if np.abs(iop - ct.iop).max() > 1e-4:
            f.append(f"SEG orientation {iop.tolist()} differs from the CT's {ct.iop.tolist()}")
    if (int(ds.Rows), int(ds.Columns)) != (ct.rows, ct.columns):
        f.append(f"SEG frames are {ds.Rows}x{ds.Columns}, CT slices {ct.rows}x{ct.columns}")
        return f
    numbers = [int(x.SegmentNumber) for x in ds.SegmentSequence]
    pairs = dict(zip(numbers, truth.segments))
    labelmap = ds.SegmentationType == "LABELMAP"
    got = {n: np.zeros(truth.labels.shape, bool) for n in numbers}
    disagree = []
    sop_index = {u: i for i, u in enumerate(ct.sop_uids)}
    for i, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ipp = fg.PlanePositionSequence[0].ImagePositionPatient
        k = ct.slice_of(ipp)
        if k is None:
            f.append(f"frame {i + 1} at {list(ipp)} is not on a CT slice")
            continue
        refs = [src.ReferencedSOPInstanceUID for der in fg.get("DerivationImageSequence", [])
                for src in der.get("SourceImageSequence", [])]
        kr = [sop_index.get(str(u)) for u in refs]
        if kr and any(x != k for x in kr):
            disagree.append((i + 1, k, kr))
        if labelmap:
            for n in numbers:
                got[n][k] |= frames[i] == n
        else:
            n = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            if n in got:
                got[n][k] |= frames[i] > 0
    if disagree:
        i, k, kr = disagree[0]
        f.append(f"{len(disagree)} frame(s) have a position that contradicts their source "
                 f"image (frame {i}: position = slice {k}, references slice(s) {kr})")
    for n, s in pairs.items():
        want = truth.mask(s)
        diff = int((got[n] ^ want).sum())
        if diff > tol_fraction * max(int(want.sum()), 1):
            f.append(f"segment {n} ({s.label}) placed by ImagePositionPatient differs from the "
                     f"truth in {diff} voxels (truth {int(want.sum())})")
    return f


# --------------------------------------------------------------------------------------------
# image analysis


def _png(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32)


def _crop_to_canvas(img: np.ndarray, rect) -> np.ndarray:
    x, y, w, h = (int(round(v)) for v in rect)
    return img[y:y + h, x:x + w]


def screen_mask(state: dict, mask_slice: np.ndarray, shape_hw) -> np.ndarray:
    """The mask of one CT slice drawn into viewport-canvas pixels with the viewer's own
    world->canvas mapping (cornerstone viewport.worldToCanvas of three voxel centres)."""
    p00 = np.array(state["canvasOfVoxel"]["0,0"], float)
    p01 = np.array(state["canvasOfVoxel"]["0,1"], float)  # one column further
    p10 = np.array(state["canvasOfVoxel"]["1,0"], float)  # one row further
    M = np.column_stack([p01 - p00, p10 - p00])  # canvas = p00 + M @ (col, row)
    Minv = np.linalg.inv(M)
    h, w = shape_hw
    v, u = np.mgrid[0:h, 0:w]
    pts = np.stack([u + 0.5 - p00[0], v + 0.5 - p00[1]], axis=-1) @ Minv.T
    col = np.floor(pts[..., 0] + 0.5).astype(int)  # nearest voxel, halves rounded up
    row = np.floor(pts[..., 1] + 0.5).astype(int)
    ok = (row >= 0) & (row < mask_slice.shape[0]) & (col >= 0) & (col < mask_slice.shape[1])
    out = np.zeros((h, w), bool)
    out[ok] = mask_slice[row[ok], col[ok]]
    return out


def _erode(mask: np.ndarray, n: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_erosion(mask, iterations=n) if n > 0 else mask


def _dilate(mask: np.ndarray, n: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=n) if n > 0 else mask


@dataclass
class OverlayAnalysis:
    overlay: np.ndarray  # pixels showing some overlay colour
    assigned: np.ndarray  # index into `colours` (-1: none / unexplained)
    alpha: np.ndarray  # per-pixel blend factor for its assigned colour
    residual: np.ndarray


def analyse_overlay(shown: np.ndarray, hidden: np.ndarray | None, colours: list,
                    thr: float = 10.0, max_residual: float = 25.0) -> OverlayAnalysis:
    """Split the overlay into segments by colour.

    A pixel of segment s shows ``shown = a * colour_s + (1 - a) * under`` (0 < a <= 1: fill or
    outline opacity). With ``hidden`` (the same view with the segmentation hidden) ``under``
    is known. Without it, ``under`` is the CT's grey (R = G = B): removing the grey axis
    leaves ``chroma(shown) = a * chroma(colour_s)``, which identifies s and a. (Catalog colours
    are chromatic; a grey catalog colour would need the hidden view.)
    """
    if hidden is not None:
        D = shown - hidden
        overlay = np.abs(D).max(axis=-1) > thr
        idx = np.nonzero(overlay)
        d, h = D[idx], hidden[idx]
        Ks = [np.asarray(c, np.float32)[None, :] - h for c in colours]
    else:
        P = shown - shown.mean(axis=-1, keepdims=True)  # chroma: component off the grey axis
        overlay = np.linalg.norm(P, axis=-1) > thr
        idx = np.nonzero(overlay)
        d = P[idx]
        Ks = []
        for c in colours:
            K = np.asarray(c, np.float32)
            Ks.append(np.broadcast_to(K - K.mean(), d.shape))
    best = np.full(overlay.shape, -1, int)
    best_res = np.full(overlay.shape, np.inf, np.float32)
    best_a = np.zeros(overlay.shape, np.float32)
    for s, K in enumerate(Ks):
        denom = np.maximum((K * K).sum(-1), 1e-3)
        a = np.clip((d * K).sum(-1) / denom, 0.0, 1.0)
        res = np.linalg.norm(d - a[:, None] * K, axis=-1)
        better = res < best_res[idx]
        sel = tuple(i[better] for i in idx)
        best_res[sel] = res[better]
        best[sel] = s
        best_a[sel] = a[better]
    best[overlay & (best_res > max_residual)] = -1
    return OverlayAnalysis(overlay, best, best_a, best_res)


def _centroid(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    return (float(xs.mean()), float(ys.mean())) if len(xs) else None


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else 1.0


# --------------------------------------------------------------------------------------------
# checks


def check_panel(obs: dict, truth: Truth) -> list[str]:
    """The segment panel lists exactly our segments, with our labels, in catalog order."""
    f = []
    want = [s.label for s in truth.segments]
    rows = [r["text"] for r in obs.get("panelRows", [])]
    if rows != want:
        f.append(f"segment panel shows {rows}, expected exactly {want} (catalog order)")
    service = [s["label"] for s in obs.get("segments", [])]
    if service != want:
        f.append(f"OHIF segmentation service holds segments {service}, expected {want}")
    idx = [s["segmentIndex"] for s in obs.get("segments", [])]
    if idx != [s.number for s in truth.segments]:
        f.append(f"segment numbers {idx}, expected {[s.number for s in truth.segments]}")
    return f


def check_colours(obs: dict, truth: Truth, seg_path=None, tol: float = 2.0) -> list[str]:
    """SEG CIELab -> RGB equals the catalog colour; OHIF shows that colour (service + panel)."""
    f = []
    table = {t["number"]: t for t in seg_segment_table(seg_path)} if seg_path else {}
    viewer = {s["segmentIndex"]: s for s in obs.get("segments", [])}
    rows = obs.get("panelRows", [])
    for i, s in enumerate(truth.segments):
        expect = s.rgb
        t = table.get(s.number)
        if seg_path is not None:
            if t is None or t["rgb"] is None:
                f.append(f"segment {s.number} ({s.label}): no RecommendedDisplayCIELabValue")
            else:
                got = t["rgb"]
                if truth.colour_source == "seg":
                    expect = tuple(int(round(v)) for v in got)
                elif max(abs(a - b) for a, b in zip(got, expect)) > tol:
                    f.append(f"segment {s.number} ({s.label}): SEG colour CIELab {t['lab']} -> "
                             f"RGB {tuple(round(v, 1) for v in got)}, catalog {expect}")
        v = viewer.get(s.number)
        if v is None:
            f.append(f"segment {s.number} ({s.label}) missing in the viewer")
            continue
        vc = tuple(v["color"][:3])
        if max(abs(a - b) for a, b in zip(vc, expect)) > tol:
            f.append(f"segment {s.number} ({s.label}): OHIF colour {vc}, expected {expect}")
        if i < len(rows):
            dot = parse_css_rgb(rows[i].get("color"))
            if dot is not None and max(abs(a - b) for a, b in zip(dot, vc)) > tol:
                f.append(f"segment {s.number}: panel colour dot {dot} differs from {vc}")
    return f


def check_labelmap(obs: dict, truth: Truth, max_report: int = 4) -> list[str]:
    """What OHIF built from the SEG, voxel counts and centroids per slice, equals the truth."""
    f = []
    lm = obs.get("labelmap") or []
    ct = truth.ct
    if len(lm) != len(ct.ipp):
        f.append(f"viewer stack has {len(lm)} images, the CT has {len(ct.ipp)}")
    viewer_numbers = [s["segmentIndex"] for s in obs.get("segments", [])]
    # Pair the viewer's segments with ours by position (catalog order).
    by_pos = dict(zip(viewer_numbers, truth.segments))
    bad: dict[str, list[str]] = {}
    seen = set()
    for img in lm:
        k = ct.slice_of(img["ipp"])
        if k is None:
            f.append(f"viewer image at {img['ipp']} is not a slice of the CT")
            continue
        seen.add(k)
        segs = img.get("segments", {})
        for num, s in by_pos.items():
            m = truth.mask(s)[k]
            nt = int(m.sum())
            v = segs.get(str(num))
            nv = int(v["n"]) if v else 0
            msg = None
            if abs(nv - nt) > max(1, int(0.002 * nt)):
                msg = f"slice {k}: viewer {nv} voxels, truth {nt}"
            elif nt and nv:
                rr, cc = np.nonzero(m)
                d = math.hypot(v["centroid"][0] - rr.mean(), v["centroid"][1] - cc.mean())
                if d > 0.5:
                    msg = f"slice {k}: centroid off by {d:.1f} voxels"
            if msg:
                bad.setdefault(f"{s.label} (segment {num})", []).append(msg)
        extra = set(segs) - {str(n) for n in by_pos}
        if extra:
            bad.setdefault("unexpected segment values", []).append(f"slice {k}: {sorted(extra)}")
    for name, msgs in bad.items():
        f.append(f"labelmap of {name} differs from the truth on {len(msgs)} slice(s): "
                 + "; ".join(msgs[:max_report]) + (" ..." if len(msgs) > max_report else ""))
    return f


def _state_slice(state: dict, truth: Truth) -> tuple[int | None, list[str]]:
    f = []
    k = truth.ct.slice_of(state["ipp"])
    if k is None:
        f.append(f"viewer shows an image at {state['ipp']}, not a slice of the CT")
        return None, f
    if state.get("sopInstanceUID") and state["sopInstanceUID"] != truth.ct.sop_uids[k]:
        f.append(f"viewer image SOP {state['sopInstanceUID']} is not CT slice {k}")
    text = state.get("overlayText") or ""
    m = re.search(r"\((\d+)/(\d+)\)", text)
    if m and (int(m.group(1)) != state["imageIndex"] + 1 or int(m.group(2)) != state["numImages"]):
        f.append(f"viewport overlay '{text}' disagrees with image index {state['imageIndex']}")
    return k, f


def _overlay_inputs(rec: dict, shots: Path, colours: list, i: int):
    """(shown, hidden or None, colours to fit, index of segment i among them) for one view.

    Views with only segment i visible ("screenshotOnly") are fitted against its colour alone;
    a view with every segment visible against all catalog colours."""
    if rec.get("screenshotOnly"):
        shown = _png(shots / rec["screenshotOnly"])
        cols, me = [colours[i]], 0
    elif rec.get("screenshotAll"):
        shown, cols, me = _png(shots / rec["screenshotAll"]), colours, i
    else:
        shown = _crop_to_canvas(_png(shots / rec["screenshotFull"]), rec["state"]["canvasRect"])
        cols, me = colours, i
    hidden = _png(shots / rec["screenshotNone"]) if rec.get("screenshotNone") else None
    if hidden is not None:
        h, w = min(shown.shape[0], hidden.shape[0]), min(shown.shape[1], hidden.shape[1])
        shown, hidden = shown[:h, :w], hidden[:h, :w]
    return shown, hidden, cols, me


def check_segment_views(obs: dict, truth: Truth, shots: Path, min_recall: float = 0.85,
                        min_precision: float = 0.85, max_centroid_px: float = 4.0,
                        min_colour_fit: float = 0.8,
                        min_screen_px: int = 0) -> tuple[list[str], list[dict]]:
    """For each segment row clicked: the slice shown contains the label; the overlay drawn on
    screen matches the mask projected with the viewer's world->canvas mapping (coverage,
    centroid) and has the catalog colour; at the probe slices the overlay is present exactly
    where the mask is (no one-slice shift).

    ``min_screen_px``: below this projected mask area (screen pixels on the slice shown) the
    coverage / inside-organ / centroid figures are recorded but not asserted (tiny segments
    of a model output; see conftest.DEMO_MIN_SCREEN_PX). 0 (the default) asserts them always.
    """
    f: list[str] = []
    details: list[dict] = []
    segs = truth.segments
    colours = [s.rgb for s in segs]
    if truth.colour_source == "seg":
        colours = [tuple(v["color"][:3]) for v in obs.get("segments", [])]
    per = obs.get("perSegment", [])
    limit = obs.get("maxSegments")
    want_rows = len(segs) if limit is None else min(len(segs), int(limit))
    if len(per) < want_rows:
        f.append(f"{len(per)} segment rows could be clicked, expected {want_rows}")
    for rec in per:
        i = rec["row"]
        if i >= len(segs):
            continue
        s = segs[i]
        name = f"{s.label} (row {i + 1})"
        d = {"segment": s.label}
        k, sf = _state_slice(rec["state"], truth)
        f += [f"{name}: {m}" for m in sf]
        if k is None:
            continue
        d["slice"] = k
        m3 = truth.mask(s)
        if not m3[k].any():
            ks = np.nonzero(m3.any(axis=(1, 2)))[0]
            # OHIF jumps to the segment's centre (the mean of its voxels). A fragmented or hollow
            # segment (a model output in pieces) can have none of itself on that slice: then
            # landing there is OHIF's rule, not a misplaced segment. Only that case is excepted.
            zc = int(round(float(np.nonzero(m3)[0].mean()))) if m3.any() else None
            if zc is not None and not m3[zc].any() and abs(k - zc) <= 1:
                d["centre_slice_empty"] = zc
                details.append(d)
                continue
            f.append(f"{name}: after clicking, the viewer shows CT slice {k} "
                     f"(z={truth.ct.ipp[k][2]:.2f}), which does not contain the label "
                     f"(label on slices {ks.min() if len(ks) else '-'}..{ks.max() if len(ks) else '-'})")
        shown, hidden, cols, me = _overlay_inputs(rec, shots, colours, i)
        h, w = shown.shape[:2]
        an = analyse_overlay(shown, hidden, cols)
        T = screen_mask(rec["state"], m3[k], (h, w))
        O = an.assigned == me
        d.update(screen_truth_px=int(T.sum()), overlay_px=int(O.sum()))
        if T.sum() == 0:
            continue
        recall = float((O & T).sum() / T.sum())
        near = _dilate(T, 5)
        precision = float((O & near).sum() / max(O.sum(), 1))
        ct_, co = _centroid(T), _centroid(O)
        dist = math.hypot(ct_[0] - co[0], ct_[1] - co[1]) if co else float("inf")
        d.update(recall=round(recall, 3), precision=round(precision, 3),
                 centroid_truth=ct_, centroid_overlay=co, centroid_px=round(dist, 2),
                 dice=round(_dice(O, T), 3))
        small = int(T.sum()) < min_screen_px
        if small:
            d["below_min_screen_px"] = min_screen_px
        if not small and (recall < min_recall or precision < min_precision
                          or dist > max_centroid_px):
            f.append(f"{name}: on slice {k} the {s.label} overlay does not match the mask "
                     f"projected to the screen: coverage {recall:.2f}, inside-organ "
                     f"{precision:.2f}, centroid {dist:.1f} px off (overlay {int(O.sum())} px, "
                     f"mask {int(T.sum())} px)")
        # Colour actually rendered: inside the organ (away from the outline) the fill is
        # hidden + a (colour - hidden); the pixels must fit the catalog colour.
        inner = _erode(T, 4) & an.overlay
        if inner.sum() >= 20 and recall >= 0.5:
            fit = an.assigned[inner] == me
            d["colour_fit_fraction"] = round(float(fit.mean()), 3)
            a = float(np.median(an.alpha[inner][fit])) if fit.any() else 0.0
            d["fill_alpha_estimate"] = round(a, 3)
            if a > 0.05 and hidden is not None:
                est = np.median(hidden[inner] + (shown[inner] - hidden[inner]) / a, axis=0)
                d["rendered_colour_estimate"] = [round(float(v), 1) for v in est]
            elif a > 0.05:  # chroma only: the colour's offset from its grey mean
                est = np.median(shown[inner] - shown[inner].mean(-1, keepdims=True), axis=0) / a
                d["rendered_chroma_estimate"] = [round(float(v), 1) for v in est]
                d["catalog_chroma"] = [round(float(v - np.mean(colours[i])), 1)
                                       for v in colours[i]]
                d["catalog_colour"] = list(colours[i])
            if fit.mean() < min_colour_fit:
                est = d.get("rendered_colour_estimate") or d.get("rendered_chroma_estimate")
                f.append(f"{name}: overlay colour on screen {est} does not match the catalog "
                         f"colour {s.rgb} ({fit.mean():.0%} of the organ's pixels fit)")
        # Probes: presence / absence of the overlay at the organ's boundary slices.
        d["probes"] = []
        for p in rec.get("probes", []):
            kp, pf = _state_slice(p["state"], truth)
            f += [f"{name} probe: {m}" for m in pf]
            if kp is None:
                continue
            a_img, n_img, pcols, pme = _overlay_inputs(p, shots, colours, i)
            hh, ww = a_img.shape[:2]
            anp = analyse_overlay(a_img, n_img, pcols)
            Tp = screen_mask(p["state"], m3[kp], (hh, ww))
            Op = anp.assigned == pme
            info = {"slice": kp, "truth_voxels": int(m3[kp].sum()), "truth_px": int(Tp.sum()),
                    "overlay_px": int(Op.sum())}
            d["probes"].append(info)
            if m3[kp].any():
                if Op.sum() < max(1, 0.3 * Tp.sum()):
                    f.append(f"{name}: slice {kp} contains {int(m3[kp].sum())} voxels of the "
                             f"label but the viewer draws {int(Op.sum())} px of it there "
                             f"(expected about {int(Tp.sum())})")
            elif Op.sum() > 3:
                f.append(f"{name}: slice {kp} has none of the label but the viewer draws "
                         f"{int(Op.sum())} px of its overlay there")
        details.append(d)
    return f, details


def _merge_by_uid(groups: list[dict]) -> dict[str, dict]:
    """SR measurement groups merged by Tracking UID, as OHIF merges them (one finding)."""
    out: dict[str, dict] = {}
    for g in groups:
        m = out.setdefault(g["trackingUID"], {**g, "nums": []})
        m["nums"] += g["nums"]
        m["segment"] = m["segment"] or g["segment"]
    return out


def check_sr(obs: dict, truth: Truth, sr_path, seg_path=None) -> list[str]:
    """OHIF's SR handler loads our TID 1500 report without error: one measurement per finding
    (segments and lesions) with our tracking identifiers/UIDs and values; the measurement
    values are visible in OHIF's DICOM tag browser."""
    f = []
    sr = obs.get("sr") or {}
    if not sr.get("found"):
        return ["the SR series is not in OHIF's display sets"]
    if not sr.get("isImagingMeasurementReport"):
        f.append("OHIF does not recognise the SR as a TID 1500 Imaging Measurement Report")
    if not sr.get("isLoaded"):
        f.append(f"OHIF could not load the SR: {sr.get('loadError')}")
    err = sr.get("loadError")
    ms = sr.get("measurements", [])
    if err:
        f.append(f"OHIF's SR loader failed: {err.splitlines()[0]}")
    for e in sr.get("pageErrorsDuringLoad", []):
        f.append(f"page error while loading the SR: {e.splitlines()[0]}")
    for c in sr.get("consoleDuringLoad", []):
        if c["type"] == "error" and not _known_console(c["text"]):
            f.append(f"console error while loading the SR: {c['text'][:200]}")
    groups = read_sr_groups(sr_path)
    findings = _merge_by_uid(groups)
    segment_findings = [g for g in findings.values() if g["segment"]]
    if len(segment_findings) != len(truth.segments):
        f.append(f"our SR has {len(segment_findings)} segment findings for {len(truth.segments)} segments")
    if len(ms) != len(findings):
        f.append(f"OHIF parsed {len(ms)} measurements, our SR has {len(findings)} findings")
    no_coords = [m["trackingIdentifier"] for m in ms if m["nCoords"] == 0]
    if no_coords:
        f.append(f"OHIF found no coordinates for {no_coords[:4]}: it cannot show them")
    by_uid = {m["trackingUID"]: m for m in ms}
    for g in findings.values():
        m = by_uid.get(g["trackingUID"])
        if m is None:
            f.append(f"OHIF did not parse measurement group {g['trackingIdentifier']!r}")
            continue
        if m["trackingIdentifier"] != g["trackingIdentifier"]:
            f.append(f"OHIF reads tracking identifier {m['trackingIdentifier']!r}, "
                     f"SR has {g['trackingIdentifier']!r}")
        labels: dict[str, list[str]] = {}
        for lb in m.get("labels", []):  # a name can repeat (two Volumes: tissue, whole organ)
            labels.setdefault(lb.get("label"), []).append(str(lb.get("value")))
        for num in g["nums"]:
            if num["name"] in labels:  # OHIF shows it: our value must be among its values of that name
                def close(text, value=num["value"]):
                    try:
                        return abs(float(text.split()[0]) - value) <= 0.006 + 1e-6 * abs(value)
                    except (ValueError, IndexError):
                        return False

                if not any(close(v) for v in labels[num["name"]]):
                    f.append(f"OHIF shows {num['name']} = {labels[num['name']]} for "
                             f"{g['trackingIdentifier']}, SR has {num['value']}")
    # What a reader can see of the SR in OHIF: its DICOM tag browser, filtered on
    # "NumericValue" (every measured value) and "TextValue" (every tracking identifier).
    tb = sr.get("tagBrowser") or {}

    def shown(n) -> bool:  # "28.0" may be shown as "28"
        text = tb.get("NumericValue", "")
        alt = str(int(n["value"])) if float(n["value"]).is_integer() else n["text"]
        return n["text"] in text or re.search(rf"(?<![\d.]){re.escape(alt)}(?![\d.])", text) is not None

    missing = [f"{g['trackingIdentifier']}: {n['name']} {n['text']}" for g in groups
               for n in g["nums"] if not shown(n)]
    if missing:
        f.append(f"OHIF's DICOM tag browser does not show {len(missing)} SR value(s): "
                 f"{missing[:4]}")
    missing = [g["trackingIdentifier"] for g in groups
               if g["trackingIdentifier"] and g["trackingIdentifier"] not in tb.get("TextValue", "")]
    if missing:
        f.append(f"OHIF's DICOM tag browser does not show the tracking identifiers {missing}")
    if seg_path is not None:
        seg_uid = str(pydicom.dcmread(seg_path, stop_before_pixels=True).SOPInstanceUID)
        for g in segment_findings:
            if g["segment"][0] != seg_uid:
                f.append(f"SR group {g['trackingIdentifier']} does not reference our SEG")
    return f


def _known_console(text: str) -> bool:
    return any(re.search(p, text) for p, _ in KNOWN_HARMLESS_CONSOLE_ERRORS)


def check_console(obs: dict) -> list[str]:
    f = []
    for c in obs.get("console", []):
        if c["type"] == "error" and not _known_console(c["text"]):
            f.append(f"console error: {c['text'][:300]}")
    for e in obs.get("pageErrors", []):
        f.append(f"uncaught page error: {e.splitlines()[0][:300]}")
    return f


def check_network(obs: dict, session: dict | None = None) -> list[str]:
    """Every request the browser made went to 127.0.0.1 (or stayed inside it: data:, blob:)."""
    from urllib.parse import urlsplit

    f = []
    outside = []
    for url in obs.get("requests", []):
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "about", "chrome-error"):
            continue
        if parts.hostname != "127.0.0.1":
            outside.append(url)
    if outside:
        f.append(f"{len(outside)} request(s) left 127.0.0.1: {sorted(set(outside))[:5]}")
    failed = [u for u, why in obs.get("failedRequests", []) if "ERR_ABORTED" not in str(why)]
    if failed:
        f.append(f"failed requests: {failed[:5]}")
    if session is not None:
        ifaces = session.get("interfaces")
        if ifaces is not None and ifaces != ["lo"]:
            f.append(f"the viewer session was not network-isolated: interfaces {ifaces}")
        errors = [r for r in session.get("serverRequests", []) if r[2] >= 400 or r[2] < 0]
        if errors:
            f.append(f"the same-origin server answered errors: {errors[:5]}")
    return f


# --------------------------------------------------------------------------------------------
# lesions, overlapping segments, key images (issue 14)


@dataclass
class LesionTruth:
    """One tumour component of the label volume on the CT grid (independent of the SR)."""

    name: str  # tumour class
    value: int
    mask: np.ndarray  # (n, rows, cols) bool


def lesion_truth(truth: Truth, tumor_values: dict[int, str], min_volume_ml: float) -> list[LesionTruth]:
    """26-connected components of the tumour classes of at least ``min_volume_ml``."""
    from scipy import ndimage

    ct = truth.ct
    voxel_ml = ct.spacing[0] * ct.spacing[1] * abs(ct.slice_spacing) / 1000.0
    out = []
    for value, name in tumor_values.items():
        comps, n = ndimage.label(truth.labels == value, structure=np.ones((3, 3, 3), bool))
        for k in range(1, n + 1):
            m = comps == k
            if m.sum() * voxel_ml >= min_volume_ml:
                out.append(LesionTruth(name, value, m))
    return out


def _world_to_voxel(ct: CtSeries, p) -> tuple[float, float, float]:
    """(slice, row, column) index of a world point (LPS mm) on the CT's grid."""
    d = np.asarray(p, float) - ct.ipp[0]
    col = d @ ct.iop[:3] / ct.spacing[1]
    row = d @ ct.iop[3:] / ct.spacing[0]
    k = d @ ct.normal / ct.slice_spacing
    return float(k), float(row), float(col)


def check_sr_view(obs: dict, truth: Truth, sr_path, lesions: list[LesionTruth],
                  min_inside: float = 0.9) -> tuple[list[str], list[dict]]:
    """Our SR opened in OHIF's SR viewport: every lesion is one of the measurements OHIF steps
    through, with our long/short axis values in its list and in the text drawn on the image;
    its two lines are drawn on the CT image the SR references, lie on that lesion (checked
    against the label volume) and measure what the SR says; the lines are really on screen."""
    f: list[str] = []
    details: list[dict] = []
    view = obs.get("srView")
    if not view:
        return ["the SR viewport was not opened"], details
    parsed = view.get("parsed", [])
    groups = _merge_by_uid(read_sr_groups(sr_path))
    lesion_groups = [g for g in groups.values() if " lesion " in (g["trackingIdentifier"] or "")]
    if len(lesion_groups) != len(lesions):
        f.append(f"our SR reports {len(lesion_groups)} lesions, the labels hold {len(lesions)}")
    index = {m["trackingUID"]: i for i, m in enumerate(parsed)}
    matched: dict[int, str] = {}
    shots = Path(obs.get("_shots", "."))
    for g in lesion_groups:
        name = g["trackingIdentifier"]
        d = {"lesion": name}
        details.append(d)
        i = index.get(g["trackingUID"])
        if i is None:
            f.append(f"{name}: not among OHIF's SR measurements")
            continue
        labels = {lb.get("label"): str(lb.get("value")) for lb in parsed[i].get("labels", [])}
        values = {n["name"]: n["value"] for n in g["nums"]}
        for axis in ("Long axis", "Short axis"):
            shown = labels.get(axis, "")
            try:
                ok = abs(float(shown.split()[0]) - values[axis]) <= 0.006
            except (ValueError, IndexError, KeyError):
                ok = False
            if not ok:
                f.append(f"{name}: OHIF lists {axis} = {shown!r}, the SR says {values.get(axis)}")
        if i >= len(view.get("views", [])):
            f.append(f"{name}: the SR viewport never showed it")
            continue
        v = view["views"][i]
        text = " ".join(v.get("texts", []))
        for axis in ("Long axis", "Short axis"):
            if f"{axis}: {values.get(axis, 0):.2f} mm" not in text:
                f.append(f"{name}: the viewport does not write '{axis}: {values.get(axis, 0):.2f} mm' "
                         f"beside the lesion (text drawn: {text[:200]!r})")
        k, sf = _state_slice(v["state"], truth)
        f += [f"{name}: {m}" for m in sf]
        if k is None:
            continue
        refs = {c["ref"] for c in parsed[i].get("coords", []) if c.get("ref")}
        if refs != {truth.ct.sop_uids[k]}:
            f.append(f"{name}: the viewport shows CT slice {k}, the SR's lines are on {refs}")
        # OHIF adds an SR's annotations once per display set it checks them against: the copies
        # are identical; what is drawn is one of them.
        anns = [a for a in v.get("annotations", []) if a["uid"] == g["trackingUID"]]
        lines = anns[0]["lines"] if anns else []
        d.update(slice=k, lines=len(lines), annotation_copies=len(anns))
        if len(lines) != 2:
            f.append(f"{name}: {len(lines)} lines drawn on slice {k}, expected long and short axis")
            continue
        hits: dict[int, int] = {}
        samples = 0
        lengths = []
        for line in lines:
            a, b = (np.array(p["world"], float) for p in line[:2])
            lengths.append(float(np.linalg.norm(b - a)))
            for t in np.linspace(0, 1, 21):
                kk, r, c = _world_to_voxel(truth.ct, a + t * (b - a))
                samples += 1
                if abs(kk - k) > 0.25:
                    continue
                for j, les in enumerate(lesions):
                    if _near_mask(les.mask[k], r, c):
                        hits[j] = hits.get(j, 0) + 1
        best = max(hits, key=hits.get) if hits else None
        inside = hits.get(best, 0) / samples if samples else 0.0
        d.update(inside_fraction=round(inside, 3), drawn_mm=[round(x, 2) for x in sorted(lengths, reverse=True)])
        if best is None or inside < min_inside:
            f.append(f"{name}: the lines drawn on slice {k} are not on a lesion "
                     f"({inside:.0%} of their points on one)")
        else:
            if best in matched:
                f.append(f"{name}: drawn on the same lesion as {matched[best]}")
            matched[best] = name
            if lesions[best].name not in name:
                f.append(f"{name}: drawn on a {lesions[best].name}")
        want = sorted([values.get("Long axis", 0.0), values.get("Short axis", 0.0)], reverse=True)
        if any(abs(x - y) > 0.6 for x, y in zip(sorted(lengths, reverse=True), want)):
            f.append(f"{name}: the lines OHIF draws measure {[round(x, 1) for x in lengths]} mm, "
                     f"the SR says {want}")
        # On screen: the page screenshot shows a coloured (non-grey) line along both lines.
        if v.get("screenshotFull"):
            img = _png(shots / v["screenshotFull"])
            x0, y0 = v["state"]["canvasRect"][:2]
            coloured = total = 0
            for line in lines:
                p, q = (np.array(pt["canvas"], float) for pt in line[:2])
                for t in np.linspace(0.05, 0.95, 19):
                    x, y = (p + t * (q - p)) + (x0, y0)
                    patch = img[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2]
                    total += 1
                    coloured += bool(patch.size and (np.ptp(patch, axis=-1) > 60).any())
            d["line_pixels_coloured"] = round(coloured / max(total, 1), 3)
            if coloured < 0.6 * total:
                f.append(f"{name}: the lines are not visible on screen ({coloured}/{total} points coloured)")
    missed = [les.name for j, les in enumerate(lesions) if j not in matched]
    if missed and not f:
        f.append(f"lesions without a drawn measurement: {missed}")
    return f, details


def _near_mask(mask2d: np.ndarray, r: float, c: float, tol: float = 0.75) -> bool:
    """The point lies on the mask (within ``tol`` pixels of a mask pixel's square)."""
    r0, r1 = int(np.floor(r - tol + 0.5)), int(np.floor(r + tol + 0.5))
    c0, c1 = int(np.floor(c - tol + 0.5)), int(np.floor(c + tol + 0.5))
    sub = mask2d[max(r0, 0):r1 + 1, max(c0, 0):c1 + 1]
    return bool(sub.size and sub.any())


def _colour_classes(shown, hidden, alpha: float, organ_rgb, tumor_rgb) -> dict[str, float]:
    """Share of the pixels (shown / hidden: (n, 3) RGB with and without the overlay) whose shown
    colour is nearest to organ fill, tumour fill, tumour over organ, or no overlay at all."""
    organ_c, tumor_c = np.asarray(organ_rgb, np.float32), np.asarray(tumor_rgb, np.float32)
    organ = alpha * organ_c + (1 - alpha) * hidden
    cands = {"organ": organ, "tumor": alpha * tumor_c + (1 - alpha) * hidden,
             "tumor_over_organ": alpha * tumor_c + (1 - alpha) * organ, "none": hidden}
    dist = {name: np.linalg.norm(shown - c, axis=-1) for name, c in cands.items()}
    names = list(dist)
    winner = np.argmin(np.stack([dist[n] for n in names]), axis=0)
    return {n: float((winner == i).mean()) for i, n in enumerate(names)}


def check_overlap(obs: dict, truth: Truth, shots: Path, tumor_values: set[int],
                  min_fit: float = 0.8) -> tuple[list[str], list[dict]]:
    """With every segment shown, at each probe slice: the pixels of each tumour show the
    tumour's colour rather than its organ's, and the organ around it is displayed in its own
    colour (both segments on screen, the tumour not hidden).

    A pixel is explained by the candidate overlay that reproduces it best from the view with
    the segmentation hidden: organ fill, tumour fill, or tumour fill over organ fill (the case
    of overlapping segments), all with OHIF's fill opacity, measured on the organ pixels."""
    f: list[str] = []
    details: list[dict] = []
    probes = obs.get("overlap") or []
    if not probes:
        return ["no view with every segment shown was taken"], details
    segs = truth.segments
    for p in probes:
        k, sf = _state_slice(p["state"], truth)
        f += sf
        if k is None:
            continue
        shown, hidden = _png(shots / p["screenshotAll"]), _png(shots / p["screenshotNone"])
        h, w = min(shown.shape[0], hidden.shape[0]), min(shown.shape[1], hidden.shape[1])
        shown, hidden = shown[:h, :w], hidden[:h, :w]
        for t in segs:
            if t.value not in tumor_values or not truth.mask(t)[k].any():
                continue
            T = screen_mask(p["state"], truth.mask(t)[k], (h, w))
            inner = _erode(T, 3)
            d = {"slice": k, "tumor": t.label, "tumor_px": int(inner.sum())}
            details.append(d)
            if inner.sum() < 20:
                d["too_small"] = True
                continue
            # the organ displayed around the tumour: the non-tumour segment most present there
            around = _dilate(T, 10) & ~_dilate(T, 3)
            best, best_n, organ_screen = None, 0, None
            for o in segs:
                if o.value in tumor_values or not truth.mask(o)[k].any():
                    continue
                om = screen_mask(p["state"], truth.mask(o)[k], (h, w))
                n = int((om & around).sum())
                if n > best_n:
                    best, best_n, organ_screen = o, n, om
            if best is None:
                f.append(f"slice {k}: no organ segment around the {t.label}")
                continue
            ring = _erode(organ_screen, 2) & around
            alpha = _fill_alpha(shown[ring], hidden[ring], best.rgb)
            d.update(organ=best.label, fill_alpha=round(alpha, 3), ring_px=int(ring.sum()))
            at_tumor, at_ring = (_colour_classes(shown[m], hidden[m], alpha, best.rgb, t.rgb) for m in (inner, ring))
            tumor_fit = at_tumor["tumor"] + at_tumor["tumor_over_organ"]
            d.update(tumor_colour_fit=round(tumor_fit, 3), organ_ring_colour_fit=round(at_ring["organ"], 3),
                     at_tumor={k2: round(v, 3) for k2, v in at_tumor.items()})
            if tumor_fit < min_fit:
                f.append(f"slice {k}: only {tumor_fit:.0%} of the {t.label} pixels show its colour {t.rgb} "
                         f"with every segment displayed ({at_tumor['organ']:.0%} show the {best.label}'s)")
            if at_ring["organ"] < min_fit:
                f.append(f"slice {k}: around the {t.label} only {at_ring['organ']:.0%} of the {best.label} shows "
                         f"its colour {best.rgb}: the organ is not displayed with it")
    return f, details


def _fill_alpha(shown: np.ndarray, hidden: np.ndarray, rgb) -> float:
    """Median opacity of a fill of colour ``rgb`` (shown = a * rgb + (1 - a) * hidden)."""
    if len(shown) == 0:
        return 0.5
    K = np.asarray(rgb, np.float32)[None, :] - hidden
    a = (np.clip(((shown - hidden) * K).sum(-1) / np.maximum((K * K).sum(-1), 1e-3), 0, 1))
    return float(np.median(a)) if a.size else 0.5


def check_key_images(obs: dict, n_files: int) -> list[str]:
    """The key-image series is one of OHIF's display sets, with every image, and it shows."""
    k = (obs.get("srView") or {}).get("keyImages")
    if not k or not k.get("found"):
        return ["the key-image series is not among OHIF's display sets"]
    f = []
    if k.get("images") != n_files:
        f.append(f"OHIF's key-image display set has {k.get('images')} images, we sent {n_files}")
    shown = k.get("shown") or {}
    if shown.get("sopClassUID") != "1.2.840.10008.5.1.4.1.1.7":
        f.append(f"the viewport does not show a Secondary Capture image: {shown}")
    return f


@dataclass
class CaseResult:
    name: str
    failures: dict[str, list[str]] = field(default_factory=dict)
    details: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.failures.values())

    def summary(self) -> str:
        lines = [f"case {self.name}: {'OK' if self.ok else 'FAILED'}"]
        for check, msgs in self.failures.items():
            for m in msgs:
                lines.append(f"  [{check}] {m}")
        return "\n".join(lines)


def check_case(obs: dict, truth: Truth, shots: Path, seg_path=None, sr_path=None,
               session: dict | None = None, min_screen_px: int = 0, lesions: list | None = None,
               tumor_values: set[int] | None = None, key_image_files: int | None = None,
               only_sr_view: bool = False) -> CaseResult:
    r = CaseResult(obs.get("name", "?"))
    if obs.get("driverError"):
        r.failures["driver"] = [f"the viewer run failed: {obs['driverError'].splitlines()[0]}"]
        return r
    obs = {**obs, "_shots": str(shots)}
    if lesions is not None:
        r.failures["sr_view"], r.details["sr_view"] = check_sr_view(obs, truth, sr_path, lesions)
    if only_sr_view:  # an SR-only case: the SR viewport is all it opens
        r.failures["console"] = check_console(obs)
        r.failures["network"] = check_network(obs, session)
        return r
    if tumor_values is not None:
        r.failures["overlap"], r.details["overlap"] = check_overlap(obs, truth, shots, tumor_values)
    if key_image_files is not None:
        r.failures["key_images"] = check_key_images(obs, key_image_files)
    r.failures["panel"] = check_panel(obs, truth)
    r.failures["colours"] = check_colours(obs, truth, seg_path)
    if seg_path is not None:
        r.failures["seg_file"] = check_seg_file(seg_path, truth)
    r.failures["labelmap"] = check_labelmap(obs, truth)
    f, details = check_segment_views(obs, truth, shots, min_screen_px=min_screen_px)
    r.failures["segment_views"] = f
    r.details["segment_views"] = details
    if sr_path is not None:
        r.failures["sr"] = check_sr(obs, truth, sr_path, seg_path)
    r.failures["console"] = check_console(obs)
    r.failures["network"] = check_network(obs, session)
    return r


def write_report(results: list[CaseResult], path: Path) -> None:
    path.write_text(json.dumps([{"name": r.name, "ok": r.ok, "failures": r.failures,
                                 "details": r.details} for r in results], indent=1,
                               default=str))
