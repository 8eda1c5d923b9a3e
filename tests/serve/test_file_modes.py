"""Files the node writes are at most 0640 and folders 0750 whatever the umask it is started
with (issue 18): the database, the logs, spool and result files (a SEG/SR carries patient
identifiers)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.support.ct import write_ct_series
from tests.tools import REPO, free_port


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def _loose(modes: dict[str, int], root: Path) -> list[str]:
    return [f"{name} {mode:o}" for name, mode in modes.items()
            if mode & 0o027 and not (root / name).is_symlink()]


def test_receiver_files_and_folders_under_umask_000(tmp_path):
    data = tmp_path / "data"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsm_node.receive", "--data-dir", str(data), "--port", str(port)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=lambda: os.umask(0),
        env={**os.environ, "DSM_NODE__STORAGE__MIN_FREE_BYTES": "0"},
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(b"listening on"):
                break
        series = write_ct_series(tmp_path / "s", 2, 32)
        from pydicom import dcmread
        from pynetdicom import AE
        from pynetdicom.sop_class import CTImageStorage

        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="DSMNODE")
        assert assoc.is_established
        assert [int(assoc.send_c_store(dcmread(f)).Status) for f in series.files] == [0, 0]
        assoc.release()
    finally:
        proc.terminate()
        proc.wait(30)
    modes = _modes(data)
    assert "dsm-node.db" in modes and "logs/dsm-node.jsonl" in modes
    assert len([n for n in modes if n.endswith(".dcm")]) == 2
    assert not _loose(modes, data), _loose(modes, data)
    assert modes["dsm-node.db"] == 0o640 and modes["logs/dsm-node.jsonl"] == 0o640


def test_results_written_by_export_under_umask_000(tmp_path):
    from training import phantoms

    ph = phantoms.make_phantom(1, shape=(32, 32, 12), spacing=(6.0, 6.0, 4.5))
    image, label, affine = ph
    ct_dir = tmp_path / "ct"
    phantoms.write_dicom_series(image, affine, ct_dir, uid_seed="file-modes")
    labels = tmp_path / "labels.nii.gz"
    phantoms.write_nifti_pair(image, label, affine, tmp_path / "image.nii.gz", labels)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "dsm_node", "export", "--source", str(ct_dir), "--labels",
                           str(labels), "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, preexec_fn=lambda: os.umask(0))
    assert done.returncode == 0, done.stderr[-2000:]
    modes = _modes(out)
    assert any(n.startswith("SR_") for n in modes)
    assert not _loose(modes, out), _loose(modes, out)
