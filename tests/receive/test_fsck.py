"""The spool/index check (``dsm-node fsck`` and the start-up reconcile) with both kinds of damage
planted: files without rows (an orphan, a copy of a known SOP Instance UID under another study as
in the reported defect, an unreadable file) and rows without files."""
from __future__ import annotations

import json
import shutil

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from dsm_node.audit import query_events
from dsm_node.cli import main
from dsm_node.context import build_context
from dsm_node.db.models import Instance
from dsm_node.receive.dataset import file_meta_bytes
from dsm_node.receive.reconcile import SpoolUnavailable, fsck, reconcile
from dsm_node.settings import load_settings
from dsm_node.spool import relative_path
from tests.receive.receive_helpers import body_of
from tests.support.ct import ct_dataset


@pytest.fixture
def ctx(tmp_path, db_url, monkeypatch):
    url = db_url
    settings = load_settings(None, {"storage.data_dir": str(tmp_path / "data"), "database.url": url})
    if url:  # the CLI below reads the same database
        monkeypatch.setenv("DSM_NODE__DATABASE__URL", url)
    context = build_context(settings)
    yield context
    context.close()


def instance_bytes(tmp_path, study, series, sop, index=0) -> bytes:
    ds = ct_dataset(study_uid=study, series_uid=series, frame_uid="1.2.3", index=index, sop_instance_uid=sop)
    ds.save_as(tmp_path / "source.dcm", enforce_file_format=True)
    return file_meta_bytes(str(ds.SOPClassUID), sop, "1.2.840.10008.1.2", "PACS") + body_of(tmp_path / "source.dcm")


def place(ctx, rel: str, data: bytes) -> None:
    path = ctx.spool_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def live_paths(ctx) -> set[str]:
    with ctx.sessions() as s:
        return set(s.scalars(select(Instance.path).where(Instance.deleted_at.is_(None))))


def spool_paths(ctx) -> set[str]:
    return {p.relative_to(ctx.spool_dir).as_posix() for p in ctx.spool_dir.rglob("*.dcm")}


def fsck_cli(ctx, capsys, *flags):
    code = main(["fsck", "--json", "--data-dir", str(ctx.settings.storage.data_dir), *flags])
    return code, json.loads(capsys.readouterr().out)


def test_fsck_reports_and_repairs_both_kinds(ctx, tmp_path, capsys):
    study, series = generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(3)]
    for i, sop in enumerate(sops):
        place(ctx, relative_path(study, series, sop), instance_bytes(tmp_path, study, series, sop, i))
    assert reconcile(ctx).indexed == 3  # consistent files without rows: indexed (durability)
    code, report = fsck_cli(ctx, capsys)
    assert (code, report["problems"], report["already_indexed"]) == (0, [], 3)

    # Damage of both kinds.
    orphan = generate_uid()
    place(ctx, relative_path(study, series, orphan), instance_bytes(tmp_path, study, series, orphan, 3))
    other_study, other_series = generate_uid(), generate_uid()
    copy = relative_path(other_study, other_series, sops[0])  # the reported defect's leftover
    place(ctx, copy, instance_bytes(tmp_path, other_study, other_series, sops[0], 1))
    broken = relative_path(study, series, generate_uid())
    place(ctx, broken, b"not dicom")
    gone = relative_path(study, series, sops[2])
    (ctx.spool_dir / gone).unlink()

    # Dry run: everything reported, nothing changed.
    before_files, before_rows = spool_paths(ctx), live_paths(ctx)
    code, report = fsck_cli(ctx, capsys, "--dry-run")
    assert code == 1 and report["dry_run"] is True
    problems = {p["path"]: p["problem"] for p in report["problems"]}
    assert set(problems) == {relative_path(study, series, orphan), copy, broken, gone}
    assert problems[copy] == f"SOP Instance UID already indexed at {relative_path(study, series, sops[0])}"
    assert problems[gone] == "indexed instance whose spool file is missing"
    assert (report["orphan_files"], report["missing_files"]) == (3, 1)
    assert (spool_paths(ctx), live_paths(ctx)) == (before_files, before_rows)

    # Repair: the orphan indexed, the copy and the unreadable file quarantined, the row marked.
    code, report = fsck_cli(ctx, capsys)
    assert code == 1
    assert (report["indexed"], report["quarantined"], report["missing_files"]) == (1, 2, 1)
    problems = {p["path"]: p["problem"] for p in report["problems"]}
    assert problems[broken].startswith("cannot be indexed")
    quarantine = ctx.settings.storage.data_dir / "quarantine"
    assert sorted(p.name for p in quarantine.iterdir()) == sorted(r.replace("/", "_") for r in (copy, broken))
    # The invariant holds again: every spool file has its live row and every live row its file.
    assert spool_paths(ctx) == live_paths(ctx) == {relative_path(study, series, s) for s in (sops[0], sops[1], orphan)}
    with ctx.sessions() as s:
        marked = s.scalars(select(Instance).where(Instance.sop_instance_uid == sops[2])).one()
        assert marked.deleted_at is not None
        events = query_events(s, event_type="spool_reconciled")
    last = events[-1]
    assert last.outcome == 4 and last.detail["mode"] == "command" and last.detail["quarantined"] == 2
    assert set(last.detail["quarantined_paths"]) == {copy, broken} and last.detail["missing_paths"] == [gone]
    assert "operator" in last.detail
    # Clean now; and the start-up check agrees.
    assert fsck_cli(ctx, capsys)[0] == 0
    assert reconcile(ctx).clean


def test_startup_check_quarantines_a_conflicting_copy_and_prunes_empty_folders(ctx, tmp_path):
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    place(ctx, relative_path(study, series, sop), instance_bytes(tmp_path, study, series, sop))
    reconcile(ctx)
    copy = relative_path(generate_uid(), generate_uid(), sop)
    place(ctx, copy, instance_bytes(tmp_path, *copy.split("/")[:2], sop))
    (ctx.spool_dir / generate_uid() / generate_uid()).mkdir(parents=True)
    report = reconcile(ctx)
    assert report.quarantined == [copy] and report.indexed == 0 and report.already_indexed == 1
    assert report.empty_folders_removed == 4  # the copy's series + study folders, the empty pair
    assert spool_paths(ctx) == live_paths(ctx) == {relative_path(study, series, sop)}


def test_a_missing_spool_marks_nothing(ctx, tmp_path, capsys):
    study, series = generate_uid(), generate_uid()
    for i in range(2):
        sop = generate_uid()
        place(ctx, relative_path(study, series, sop), instance_bytes(tmp_path, study, series, sop, i))
    reconcile(ctx)
    shutil.rmtree(ctx.spool_dir)
    ctx.spool_dir.mkdir()
    with pytest.raises(SpoolUnavailable, match="is the spool folder mounted"):
        fsck(ctx)
    assert main(["fsck", "--data-dir", str(ctx.settings.storage.data_dir)]) == 2
    assert "none of the 2 indexed instances" in capsys.readouterr().err
    assert len(live_paths(ctx)) == 2
