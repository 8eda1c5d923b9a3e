"""``dsm-node infer`` and ``export`` refuse unusable input before any work: one line on stderr,
exit 2, no traceback. The reported defect: a series without Study/Series UIDs ran the whole
inference and then ended in a ``ResultError`` traceback.

The model checkpoint given to ``infer`` does not exist: had the model been loaded (or inference
run) before the input check, the command would fail on the checkpoint instead.
"""
from __future__ import annotations

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import MRImageStorage

from dsm_node.results.inputs import InputError, check_ct_source
from dsm_node.volume import assemble_volume
from tests.support.ct import write_ct_series
from tests.tools import REPO


def edited_series(folder, edit):
    series = write_ct_series(folder, 6, 32)
    for path in series.files:
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path, enforce_file_format=True)
    return folder


def no_uids(ds):
    del ds.StudyInstanceUID
    del ds.SeriesInstanceUID


def bad_uid(ds):
    ds.StudyInstanceUID = "1.2.03.4"


def mr(ds):
    ds.Modality = "MR"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage


CASES = {
    "no study or series UID": (no_uids, "no StudyInstanceUID and no SeriesInstanceUID"),
    "invalid UID": (bad_uid, "invalid StudyInstanceUID '1.2.03.4' (component with a leading zero)"),
    "not CT": (mr, f"modality MR, not CT; SOP class {MRImageStorage} is not a CT image"),
}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dsm_node", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)


def assert_one_line_refusal(done: subprocess.CompletedProcess[str], command: str, expected: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dsm-node {command}: "), done.stderr
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_unusable_series_is_refused_before_inference_and_export(tmp_path, case):
    edit, expected = CASES[case]
    source = edited_series(tmp_path / "series", edit)
    missing_model = tmp_path / "no-such-model.pt"
    done = run_cli("infer", str(source), "--out", str(tmp_path / "out"), "--checkpoint", str(missing_model))
    assert_one_line_refusal(done, "infer", expected)
    assert not (tmp_path / "out").exists()  # nothing written either

    labels = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 6), np.uint8), np.eye(4)), labels)
    done = run_cli("export", "--source", str(source), "--labels", str(labels), "--out", str(tmp_path / "exp"))
    assert_one_line_refusal(done, "export", expected)
    assert not (tmp_path / "exp").exists()


def test_unreadable_series_and_file_are_refused_with_one_line(tmp_path):
    folder = tmp_path / "garbage"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(b"\x00" * 200 + b"not DICOM at all")
    done = run_cli("infer", str(folder), "--out", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "x.pt"))
    assert_one_line_refusal(done, "infer", "a.dcm")
    broken = tmp_path / "ct.nii.gz"
    broken.write_bytes(b"\x1f\x8b not a gzip stream")
    done = run_cli("infer", str(broken), "--out", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "x.pt"))
    assert_one_line_refusal(done, "infer", "not a readable NIfTI image")


def test_a_good_ct_series_passes_the_check(tmp_path):
    series = write_ct_series(tmp_path / "ok", 4, 32)
    check_ct_source(assemble_volume(series.files))
    with pytest.raises(InputError, match="no StudyInstanceUID and no SeriesInstanceUID"):
        check_ct_source(assemble_volume(edited_series(tmp_path / "bad", no_uids).iterdir()))
