"""Load (issue 7): 8 concurrent DCMTK storescu associations x 200 instances each.

All must be stored, none lost: database rows == spool files == instances sent, every
association ends without a failure; the receiving process's memory stays bounded while it
works (RSS sampled with psutil). Prints throughput and peak RSS.
"""
from __future__ import annotations

import os
import subprocess
import threading
import time

import psutil
import pytest

from tests.receive.receive_helpers import Node
from tests.support.ct import write_ct_series
from tests.tools import require_tool

ASSOCIATIONS, PER_ASSOCIATION = 8, 200
RSS_GROWTH_LIMIT = 300 * 1024**2


@pytest.mark.parametrize("size", [64, 512], ids=["64x64", "512x512"])
def test_eight_concurrent_associations_lose_nothing_and_memory_stays_bounded(tmp_path, size):
    SIZE = size
    storescu = require_tool("storescu")
    series = [write_ct_series(tmp_path / f"s{i}", PER_ASSOCIATION, SIZE, seed=i, noise=SIZE > 64)
              for i in range(ASSOCIATIONS)]
    sent_bytes = sum(f.stat().st_size for s in series for f in s.files)
    node = Node(tmp_path / "node", config={"dicom": {"max_associations": 16}}).start()
    try:
        proc = psutil.Process(node.proc.pid)
        baseline = proc.memory_info().rss
        peak = baseline
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, proc.memory_info().rss)
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        env = {**os.environ, "TCP_NODELAY": "1"}
        t0 = time.monotonic()
        procs = [
            subprocess.Popen([storescu, "-aet", f"LOAD{i}", "-aec", "DSMNODE", "127.0.0.1", str(node.port),
                              *map(str, s.files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
            for i, s in enumerate(series)
        ]
        outputs = [p.communicate(timeout=240)[0].decode(errors="replace") for p in procs]
        elapsed = time.monotonic() - t0
        done.set()
        sampler.join()
        for p, out in zip(procs, outputs):
            assert p.returncode == 0, out[-2000:]
            assert "Failed" not in out and "Refused" not in out, out[-2000:]

        sent = {uid for s in series for uid in s.sop_instance_uids}
        stored = node.instance_uids()
        files = node.spool_files()
        temp = [f for f in files if f.name.startswith(".") or f.suffix != ".dcm"]
        per_study = {r.study_uid: r.instance_count for r in node.query("select study_uid, instance_count from studies")}
        rate = len(sent) / elapsed
        print(f"\nload: {ASSOCIATIONS} x {PER_ASSOCIATION} instances ({SIZE}x{SIZE}, {sent_bytes / 1e6:.1f} MB) in "
              f"{elapsed:.1f} s = {rate:.0f} instances/s, {sent_bytes / 1e6 / elapsed:.1f} MB/s; "
              f"sent {len(sent)}, DB rows {len(stored)}, spool files {len(files)}; "
              f"RSS {baseline / 2**20:.0f} MiB at start, peak {peak / 2**20:.0f} MiB")
        assert stored == sent and len(files) == len(sent) and not temp
        assert per_study == {s.study_uid: PER_ASSOCIATION for s in series}
        assert peak - baseline < RSS_GROWTH_LIMIT, f"RSS grew by {(peak - baseline) / 2**20:.0f} MiB"
        assert node.proc.poll() is None
    finally:
        node.close()
