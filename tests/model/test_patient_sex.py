"""A class only one sex has (catalog ``sex``: the prostate) is not drawn for a patient known to be
of the other sex. On the validation phantoms 0.6's prostate channel fired on the bladder of two
women (29 ml and 12 ml labelled "Prostate", half of one bladder)."""
from __future__ import annotations

import numpy as np
import pytest

from model import grid
from model.catalog import CatalogError, load_catalog
from model.segment import ModelGridOutput, sex_of
from tests.model.test_organ_overlap import _segmenter


@pytest.mark.parametrize("value, sex", [("F", "female"), ("M", "male"), ("female", "female"), (" m ", "male"),
                                        ("O", None), ("", None), (None, None)])
def test_sex_of_reads_dicom_patient_sex(value, sex):
    assert sex_of(value) == sex


def test_the_catalog_says_which_classes_belong_to_one_sex(tmp_path):
    catalog = load_catalog()
    assert catalog.by_name("Prostate").sex == "male"
    assert all(e.sex is None for e in catalog if e.name != "Prostate")
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes:\n- {name: Uterus, kind: organ, color: [1, 2, 3], sex: woman}\n")
    with pytest.raises(CatalogError, match="'sex'"):
        load_catalog(bad)


def _prostate_over_bladder():
    """Model-grid probabilities: a bladder with a smaller prostate response inside it (as the demo
    model gives on a woman's bladder); under the nested overlap rule the smaller mask wins."""
    catalog = load_catalog()
    gmap = grid.plan((48, 48, 48), np.eye(4), (2.0, 2.0, 2.0))
    shape = gmap.model_shape
    probs = np.zeros((len(catalog), *shape), dtype=np.float32)
    probs[catalog.by_name("Bladder").index - 1, 4:20, 4:20, 4:20] = 0.95
    probs[catalog.by_name("Prostate").index - 1, 8:16, 8:16, 8:16] = 0.9  # 4 ml: above its min_volume_ml
    output = ModelGridOutput(probs=probs, anomaly_raw=np.zeros(shape, np.float32), gmap=gmap,
                             box=tuple(slice(0, n) for n in shape))
    return catalog, output


@pytest.mark.parametrize("patient_sex, centre", [(None, "Prostate"), ("O", "Prostate"), ("male", "Prostate"),
                                                 ("M", "Prostate"), ("female", "Bladder"), ("F", "Bladder")])
def test_prostate_is_not_drawn_for_a_woman(patient_sex, centre):
    catalog, output = _prostate_over_bladder()
    seg = _segmenter("nested")
    d = seg.decide(output, patient_sex)
    labels, found = seg._labels(output, d)
    assert labels[24, 24, 24] == catalog.by_name(centre).index  # the prostate response's centre
    assert found["Bladder"] > 0
    drawn = centre == "Prostate"
    assert ("Prostate" in found) == drawn
    assert d.masks[catalog.by_name("Prostate").index - 1].any() == drawn
