"""Phantom generator: determinism, anatomy, protocols (field of view, phase, oral contrast), lesion
variants, NIfTI and DICOM writers."""
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
    PHASES,
    SEEN_TUMORS,
    TISSUES,
    TUMOR_TYPES,
    UNSEEN_TUMORS,
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


def _world(ph, axis: int, idx: np.ndarray) -> np.ndarray:
    """World coordinate (RAS mm) of voxel indices along one axis."""
    return ph.affine[axis, axis] * idx + ph.affine[axis, 3]


# A fixed 650 mm wide grid holds the whole trunk with the arms raised: nothing is truncated.
WIDE = dict(shape=(130, 130, 176), spacing=5.0, fov="chest_abdomen_pelvis", arms="up")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_labels_sane(seed):
    ph = generate(seed, phase="portal_venous", **WIDE)
    img, lab = ph.image, ph.label
    values = set(np.unique(lab).tolist()) - {0}
    organ_ix = {CAT.by_name(n).index for n in PHANTOM_ORGANS}
    tumor_ix = {CAT.by_name(t["cls"]).index for t in TUMOR_TYPES.values()}
    assert values <= organ_ix | tumor_ix
    must = set(PHANTOM_ORGANS) - {"Prostate"}
    assert {CAT.by_name(n).index for n in must} <= values, sorted(must - {CAT.names[v - 1] for v in values})
    # Organs inside the body: every labelled voxel lies in the filled body outline.
    body = np.stack([ndimage.binary_fill_holes(img[:, :, k] > -500) for k in range(img.shape[2])], axis=2)
    assert body[lab > 0].all()
    assert (img[lab == 0] > -990).any() and (img < -950).any()  # air outside, tissue inside
    # Laterality in RAS world coordinates: right organs at larger x than their left partner.
    for r, l in (("Right Kidney", "Left Kidney"), ("Right Lung", "Left Lung"),
                 ("Right Head of Femur", "Left Head of Femur"), ("Right Adrenal Gland", "Left Adrenal Gland")):
        xr = _world(ph, 0, np.nonzero(lab == CAT.by_name(r).index)[0]).mean()
        xl = _world(ph, 0, np.nonzero(lab == CAT.by_name(l).index)[0]).mean()
        assert xr > 0 > xl, (r, xr, xl)
    # Liver HU is soft tissue (portal-venous), lung is air-like.
    assert 60 < np.median(img[lab == CAT.by_name("Liver").index]) < 180
    assert np.median(img[lab == CAT.by_name("Right Lung").index]) < -600
    # Tumours lie in their parent organ, or reach out of it into unlabelled tissue: the same
    # seed without tumours has the identical anatomy (separate random streams).
    bare = generate(seed, phase="portal_venous", tumor_types=[], **WIDE).label
    is_tumor = lab > 25
    assert np.array_equal(bare[~is_tumor], lab[~is_tumor])
    for t in ph.tumors:
        spec = TUMOR_TYPES[t]
        tum = lab == CAT.by_name(spec["cls"]).index
        assert tum.any()
        parents = [CAT.by_name(p).index for p in spec["parents"]]
        assert np.isin(bare[tum], parents + [0]).all(), t
        assert np.isin(bare[tum], parents).any(), t
        if not any("outside" in r["variants"] for r in ph.info["lesions"] if r["type"] == t):
            assert np.isin(bare[tum], parents).all(), t


def test_tumor_selection():
    seen_ix = {CAT.by_name(TUMOR_TYPES[t]["cls"]).index for t in SEEN_TUMORS}
    unseen_ix = {CAT.by_name(TUMOR_TYPES[t]["cls"]).index for t in UNSEEN_TUMORS}
    found = set()
    for s in range(6):
        ph = generate(s, spacing=6.0, tumor_types=SEEN_TUMORS, tumor_prob=0.9)
        v = set(np.unique(ph.label).tolist())
        assert not (v & unseen_ix)
        found |= v & seen_ix
    assert found == seen_ix
    none = generate(0, spacing=6.0, tumor_types=[])
    assert not (set(np.unique(none.label).tolist()) & (seen_ix | unseen_ix)) and none.tumors == []
    # The tumour set does not move the anatomy.
    a, b = generate(4, spacing=6.0, tumor_types=[]), generate(4, spacing=6.0)
    assert b.tumors and np.array_equal(a.label[b.label <= 25], b.label[b.label <= 25])


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


