"""Organ segments with their tumours, lesions with RECIST axes in the SR, key images (issue 14)."""
from __future__ import annotations

import math
import subprocess

import numpy as np
import pydicom
import pytest

from dsm_node.results.display import DisplayFrame, radiological
from dsm_node.results.lesions import KnownLesion, assign_identities, find_lesions, long_axis, short_axis
from dsm_node.results.options import ResultOptions
from dsm_node.results.outputs import earlier_lesions, write_results
from dsm_node.results.seg import present_classes
from dsm_node.results.segments import TISSUE, WITH_TUMORS, plan_segments
from dsm_node.results.sr import known_lesions
from dsm_node.volume import assemble_volume
from tests.results.resulttools import dciodvfy, expected_segment_masks
from tests.support.ct import LIVER, LIVER_TUMOR, write_series
from tests.tools import require_tool

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
RIGHT_KIDNEY, LEFT_KIDNEY, KIDNEY_TUMOR, STOMACH = 2, 3, 27, 7


def _ball(shape, centre, radius, spacing=(1.0, 1.0, 1.0)):
    grid = np.indices(shape, dtype=float)
    return sum(((grid[a] - centre[a]) * spacing[a]) ** 2 for a in range(3)) <= radius ** 2


# ---- organ segments -------------------------------------------------------------------------------
def test_organ_segment_holds_its_tumors_and_enclosed_holes(catalog):
    shape = (20, 40, 60)
    labels = np.zeros(shape, np.uint8)
    labels[_ball(shape, (10, 20, 15), 9)] = LIVER
    labels[_ball(shape, (10, 20, 15), 3)] = LIVER_TUMOR  # inside the liver
    cavity = _ball(shape, (10, 20, 20), 1.5) & (labels == LIVER)  # enclosed, unlabelled
    labels[cavity] = 0
    labels[_ball(shape, (10, 20, 45), 6)] = RIGHT_KIDNEY
    labels[_ball(shape, (10, 20, 54), 4)] = LEFT_KIDNEY
    between = _ball(shape, (10, 20, 51), 2.2) & (labels != LEFT_KIDNEY)  # touches both kidneys
    labels[between] = KIDNEY_TUMOR
    labels[2, 2, 2] = LIVER_TUMOR  # far from the liver: not folded in
    plan = plan_segments(labels, catalog, present_classes(labels, catalog))
    by_label = {p.label: p for p in plan.segments}
    liver = plan.mask(by_label[LIVER].number)
    assert liver[labels == LIVER_TUMOR].sum() == (labels[_ball(shape, (10, 20, 15), 3)] == LIVER_TUMOR).sum()
    assert liver[cavity].all() and not liver[2, 2, 2]
    assert by_label[LIVER].method == WITH_TUMORS and by_label[LIVER].included_tumors == ("Liver Tumor",)
    assert by_label[LIVER].filled_voxels == int(cavity.sum())
    # the tumour stays a segment of its own, overlapping its organ
    tumor = plan.mask(by_label[LIVER_TUMOR].number)
    np.testing.assert_array_equal(tumor, labels == LIVER_TUMOR)
    assert plan.overlapping
    # a kidney tumour touching both kidneys goes to the one it touches most
    contact = {k: int(np.sum(np.isin(labels[np.roll(between, 1, axis=2) | np.roll(between, -1, axis=2)], k)))
               for k in (RIGHT_KIDNEY, LEFT_KIDNEY)}
    best = max(contact, key=contact.get)
    other = ({RIGHT_KIDNEY, LEFT_KIDNEY} - {best}).pop()
    assert plan.mask(by_label[best].number)[between].all()
    assert not plan.mask(by_label[other].number)[between].any()
    # the whole plan is what the independent expectation says
    expected = expected_segment_masks(labels, catalog, True)
    for p in plan.segments:
        np.testing.assert_array_equal(plan.mask(p.number), expected[p.label], err_msg=p.entry.name)
        assert p.voxel_count == int(expected[p.label].sum())
    # switched off: every segment is its own label
    plain = plan_segments(labels, catalog, present_classes(labels, catalog), organs_include_tumors=False)
    assert {p.method for p in plain.segments} == {TISSUE} and not plain.overlapping


