"""The memory guard (dsm_node/infer/memory.py): estimate from the geometry, refusal with the reason."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dsm_node.infer.memory import MemoryModel, MemoryRefused, check, guard, meminfo_mb
from tests.support.ct import write_ct_series

REPO = Path(__file__).resolve().parents[2]


def test_estimate_grows_with_the_source_and_model_grids():
    m = MemoryModel(base_mb=1000.0, source_bytes=4.0, anomaly_bytes=4.0, channel_bytes=12.0)
    small = m.estimate_mb((150, 512, 512), (1.5, 0.78, 0.78), (4.0, 4.0, 4.0), 46)
    large = m.estimate_mb((600, 512, 512), (1.5, 0.78, 0.78), (4.0, 4.0, 4.0), 46)
    source_mb = 150 * 512 * 512 * 4.0 / 2**20
    model_mb = 150 * 1.5 * 512 * 0.78 * 512 * 0.78 / 64.0 * 46 * 12.0 / 2**20
    assert small == pytest.approx(1000.0 + source_mb + model_mb)
    assert large - 1000.0 == pytest.approx(4 * (small - 1000.0))
    with_anomaly = m.estimate_mb((150, 512, 512), (1.5, 0.78, 0.78), (4.0, 4.0, 4.0), 46, anomaly=True)
    assert with_anomaly - small == pytest.approx(source_mb)
    spilled = MemoryModel(base_mb=1000.0, source_bytes=4.0, spilled_source_bytes=1.0, channel_bytes=12.0)
    assert small - spilled.estimate_mb((150, 512, 512), (1.5, 0.78, 0.78), (4.0, 4.0, 4.0), 46, spill=True) == \
        pytest.approx(source_mb * 3 / 4)  # the file-backed HU are not counted


def test_check_refuses_over_the_cap_or_over_what_is_available():
    with pytest.raises(MemoryRefused, match="needs about 3000 MB, more than inference.max_memory_mb = 2048 MB"):
        check(3000.0, 2048, "a series", available_mb=10_000, resident_mb=0)
    with pytest.raises(MemoryRefused, match=r"needs about 3000 MB \(2000 MB more than this process holds\) but "
                                            r"the machine has 1500 MB available"):
        check(3000.0, None, "a series", available_mb=1500, resident_mb=1000)
    check(3000.0, 4096, "a series", available_mb=2500, resident_mb=1000)  # 2000 MB more fit in 2500


def test_meminfo_is_read_on_linux():
    if not Path("/proc/meminfo").exists():
        pytest.skip("no /proc on this system")
    assert meminfo_mb() > 0


def test_guard_names_the_series_shape():
    g = guard(cap_mb=1, model_spacing_mm=(3.0, 3.0, 3.0), channels=46)
    with pytest.raises(MemoryRefused, match="a series of 3 x 32 x 32 voxels needs about"):
        g((3, 32, 32), (2.5, 0.8, 0.8))


def test_infer_refuses_a_series_over_the_cap_with_one_line(tmp_path):
    series = write_ct_series(tmp_path / "s", 4, 32)
    done = subprocess.run(
        [sys.executable, "-m", "dsm_node", "infer", str(series.files[0].parent), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO), "DSM_NODE__INFERENCE__MAX_MEMORY_MB": "1"})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("dsm-node infer: ") and "memory: a series of 4 x 32 x 32 voxels needs about" in last
    assert "more than inference.max_memory_mb = 1 MB" in last
    assert not (tmp_path / "out" / "labels.nii.gz").exists()


def test_the_hu_spill_folder_follows_the_settings(tmp_path):
    from dsm_node.infer.memory import spill_folder
    from dsm_node.settings import Settings

    base = Settings(storage={"data_dir": tmp_path / "var"})
    assert spill_folder(base, base.storage.work_dir) == tmp_path / "var" / "work"
    assert spill_folder(base, tmp_path / "out") == tmp_path / "out"  # dsm-node infer: its output folder
    assert spill_folder(Settings(inference={"spill_dir": tmp_path / "local"}), tmp_path / "out") == tmp_path / "local"
    assert spill_folder(Settings(inference={"spill": False}), tmp_path / "out") is None
