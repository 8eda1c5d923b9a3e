"""Volume assembly: geometry, sorting, rejections, HU, padding, codecs, Enhanced CT."""
from __future__ import annotations

import random
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from dsm_node.volume import VolumeError, assemble_volume, label_image_to_volume_grid, lps_to_ras
from tests.support.ct import phantom, repair_uids, write_enhanced, write_series
from tests.tools import require_tool, shared_data


@pytest.fixture(scope="module")
def ph():
    return phantom()


def _check_geometry(vol, paths):
    """affine_lps @ (i, j, k) reproduces every file's own ImagePositionPatient / pixel grid."""
    by_uid = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in paths}
    for k, frame in enumerate(vol.frames):
        ds = pydicom.dcmread(by_uid[frame.sop_instance_uid], stop_before_pixels=True)
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        dr, dc = (float(v) for v in ds.PixelSpacing)
        np.testing.assert_allclose(vol.affine_lps @ [0, 0, k, 1], [*ipp, 1], atol=1e-4)
        np.testing.assert_allclose(vol.affine_lps @ [5, 7, k, 1], [*(ipp + 5 * dc * iop[:3] + 7 * dr * iop[3:]), 1],
                                   atol=1e-4)


def test_spilled_volume_has_the_same_hu_in_a_file_backed_array_that_leaves_no_file(tmp_path, ph):
    hu, _ = ph
    paths = write_series(tmp_path / "series", hu)
    spill = tmp_path / "spill"
    vol = assemble_volume(paths, spill_dir=spill)
    assert isinstance(vol.hu, np.memmap) and vol.hu.dtype == np.int16
    np.testing.assert_array_equal(vol.hu, assemble_volume(paths).hu)
    assert list(spill.iterdir()) == []  # an unlinked file: nothing to clean up after a crash


def test_shuffled_files_sorted_by_position_not_instance_number(tmp_path, ph):
    hu, _ = ph
    paths = write_series(tmp_path, hu, instance_numbers="reversed")
    shuffled = list(paths)
    random.Random(1).shuffle(shuffled)
    vol = assemble_volume(shuffled)
    assert vol.hu.dtype == np.int16 and vol.shape == hu.shape  # integer rescale: int16, the same HU
    np.testing.assert_array_equal(vol.hu, hu.astype(np.float32))
    assert vol.spacing == pytest.approx((2.5, 0.75, 0.8))
    assert [f.path for f in vol.frames] == [str(p) for p in paths]
    assert [h.SOPInstanceUID for h in vol.headers] == [f.sop_instance_uid for f in vol.frames]
    assert not any("PixelData" in h for h in vol.headers)  # headers only, no pixel data kept
    assert vol.source_instances[0][0] == "1.2.840.10008.5.1.4.1.1.2"
    _check_geometry(vol, paths)


def test_descending_positions_and_oblique_orientation(tmp_path, ph):
    hu, _ = ph
    a, b = np.radians(25), 0.3
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rot = rz @ rx
    row, col = rot[:, 0], rot[:, 1]
    normal = np.cross(row, col)
    # slices written from top to bottom (negative step along the normal)
    paths = write_series(tmp_path, hu, row_cos=row, col_cos=col, slice_step=-2.0 * normal, spacing=(2.0, 0.7, 0.9))
    vol = assemble_volume(paths)
    np.testing.assert_array_equal(vol.hu, hu[::-1].astype(np.float32))
    _check_geometry(vol, paths)
    assert vol.voxel_volume_mm3 == pytest.approx(2.0 * 0.7 * 0.9)
    np.testing.assert_allclose(vol.affine_ras, np.diag([-1, -1, 1, 1]) @ vol.affine_lps)


def test_rescale_signed_and_padding(tmp_path, ph):
    hu, _ = ph
    pad = np.zeros(hu.shape, bool)
    pad[:, :3, :] = True  # a band of padding pixels
    paths = write_series(tmp_path, hu, signed=True, slope=0.5, intercept=-100.0, padding_value=-30000,
                         padding_mask=pad)
    vol = assemble_volume(paths, padding_hu=-1024.0)
    expected = hu.astype(np.float32)
    expected[pad] = -1024.0
    assert vol.hu.dtype == np.float32  # slope 0.5: fractional HU stay float32
    np.testing.assert_allclose(vol.hu, expected, atol=0.5)  # slope 0.5 -> stored values round to 0.5 HU


def test_padding_value_read_as_unsigned(tmp_path, ph):
    """PixelPaddingValue is US-or-SS: a signed image whose value was written as its unsigned twin."""
    hu, _ = ph
    paths = write_series(tmp_path, hu, signed=True, intercept=0.0)
    for p in paths:
        ds = pydicom.dcmread(p)
        arr = ds.pixel_array.copy()
        arr[0, :] = -2000
        ds.PixelData = arr.tobytes()
        ds.add_new(0x00280120, "US", 63536)  # -2000 as uint16
        ds.save_as(p)
    vol = assemble_volume(paths)
    assert np.all(vol.hu[:, 0, :] == -1024.0)