def test_a_cavity_open_to_the_outside_is_not_filled(catalog):
    shape = (12, 30, 30)
    labels = np.zeros(shape, np.uint8)
    organ = _ball(shape, (6, 15, 15), 9, spacing=(2.0, 1.0, 1.0))
    channel = np.zeros(shape, bool)
    channel[:, 14:17, 15:] = True  # a tube from the centre to the outside (e.g. a hilum)
    labels[organ & ~channel] = LIVER
    plan = plan_segments(labels, catalog, present_classes(labels, catalog))
    assert plan.segments[0].filled_voxels == 0
    np.testing.assert_array_equal(plan.mask(1), labels == LIVER)


# ---- lesion axes --------------------------------------------------------------------------------
@pytest.mark.parametrize("angle", [0.0, 30.0, 71.0])
def test_long_and_short_axis_of_a_rotated_ellipse(angle):
    r, c = np.mgrid[0:120, 0:120]
    sp = (0.7, 0.9)  # anisotropic pixels
    th = math.radians(angle)
    y, x = (r - 60) * sp[0], (c - 60) * sp[1]
    xr, yr = x * math.cos(th) + y * math.sin(th), -x * math.sin(th) + y * math.cos(th)
    mask = (xr / 30) ** 2 + (yr / 12) ** 2 <= 1  # axes 60 x 24 mm edge to edge
    long = long_axis(mask, sp)
    short = short_axis(mask, sp, long)
    assert 58.5 <= long.length_mm <= 60.0
    assert 22.5 <= short.length_mm <= 24.0
    u = (np.subtract(long.end, long.start) * sp)
    v = (np.subtract(short.end, short.start) * sp)
    assert abs(np.dot(u, v)) / (np.linalg.norm(u) * np.linalg.norm(v)) < 1e-6  # perpendicular
    assert abs(math.dist(np.multiply(long.start, sp), np.multiply(long.end, sp)) - long.length_mm) < 1e-6
    for p in (long.start, long.end, short.start, short.end):  # end points on the lesion
        assert mask[int(round(p[0])), int(round(p[1]))]


def test_fragments_are_separate_lesions_above_the_minimum_volume(catalog):
    shape = (20, 64, 64)
    labels = np.zeros(shape, np.uint8)
    labels[_ball(shape, (10, 32, 32), 25, spacing=(2.5, 1, 1))] = LIVER
    labels[_ball(shape, (8, 20, 20), 8, spacing=(2.5, 1, 1))] = LIVER_TUMOR
    labels[_ball(shape, (12, 44, 44), 5, spacing=(2.5, 1, 1))] = LIVER_TUMOR
    labels[10, 32, 50] = LIVER_TUMOR  # one voxel
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    lesions = find_lesions(labels, None, affine, catalog, min_volume_ml=0.1)
    assert [les.tracking_identifier for les in lesions] == ["Liver Tumor lesion 1", "Liver Tumor lesion 2"]
    big, small = lesions
    assert big.volume_cm3 > small.volume_cm3 > 0.1
    assert 14 <= big.long_axis.length_mm <= 16 and big.slice_index == 8  # its largest slice
    assert big.max_diameter_mm < 20  # per lesion, not across the class
    assert len(find_lesions(labels, None, affine, catalog, min_volume_ml=0.0)) == 3


def test_lesion_identity_is_kept_across_revisions(catalog):
    shape = (20, 64, 64)
    labels = np.zeros(shape, np.uint8)
    labels[_ball(shape, (8, 20, 20), 8, spacing=(2.5, 1, 1))] = LIVER_TUMOR
    labels[_ball(shape, (12, 44, 44), 6, spacing=(2.5, 1, 1))] = LIVER_TUMOR
    affine = np.diag([1.0, 1.0, 2.5, 1.0])

    def uid_for(name, key):
        return f"uid:{key}"

    first = assign_identities(find_lesions(labels, None, affine, catalog, min_volume_ml=0.1), affine, uid_for)
    again = assign_identities(find_lesions(labels, None, affine, catalog, min_volume_ml=0.1), affine, uid_for)
    assert [(x.number, x.tracking_uid) for x in first] == [(x.number, x.tracking_uid) for x in again]
    # next revision: lesion 2 grew past lesion 1 (ranks swap), a new lesion appeared
    grown = labels.copy()
    grown[_ball(shape, (12, 44, 44), 10, spacing=(2.5, 1, 1))] = LIVER_TUMOR
    grown[_ball(shape, (15, 50, 12), 4, spacing=(2.5, 1, 1))] = LIVER_TUMOR

    def known_of(les):
        s = np.array([les.long_axis.start[1], les.long_axis.start[0], les.slice_index, 1.0]) @ affine.T
        e = np.array([les.long_axis.end[1], les.long_axis.end[0], les.slice_index, 1.0]) @ affine.T
        return KnownLesion("Liver Tumor", les.number, les.tracking_uid, tuple((s[:3] + e[:3]) / 2),
                           les.long_axis.length_mm)

    known = [known_of(x) for x in first]
    later = assign_identities(find_lesions(grown, None, affine, catalog, min_volume_ml=0.1), affine, uid_for, known)
    by_uid = {x.tracking_uid: x for x in later}
    for old in first:
        assert by_uid[old.tracking_uid].number == old.number
    new = [x for x in later if x.tracking_uid not in {o.tracking_uid for o in first}]
    assert len(new) == 1 and new[0].number == 3


