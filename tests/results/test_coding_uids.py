"""Catalog coding against pydicom's dictionary; deterministic, valid UIDs."""
from __future__ import annotations

import pytest

from dsm_node.results import coding
from dsm_node.results.uids import ResultUIDs, device_uid, is_valid_uid, result_uid


def test_catalog_coding_is_valid(catalog):
    assert coding.check_catalog_coding(catalog) == []
    # Femoral head is the only type outside CID 7151 (an extensible baseline CID)
    assert all("Femoral head" in n for n in coding.coding_notes(catalog))


def test_every_class_resolves_and_laterality_is_a_modifier(catalog):
    for e in catalog:
        c = coding.resolve(e)
        assert not c.local_type
        assert c.category.scheme_designator == "SCT" and c.type.scheme_designator == "SCT"
        if e.laterality:
            assert c.modifier is not None and c.modifier.value in ("7771000", "24028007")
        if e.kind == "tumor":
            assert c.category.value == "49755003" and c.anatomic_region is not None


def test_checker_catches_mistakes(catalog):
    from dataclasses import replace

    from model.catalog import Catalog, Code, Coding

    liver_tumor = catalog.by_name("Liver Tumor")
    bad = replace(liver_tumor, coding=Coding(
        category=Code("SCT", "91723000", "Anatomical Structure"), type=Code("SRT", "T-62000", "Liver"),
        anatomic_region=Code("SCT", "78961009", "Spleen")))
    entries = [bad if e.name == "Liver Tumor" else e for e in catalog]
    problems = coding.check_catalog_coding(Catalog(entries))
    text = "\n".join(problems)
    assert "retired coding scheme SRT" in text and "Morphologically Abnormal" in text and "not a parent organ" in text
    kidney = catalog.by_name("Right Kidney")
    wrong_side = replace(kidney, coding=replace(kidney.coding, modifier=Code("SCT", "7771000", "Left")))
    problems = coding.check_catalog_coding(Catalog([wrong_side if e.name == "Right Kidney" else e for e in catalog]))
    assert any("disagrees with laterality" in p for p in problems)


def test_site_class_without_coding_gets_local_code(catalog):
    from model.catalog import ClassEntry

    extra = ClassEntry(index=46, name="Appendix Tumor", prompt_name="Appendix Tumor", kind="tumor",
                       parents=("Colon",), color=(1, 2, 3))
    c = coding.resolve(extra)
    assert c.local_type and c.type.scheme_designator == coding.LOCAL_SCHEME
    assert c.category.value == "49755003"


def test_result_uids():
    a = result_uid("1.2.3.", "1.2.840.1", "1.0", "seg-series")
    assert a == result_uid("1.2.3.", "1.2.840.1", "1.0", "seg-series")
    assert a.startswith("1.2.3.") and is_valid_uid(a)
    others = {
        result_uid("1.2.3.", "1.2.840.1", "1.1", "seg-series"),
        result_uid("1.2.3.", "1.2.840.1", "1.0", "seg-instance"),
        result_uid("1.2.3.", "1.2.840.1", "1.0", "seg-series", revision=1),
        result_uid("1.2.3.", "1.2.840.2", "1.0", "seg-series"),
        result_uid("1.2.4.", "1.2.840.1", "1.0", "seg-series"),
    }
    assert a not in others and len(others) == 5
    # sources are length-prefixed: no collision by shifting characters between fields
    assert result_uid("1.2.3.", "1.2.840.1", "1.0", "ab", extra="c") != result_uid("1.2.3.", "1.2.840.1", "1.0", "a", extra="bc")
    u = ResultUIDs("1.2.3.", "1.2.840.1", "1.0")
    assert len({u.seg_series, u.seg_instance, u.sr_series, u.sr_instance, u.tracking("Liver"), u.tracking("Spleen")}) == 6
    assert device_uid("1.2.3.", "m", "DSM") == device_uid("1.2.3.", "m", "DSM") != device_uid("1.2.3.", "m", "X")
    with pytest.raises(ValueError):
        result_uid("1.2.3.", "", "1.0", "seg-series")
    assert not is_valid_uid("1.02.3") and not is_valid_uid("1.2." + "3" * 70) and not is_valid_uid("")
