"""Phantom generator: determinism, anatomy sanity, NIfTI and DICOM writers."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import ndimage

from model.catalog import load_catalog
from tests.tools import require_tool
from training.phantoms import (
    PHANTOM_ORGANS,
    SEEN_TUMOURS,
    TUMOUR_TYPES,
    UNSEEN_TUMOURS,
    generate,
    make_phantom,
    write_dicom_series,
    write_nifti_pair,
)

CAT = load_catalog()


def test_same_seed_same_phantom_other_seed_differs():
    a = make_phantom(11, shape=(48, 48, 40))
    b = make_phantom(11, shape=(48, 48, 40))
    c = make_phantom(12, shape=(48, 48, 40))
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[1], c[1])
    assert a[0].dtype == np.float32 and a[1].dtype == np.uint8 and a[2].shape == (4, 4)


def test_small_phantom_is_fast_and_imports_no_torch():
    code = ("import sys, time; t = time.time(); from training.phantoms import make_phantom; "
            "make_phantom(0, shape=(64, 64, 64)); print(time.time() - t); "
            "print(any(m.split('.')[0] in ('torch', 'monai') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "False", "phantoms must not import torch/monai"
    assert float(out[0]) < 5.0  # ~0.2 s on an idle core; generous for a loaded CI machine


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_labels_sane(seed):
    ph = generate(seed, spacing=5.0)
    img, lab = ph.image, ph.label
    values = set(np.unique(lab).tolist()) - {0}
    organ_ix = {CAT.by_name(n).index for n in PHANTOM_ORGANS}
    tumour_ix = {CAT.by_name(t["cls"]).index for t in TUMOUR_TYPES.values()}
    assert values <= organ_ix | tumour_ix
    must = {"Liver", "Spleen", "Right Kidney", "Left Kidney", "Aorta", "Postcava", "Pancreas", "Stomach", "Colon",
            "Intestine", "Bladder", "Right Lung", "Left Lung"}
    assert {CAT.by_name(n).index for n in must} <= values
    # Organs inside the body: every labelled voxel lies in the filled body outline.
    body = np.stack([ndimage.binary_fill_holes(img[:, :, k] > -500) for k in range(img.shape[2])], axis=2)
    assert body[lab > 0].all()
    assert (img[lab == 0] > -990).any() and (img < -950).any()  # air outside, tissue inside
    # Laterality in RAS world coordinates: right organs at larger x than their left partner.
    xs = ph.affine[0, 0] * np.arange(lab.shape[0]) + ph.affine[0, 3]
    for r, l in (("Right Kidney", "Left Kidney"), ("Right Lung", "Left Lung"),
                 ("Right Head of Femur", "Left Head of Femur")):
        xr = xs[np.nonzero(lab == CAT.by_name(r).index)[0]].mean()
        xl = xs[np.nonzero(lab == CAT.by_name(l).index)[0]].mean()
        assert xr > 0 > xl, (r, xr, xl)
    # Liver HU is soft tissue, lung is air-like.
    assert 60 < np.median(img[lab == CAT.by_name("Liver").index]) < 180
    assert np.median(img[lab == CAT.by_name("Right Lung").index]) < -600
    # Tumours lie inside their parent organ: the same seed without tumours has the identical
    # anatomy (separate random streams), and every lesion voxel is a parent voxel there.
    bare = generate(seed, spacing=5.0, tumour_types=[]).label
    is_tumour = lab > 25
    assert np.array_equal(bare[~is_tumour], lab[~is_tumour])
    for t in ph.tumours:
        spec = TUMOUR_TYPES[t]
        tum = lab == CAT.by_name(spec["cls"]).index
        assert tum.any()
        parents = [CAT.by_name(p).index for p in spec["parents"]]
        assert np.isin(bare[tum], parents).all(), t


def test_tumour_selection():
    seen_ix = {CAT.by_name(TUMOUR_TYPES[t]["cls"]).index for t in SEEN_TUMOURS}
    unseen_ix = {CAT.by_name(TUMOUR_TYPES[t]["cls"]).index for t in UNSEEN_TUMOURS}
    found = set()
    for s in range(6):
        ph = generate(s, spacing=6.0, tumour_types=SEEN_TUMOURS, tumour_prob=0.9)
        v = set(np.unique(ph.label).tolist())
        assert not (v & unseen_ix)
        found |= v & seen_ix
    assert found == seen_ix
    none = generate(0, spacing=6.0, tumour_types=[])
    assert not (set(np.unique(none.label).tolist()) & (seen_ix | unseen_ix)) and none.tumours == []
    # The tumour set does not move the anatomy.
    a, b = generate(4, spacing=6.0, tumour_types=[]), generate(4, spacing=6.0)
    assert b.tumours and np.array_equal(a.label[b.label <= 25], b.label[b.label <= 25])


def test_grid_options():
    ph = generate(5, spacing=(3.0, 3.0, 4.0))
    np.testing.assert_allclose(ph.spacing, (3.0, 3.0, 4.0))
    ph = generate(5, shape=(40, 40, 30), spacing=8.0)
    assert ph.image.shape == (40, 40, 30)
    ph = generate(5)  # a random clinical grid
    assert 0.6 < ph.spacing[0] < 1.0 and ph.spacing[2] in (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)


def test_nifti_pair_roundtrip(tmp_path):
    nib = pytest.importorskip("nibabel")
    img, lab, aff = make_phantom(3, shape=(32, 32, 24))
    write_nifti_pair(img, lab, aff, tmp_path / "i.nii.gz", tmp_path / "l.nii.gz")
    i, l = nib.load(str(tmp_path / "i.nii.gz")), nib.load(str(tmp_path / "l.nii.gz"))
    np.testing.assert_allclose(i.affine, aff)
    np.testing.assert_array_equal(np.asarray(l.dataobj), lab)
    np.testing.assert_array_equal(np.asarray(i.dataobj), np.rint(img).astype(np.int16))
    assert nib.aff2axcodes(aff) == ("L", "P", "S")


def test_dicom_series_geometry(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    img, lab, aff = make_phantom(8, shape=(40, 36, 10))
    paths = write_dicom_series(img, aff, tmp_path, patient_name="PHANTOM^008", patient_id="P8", uid_seed="t")
    assert len(paths) == 10
    dss = [pydicom.dcmread(p) for p in paths]
    ds0 = dss[0]
    assert ds0.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    assert ds0.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert str(ds0.PatientName) == "PHANTOM^008" and ds0.Modality == "CT"
    assert (ds0.Rows, ds0.Columns) == (36, 40)
    assert len({d.SOPInstanceUID for d in dss}) == 10 and len({d.SeriesInstanceUID for d in dss}) == 1
    for uid in (ds0.StudyInstanceUID, ds0.SeriesInstanceUID, ds0.FrameOfReferenceUID, ds0.SOPInstanceUID):
        assert pydicom.uid.UID(uid).is_valid
    # Rebuild the voxel -> RAS affine from the DICOM geometry.
    row = np.array(ds0.ImageOrientationPatient[:3], float)
    col = np.array(ds0.ImageOrientationPatient[3:], float)
    dr, dc = (float(v) for v in ds0.PixelSpacing)  # row spacing (between rows), column spacing
    ipp0, ipp1 = (np.array(d.ImagePositionPatient, float) for d in dss[:2])
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * dc, col * dr, ipp1 - ipp0, ipp0
    ras = np.diag([-1.0, -1, 1, 1]) @ lps
    np.testing.assert_allclose(ras, aff, atol=1e-3)
    assert float(ds0.SliceThickness) == pytest.approx(np.linalg.norm(aff[:3, 2]), rel=1e-4)
    # Pixel values: stored * slope + intercept = HU (rounded), pixel (r, c) = array[c, r, k].
    for k in (0, 7):
        d = dss[k]
        hu = d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)
        np.testing.assert_array_equal(hu, np.clip(np.rint(img[:, :, k].T), -1024, 3071))
    # Deterministic UIDs with uid_seed.
    again = write_dicom_series(img, aff, tmp_path / "again", uid_seed="t")
    assert pydicom.dcmread(again[3]).SOPInstanceUID == dss[3].SOPInstanceUID


def test_dicom_passes_dciodvfy(tmp_path):
    tool = require_tool("dciodvfy")
    img, _, aff = make_phantom(9, shape=(24, 24, 3))
    paths = write_dicom_series(img, aff, tmp_path)
    res = subprocess.run([tool, str(paths[1])], capture_output=True, text=True)
    errors = [l for l in (res.stdout + res.stderr).splitlines() if l.startswith("Error")]
    assert not errors, errors


def test_large_study_is_quick(tmp_path):
    t = time.time()
    img, _, aff = make_phantom(1, shape=(256, 256, 80))
    write_dicom_series(img, aff, tmp_path)
    assert time.time() - t < 60
