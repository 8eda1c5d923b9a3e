"""File-backed arrays (model/spill.py): same values as in memory, nothing left on disk, pages
given back on release, planes and means read chunk by chunk."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dsm_node.results.measurements import mean_hu
from model.spill import chunks, copy_out, file_backed, mapping_of, release


def rss_file_kb() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no /proc/self/status RssFile (not Linux)")


@pytest.fixture
def volume(tmp_path):
    a = file_backed((96, 128, 128), np.int16, tmp_path)
    rng = np.random.default_rng(0)
    for z in range(len(a)):
        a[z] = rng.integers(-1024, 2000, a.shape[1:])
    return a


def test_file_backed_is_zero_filled_unnamed_and_holds_its_values(tmp_path):
    a = file_backed((5, 6, 7), np.float32, tmp_path)
    assert a.shape == (5, 6, 7) and a.dtype == np.float32 and not a.any()
    assert list(tmp_path.iterdir()) == []  # unlinked from the start: nothing stays on disk
    a[2, 3] = 1.5
    assert release(a)
    assert a[2, 3, 4] == 1.5 and a.sum() == 1.5 * 7  # released pages come back with their data
    assert mapping_of(a.transpose(2, 1, 0)[1:]) is not None  # views find the mapping


def test_in_memory_arrays_are_left_alone():
    b = np.arange(24).reshape(2, 3, 4)
    assert not release(b) and mapping_of(b) is None
    view = b[:, 1]
    assert copy_out(view) is view  # no copy


def test_release_gives_the_pages_back(tmp_path):
    a = file_backed((64, 512, 512), np.int16, tmp_path)  # 32 MiB
    before = rss_file_kb()
    a[:] = 7
    assert rss_file_kb() - before > 24 * 1024
    release(a)
    assert rss_file_kb() - before < 8 * 1024
    assert int(a[63, 511, 511]) == 7


def test_planes_and_boxes_read_in_chunks_equal_the_in_memory_ones(volume):
    ref = np.array(volume)
    release(volume)
    display = volume[::-1, :, ::-1]  # a display view: flips keep the mapping
    for view, expect in ((display[10], ref[::-1, :, ::-1][10]), (display[:, 50, :], ref[::-1, 50, ::-1]),
                         (display[:, :, 77], ref[::-1, :, ::-1][:, :, 77])):
        got = copy_out(view, chunk_bytes=1 << 16)
        assert mapping_of(got) is None and np.array_equal(got, expect)
    parts = chunks(volume[:, 3, :], chunk_bytes=1 << 17)
    assert len(parts) > 1 and sum(p.stop - p.start for p in parts) == len(volume)
    rng = np.random.default_rng(1)
    mask = rng.random(ref.shape) < 0.3
    box = (slice(3, 90), slice(10, 120), slice(0, 100))
    assert mean_hu(volume[box], mask[box]) == mean_hu(ref[box], mask[box])  # exact: integer sums
    assert mean_hu(volume[box], np.zeros_like(mask[box])) is None


def test_no_room_is_an_error_up_front_not_a_crash_on_write(tmp_path):
    # A file-size limit stands in for a full disk: fallocate fails (EFBIG) before any write.
    code = (
        "import resource, sys, numpy as np\n"
        "from model.spill import file_backed\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        "import signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "try:\n"
        "    file_backed((64, 512, 512), np.int16, sys.argv[1])\n"
        "except OSError as exc:\n"
        "    print('refused:', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "refused:" in out.stdout and "no room for a 32 MB file-backed array" in out.stdout
