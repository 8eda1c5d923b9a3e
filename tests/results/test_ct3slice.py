"""Always-running real-data test: 3 real CT slices + dcmqi's liver SEG (tests/data/ct3slice)."""
from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from dsm_node.results.options import ResultOptions
from dsm_node.results.seg import write_seg
from dsm_node.results.sr import write_sr
from dsm_node.volume import assemble_volume
from tests.results.resulttools import dciodvfy, dcmqi_masks
from tests.support.ct import LIVER

DATA = Path(__file__).resolve().parents[1] / "data" / "ct3slice"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_reencode_dcmqi_liver_seg(tmp_path, catalog):
    vol = assemble_volume(sorted(DATA.glob("0*.dcm"))[::-1])
    assert vol.shape == (3, 512, 512)
    reference = hd.seg.segread(DATA / "liver_seg.dcm")
    liver = reference.get_pixels_by_source_instance(
        [f.sop_instance_uid for f in vol.frames], combine_segments=True, ignore_spatial_locations=True)
    assert liver.sum() > 1000
    labels = np.where(liver > 0, LIVER, 0).astype(np.uint8)
    opts = ResultOptions(model_version="3slice")
    seg = write_seg(vol, labels, catalog, opts, tmp_path)
    sr = write_sr(vol, labels, catalog, opts, seg, tmp_path)
    for path in (seg.path, sr.path):
        errors, warnings = dciodvfy(path)
        assert errors == [] and warnings == [], (path.name, errors, warnings)
    masks = dcmqi_masks(seg.path, tmp_path / "dcmqi", vol)
    np.testing.assert_array_equal(masks[1], liver > 0)
    back = hd.seg.segread(seg.path).get_pixels_by_source_instance(
        [f.sop_instance_uid for f in vol.frames], combine_segments=True)
    np.testing.assert_array_equal(back, liver)
    m = sr.measurements[LIVER]
    assert m.volume_cm3 == pytest.approx(int(liver.sum()) * vol.voxel_volume_mm3 / 1000)
    assert 0 < m.mean_hu < 200  # soft tissue