def test_same_instance_twice_is_used_once(tmp_path, ph):
    hu, _ = ph
    paths = write_series(tmp_path / "s", hu)
    copy = tmp_path / "copy.dcm"
    shutil.copy(paths[3], copy)
    vol = assemble_volume([*paths, copy])
    assert vol.shape == hu.shape
    assert any("ignored" in n for n in vol.notes)


def test_missing_slice_is_rejected(tmp_path, ph):
    hu, _ = ph
    paths = write_series(tmp_path, hu)
    with pytest.raises(VolumeError) as err:
        assemble_volume(paths[:5] + paths[6:])
    assert err.value.code == "missing_slice"
    assert "1 missing slice" in err.value.reason and "slice_004.dcm" in err.value.reason


def test_duplicate_position_is_rejected(tmp_path, ph):
    hu, _ = ph
    paths = write_series(tmp_path, hu)
    ds = pydicom.dcmread(paths[4])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "dup.dcm")
    with pytest.raises(VolumeError) as err:
        assemble_volume([*paths, tmp_path / "dup.dcm"])
    assert err.value.code == "duplicate" and "duplicate slice position" in err.value.reason


def test_non_uniform_spacing_is_rejected(tmp_path, ph):
    hu, _ = ph
    paths = write_series(tmp_path, hu)
    ds = pydicom.dcmread(paths[6])
    ipp = [float(v) for v in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + 0.8]
    ds.save_as(paths[6])
    with pytest.raises(VolumeError) as err:
        assemble_volume(paths)
    assert err.value.code == "spacing" and "non-uniform slice spacing" in err.value.reason


def test_gantry_tilt_is_rejected(tmp_path, ph):
    hu, _ = ph
    tilt = np.radians(12)
    # slices advance along z while the planes are tilted about x: the classic gantry-tilt stack
    row, col = (1.0, 0.0, 0.0), (0.0, np.cos(tilt), -np.sin(tilt))
    paths = write_series(tmp_path, hu, row_cos=row, col_cos=col, slice_step=(0.0, 0.0, 2.5), gantry_tilt=12)
    with pytest.raises(VolumeError) as err:
        assemble_volume(paths)
    assert err.value.code == "tilt"
    assert "GantryDetectorTilt=12" in err.value.reason and "about 12.0 degrees" in err.value.reason


def test_mixed_orientations_are_rejected(tmp_path, ph):
    hu, _ = ph
    paths = write_series(tmp_path, hu)
    ds = pydicom.dcmread(paths[2])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(paths[2])
    with pytest.raises(VolumeError) as err:
        assemble_volume(paths)
    assert err.value.code == "orientation" and "2 different ImageOrientationPatient" in err.value.reason


def test_inconsistent_pixel_spacing_and_mixed_series(tmp_path, ph):
    hu, _ = ph
    paths = write_series(tmp_path / "a", hu)
    ds = pydicom.dcmread(paths[1])
    ds.PixelSpacing = [0.76, 0.8]
    ds.save_as(paths[1])
    with pytest.raises(VolumeError) as err:
        assemble_volume(paths)
    assert err.value.code == "pixel_spacing"
    other = write_series(tmp_path / "b", hu[:3])
    with pytest.raises(VolumeError) as err:
        assemble_volume([*paths[2:], *other])
    assert err.value.code == "mixed_series"


def test_not_dicom_is_rejected(tmp_path):
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"not a dicom file at all")
    with pytest.raises(VolumeError) as err:
        assemble_volume([bad])
    assert err.value.code in ("unreadable", "not_image")
    with pytest.raises(VolumeError):
        assemble_volume([])


@pytest.mark.parametrize("ts", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=["rle", "jpegls", "j2k"])
def test_compressed_transfer_syntaxes(tmp_path, ph, ts):
    hu, _ = ph
    paths = write_series(tmp_path, hu[:4], transfer_syntax=ts)
    assert pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == ts
    vol = assemble_volume(paths)
    np.testing.assert_array_equal(vol.hu, hu[:4].astype(np.float32))


