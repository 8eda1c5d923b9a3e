"""SEG + SR writers: validity (dciodvfy), round trips (dcmqi, highdicom), UIDs, empty results."""
from __future__ import annotations

import argparse
import json

import highdicom as hd
import numpy as np
import pydicom
import pytest

from resulttools import dciodvfy, dcmqi_masks
from ctsynth import KIDNEY_CYST, LEFT_KIDNEY, LIVER, LIVER_TUMOR, phantom, repair_uids, write_enhanced, write_series
from dsm_node.results import export
from dsm_node.results.options import ResultOptions
from dsm_node.results.seg import ResultError, build_seg, write_seg
from dsm_node.results.sr import write_sr
from dsm_node.volume import assemble_volume, load_labels
from tools import shared_data

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


def _check_sr(sr_path, seg_result, vol, labels, catalog):
    sr = hd.sr.srread(sr_path)
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
        count = int(np.count_nonzero(labels == entry.index))
        ms = {m.name.value: m for m in g.get_measurements()}
        assert float(ms["118565006"].value) == pytest.approx(count * vol.voxel_volume_mm3 / 1000, abs=1e-4)
        assert ms["118565006"].unit.value == "cm3"
        att = ms["112031"]
        assert att.derivation.value == "373098007" and att.unit.value == "[hnsf'U]"
        assert float(att.value) == pytest.approx(float(vol.hu[labels == entry.index].mean()), abs=0.01)
        assert ("81827009" in ms) == (entry.kind == "tumor")
        if entry.kind == "tumor":
            assert ms["81827009"].derivation.value == "56851009" and float(ms["81827009"].value) > 0
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


def test_binary_seg_and_sr_synthetic(tmp_path, synth, catalog):
    vol, labels = synth
    opts = _opts()
    seg = write_seg(vol, labels, catalog, opts, tmp_path)
    sr = write_sr(vol, labels, catalog, opts, seg, tmp_path)
    assert [s.label for s in seg.segments] == sorted(int(v) for v in np.unique(labels) if v)
    # -- validators -------------------------------------------------------------------------------
    for path in (seg.path, sr.path):
        errors, warnings = dciodvfy(path)
        assert errors == [] and warnings == [], (path.name, errors, warnings)
    # -- independent reader: dcmqi puts every mask exactly where we did ----------------------------
    masks = dcmqi_masks(seg.path, tmp_path / "dcmqi", vol)
    assert sorted(masks) == [s.number for s in seg.segments]
    for s in seg.segments:
        np.testing.assert_array_equal(masks[s.number], labels == s.label, err_msg=s.entry.name)
    # -- highdicom reads it back by source instance --------------------------------------------------
    ds = hd.seg.segread(seg.path)
    assert ds.SegmentationType == "BINARY" and ds.SeriesDescription.endswith("not for diagnostic use")
    back = ds.get_pixels_by_source_instance([f.sop_instance_uid for f in vol.frames], combine_segments=True)
    np.testing.assert_array_equal(back, _seg_numbers(seg, labels))
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
    sr_ds = _check_sr(sr.path, seg, vol, labels, catalog)
    _check_air(sr_ds, opts)
    # One Tracking ID text per segment, the same in the SEG and the SR (with the same Tracking UID).
    in_sr = {g.tracking_uid: g.tracking_identifier for g in sr_ds.content.get_volumetric_roi_measurement_groups()}
    in_seg = {item.TrackingUID: item.TrackingID for item in ds.SegmentSequence}
    assert in_seg == in_sr and in_seg[seg.segments[0].tracking_uid] == f"{seg.segments[0].entry.name} (DSM)"
    assert sr_ds.StudyInstanceUID == vol.study_instance_uid == ds.StudyInstanceUID
    assert len({sr_ds.SeriesInstanceUID, ds.SeriesInstanceUID, vol.series_instance_uid}) == 3
    observer = sr_ds.content.get_observer_contexts()[0]
    assert observer.observer_type.value == "121007"  # Device
    assert observer.observer_identifying_attributes.uid == opts.algorithm_device_uid
    tumour = sr.measurements[LIVER_TUMOR]
    assert tumour.max_diameter_mm is not None and sr.measurements[LIVER].max_diameter_mm is None


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
    vol, labels = synth
    seg = write_seg(vol, labels, catalog, _opts(seg_type="LABELMAP"), tmp_path)
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
    back = ds.get_pixels_by_source_frame(vol.frames[0].sop_instance_uid, frames, combine_segments=True,
                                         assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(back, _seg_numbers(seg, labels))
    masks = dcmqi_masks(seg.path, tmp_path / "dcmqi", vol)
    for s in seg.segments:
        np.testing.assert_array_equal(masks[s.number], labels == s.label)


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
    assert kidney["volume_cm3"] == pytest.approx(np.count_nonzero(labels == LEFT_KIDNEY) * ct.voxel_volume_mm3 / 1000,
                                                 abs=1e-3)
    assert next(s for s in summary["segments"] if s["label"] == KIDNEY_CYST)["max_diameter_mm"] is not None
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
    masks = dcmqi_masks(seg.path, tmp_path / "dcmqi", vol)
    for s in seg.segments:
        np.testing.assert_array_equal(masks[s.number], labels == s.label, err_msg=s.entry.name)
    ds = hd.seg.segread(seg.path)
    back = ds.get_pixels_by_source_instance([f.sop_instance_uid for f in vol.frames], combine_segments=True)
    np.testing.assert_array_equal(back, _seg_numbers(seg, labels))
    _check_sr(sr.path, seg, vol, labels, catalog)
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
