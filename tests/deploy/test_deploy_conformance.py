"""docs/conformance.md says what the code does: the SCP's negotiated SOP classes and transfer
syntaxes (read from the pynetdicom AE that dsm_node.receive.scp.StorageSCP configures), its
C-STORE status codes, and the SOP classes of the results the node sends."""
from __future__ import annotations

import re

import pytest
from pydicom.uid import UID

from tests.deploy.deploy_files import REPO

CONFORMANCE = REPO / "docs" / "conformance.md"
VERIFICATION = "1.2.840.10008.1.1"
UID_RE = re.compile(r"`(\d+(?:\.\d+)+)`")


def _table(name: str) -> list[list[str]]:
    """Rows (cells) of the markdown table after ``<!-- table: name -->``, header dropped."""
    lines = CONFORMANCE.read_text(encoding="utf-8").splitlines()
    marker = f"<!-- table: {name} -->"
    assert marker in lines, f"{CONFORMANCE.name}: no {marker}"
    rows = []
    for line in lines[lines.index(marker) + 1:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    assert len(rows) > 2, f"table {name} is empty"
    return rows[2:]


def _uids(rows, column: int = 1) -> list[str]:
    found = []
    for row in rows:
        m = UID_RE.fullmatch(row[column]) if column < len(row) else None
        if m:
            found.append(m.group(1))
    return found


@pytest.fixture(scope="module")
def scp(tmp_path_factory):
    """The SCP exactly as `dsm-node serve` builds it (not started: nothing listens)."""
    from dsm_node.context import build_context
    from dsm_node.receive.scp import StorageSCP
    from dsm_node.settings import load_settings

    settings = load_settings(overrides={"storage.data_dir": str(tmp_path_factory.mktemp("conformance"))})
    ctx = build_context(settings, migrate=False)
    try:
        yield StorageSCP(ctx)
    finally:
        ctx.close()


@pytest.fixture(scope="module")
def contexts(scp) -> dict[str, list[str]]:
    return {str(cx.abstract_syntax): [str(t) for t in cx.transfer_syntax] for cx in scp.ae.supported_contexts}


def test_uids_in_tables_are_well_formed():
    for table in ("scp-sop-classes", "scu-sop-classes", "storage-transfer-syntaxes",
                  "verification-transfer-syntaxes", "scu-transfer-syntaxes", "other-storage-sop-classes"):
        for uid in _uids(_table(table)):
            assert UID(uid).is_valid, uid


def test_scp_sop_classes_match_the_code(contexts):
    from dsm_node.receive.dataset import PROCESSED_SOP_CLASSES

    explicit = _uids(_table("scp-sop-classes"))
    others = _uids(_table("other-storage-sop-classes"))
    assert VERIFICATION in explicit
    documented_processed = set(explicit) - {VERIFICATION}
    assert documented_processed == set(PROCESSED_SOP_CLASSES), "processed SOP classes differ"
    assert len(others) == len(set(others)), "duplicate rows in Appendix A"
    assert not set(others) & set(explicit)
    negotiated = set(contexts)
    documented = set(explicit) | set(others)
    assert documented == negotiated, (
        f"in the code, not documented: {sorted(negotiated - documented)}; "
        f"documented, not in the code: {sorted(documented - negotiated)}"
    )


def test_storage_transfer_syntaxes_match_the_code(contexts):
    documented = _uids(_table("storage-transfer-syntaxes"))
    for sop_class, syntaxes in contexts.items():
        if sop_class == VERIFICATION:
            continue
        assert syntaxes == documented, f"{UID(sop_class).name}: {syntaxes} (documented order: {documented})"
    assert contexts[VERIFICATION] == _uids(_table("verification-transfer-syntaxes"))
    # The set the brief of the node promises (PS3.5 names, not only UIDs).
    names = {UID(u).name for u in documented}
    for needed in ("Implicit VR Little Endian", "Explicit VR Little Endian", "Deflated Explicit VR Little Endian",
                   "JPEG Baseline (Process 1)", "RLE Lossless", "JPEG-LS Lossless Image Compression",
                   "JPEG 2000 Image Compression (Lossless Only)", "JPEG 2000 Image Compression"):
        assert needed in names, needed


def test_cstore_status_codes_match_the_code():
    from dsm_node.receive.status import StoreStatus

    # Every status the SCP answers with is a member of this one table.
    in_code = {int(s) for s in StoreStatus}
    assert 0x0000 in in_code and 0xA700 in in_code, "status table incomplete: dsm_node.receive.status"
    documented = set()
    for row in _table("cstore-status"):
        m = re.fullmatch(r"`0x([0-9A-Fa-f]{4})`", row[0])
        assert m, row
        documented.add(int(m.group(1), 16))
    assert documented == in_code, (
        f"in the code, not documented: {sorted(map(hex, in_code - documented))}; "
        f"documented, not in the code: {sorted(map(hex, documented - in_code))}"
    )


def test_scu_sop_classes_match_the_result_writers():
    import inspect

    from highdicom.seg import Segmentation
    from highdicom.sr import Comprehensive3DSR

    import dsm_node.results.keyimages as sc_module
    import dsm_node.results.seg as seg_module
    import dsm_node.results.sr as sr_module

    assert seg_module.Segmentation is Segmentation and sr_module.Comprehensive3DSR is Comprehensive3DSR
    assert "SCImage" in inspect.getsource(sc_module.build_key_images)  # highdicom: Secondary Capture Image
    documented = set(_uids(_table("scu-sop-classes")))
    expected = {
        UID("1.2.840.10008.5.1.4.1.1.66.4"),  # Segmentation Storage (BINARY)
        UID("1.2.840.10008.5.1.4.1.1.66.7"),  # Label Map Segmentation Storage (LABELMAP)
        UID("1.2.840.10008.5.1.4.1.1.88.34"),  # Comprehensive 3D SR Storage
        UID("1.2.840.10008.5.1.4.1.1.7"),  # Secondary Capture Image Storage (key images)
    }
    assert documented == expected
    # Results are written uncompressed (highdicom's default) and offered as Explicit/Implicit LE.
    from dsm_node.delivery.scu import _UNCOMPRESSED

    assert set(_uids(_table("scu-transfer-syntaxes"))) == {str(u) for u in _UNCOMPRESSED}


def test_overview_names_every_documented_class():
    overview = " ".join(row[0] for row in _table("overview"))
    for row in _table("scp-sop-classes")[:-1] + _table("scu-sop-classes"):
        assert row[0] in overview, f"{row[0]} missing from the overview table"