def test_jpeg_lossless_via_dcmtk(tmp_path, ph):
    dcmcjpeg = require_tool("dcmcjpeg")
    hu, _ = ph
    paths = write_series(tmp_path / "raw", hu[:3])
    out = []
    for p in paths:
        dst = tmp_path / f"jpeg_{p.name}"
        subprocess.run([dcmcjpeg, "+e1", str(p), str(dst)], check=True, capture_output=True)  # process 14 SV1
        out.append(dst)
    assert pydicom.dcmread(out[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    vol = assemble_volume(out)
    np.testing.assert_array_equal(vol.hu, hu[:3].astype(np.float32))


def test_enhanced_ct_multiframe(tmp_path, ph):
    hu, _ = ph
    paths = write_series(tmp_path / "single", hu, signed=True, intercept=0.0)
    enhanced = write_enhanced(tmp_path / "enhanced.dcm", paths, shuffle_seed=3)
    vol = assemble_volume([enhanced])
    single = assemble_volume(paths)
    assert vol.is_multiframe and len(vol.headers) == 1
    np.testing.assert_array_equal(vol.hu, single.hu)
    np.testing.assert_allclose(vol.affine_lps, single.affine_lps, atol=1e-6)
    assert {f.frame_number for f in vol.frames} == set(range(1, hu.shape[0] + 1))
    order = vol.source_frame_order()
    assert sorted(order.tolist()) == list(range(hu.shape[0]))
    with pytest.raises(VolumeError) as err:
        assemble_volume([enhanced, *paths[:2]])
    assert err.value.code in ("multiframe", "mixed_series")


def test_nifti_grid_check(tmp_path, ph):
    import nibabel as nib

    hu, labels = ph
    vol = assemble_volume(write_series(tmp_path, hu))
    img = vol.to_nifti(labels)
    np.testing.assert_array_equal(label_image_to_volume_grid(img, vol), labels)
    canonical = nib.as_closest_canonical(img)  # axes flipped to RAS+: still the same grid
    assert not np.allclose(canonical.affine, img.affine)
    np.testing.assert_array_equal(label_image_to_volume_grid(canonical, vol), labels)
    shifted = nib.Nifti1Image(img.get_fdata(), img.affine @ np.diag([1, 1, 1, 1]) + np.c_[np.zeros((4, 3)), [0.4, 0, 0, 0]])
    with pytest.raises(VolumeError, match="off the CT grid"):
        label_image_to_volume_grid(shifted, vol)
    resampled = nib.Nifti1Image(img.get_fdata()[::2], img.affine @ np.diag([2, 1, 1, 1]))
    with pytest.raises(VolumeError, match="not on the source grid"):
        label_image_to_volume_grid(resampled, vol)
    cropped = nib.Nifti1Image(np.asarray(img.dataobj)[:, :, 1:], img.affine @ np.array(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1.0]]))
    with pytest.raises(VolumeError):
        label_image_to_volume_grid(cropped, vol)
    placed = label_image_to_volume_grid(cropped, vol, partial=True)
    np.testing.assert_array_equal(placed[1:], labels[1:])
    assert lps_to_ras(vol.affine_lps)[0, 0] < 0


# ---- real data (../shared, CI only) ----------------------------------------------------------
def test_real_ct_79_slices_shuffled():
    ct = shared_data("01_tcia_pancreatic-ct-cbct-seg_CB001", "ct")
    paths = sorted(ct.glob("*.dcm"))
    shuffled = list(paths)
    random.Random(7).shuffle(shuffled)
    vol = assemble_volume(shuffled)
    assert vol.shape == (79, 512, 512)
    assert vol.spacing == pytest.approx((3.0, 1.07421875, 1.07421875))
    assert vol.affine_lps[2, 3] == pytest.approx(250.91)  # lowest slice first
    assert -1100 < float(vol.hu.min()) and float(vol.hu.max()) < 4000
    _check_geometry(vol, paths)


def test_real_j2k_ct_with_empty_uids(tmp_path):
    src = shared_data("02_totalsegmentator_example", "example_ct_dicom")
    files = sorted(src.iterdir())
    raw = assemble_volume(files)  # decodes; UIDs come from the file meta where the dataset is empty
    assert raw.shape == (20, 512, 512) and raw.series_instance_uid == ""
    assert any("MediaStorageSOPInstanceUID" in n for n in raw.notes)
    repaired = assemble_volume(repair_uids(src, tmp_path))
    assert repaired.series_instance_uid and repaired.spacing[0] == pytest.approx(2.0)
    np.testing.assert_array_equal(repaired.hu, raw.hu)
    assert -1100 <= float(repaired.hu.min()) and float(repaired.hu.max()) <= 1900


def test_hu_outside_int16_are_kept_as_float32(tmp_path, ph):
    """16-bit unsigned pixels with an intercept can exceed int16: the volume falls back to float32
    with the exact HU instead of wrapping them."""
    hu, _ = ph
    hu = hu.astype(np.float32)
    hu[2, 5, 7] = 40000.0
    vol = assemble_volume(write_series(tmp_path, hu))
    assert vol.hu.dtype == np.float32
    np.testing.assert_array_equal(vol.hu, hu)


def test_patient_sex_is_read_from_the_series(tmp_path, ph):
    """The model leaves out classes of the other sex (catalog 'sex'), so the volume carries DICOM
    PatientSex; O, empty and missing mean unknown."""
    hu, _ = ph
    paths = write_series(tmp_path, hu)
    assert assemble_volume(paths).patient_sex == "O"  # tests/support/ct.py writes O
    for value in ("F", None):
        for p in paths:
            ds = pydicom.dcmread(p)
            if value is None:
                del ds.PatientSex
            else:
                ds.PatientSex = value
            ds.save_as(p)
        assert assemble_volume(paths).patient_sex == (value or "")