# ---- the SR and the key images on a synthetic series ---------------------------------------------
@pytest.fixture(scope="module")
def lesion_study(tmp_path_factory):
    """A synthetic CT with a liver and two liver tumours (one in, one partly outside the liver)."""
    shape = (16, 48, 56)
    sp = (2.5, 0.8, 0.8)
    hu = np.full(shape, -1000, np.int16)
    body = _ball(shape, (8, 24, 28), 30, spacing=(0.2, 0.8, 0.8))
    hu[body] = 40
    labels = np.zeros(shape, np.uint8)
    liver = _ball(shape, (8, 22, 16), 15, spacing=sp) & body
    labels[liver] = LIVER
    t1 = _ball(shape, (8, 20, 14), 7, spacing=sp) & liver
    labels[t1] = LIVER_TUMOR
    t2 = _ball(shape, (9, 30, 34), 5, spacing=sp) & body
    labels[t2] = LIVER_TUMOR
    hu[labels == LIVER] = 60
    hu[labels == LIVER_TUMOR] = 20
    d = tmp_path_factory.mktemp("lesion_ct")
    vol = assemble_volume(write_series(d, hu, spacing=sp))
    return vol, labels


def _opts(**kw):
    return ResultOptions(model_version=kw.pop("model_version", "2.0"), lesion_min_volume_ml=0.05, **kw)


