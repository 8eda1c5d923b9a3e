"""Property-style check of the spool/index invariant against a node in a subprocess.

Seeded random sequences of valid, duplicate, conflicting and broken instances go over several
associations. After each association: every spool file has its live instance row and every live
row its file, no temp file is left, every answer is the one the documented rules give, and the
index holds exactly the instances a model of those rules accepted.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, generate_uid

from tests.receive.receive_helpers import body_of, file_with_body, store
from tests.support.ct import ct_dataset

SUCCESS, UNPARSEABLE, INVALID_UID, UID_CONFLICT = 0x0000, 0xC210, 0xC212, 0xC213
KINDS = ("new", "new", "new", "duplicate", "duplicate", "other_study", "other_series", "other_class",
         "series_of_other_study", "truncated", "invalid_uid")


@dataclass(frozen=True)
class Stored:
    study: str
    series: str
    sop_class: str


class Model:
    """The receiving rules of docs/receiving.md, applied to what was sent."""

    def __init__(self, rng: random.Random, folder: Path) -> None:
        self.rng = rng
        self.folder = folder
        self.stored: dict[str, Stored] = {}
        self.series_of: dict[str, str] = {}  # series -> study
        self.n = 0

    def _file(self, study: str, series: str, sop: str, sop_class: str = CTImageStorage) -> Path:
        self.n += 1
        ds = ct_dataset(study_uid=study, series_uid=series, frame_uid="1.2.3", index=self.n % 50, size=16,
                        sop_instance_uid=sop)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        path = self.folder / f"{self.n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path

    def _known_pair(self) -> tuple[str, str]:
        if not self.series_of or self.rng.random() < 0.3:
            study = self.rng.choice(sorted(set(self.series_of.values()))) if self.series_of and self.rng.random() < 0.5 \
                else generate_uid()
            return study, generate_uid()
        series = self.rng.choice(sorted(self.series_of))
        return self.series_of[series], series

    def item(self, kind: str) -> tuple[Path, int, str]:
        """(file, expected status, kind actually made)."""
        if kind not in ("new", "truncated", "invalid_uid", "series_of_other_study") and not self.stored:
            kind = "new"
        if kind == "series_of_other_study" and not self.series_of:
            kind = "new"
        if kind == "new":
            study, series = self._known_pair()
            sop = generate_uid()
            self.stored[sop] = Stored(study, series, CTImageStorage)
            self.series_of[series] = study
            return self._file(study, series, sop), SUCCESS, kind
        if kind == "truncated":
            study, series = self._known_pair()
            sop = generate_uid()
            whole = self._file(study, series, sop)
            body = body_of(whole)
            return file_with_body(whole, CTImageStorage, sop, body[: len(body) - 100]), UNPARSEABLE, kind
        if kind == "invalid_uid":
            study, _ = self._known_pair()
            return self._file(study, "1.2.03." + str(self.n), generate_uid()), INVALID_UID, kind
        if kind == "series_of_other_study":
            series = self.rng.choice(sorted(self.series_of))
            return self._file(generate_uid(), series, generate_uid()), UID_CONFLICT, kind
        sop = self.rng.choice(sorted(self.stored))
        s = self.stored[sop]
        if kind == "duplicate":
            return self._file(s.study, s.series, sop, s.sop_class), SUCCESS, kind
        if kind == "other_study":
            return self._file(generate_uid(), generate_uid(), sop, s.sop_class), UID_CONFLICT, kind
        if kind == "other_series":
            return self._file(s.study, generate_uid(), sop, s.sop_class), UID_CONFLICT, kind
        other = EnhancedCTImageStorage if s.sop_class == CTImageStorage else CTImageStorage
        return self._file(s.study, s.series, sop, other), UID_CONFLICT, kind


def assert_invariant(node, model: Model) -> None:
    files = node.spool_files()
    assert not [p for p in files if p.name.startswith(".")], "temp files left behind"
    on_disk = {p.relative_to(node.spool).as_posix() for p in files}
    rows = node.query("select i.path, i.sop_instance_uid, i.sop_class_uid, se.series_uid, st.study_uid "
                      "from instances i join series se on se.id = i.series_id join studies st on st.id = se.study_id "
                      "where i.deleted_at is null")
    assert on_disk == {r.path for r in rows}, "spool files and live index rows differ"
    assert {r.sop_instance_uid: Stored(r.study_uid, r.series_uid, r.sop_class_uid) for r in rows} == model.stored
    # No folder without a file in it either (a refused instance leaves no trace).
    assert all(any(d.iterdir()) for d in node.spool.glob("*/*") if d.is_dir())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_sequences_keep_spool_and_index_in_step(node_factory, tmp_path, seed):
    rng = random.Random(seed)
    node = node_factory(f"node-{seed}")
    model = Model(rng, tmp_path / "items")
    model.folder.mkdir()
    made: dict[str, int] = {}
    for association in range(4):
        items = [model.item(rng.choice(KINDS)) for _ in range(rng.randint(8, 16))]
        results = store(node.port, [path for path, _, _ in items], chunked=True)
        for (path, expected, kind), (status, comment) in zip(items, results):
            assert status == expected, f"association {association}, {kind} ({path.name}): 0x{status:04X} {comment}"
            made[kind] = made.get(kind, 0) + 1
        assert_invariant(node, model)
    assert made.get("new", 0) >= 5 and len(made) >= 6, made  # the sequence did mix the kinds
