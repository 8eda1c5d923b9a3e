from __future__ import annotations

import itertools
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from model.catalog import CatalogError, load_catalog

SPEC_ORGANS = [
    "Spleen", "Right Kidney", "Left Kidney", "Gall Bladder", "Esophagus", "Liver", "Stomach", "Aorta",
    "Postcava", "Portal Vein and Splenic Vein", "Pancreas", "Right Adrenal Gland", "Left Adrenal Gland",
    "Duodenum", "Hepatic Vessel", "Right Lung", "Left Lung", "Colon", "Intestine", "Rectum", "Bladder",
    "Prostate", "Left Head of Femur", "Right Head of Femur", "Celiac Trunk",
]
SPEC_TUMORS = [
    "Spleen Tumor", "Kidney Tumor", "Kidney Cyst", "Gall Bladder Tumor", "Esophagus Tumor", "Liver Tumor",
    "Stomach Tumor", "Aortic Tumor", "Postcava Tumor Thrombus", "Portal Vein Tumor Thrombus", "Pancreas Tumor",
    "Adrenal Tumor", "Adrenal Cyst", "Duodenal Tumor", "Hepatic Vessel Tumor", "Lung Tumor", "Lung Cyst",
    "Colon Tumor", "Small Intestinal Neoplasm", "Rectal Tumor",
]


def test_default_catalog_has_the_45_classes_in_spec_order():
    cat = load_catalog()
    assert cat.names == SPEC_ORGANS + SPEC_TUMORS
    assert [e.index for e in cat] == list(range(1, 46))
    assert [e.name for e in cat.organs] == SPEC_ORGANS
    assert [e.name for e in cat.tumors] == SPEC_TUMORS
    assert cat.index_of("Celiac Trunk") == 24
    # The shipped CLIP row 25 was computed from the authors' misspelling.
    assert cat.by_name("Celiac Trunk").prompt_name == "Celiac Truck"
    assert cat.by_name("Liver").prompt == "A computerized tomography of a Liver"


def test_parents_and_laterality():
    cat = load_catalog()
    assert [p.name for p in cat.parents_of("Kidney Tumor")] == ["Right Kidney", "Left Kidney"]
    assert [p.name for p in cat.parents_of("Lung Cyst")] == ["Right Lung", "Left Lung"]
    assert [p.name for p in cat.parents_of("Liver Tumor")] == ["Liver"]
    assert all(t.parents for t in cat.tumors) and not any(o.parents for o in cat.organs)
    for e in cat:
        side = e.laterality
        if e.name.startswith(("Left ", "Right ")):
            assert side == e.name.split()[0].lower()
            assert e.coding.modifier is not None and e.coding.modifier.meaning == side.capitalize()
        else:
            assert side is None and e.coding.modifier is None


def test_colours_are_valid_and_distinct():
    cat = load_catalog()
    colours = [e.color for e in cat]
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colours)
    closest = min(math.dist(a, b) for a, b in itertools.combinations(colours, 2))
    assert closest >= 20, f"two class colours are only {closest:.1f} apart"


def test_every_code_exists_in_pydicoms_sct_dictionary():
    from pydicom.sr._concepts_dict import concepts

    known: dict[str, set[str]] = {}
    for per_keyword in concepts["SCT"].values():
        for value, (meaning, _cids) in per_keyword.items():
            known.setdefault(value, set()).add(meaning)
    cat = load_catalog()
    checked = 0
    for e in cat:
        coding = e.coding
        assert coding.category is not None and coding.type is not None, e.name
        for key in ("category", "type", "modifier", "anatomic_region"):
            code = getattr(coding, key)
            if code is None:
                continue
            assert code.scheme == "SCT", (e.name, key)
            assert code.value in known, f"{e.name}: coding.{key} value {code.value} not in pydicom's SCT codes"
            assert code.meaning in known[code.value], (
                f"{e.name}: coding.{key} meaning {code.meaning!r} not among {known[code.value]}"
            )
            checked += 1
    assert checked >= 45 * 2
    # Categories are the CID 7150 concepts, tumours are located in their parent organ.
    assert {e.coding.category.value for e in cat.organs} == {"91723000"}
    assert {e.coding.category.value for e in cat.tumors} == {"49755003"}
    kidney = cat.by_name("Right Kidney").coding.type
    assert cat.by_name("Kidney Tumor").coding.anatomic_region == kidney
    assert cat.by_name("Left Kidney").coding.type == kidney  # laterality is a modifier, not a code


def _write(tmp_path: Path, classes: list[dict], name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"classes": classes}))
    return path


ORGAN = {"name": "Liver", "kind": "organ", "color": [1, 2, 3]}
TUMOR = {"name": "Liver Tumor", "kind": "tumor", "parents": ["Liver"], "color": [4, 5, 6]}


@pytest.mark.parametrize(
    "classes, needle",
    [
        ([ORGAN, dict(ORGAN, color=[9, 9, 9])], "class 'Liver': key 'name' duplicates class #1"),
        ([ORGAN, dict(TUMOR, parents=["Kidney"])], "class 'Liver Tumor': key 'parents' names unknown class 'Kidney'"),
        ([ORGAN, dict(TUMOR, parents=[])], "class 'Liver Tumor': key 'parents' is empty"),
        ([dict(ORGAN, color=[0, 0, 256])], "class 'Liver': key 'color' must be three integers 0-255"),
        ([dict(ORGAN, color=[0, 0])], "class 'Liver': key 'color'"),
        ([ORGAN, dict(TUMOR, color=[1, 2, 3])], "class 'Liver Tumor': key 'color' [1, 2, 3] is already used by 'Liver'"),
        ([dict(ORGAN, kind="bone")], "class 'Liver': key 'kind'"),
        ([dict(ORGAN, index=3)], "class 'Liver': key 'index' is 3"),
        ([dict(ORGAN, threshold=1.5)], "class 'Liver': key 'threshold'"),
        ([dict(ORGAN, laterality="up")], "class 'Liver': key 'laterality'"),
        ([dict(ORGAN, colour=[1, 2, 3])], "class 'Liver': unknown key(s) ['colour']"),
        ([{"name": "Liver", "kind": "organ"}], "class 'Liver': missing key 'color'"),
        ([dict(ORGAN, coding={"type": {"scheme": "SCT", "value": 10200004}})], "key 'coding.type'"),
    ],
)
def test_validation_errors_name_the_class_and_key(tmp_path, classes, needle):
    with pytest.raises(CatalogError) as err:
        load_catalog(_write(tmp_path, classes))
    assert needle in str(err.value)


def test_site_can_append_classes(tmp_path):
    extra = _write(
        tmp_path,
        [{"name": "Bone Metastasis", "kind": "tumor", "parents": ["Left Head of Femur"], "color": [10, 20, 30]}],
        "site.yaml",
    )
    cat = load_catalog(extra=extra)
    assert len(cat) == 46 and cat[-1].name == "Bone Metastasis" and cat[-1].index == 46
    assert cat[-1].prompt_name == "Bone Metastasis"
    with pytest.raises(CatalogError, match="'Liver': key 'name' duplicates"):
        load_catalog(extra=_write(tmp_path, [dict(ORGAN, color=[7, 7, 7])], "dup.yaml"))


def test_catalog_import_is_light():
    code = textwrap.dedent(
        """
        import sys, time
        t = time.perf_counter()
        import model, model.catalog
        model.catalog.load_catalog()
        assert "torch" not in sys.modules and "monai" not in sys.modules, "catalog pulled in torch"
        print(time.perf_counter() - t)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 2.0