def test_sr_lesion_groups_draw_the_axes_on_the_lesion(tmp_path, lesion_study, catalog):
    vol, labels = lesion_study
    res = write_results(vol, labels, catalog, _opts(), tmp_path)
    for _kind, _ds, path in res.files():
        errors, warnings = dciodvfy(path)
        assert errors == [] and warnings == [], (path.name, errors, warnings)
    lesions = res.sr.lesions
    assert [x.tracking_identifier for x in lesions] == ["Liver Tumor lesion 1", "Liver Tumor lesion 2"]
    ds = pydicom.dcmread(res.sr.path)
    imaging = next(i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    groups = [g for g in imaging.ContentSequence if g.ConceptNameCodeSequence[0].CodeValue == "125007"]

    def items(g, code):
        return [i for i in g.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == code]

    def ident(g):
        return items(g, "112039")[0].TextValue

    # every finding has coordinates: volumetric + planar outline per segment, one lesion group each
    by_uid: dict[str, list] = {}
    for g in groups:
        by_uid.setdefault(items(g, "112040")[0].UID, []).append(g)
    assert len(groups) == 2 * len(res.seg.segments) + len(lesions)
    for s in res.seg.segments:
        pair = by_uid[s.tracking_uid]
        assert len(pair) == 2 and len({ident(g) for g in pair}) == 1
        outline = [i for g in pair for i in g.ContentSequence if i.ValueType == "SCOORD"]
        assert len(outline) == 1 and outline[0].GraphicType == "POLYLINE"
        pts = np.array(outline[0].GraphicData, float).reshape(-1, 2)
        assert np.allclose(pts[0], pts[-1]) and len(pts) >= 4  # closed
    sop_slice = {f.sop_instance_uid: k for k, f in enumerate(vol.frames)}
    comps = {x.tracking_uid: x for x in lesions}
    for les in lesions:
        (g,) = by_uid[les.tracking_uid]
        assert ident(g) == les.tracking_identifier
        axes = {}
        for code in ("103339001", "103340004"):
            (num,) = items(g, code)
            (scoord,) = [i for i in num.ContentSequence if i.ValueType == "SCOORD"]
            assert scoord.RelationshipType == "INFERRED FROM" and scoord.GraphicType == "POLYLINE"
            ref = scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            assert sop_slice[ref] == les.slice_index
            col_row = np.array(scoord.GraphicData, float).reshape(2, 2)
            length = float(num.MeasuredValueSequence[0].NumericValue)
            mm = np.diff(col_row, axis=0)[0] * (vol.spacing[2], vol.spacing[1])
            assert abs(np.linalg.norm(mm) - length) < 0.01
            axes[code] = col_row
            mask = comps[les.tracking_uid].mask(labels)[les.slice_index - les.box[0].start]
            for t in np.linspace(0, 1, 21):  # the whole line lies on the lesion
                c, r = col_row[0] + t * (col_row[1] - col_row[0]) - 0.5
                assert mask[int(round(r)) - les.box[1].start, int(round(c)) - les.box[2].start]
        u, v = (np.diff(axes[c], axis=0)[0] * (vol.spacing[2], vol.spacing[1]) for c in ("103339001", "103340004"))
        assert abs(u @ v) < 1e-3 * np.linalg.norm(u) * np.linalg.norm(v)
        assert {"118565006", "81827009", "112031"} <= {i.ConceptNameCodeSequence[0].CodeValue for i in g.ContentSequence}


def test_key_images_are_valid_secondary_captures(tmp_path, lesion_study, catalog):
    vol, labels = lesion_study
    res = write_results(vol, labels, catalog, _opts(), tmp_path)
    key = res.key_images
    assert [i.name for i in key.images] == ["overview", "Liver Tumor lesion 1", "Liver Tumor lesion 2"]
    tool = require_tool("dcmj2pnm")
    assert len(key.paths) == len(key.datasets)
    for path in key.paths:
        errors, warnings = dciodvfy(path)
        assert errors == [] and warnings == [], (path.name, errors, warnings)
        read = pydicom.dcmread(path)
        assert read.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and read.PhotometricInterpretation == "RGB"
        assert read.StudyInstanceUID == vol.study_instance_uid and read.BurnedInAnnotation == "YES"
        assert read.ConversionType == "WSD" and "NOT FOR DIAGNOSTIC USE" in read.SeriesDescription
        assert "NOT FOR DIAGNOSTIC USE" in read.ImageComments
        air = [i for i in read.ContributingEquipmentSequence if "PurposeOfReferenceCodeSequence" in i
               and i.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"]
        assert len(air) == 1
        png = tmp_path / f"{path.stem}.png"
        subprocess.run([tool, "--write-png", str(path), str(png)], check=True, capture_output=True, timeout=60)
        assert png.stat().st_size > 10_000
        # the banner is burnt in: red text in the top rows of every image
        top = read.pixel_array[:40]
        assert ((top[..., 0] > 200) & (top[..., 1] < 100)).sum() > 200
    assert {len({ds.SeriesInstanceUID for ds in key.datasets})} == {1}
    lesion_ds = key.datasets[1]
    src = lesion_ds.SourceImageSequence[0].ReferencedSOPInstanceUID
    assert src == vol.frames[res.sr.lesions[0].slice_index].sop_instance_uid
    # deterministic, revision-aware UIDs
    again = write_results(vol, labels, catalog, _opts(), tmp_path / "again").key_images
    assert [d.SOPInstanceUID for d in again.datasets] == [d.SOPInstanceUID for d in key.datasets]
    rev = write_results(vol, labels, catalog, _opts(revision=1), tmp_path / "rev").key_images
    assert not {d.SOPInstanceUID for d in rev.datasets} & {d.SOPInstanceUID for d in key.datasets}
    off = write_results(vol, labels, catalog, _opts(key_images=False), tmp_path / "off")
    assert off.key_images is None and [k for k, _, _ in off.files()] == ["SEG", "SR"]


def test_lesions_keep_their_uids_in_the_next_revision(tmp_path, lesion_study, catalog):
    vol, labels = lesion_study
    study = tmp_path / "study"
    r1 = write_results(vol, labels, catalog, _opts(revision=1), study / "r1")
    grown = labels.copy()
    les2 = r1.sr.lesions[1]
    z, y, x = (int(round(v)) for v in (les2.slice_index, *les2.long_axis.midpoint))
    grown[z, y - 1:y + 2, x - 6:x + 7] = LIVER_TUMOR  # it changed shape a little
    known = earlier_lesions(study, 2, vol)
    assert {k.tracking_uid for k in known} == {x.tracking_uid for x in r1.sr.lesions}
    assert known == known_lesions([r1.sr.path], vol)
    r2 = write_results(vol, grown, catalog, _opts(revision=2), study / "r2", known=known)
    assert r2.sr.dataset.SOPInstanceUID != r1.sr.dataset.SOPInstanceUID  # new revision, new objects
    assert [(x.tracking_identifier, x.tracking_uid) for x in r2.sr.lesions] == \
        [(x.tracking_identifier, x.tracking_uid) for x in r1.sr.lesions]


# ---- radiological orientation ---------------------------------------------------------------------
def _marker_volume(shape=(6, 40, 50)):
    """A marker at the patient's right-anterior corner of the middle slice, LPS-ordered."""
    vol = np.zeros(shape, np.float32)
    vol[3, 2:8, 2:8] = 1.0  # low y = anterior, low x = right (LPS)
    return vol


@pytest.mark.parametrize("flip", ["none", "ras_nifti", "rows", "transposed"])
def test_display_frame_puts_right_on_the_left_and_anterior_up(flip):
    lps = _marker_volume()
    affine = np.diag([0.8, 0.7, 2.5, 1.0])
    data, aff = lps, affine
    if flip == "ras_nifti":  # columns run to patient right, rows to anterior (RAS voxel order)
        data = lps[:, ::-1, ::-1]
        aff = affine @ np.array([[-1, 0, 0, 49], [0, -1, 0, 39], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    elif flip == "rows":
        data = lps[:, ::-1, :]
        aff = affine @ np.array([[1, 0, 0, 0], [0, -1, 0, 39], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    elif flip == "transposed":  # rows run left-right, columns anterior-posterior
        data = np.ascontiguousarray(lps.transpose(0, 2, 1))
        aff = np.array([[0, 0.8, 0, 0], [0.7, 0, 0, 0], [0, 0, 2.5, 0], [0, 0, 0, 1]], float)
    shown, spacing = radiological(data, aff)
    ys, xs = np.nonzero(shown[3])
    assert ys.mean() < shown.shape[1] / 4 and xs.mean() < shown.shape[2] / 4, flip
    assert spacing == pytest.approx((2.5, 0.7, 0.8))
    frame = DisplayFrame.from_affine(aff, data.shape)
    zyx = np.argwhere(data > 0)
    np.testing.assert_array_equal(np.sort(np.rint(frame.point(zyx)).astype(int), axis=0),
                                  np.sort(np.argwhere(shown > 0), axis=0))


def test_overlay_pngs_of_a_ras_nifti_are_radiological(tmp_path, catalog):
    """dsm-node infer hands the overlay writer radiological arrays: a NIfTI in RAS voxel order
    (spine at the top before the fix) shows anterior up and the patient's right on the left."""
    from PIL import Image

    from dsm_node.infer.overlays import write_overlays

    lps = np.zeros((6, 60, 60), np.float32)  # a grey CT (0 HU) ...
    lps[:, -3:, -3:] = -1000  # (air in the left-posterior corner, so that the grey scale has a range)
    labels = np.zeros(lps.shape, np.uint8)
    labels[_marker_volume((6, 60, 60)) > 0] = LIVER  # ... with a finding at the right-anterior corner
    ras_data, ras_labels = lps[:, ::-1, ::-1], labels[:, ::-1, ::-1]
    aff = np.diag([1.0, 1.0, 2.5, 1.0]) @ np.array([[-1, 0, 0, 59], [0, -1, 0, 59], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    hu, spacing = radiological(ras_data, aff)
    lab, _ = radiological(ras_labels, aff)
    paths = write_overlays(hu, lab, spacing, catalog, tmp_path)
    img = np.asarray(Image.open(next(p for p in paths if p.name.startswith("01_"))).convert("RGB")).astype(int)
    h, w = img.shape[:2]
    axial = img[int(0.15 * h):int(0.85 * h), : w // 3]  # first of the three panels, without titles
    grey = (np.ptp(axial, axis=-1) < 8) & (axial[..., 0] > 60)
    tinted = np.ptp(axial, axis=-1) > 40
    rows, cols = np.nonzero(grey | tinted)
    ty, tx = np.nonzero(tinted)
    assert len(ty) > 20
    assert ty.mean() < rows.min() + 0.25 * (rows.max() - rows.min())  # anterior at the top
    assert tx.mean() < cols.min() + 0.25 * (cols.max() - cols.min())  # patient right on the image left