# --------------------------------------------------------------------------------------------
# a whole patient: thorax, skeleton, arms, vessels, fields of view, phases, lesion variants

TIS = {name: i for i, name in enumerate(TISSUES)}
IX = {n: CAT.by_name(n).index for n in CAT.names}


def _zs(mask: np.ndarray) -> np.ndarray:
    return np.nonzero(mask.any((0, 1)))[0]


@pytest.fixture(scope="module")
def cap():
    """One chest-abdomen-pelvis phantom, portal-venous, arms beside the trunk, 4 mm."""
    return generate(21, spacing=4.0, fov="chest_abdomen_pelvis", phase="portal_venous", arms="down")


def test_heart_is_unlabelled_above_the_diaphragm_between_the_lungs(cap):
    lab, tis = cap.label, cap.tissue
    heart = tis == TIS["myocardium"]
    assert heart.sum() > 500 and (lab[heart] == 0).all()
    for chamber in ("blood_left", "blood_right"):  # contrast-filled chambers and great vessels
        m = tis == TIS[chamber]
        assert m.any() and np.isin(lab[m], [0, IX["Aorta"], IX["Right Lung"], IX["Left Lung"]]).all()
    # above the liver wherever both lie in the same column
    liver = lab == IX["Liver"]
    k = np.arange(lab.shape[2])
    both = heart.any(2) & liver.any(2)
    assert both.any()
    assert (np.where(heart, k, 10 ** 6).min(2)[both] > np.where(liver, k, -1).max(2)[both]).all()
    # between the lungs, at their height
    xs = {n: _world(cap, 0, np.nonzero(lab == IX[n])[0]).mean() for n in ("Right Lung", "Left Lung")}
    xh = _world(cap, 0, np.nonzero(heart)[0]).mean()
    assert xs["Left Lung"] < xh < xs["Right Lung"]
    lung_z = _zs(np.isin(lab, [IX["Right Lung"], IX["Left Lung"]]))
    hz = _zs(heart)
    assert lung_z.min() < hz.min() and hz.max() < lung_z.max()


