"""Coded concepts for results: catalog codes -> highdicom, checks against pydicom's dictionary,
and the fixed codes of the SEG / SR / IHE AIR content.

Every code written by the result writers is listed here, so that docs/results.md and the
conformance statement can point at one place.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr._concepts_dict import concepts as _CONCEPTS
from pydicom.sr.codedict import codes

if TYPE_CHECKING:
    from model.catalog import Catalog, ClassEntry, Code

# ---- fixed codes ------------------------------------------------------------------------------
#: IHE AI Results (AIR) Contributing Equipment "Purpose of Reference": the code IHE RAD AIR
#: (Trial Implementation) assigns in its own coding scheme, the same one MONAI Deploy's SEG/SR
#: writers emit. CID 7005 is extensible, so this 99IHE code is allowed in (0040,A170).
PROCESSING_ALGORITHM = CodedConcept("Newcode1", "99IHE", "Processing Algorithm")
#: Algorithm family of the SEG's AlgorithmIdentificationSequence (CID 7162).
ALGORITHM_FAMILY = CodedConcept.from_code(codes.DCM.ArtificialIntelligence)  # 123110
#: SR "Procedure Reported" (CID 100).
PROCEDURE_REPORTED = CodedConcept.from_code(codes.LN.CTUnspecifiedBodyRegion)  # 25045-6
VOLUME = CodedConcept.from_code(codes.SCT.Volume)  # 118565006
ATTENUATION = CodedConcept.from_code(codes.DCM.AttenuationCoefficient)  # 112031
DIAMETER = CodedConcept.from_code(codes.SCT.Diameter)  # 81827009
MEAN = CodedConcept.from_code(codes.SCT.Mean)  # 373098007 (derivation)
MAXIMUM = CodedConcept.from_code(codes.SCT.Maximum)  # 56851009 (derivation)
CM3 = CodedConcept.from_code(codes.UCUM.CubicCentimeter)  # cm3
HU = CodedConcept.from_code(codes.UCUM.HounsfieldUnit)  # [hnsf'U]
MM = CodedConcept("mm", "UCUM", "millimeter")
FINDING = CodedConcept.from_code(codes.DCM.Finding)  # 121071
NONE = CodedConcept.from_code(codes.SCT.None_)  # 260413007
LEFT = CodedConcept.from_code(codes.SCT.Left)  # 7771000
RIGHT = CodedConcept.from_code(codes.SCT.Right)  # 24028007
ANATOMICAL_STRUCTURE = CodedConcept.from_code(codes.SCT.AnatomicalStructure)  # 91723000
MORPHOLOGICALLY_ABNORMAL = CodedConcept.from_code(codes.SCT.MorphologicallyAbnormalStructure)  # 49755003
LONG_AXIS = CodedConcept.from_code(codes.SCT.LongAxis)  # 103339001
SHORT_AXIS = CodedConcept.from_code(codes.SCT.ShortAxis)  # 103340004
#: Local coding scheme for site-added classes without a ``coding:`` block (99 = private).
LOCAL_SCHEME = "99DSMNODE"
#: Measurement Method of a volumetric group: what the referenced segment holds (no standard
#: code says "organ including its tumours"; local codes, explained in docs/results.md).
METHOD_ORGAN_WITH_TUMORS = CodedConcept("ORGAN-INCL-TUM", LOCAL_SCHEME,
                                         "Organ incl. its tumours, enclosed holes filled")
METHOD_CLASS_VOXELS = CodedConcept("CLASS-VOXELS", LOCAL_SCHEME, "Voxels labelled with this class only")

CID_CATEGORY = 7150  # Segmentation Property Categories
CID_TYPE = 7151  # Segmentation Property Types
RETIRED_SCHEMES = {"SRT", "SNM3", "99SDM"}
_TUMOR_TYPES = {"108369006", "367643001", "396339007"}  # Neoplasm, Cyst, Thrombus


def _index() -> dict[tuple[str, str], list[tuple[str, list[int]]]]:
    idx: dict[tuple[str, str], list[tuple[str, list[int]]]] = {}
    for scheme, by_kw in _CONCEPTS.items():
        for _kw, by_code in by_kw.items():
            for value, (meaning, cids) in by_code.items():  # type: ignore[attr-defined]  # pydicom types its private table loosely
                idx.setdefault((scheme, value), []).append((meaning, list(cids)))
    return idx


_DICT: dict[tuple[str, str], list[tuple[str, list[int]]]] | None = None


def lookup(scheme: str, value: str) -> list[tuple[str, list[int]]]:
    """(meaning, CIDs) entries of pydicom 3's code dictionary for a code; [] if unknown."""
    global _DICT
    if _DICT is None:
        _DICT = _index()
    return _DICT.get((scheme, str(value)), [])


def in_cid(scheme: str, value: str, cid: int) -> bool:
    return any(cid in cids for _m, cids in lookup(scheme, value))


@dataclass(frozen=True)
class ResolvedCoding:
    """The codes of one class as the writers use them (catalog coding with fallbacks)."""

    category: CodedConcept
    type: CodedConcept
    modifier: CodedConcept | None
    anatomic_region: CodedConcept | None
    local_type: bool = False  # True when the type is a 99DSMNODE fallback


def to_concept(code: Code | None) -> CodedConcept | None:
    """A catalog ``Code`` (scheme, value, meaning) -> highdicom CodedConcept."""
    if code is None:
        return None
    return CodedConcept(value=str(code.value), scheme_designator=str(code.scheme), meaning=str(code.meaning))


