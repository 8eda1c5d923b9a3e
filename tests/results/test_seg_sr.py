"""SEG + SR writers: validity (dciodvfy), round trips (dcmqi, highdicom), UIDs, empty results."""
from __future__ import annotations

import argparse
import json

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dsm_node.commands import export
from dsm_node.results.common import ResultError
from dsm_node.results.options import ResultOptions
from dsm_node.results.seg import build_seg, write_seg
from dsm_node.results.sr import write_sr
from dsm_node.volume import assemble_volume, load_labels
from tests.results.resulttools import dciodvfy, dcmqi_masks, expected_segment_masks
from tests.support.ct import LEFT_KIDNEY, LIVER, LIVER_TUMOR, phantom, repair_uids, write_enhanced, write_series
from tests.tools import shared_data

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    hu, labels = phantom()
    d = tmp_path_factory.mktemp("ct")
    vol = assemble_volume(write_series(d, hu))
    return vol, labels


def _opts(**kw):
    return ResultOptions(model_version=kw.pop("model_version", "1.2.0"), **kw)


def _seg_numbers(seg_result, labels):
    lut = np.zeros(256, np.uint8)
    for s in seg_result.segments:
        lut[s.label] = s.number
    return lut[labels]


def _check_segments_read_back(seg_result, vol, labels, catalog, tmp_path, organs_include_tumors=True):
    """dcmqi and highdicom see every segment as expected_segment_masks says it must be."""
    expected = expected_segment_masks(labels, catalog, organs_include_tumors)
    masks = dcmqi_masks(seg_result.path, tmp_path / "dcmqi", vol)
    assert sorted(masks) == [s.number for s in seg_result.segments]
    ds = hd.seg.segread(seg_result.path)
    numbers = [s.number for s in seg_result.segments]
    back = ds.get_pixels_by_source_instance([f.sop_instance_uid for f in vol.frames], segment_numbers=numbers)
    for j, s in enumerate(seg_result.segments):
        np.testing.assert_array_equal(masks[s.number], expected[s.label], err_msg=f"dcmqi: {s.entry.name}")
        np.testing.assert_array_equal(back[..., j] > 0, expected[s.label], err_msg=f"highdicom: {s.entry.name}")
        assert s.voxel_count == int(expected[s.label].sum())
    return expected