def test_ribs_sternum_airways_are_unlabelled_and_in_place(cap):
    lab, tis, img = cap.label, cap.tissue, cap.image
    bone = tis == TIS["cortical_bone"]
    assert (lab[bone & ~np.isin(lab, [IX["Right Head of Femur"], IX["Left Head of Femur"]])] == 0).all()
    x = _world(cap, 0, np.arange(lab.shape[0]))[:, None]
    # ribs wrap the upper abdomen: lateral to the liver and spleen on their upper slices
    liver, spleen = lab == IX["Liver"], lab == IX["Spleen"]
    lz = _zs(liver)
    for k in lz[len(lz) // 2:]:
        if liver[:, :, k].any():
            right_most = x[liver[:, :, k].any(1)].max()
            assert (bone[:, :, k] & (x > right_most)).any(), k
    sz = _zs(spleen)
    k = sz[len(sz) // 2]
    assert (bone[:, :, k] & (x < x[spleen[:, :, k].any(1)].min())).any()
    assert (tis == TIS["cartilage"]).any()  # costal cartilage
    # sternum: bone in the midline in front of the heart (its upper part; the sternum ends at
    # the xiphoid, the heart on the diaphragm)
    heart = tis == TIS["myocardium"]
    k = _zs(heart)[int(len(_zs(heart)) * 0.7)]
    y = _world(cap, 1, np.arange(lab.shape[1]))[None, :]
    front_of_heart = _world(cap, 1, np.nonzero(heart[:, :, k].any(0))[0]).max()
    assert (bone[:, :, k] & (np.abs(x) < 25) & (y > front_of_heart)).any()
    # trachea: air inside the body, in the midline, above the heart, unlabelled
    air = (tis == TIS["air"]) & (np.abs(x) < 20)[:, :, None]
    body = np.stack([ndimage.binary_fill_holes(img[:, :, k] > -500) for k in range(img.shape[2])], axis=2)
    trachea = air & body
    assert trachea.any() and (lab[trachea] == 0).all()
    assert _zs(trachea).max() > _zs(heart).max()


def test_arms_beside_the_trunk_or_raised():
    kw = dict(shape=(110, 110, 120), spacing=6.0, fov="chest_abdomen_pelvis", phase="portal_venous")
    down, up = generate(4, arms="down", **kw), generate(4, arms="up", **kw)
    # the organs do not move with the arms
    assert np.array_equal(down.label, up.label)
    # beside the trunk: soft tissue and a humerus lateral to the trunk's outline of the
    # raised-arms phantom, at liver height
    k = int(_zs(down.label == IX["Liver"]).mean())
    x = np.abs(_world(down, 0, np.arange(110)))
    not_body = [TIS[t] for t in ("air", "table", "table_core", "mattress")]
    body_up, body_down = (~np.isin(p.tissue[:, :, k], not_body) for p in (up, down))
    trunk = x[body_up.any(1)].max()
    lateral = (x > trunk + 10)[:, None]
    assert (body_down & lateral).sum() > 20
    assert np.isin(down.tissue[:, :, k][lateral[:, 0]], [TIS["cortical_bone"], TIS["yellow_marrow"]]).any()
    assert not (body_up & lateral).any()


def test_aorta_and_postcava_are_continuous(cap):
    lab, tis = cap.label, cap.tissue
    aorta = lab == IX["Aorta"]
    assert ndimage.label(aorta, np.ones((3, 3, 3)))[1] == 1
    az = _zs(aorta)
    assert np.array_equal(az, np.arange(az.min(), az.max() + 1))  # every slice from arch to bifurcation
    heart = tis == TIS["myocardium"]
    kidneys = np.isin(lab, [IX["Right Kidney"], IX["Left Kidney"]])
    assert az.max() > _zs(heart).max()  # the arch tops the heart
    assert az.min() < _zs(kidneys).mean()  # down to the bifurcation below the renal hila
    ivc = lab == IX["Postcava"]
    assert ndimage.label(ivc, np.ones((3, 3, 3)))[1] == 1
    iz = _zs(ivc)
    assert iz.min() < _zs(kidneys).min() and iz.max() > _zs(kidneys).max()
    # hepatic vessels run in the liver, the portal vein reaches it
    hv = lab == IX["Hepatic Vessel"]
    assert hv.any() and (ndimage.binary_dilation(lab == IX["Liver"], iterations=3)[hv]).all()
    pv = lab == IX["Portal Vein and Splenic Vein"]
    assert (ndimage.binary_dilation(pv, iterations=1) & (lab == IX["Liver"])).any()


def test_adrenal_glands_superomedial_to_the_kidneys(cap):
    lab = cap.label
    for side in ("Right", "Left"):
        adr = lab == IX[f"{side} Adrenal Gland"]
        kid = lab == IX[f"{side} Kidney"]
        assert adr.sum() >= 8, (side, adr.sum())  # a few voxels even at 4 mm
        ia, _, ka = np.nonzero(adr)
        ik, _, kk = np.nonzero(kid)
        assert ka.mean() > kk.mean()
        assert abs(_world(cap, 0, ia).mean()) < abs(_world(cap, 0, ik).mean())


def test_phases_change_vessel_and_organ_hu():
    kw = dict(spacing=5.0, fov="upper_abdomen", tumor_types=[])
    ph = {p: generate(6, phase=p, **kw) for p in PHASES}
    lab = ph["portal_venous"].label
    for p in PHASES:  # only the CT numbers change with the phase
        assert np.array_equal(ph[p].label, lab) and ph[p].info["phase"] == p

    def med(p, name):
        return float(np.median(ph[p].image[ph[p].label == IX[name]]))

    def tmed(p, tissue):
        return float(np.median(ph[p].image[ph[p].tissue == TIS[tissue]]))

    nc, art, pv = (med(p, "Aorta") for p in PHASES)
    assert nc < 70 and art > 200 and 110 < pv < 250 and art > pv
    nc, art, pv = (med(p, "Portal Vein and Splenic Vein") for p in PHASES)
    assert nc < 70 and pv > art > nc
    if not ph["non_contrast"].info["fatty_liver"]:
        assert 35 < med("non_contrast", "Liver") < 80
    assert med("portal_venous", "Liver") > med("non_contrast", "Liver") + 30
    # corticomedullary differentiation in the arterial phase only
    assert tmed("arterial", "kidney_cortex") - tmed("arterial", "kidney_medulla") > 50
    assert abs(tmed("non_contrast", "kidney_cortex") - tmed("non_contrast", "kidney_medulla")) < 25


def test_oral_contrast_brightens_the_bowel_lumen():
    kw = dict(spacing=5.0, fov="abdomen", phase="portal_venous", tumor_types=[])
    on, off = generate(8, oral_contrast=True, **kw), generate(8, oral_contrast=False, **kw)
    assert np.array_equal(on.label, off.label)
    lumen = on.tissue == TIS["gi_fluid"]
    assert lumen.sum() > 50
    assert np.median(on.image[lumen]) > 130 and np.median(off.image[lumen]) < 50


def test_fields_of_view():
    def ph(fov):
        return generate(9, spacing=6.0, fov=fov, phase="portal_venous", tumor_types=[])

    chest, upper, ap, cap_ = ph("chest"), ph("upper_abdomen"), ph("abdomen_pelvis"), ph("chest_abdomen_pelvis")

    def has(p, *names):
        return all((p.label == IX[n]).any() for n in names)

    lungs = lambda p: int(np.isin(p.label, [IX["Right Lung"], IX["Left Lung"]]).sum())  # noqa: E731
    assert has(chest, "Right Lung", "Left Lung", "Aorta", "Esophagus") and not has(chest, "Bladder")
    assert (chest.tissue == TIS["myocardium"]).any()
    assert has(upper, "Liver", "Spleen", "Pancreas") and not has(upper, "Bladder")
    assert not has(upper, "Right Head of Femur") and lungs(upper) < 0.3 * lungs(chest)
    assert has(ap, "Bladder", "Rectum", "Right Head of Femur", "Liver") and lungs(ap) < 0.3 * lungs(chest)
    assert has(cap_, "Bladder", "Liver", "Right Lung") and lungs(cap_) > 0.8 * lungs(chest)
    length = {n: p.image.shape[2] * p.spacing[2] for n, p in (("cap", cap_), ("ap", ap), ("upper", upper))}
    assert length["cap"] > length["ap"] > length["upper"]
    # random protocols vary from seed to seed
    infos = [generate(s, spacing=10.0, tumor_types=[], noise=False).info for s in range(12)]
    assert len({i["fov"] for i in infos}) >= 3 and len({i["phase"] for i in infos}) >= 2
    assert len({i["arms"] for i in infos}) == 2


def test_field_of_view_can_truncate_the_body_and_be_off_centre():
    truncated, whole, centres = 0, 0, set()
    for s in range(12):
        p = generate(s, spacing=8.0, tumor_types=[], noise=False)
        k = p.image.shape[2] // 2
        edge = np.r_[p.image[0, :, k], p.image[-1, :, k]]
        if (edge > -500).any():
            truncated += 1
        else:
            whole += 1
        centres.add(round(p.info["centre_xy"][0]))
    assert truncated and whole
    assert len(centres) > 5


def test_female_pelvis_has_no_prostate():
    kw = dict(spacing=5.0, fov="abdomen_pelvis", tumor_types=[], noise=False)
    f, m = generate(3, sex="female", **kw), generate(3, sex="male", **kw)
    assert f.info["sex"] == "female" and m.info["sex"] == "male"
    assert not (f.label == IX["Prostate"]).any() and (m.label == IX["Prostate"]).any()
    uterus = f.tissue == TIS["uterus"]
    assert uterus.sum() > 20 and (f.label[uterus] == 0).all()
    assert not (m.tissue == TIS["uterus"]).any()
    assert (f.tissue == TIS["ovary"]).any()


def _find(pred, seeds, **kw):
    for s in seeds:
        p = generate(s, **kw)
        if pred(p):
            return p
    raise AssertionError(f"no seed in {seeds} satisfies {pred}")


def test_lesion_variants():
    kw = dict(spacing=5.0, fov="chest_abdomen_pelvis", phase="portal_venous", tumor_prob=1.0, arms="up")
    # reaching outside the organ: labelled as the tumour over its whole extent
    p = _find(lambda p: any("outside" in r["variants"] and r["type"] != "kidney_cyst" for r in p.info["lesions"]),
              range(40), **kw)
    bare = generate(p.seed, tumor_types=[], **kw).label
    found = False
    for r in p.info["lesions"]:
        if "outside" not in r["variants"]:
            continue
        spec = TUMOR_TYPES[r["type"]]
        tum = p.label == IX[spec["cls"]]
        parents = [IX[n] for n in spec["parents"]]
        assert np.isin(bare[tum], parents + [0]).all()
        found |= bool((bare[tum] == 0).any())
    assert found
    # rim-enhancing: the ring is brighter than the centre in the portal-venous phase
    p = _find(lambda p: any("rim" in r["variants"] and r["voxels"] > 60 for r in p.info["lesions"]), range(40),
              noise=False, **kw)
    r = [r for r in p.info["lesions"] if "rim" in r["variants"] and r["voxels"] > 60][0]
    tum = p.label == IX[TUMOR_TYPES[r["type"]]["cls"]]
    comp, n = ndimage.label(tum)
    big = comp == (1 + int(np.argmax(ndimage.sum(tum, comp, range(1, n + 1)))))
    core = ndimage.binary_erosion(big, iterations=1)
    assert np.median(p.image[big & ~core]) > np.median(p.image[core]) + 20
    # iso-attenuating: the host organ's mean, a texture of its own
    def iso(r):
        return "iso" in r["variants"] and r["type"] in ("liver_tumor", "kidney_tumor") and r["voxels"] > 20

    p = _find(lambda p: any(iso(r) for r in p.info["lesions"]), range(60), noise=False, **kw)
    r = [r for r in p.info["lesions"] if iso(r)][0]
    host = "liver" if r["type"] == "liver_tumor" else "kidney_cortex"
    comp, _ = ndimage.label(p.label == IX[TUMOR_TYPES[r["type"]]["cls"]])
    ijk = np.rint(np.linalg.solve(p.affine, [*r["centre"], 1.0])[:3]).astype(int)
    lesion = comp == comp[tuple(ijk)]
    assert comp[tuple(ijk)] > 0
    assert abs(np.median(p.image[lesion]) - np.median(p.image[p.tissue == TIS[host]])) < 10
    textured = generate(p.seed, **kw)
    assert textured.image[lesion].std() > textured.image[p.tissue == TIS[host]].std()


def test_lesion_variants_follow_the_type_not_the_tumor_set():
    kw = dict(spacing=8.0, fov="abdomen", tumor_prob=1.0, noise=False)
    one = generate(2, tumor_types=["pancreas_tumor"], **kw)
    all_ = generate(2, **kw)
    rec = lambda p: [r["variants"] for r in p.info["lesions"] if r["type"] == "pancreas_tumor"]  # noqa: E731
    assert rec(one) == rec(all_)


def test_held_out_tumors_keep_their_own_appearance():
    from training.phantom import lesions

    seen = {lesions._TISSUE[t] for t in SEEN_TUMORS}
    unseen = {lesions._TISSUE[t] for t in UNSEEN_TUMORS}
    assert len(seen | unseen) == 6 and not seen & unseen


def test_fatty_liver_and_ascites():
    kw = dict(spacing=8.0, fov="upper_abdomen", phase="non_contrast", tumor_types=[])
    p = _find(lambda p: p.info["fatty_liver"], range(60), **kw)
    liver = np.median(p.image[p.label == IX["Liver"]])
    spleen = np.median(p.image[p.label == IX["Spleen"]])
    assert liver < spleen - 10
    kw["fov"] = "abdomen_pelvis"
    p = _find(lambda p: p.info["ascites"], range(60), **kw)
    fluid = p.tissue == TIS["fluid"]
    assert fluid.sum() > 30 and (p.label[fluid] == 0).all()


def test_phantoms_cli_fixes_the_protocol_and_records_it(tmp_path):
    import json

    from training.cli import main

    out = tmp_path / "set"
    assert main(["phantoms", "--out", str(out), "--n", "2", "--seed", "7", "--spacing", "10", "--tumors", "none",
                 "--fov", "chest", "--phase", "arterial"]) == 0
    infos = json.loads((out / "phantoms.json").read_text())
    assert sorted(infos) == ["phantom_00007", "phantom_00008"]
    assert {i["fov"] for i in infos.values()} == {"chest"} and {i["phase"] for i in infos.values()} == {"arterial"}
    assert all(i["tumours"] == [] and "sex" in i for i in infos.values())