def resolve(entry: ClassEntry) -> ResolvedCoding:
    """Coding of a catalog entry; entries without codes get a category by kind, a local type
    code (99DSMNODE) and the laterality modifier from ``laterality``."""
    c = entry.coding
    category = to_concept(c.category) or (MORPHOLOGICALLY_ABNORMAL if entry.kind == "tumor" else ANATOMICAL_STRUCTURE)
    type_ = to_concept(c.type)
    local = type_ is None
    if type_ is None:
        type_ = CodedConcept(f"DSM{entry.index:04d}", LOCAL_SCHEME, entry.name[:64])
    modifier = to_concept(c.modifier)
    if modifier is None and entry.laterality in ("left", "right"):
        modifier = LEFT if entry.laterality == "left" else RIGHT
    return ResolvedCoding(category, type_, modifier, to_concept(c.anatomic_region), local)


def check_catalog_coding(catalog: Catalog) -> list[str]:
    """Problems with the ``coding:`` blocks of a catalog (empty list = all good).

    Checks: scheme not retired (SRT ...); every SCT/DCM code exists in pydicom's dictionary
    with that meaning; category in CID 7150; organ types in CID 7151 (reported, since 7151 is
    extensible, only as 'note:'); laterality only as modifier Left/Right and consistent with
    ``laterality``; tumours: category Morphologically Abnormal Structure, type Neoplasm / Cyst /
    Thrombus, anatomic region = a parent organ's type.
    """
    problems: list[str] = []
    for e in catalog:
        c = e.coding
        where = f"class {e.index} {e.name!r}"
        for role in ("category", "type", "modifier", "anatomic_region"):
            code = getattr(c, role)
            if code is None:
                continue
            if code.scheme in RETIRED_SCHEMES:
                problems.append(f"{where}: {role} uses retired coding scheme {code.scheme}")
                continue
            if code.scheme in ("SCT", "DCM", "UCUM", "LN"):
                entries = lookup(code.scheme, code.value)
                if not entries:
                    problems.append(f"{where}: {role} {code.scheme} {code.value} is not in pydicom's code dictionary")
                elif not any(m.lower() == code.meaning.lower() for m, _ in entries):
                    problems.append(f"{where}: {role} {code.scheme} {code.value} meaning {code.meaning!r} is not one of "
                                    f"{sorted({m for m, _ in entries})}")
        if c.category is not None and not in_cid(c.category.scheme, c.category.value, CID_CATEGORY):
            problems.append(f"{where}: category {c.category.value} is not in CID {CID_CATEGORY}")
        if c.type is not None and c.type.value in ("7771000", "24028007"):
            problems.append(f"{where}: laterality used as type")
        if c.modifier is not None:
            if c.modifier.value not in ("7771000", "24028007"):
                problems.append(f"{where}: modifier {c.modifier.value} is not SCT Left/Right")
            elif (c.modifier.value == "7771000") != (e.laterality == "left"):
                problems.append(f"{where}: modifier {c.modifier.meaning} disagrees with laterality {e.laterality}")
        elif e.laterality is not None:
            problems.append(f"{where}: laterality {e.laterality} but no Left/Right modifier")
        if e.kind == "tumor":
            if c.category is None or c.category.value != "49755003":
                problems.append(f"{where}: a tumour's category must be 49755003 Morphologically Abnormal Structure")
            if c.type is None or c.type.value not in _TUMOR_TYPES:
                problems.append(f"{where}: a tumour's type must be Neoplasm, Cyst or Thrombus")
            parent_types = {catalog.by_name(p).coding.type.value for p in e.parents if catalog.by_name(p).coding.type}  # type: ignore[union-attr]  # guarded by the if
            if c.anatomic_region is None:
                problems.append(f"{where}: a tumour needs anatomic_region = its parent organ")
            elif parent_types and c.anatomic_region.value not in parent_types:
                problems.append(f"{where}: anatomic_region {c.anatomic_region.meaning} is not a parent organ "
                                f"({', '.join(e.parents)})")
        elif c.category is not None and c.category.value == "49755003":
            problems.append(f"{where}: an organ with category Morphologically Abnormal Structure")
    return problems


def coding_notes(catalog: Catalog) -> list[str]:
    """Non-errors worth knowing: organ types outside CID 7151 (baseline CID, extensible)."""
    notes = []
    for e in catalog:
        t = e.coding.type
        if t is not None and t.scheme == "SCT" and not in_cid(t.scheme, t.value, CID_TYPE):
            notes.append(f"class {e.index} {e.name!r}: type {t.value} {t.meaning} is not in CID {CID_TYPE} (extensible)")
    return notes


def code_item(concept: CodedConcept) -> Dataset:
    """A plain code sequence item (for attributes highdicom does not model)."""
    ds = Dataset()
    ds.CodeValue = concept.value
    ds.CodingSchemeDesignator = concept.scheme_designator
    ds.CodeMeaning = concept.meaning
    return ds


def air_contributing_equipment(
    *, manufacturer: str, model_name: str, software_versions: str | Iterable[str], device_uid: str,
    institution_name: str | None = None, description: str | None = None,
) -> Dataset:
    """The IHE AIR Contributing Equipment item describing the algorithm.

    Built by hand because highdicom's ContributingEquipment accepts only DCM purposes and has
    no Device UID.
    """
    item = Dataset()
    item.Manufacturer = manufacturer
    if institution_name:
        item.InstitutionName = institution_name
    item.ManufacturerModelName = model_name
    item.SoftwareVersions = software_versions if isinstance(software_versions, str) else list(software_versions)
    item.DeviceUID = device_uid
    item.PurposeOfReferenceCodeSequence = [code_item(PROCESSING_ALGORITHM)]
    if description:
        item.ContributionDescription = description[:1024]
    return item