def _check_sr(sr_path, seg_result, vol, labels, catalog, organs_include_tumors=True):
    sr = hd.sr.srread(sr_path)
    expected = expected_segment_masks(labels, catalog, organs_include_tumors)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(seg_result.segments)
    by_number = {s.number: s for s in seg_result.segments}
    for g in groups:
        ref = g.referenced_segment
        number = int(ref[0].ReferencedSOPSequence[0].ReferencedSegmentNumber)
        seg_info = by_number[number]
        assert ref[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg_result.dataset.SOPInstanceUID
        assert g.tracking_uid == seg_info.tracking_uid
        entry = seg_info.entry
        mask = expected[entry.index]  # the volume is the segment's, as the SEG encodes it
        ms: dict = {}
        for m in g.get_measurements():  # the first Volume is the segment's own
            ms.setdefault(m.name.value, m)
        assert float(ms["118565006"].value) == pytest.approx(mask.sum() * vol.voxel_volume_mm3 / 1000, abs=1e-4)
        assert ms["118565006"].unit.value == "cm3"
        att = ms["112031"]
        assert att.derivation.value == "373098007" and att.unit.value == "[hnsf'U]"
        assert float(att.value) == pytest.approx(float(vol.hu[mask].mean()), abs=0.01)
        assert "81827009" not in ms  # diameters belong to lesions, not to a class of fragments
        volumes = [m for m in g.get_measurements() if m.name.value == "118565006"]
        whole = expected_segment_masks(labels, catalog, True)[entry.index]
        if not organs_include_tumors and not np.array_equal(whole, mask):  # tissue only: the whole organ too
            assert len(volumes) == 2
            extra = volumes[1]
            assert float(extra.value) == pytest.approx(whole.sum() * vol.voxel_volume_mm3 / 1000, abs=1e-4)
            assert extra.method.value == "ORGAN-INCL-TUM"
        else:
            assert len(volumes) == 1
        includes = seg_info.method == "with_tumours"
        assert includes == (organs_include_tumors and entry.kind == "organ"
                            and any(entry.name in t.parents for t in catalog if t.kind == "tumor"))
        method = next(i for i in g[0].ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "370129005")
        assert method.ConceptCodeSequence[0].CodeValue == ("ORGAN-INCL-TUM" if includes else "CLASS-VOXELS")
        assert ("incl. tumours" in g.tracking_identifier) == includes
        if entry.kind == "tumor":
            assert g.finding_sites[0].value.value == entry.coding.anatomic_region.value
        else:
            assert g.finding_sites[0].value.value == entry.coding.type.value
        assert g.finding_type.value == entry.coding.type.value
    return sr


def _check_air(ds, opts):
    items = [i for i in ds.ContributingEquipmentSequence
             if i.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"]
    assert len(items) == 1
    item = items[0]
    assert item.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Algorithm"
    assert item.Manufacturer == opts.manufacturer and item.ManufacturerModelName == opts.model_name
    assert f"{opts.model_name} {opts.model_version}" in list(item.SoftwareVersions)
    assert item.DeviceUID == opts.algorithm_device_uid


@pytest.mark.parametrize("include", [False, True], ids=["tissue", "organs_with_tumors"])
def test_binary_seg_and_sr_synthetic(tmp_path, synth, catalog, include):
    vol, labels = synth
    opts = _opts(organs_include_tumors=include)
    seg = write_seg(vol, labels, catalog, opts, tmp_path)
    sr = write_sr(vol, labels, catalog, opts, seg, tmp_path)
    assert [s.label for s in seg.segments] == sorted(int(v) for v in np.unique(labels) if v)
    # -- validators -------------------------------------------------------------------------------
    for path in (seg.path, sr.path):
        errors, warnings = dciodvfy(path)
        assert errors == [] and warnings == [], (path.name, errors, warnings)
    # -- independent readers: dcmqi and highdicom see every segment where we put it ------------------
    expected = _check_segments_read_back(seg, vol, labels, catalog, tmp_path, include)
    liver = next(s for s in seg.segments if s.label == LIVER)
    ds = hd.seg.segread(seg.path)
    assert ds.SegmentationType == "BINARY" and ds.SeriesDescription.endswith("not for diagnostic use")
    if include:
        assert liver.method == "with_tumours" and liver.included_tumors == ("Liver Tumor",)
        assert expected[LIVER].sum() == np.isin(labels, (LIVER, LIVER_TUMOR)).sum()  # the tumour lies inside
        assert ds.SegmentsOverlap == "YES"
    else:
        assert liver.method == "tissue" and ds.SegmentsOverlap == "NO"
        assert sr.with_tumors[LIVER].voxel_count == np.isin(labels, (LIVER, LIVER_TUMOR)).sum()
    for item, s in zip(ds.SegmentSequence, seg.segments):
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algo = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
        assert algo.AlgorithmVersion == "1.2.0" and algo.AlgorithmName == "DSM"
        assert item.TrackingUID == s.tracking_uid
        assert hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb() == s.entry.color
        prop = item.SegmentedPropertyTypeCodeSequence[0]
        assert prop.CodeValue == s.entry.coding.type.value
        if s.entry.laterality:
            assert prop.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == \
                {"left": "7771000", "right": "24028007"}[s.entry.laterality]
        else:
            assert "SegmentedPropertyTypeModifierCodeSequence" not in prop
        if s.entry.kind == "tumor":
            assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
            assert item.AnatomicRegionSequence[0].CodeValue == s.entry.coding.anatomic_region.value
    _check_air(ds, opts)
    # -- SR ----------------------------------------------------------------------------------------
    sr_ds = _check_sr(sr.path, seg, vol, labels, catalog, include)
    _check_air(sr_ds, opts)
    # One Tracking ID text per segment, the same in the SEG and the SR (with the same Tracking UID).
    in_sr = {g.tracking_uid: g.tracking_identifier for g in sr_ds.content.get_volumetric_roi_measurement_groups()}
    in_seg = {item.TrackingUID: item.TrackingID for item in ds.SegmentSequence}
    first = seg.segments[0]
    said = " incl. tumours" if first.method == "with_tumours" else ""  # an organ segment holding its tumours says so
    assert in_seg == in_sr and in_seg[first.tracking_uid] == f"{first.entry.name}{said} (DSM)"
    assert sr_ds.StudyInstanceUID == vol.study_instance_uid == ds.StudyInstanceUID
    assert len({sr_ds.SeriesInstanceUID, ds.SeriesInstanceUID, vol.series_instance_uid}) == 3
    observer = sr_ds.content.get_observer_contexts()[0]
    assert observer.observer_type.value == "121007"  # Device
    assert observer.observer_identifying_attributes.uid == opts.algorithm_device_uid
    assert [les.tracking_identifier for les in sr.lesions] == ["Liver Tumor lesion 1", "Kidney Cyst lesion 1"] or \
        all(les.entry.kind == "tumor" for les in sr.lesions)


def test_uids_are_deterministic(tmp_path, synth, catalog):
    vol, labels = synth
    a = build_seg(vol, labels, catalog, _opts()).dataset
    b = build_seg(vol, labels, catalog, _opts()).dataset
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    assert a.DimensionOrganizationSequence[0].DimensionOrganizationUID == \
        b.DimensionOrganizationSequence[0].DimensionOrganizationUID
    assert a.SegmentSequence[0].TrackingUID == b.SegmentSequence[0].TrackingUID
    c = build_seg(vol, labels, catalog, _opts(model_version="1.3.0")).dataset
    d = build_seg(vol, labels, catalog, _opts(revision=1)).dataset
    uids = {x.SOPInstanceUID for x in (a, c, d)} | {x.SeriesInstanceUID for x in (a, c, d)}
    assert len(uids) == 6
    sr1 = write_sr(vol, labels, catalog, _opts(), build_seg(vol, labels, catalog, _opts()), tmp_path / "1")
    sr2 = write_sr(vol, labels, catalog, _opts(), build_seg(vol, labels, catalog, _opts()), tmp_path / "2")
    assert sr1.dataset.SOPInstanceUID == sr2.dataset.SOPInstanceUID != a.SOPInstanceUID
    assert sr1.path.name == sr2.path.name


def test_labelmap_seg(tmp_path, synth, catalog):
    """A label map has one value per pixel: organs are their own voxels there (no overlap)."""
    vol, labels = synth
    seg = write_seg(vol, labels, catalog, _opts(seg_type="LABELMAP"), tmp_path)
    assert {s.method for s in seg.segments} == {"tissue"}
    ds = hd.seg.segread(seg.path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7" and ds.SegmentationType == "LABELMAP"
    assert int(ds.NumberOfFrames) == vol.shape[0]  # every slice kept
    back = ds.get_pixels_by_source_instance([f.sop_instance_uid for f in vol.frames], combine_segments=True)
    np.testing.assert_array_equal(back, _seg_numbers(seg, labels))
    images = dcmqi_masks(seg.path, tmp_path / "dcmqi", vol, raw=True)  # dcmqi: one label image
    assert list(images) == [1]
    np.testing.assert_array_equal(images[1], _seg_numbers(seg, labels))
    # dicom3tools (2022) predates the Label Map Segmentation IOD (2024): it cannot validate it.
    errors, _ = dciodvfy(seg.path)
    unexplained = [e for e in errors if "Information Object Not found" not in e
                   and "SegmentNumber of 0" not in e]
    assert unexplained == []


def test_enhanced_ct_source(tmp_path, catalog):
    hu, labels = phantom(shape=(8, 24, 28), seed=2)
    single = write_series(tmp_path / "single", hu, signed=True, intercept=0.0)
    vol = assemble_volume([write_enhanced(tmp_path / "enh.dcm", single, shuffle_seed=5)])
    opts = _opts()
    seg = write_seg(vol, labels, catalog, opts, tmp_path / "out")
    sr = write_sr(vol, labels, catalog, opts, seg, tmp_path / "out")
    for path in (seg.path, sr.path):
        errors, warnings = dciodvfy(path)
        assert errors == [] and warnings == [], (path.name, errors, warnings)
    ds = hd.seg.segread(seg.path)
    frames = [f.frame_number for f in vol.frames]
    numbers = [s.number for s in seg.segments]
    back = ds.get_pixels_by_source_frame(vol.frames[0].sop_instance_uid, frames, segment_numbers=numbers,
                                         assert_missing_frames_are_empty=True)
    expected = expected_segment_masks(labels, catalog, opts.organs_include_tumors)
    masks = dcmqi_masks(seg.path, tmp_path / "dcmqi", vol)
    for j, s in enumerate(seg.segments):
        np.testing.assert_array_equal(back[..., j] > 0, expected[s.label])
        np.testing.assert_array_equal(masks[s.number], expected[s.label])


def test_empty_result_gives_no_seg_and_a_no_findings_sr(tmp_path, synth, catalog):
    vol, labels = synth
    empty = np.zeros_like(labels)
    assert write_seg(vol, empty, catalog, _opts(), tmp_path) is None
    sr = write_sr(vol, empty, catalog, _opts(), None, tmp_path)
    assert sr.no_findings and list(tmp_path.glob("SEG_*")) == []
    errors, warnings = dciodvfy(sr.path)
    assert errors == [] and warnings == []
    ds = hd.sr.srread(sr.path)
    assert ds.content.get_volumetric_roi_measurement_groups() == []
    root = ds.ContentSequence
    evaluations = [i for i in root if i.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    assert len(evaluations) == 1
    finding = evaluations[0].ContentSequence[0]
    assert finding.ConceptCodeSequence[0].CodeValue == "260413007"  # None
    assert "No findings" in evaluations[0].ContentSequence[1].TextValue


def test_source_without_optional_patient_attributes(tmp_path, catalog):
    hu, labels = phantom(shape=(6, 20, 24), seed=4)
    paths = write_series(tmp_path / "ct", hu)
    for p in paths:
        ds = pydicom.dcmread(p)
        for attr in ("PatientBirthDate", "AccessionNumber", "StudyID", "ReferringPhysicianName", "PatientSex"):
            delattr(ds, attr)
        ds.SpecificCharacterSet = ""
        ds.save_as(p)
    vol = assemble_volume(paths)
    seg = write_seg(vol, labels, catalog, _opts(), tmp_path / "out")
    sr = write_sr(vol, labels, catalog, _opts(), seg, tmp_path / "out")
    assert seg.dataset.SpecificCharacterSet == "ISO_IR 100" and sr.dataset.PatientBirthDate == ""


def test_bad_inputs(tmp_path, synth, catalog):
    vol, labels = synth
    bad = labels.copy()
    bad[0, 0, 0] = 200
    with pytest.raises(ResultError, match="not catalog classes"):
        build_seg(vol, bad, catalog, _opts())
    with pytest.raises(ResultError, match="shape"):
        build_seg(vol, labels[1:], catalog, _opts())
    with pytest.raises(ValueError):
        ResultOptions(model_version="")


def _export(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    export.configure(parser)
    return export.run(parser.parse_args(argv))


def test_export_command(tmp_path, synth, catalog, capsys):
    vol, labels = synth
    ct_dir = tmp_path / "ct"
    hu = vol.hu.astype(np.int16)
    write_series(ct_dir, hu, series_uid="1.2.3.4.5", study_uid="1.2.3.4", for_uid="1.2.3.4.6")
    ct = assemble_volume(sorted(ct_dir.iterdir()))
    import nibabel as nib

    nii = tmp_path / "labels.nii.gz"
    nib.save(nib.as_closest_canonical(ct.to_nifti(labels)), nii)  # reoriented NIfTI: same grid
    out = tmp_path / "out"
    assert _export(["--source", str(ct_dir), "--labels", str(nii), "--out", str(out), "--model-version", "9",
                    "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["seg_type"] == "BINARY" and len(summary["segments"]) == len(np.unique(labels)) - 1
    first = sorted(p.name for p in out.iterdir())
    assert _export(["--source", str(ct_dir), "--labels", str(nii), "--out", str(out), "--model-version", "9"]) == 0
    assert sorted(p.name for p in out.iterdir()) == first  # same UIDs -> same files, replaced
    kidney = next(s for s in summary["segments"] if s["label"] == LEFT_KIDNEY)
    assert kidney["volume_cm3"] == pytest.approx((labels == LEFT_KIDNEY).sum() * ct.voxel_volume_mm3 / 1000, abs=1e-3)
    kidney_voxels = expected_segment_masks(labels, catalog, True)[LEFT_KIDNEY].sum()  # kidney incl. its cyst
    assert kidney["volume_incl_tumours_cm3"] == pytest.approx(kidney_voxels * ct.voxel_volume_mm3 / 1000, abs=1e-3)
    assert next(s for s in summary["segments"] if s["label"] == LEFT_KIDNEY)["includes"] == []  # default: tissue
    assert all(les["long_axis_mm"] >= les["short_axis_mm"] > 0 for les in summary["lesions"])
    assert len(summary["key_images"]) == 1 + len(summary["lesions"])
    # a label map on another grid is refused with the reason
    off = tmp_path / "off.nii.gz"
    nib.save(nib.Nifti1Image(labels.transpose(2, 1, 0), ct.affine_ras @ np.diag([2.0, 1, 1, 1])), off)
    assert _export(["--source", str(ct_dir), "--labels", str(off), "--out", str(tmp_path / "x")]) == 2
    assert "not on the source grid" in capsys.readouterr().err


# ---- real data (../shared, CI only) ----------------------------------------------------------
def test_real_ct_labels_dsm45(tmp_path, catalog):
    base = shared_data("01_tcia_pancreatic-ct-cbct-seg_CB001")
    vol = assemble_volume(sorted((base / "ct").glob("*.dcm")))
    labels = load_labels(base / "labels_dsm45.nii.gz", vol)
    assert set(np.unique(labels)) == {0, 7, 16, 17, 19}
    opts = _opts()
    seg = write_seg(vol, labels, catalog, opts, tmp_path)
    sr = write_sr(vol, labels, catalog, opts, seg, tmp_path)
    for path in (seg.path, sr.path):
        errors, warnings = dciodvfy(path)
        assert errors == [] and warnings == [], (path.name, errors, warnings)
    _check_segments_read_back(seg, vol, labels, catalog, tmp_path, False)
    masks = dcmqi_masks(seg.path, tmp_path / "dcmqi2", vol)
    _check_sr(sr.path, seg, vol, labels, catalog, False)
    # anatomy sanity: the right lung is on the patient's right (low x in LPS)
    right = next(s for s in seg.segments if s.entry.name == "Right Lung")
    left = next(s for s in seg.segments if s.entry.name == "Left Lung")
    xs = {s.number: np.nonzero(masks[s.number])[2].mean() for s in (right, left)}
    assert xs[right.number] < xs[left.number]


def test_real_j2k_ct_with_repaired_uids(tmp_path, catalog):
    base = shared_data("02_totalsegmentator_example")
    with pytest.raises(ResultError, match="no StudyInstanceUID"):
        raw = assemble_volume(sorted((base / "example_ct_dicom").iterdir()))
        build_seg(raw, np.ones(raw.shape, np.uint8), catalog, _opts())
    vol = assemble_volume(repair_uids(base / "example_ct_dicom", tmp_path / "ct"))
    ts_labels = load_labels(base / "example_seg_dicom.nii.gz", vol)
    # TotalSegmentator v2 -> DSM catalog indices for the classes both know
    remap = {1: 1, 5: 6, 6: 7, 7: 11, 8: 12, 20: 18, 52: 8, 63: 9, 64: 10}
    lut = np.zeros(256, np.uint8)
    for k, v in remap.items():
        lut[k] = v
    labels = lut[ts_labels]
    assert len(np.unique(labels)) >= 6
    seg = write_seg(vol, labels, catalog, _opts(), tmp_path / "out")
    sr = write_sr(vol, labels, catalog, _opts(), seg, tmp_path / "out")
    assert pydicom.dcmread(vol.frames[0].path, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed
    for path in (seg.path, sr.path):
        errors, warnings = dciodvfy(path)
        assert errors == [], (path.name, errors)
    masks = dcmqi_masks(seg.path, tmp_path / "dcmqi", vol)
    for s in seg.segments:
        np.testing.assert_array_equal(masks[s.number], labels == s.label, err_msg=s.entry.name)
