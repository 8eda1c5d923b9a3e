"""The spool: UID validation, safe paths, durable all-or-nothing writes, space checks."""
from __future__ import annotations

import os
import zlib

import pytest

from dsm_node.spool import InvalidUID, Spool, SpoolFull, relative_path, uid_problem, validate_uid

GOOD = ["1.2.840.10008.5.1.4.1.1.2", "0", "1.0.3", "2.25." + "9" * 39, "1." + "2" * 62]
BAD = {
    "": "empty",
    "../../x": "characters",
    "1.02.3": "leading zero",
    "1..2": "empty component",
    ".1.2": "empty component",
    "1.2.": "empty component",
    "1.2.3a": "characters",
    "1.2/3": "characters",
    "1.2 3": "characters",
    "1." + "2" * 63: "longer than 64",
    "00": "leading zero",
}


@pytest.mark.parametrize("uid", GOOD)
def test_valid_uids(uid):
    assert uid_problem(uid) is None
    assert validate_uid(uid) == uid


@pytest.mark.parametrize("uid,why", BAD.items())
def test_invalid_uids_are_rejected_with_reason(uid, why):
    assert why in uid_problem(uid)
    with pytest.raises(InvalidUID):
        validate_uid(uid, "SOPInstanceUID")
    with pytest.raises(InvalidUID):
        relative_path("1.2.3", "1.2.4", uid)
    assert uid_problem(None) is not None


def test_relative_path_layout():
    assert relative_path("1.2", "1.2.3", "1.2.3.4") == "1.2/1.2.3/1.2.3.4.dcm"


def test_write_is_complete_and_leaves_no_temp_files(tmp_path):
    spool = Spool(tmp_path / "spool")
    rel = relative_path("1.2", "1.2.3", "1.2.3.4")
    path = spool.write(rel, [b"abc", memoryview(b"defg")])
    assert path.read_bytes() == b"abcdefg"
    assert [p.name for p in path.parent.iterdir()] == ["1.2.3.4.dcm"]
    # Replacing is atomic too and leaves nothing behind.
    spool.write(rel, [b"xyz"])
    assert path.read_bytes() == b"xyz"
    assert len(list(path.parent.iterdir())) == 1
    assert list(spool.iter_files()) == [rel]
    spool.remove(rel)
    assert not path.exists()


def test_path_traversal_never_reaches_the_filesystem(tmp_path):
    spool = Spool(tmp_path / "spool")
    for rel in ("../../x.dcm", "1.2/1.3/../../../x.dcm", "/etc/passwd", "1.2/1.3/1.4.dcm/../x.dcm"):
        with pytest.raises(InvalidUID):
            spool.write(rel, [b"x"])
    assert not (tmp_path / "x.dcm").exists()
    assert list((tmp_path / "spool").iterdir()) == []


def test_quota_and_free_space_refuse_before_writing(tmp_path):
    spool = Spool(tmp_path / "spool", quota_bytes=10)
    spool.write(relative_path("1.2", "1.3", "1.4"), [b"12345678"])
    with pytest.raises(SpoolFull) as exc:
        spool.write(relative_path("1.2", "1.3", "1.5"), [b"123"])
    assert exc.value.reason == "quota_bytes"
    assert not (tmp_path / "spool/1.2/1.3/1.5.dcm").exists()
    assert sorted(p.name for p in (tmp_path / "spool/1.2/1.3").iterdir()) == ["1.4.dcm"]

    huge = Spool(tmp_path / "spool2", min_free_bytes=2**62)
    with pytest.raises(SpoolFull) as exc:
        huge.write(relative_path("1.2", "1.3", "1.4"), [b"x"])
    assert exc.value.reason == "min_free_bytes"
    assert list((tmp_path / "spool2").iterdir()) == []


def test_quota_uses_the_index_figure_and_counts_own_writes(tmp_path):
    spool = Spool(tmp_path / "spool", quota_bytes=100, used_bytes=lambda: 90)
    spool.write(relative_path("1.2", "1.3", "1.4"), [b"12345"])
    assert spool.used_bytes() == 95
    with pytest.raises(SpoolFull):
        spool.write(relative_path("1.2", "1.3", "1.5"), [b"123456"])


def test_failed_write_removes_its_temp_file(tmp_path, monkeypatch):
    spool = Spool(tmp_path / "spool")

    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(SpoolFull) as exc:
        spool.write(relative_path("1.2", "1.3", "1.4"), [b"data"])
    assert exc.value.reason == "disk_full"
    assert [p for p in (tmp_path / "spool").rglob("*") if p.is_file()] == []


def test_recovery_completes_lost_renames_and_removes_partial_files(tmp_path):
    spool = Spool(tmp_path / "spool")
    folder = tmp_path / "spool/1.2/1.3"
    folder.mkdir(parents=True)
    body = b"complete content"
    crc = zlib.crc32(body)
    # Complete temp file whose rename was lost: finished at start-up.
    (folder / f".1.4.dcm.{len(body)}-{crc:08x}.abc123.tmp").write_bytes(body)
    # Partial write (size or checksum wrong): deleted.
    (folder / f".1.5.dcm.{len(body)}-{crc:08x}.def456.tmp").write_bytes(body[:5])
    (folder / f".1.6.dcm.{len(body)}-{crc:08x}.ghi789.tmp").write_bytes(b"X" * len(body))
    # Temp file whose final file exists (the rename did happen): deleted.
    (folder / "1.7.dcm").write_bytes(body)
    (folder / f".1.7.dcm.{len(body)}-{crc:08x}.jkl000.tmp").write_bytes(body)
    promoted, removed = spool.recover_temp_files()
    assert promoted == ["1.2/1.3/1.4.dcm"]
    assert len(removed) == 3
    assert (folder / "1.4.dcm").read_bytes() == body
    assert sorted(p.name for p in folder.iterdir()) == ["1.4.dcm", "1.7.dcm"]
    assert spool.recover_temp_files() == ([], [])


def test_staged_write_is_invisible_until_committed_and_discard_leaves_nothing(tmp_path):
    spool = Spool(tmp_path / "spool", quota_bytes=100)
    rel = relative_path("1.2", "1.3", "1.4")
    staged = spool.stage(rel, [b"12345"])
    assert not spool.exists(rel) and list(spool.iter_files()) == []  # only a temp file so far
    assert spool.used_bytes() == 0
    with pytest.raises(SpoolFull):  # the staged bytes count against the quota until settled
        spool.stage(relative_path("1.2", "1.3", "1.5"), [b"x" * 96])
    assert staged.commit().read_bytes() == b"12345"
    assert list(spool.iter_files()) == [rel] and spool.used_bytes() == 5
    # A refused instance: its temp file and the folders made for it are gone.
    refused = spool.stage(relative_path("7.8", "7.9", "7.10"), [b"abc"])
    refused.discard()
    refused.discard()  # idempotent
    assert sorted(p.relative_to(tmp_path / "spool").as_posix() for p in (tmp_path / "spool").rglob("*")) == [
        "1.2", "1.2/1.3", "1.2/1.3/1.4.dcm"]
    # Folders another write still uses stay; a folder pruned meanwhile is made again.
    spool.stage(relative_path("1.2", "1.3", "1.6"), [b"abc"]).discard()
    assert spool.exists(rel)
    (tmp_path / "spool/1.2/1.3/1.4.dcm").unlink()
    (tmp_path / "spool/1.2/1.3").rmdir()  # e.g. retention pruned it; the spool still caches it
    assert spool.write(relative_path("1.2", "1.3", "1.7"), [b"abc"]).read_bytes() == b"abc"
