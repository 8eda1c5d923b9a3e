"""dsm_node.liveness: a holder is gone exactly when its process ended (kill -9 included)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from dsm_node import liveness
from tests.tools import REPO

CHILD = """
import sys, time
from dsm_node import liveness
assert liveness.register(sys.argv[1])
print(liveness.HOLDER, flush=True)
time.sleep(600)
"""


def test_a_holder_is_gone_only_once_its_process_ended(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        holder = child.stdout.readline().strip()
        host, pid, token = holder.split(":")
        assert (host, int(pid)) == (liveness.HOSTNAME, child.pid) and len(token) == 6
        assert liveness.lock_path(tmp_path, holder).is_file()
        assert not liveness.holder_gone(tmp_path, holder)  # alive, lock held
        assert not liveness.holder_gone(tmp_path, holder)  # probing does not take the lock away
    finally:
        child.kill()
        child.wait()
    assert liveness.holder_gone(tmp_path, holder)  # SIGKILL released the lock
    # What cannot be known is never called gone: another host, no lock file, ourselves, nothing.
    assert not liveness.holder_gone(tmp_path, f"other-host:{pid}:{token}")
    assert not liveness.holder_gone(tmp_path, f"{host}:{pid}:ffffff")
    assert not liveness.holder_gone(tmp_path, liveness.HOLDER)
    assert not liveness.holder_gone(tmp_path, None)


def test_registering_keeps_the_lock_and_prunes_old_ended_lock_files(tmp_path):
    ended = liveness.lock_path(tmp_path, f"{liveness.HOSTNAME}:1:abcdef")
    ended.parent.mkdir(parents=True)
    ended.write_text("an ended process\n")
    old = time.time() - liveness.STALE_LOCK_FILE_S - 60
    os.utime(ended, (old, old))
    recent = liveness.lock_path(tmp_path, f"{liveness.HOSTNAME}:2:abcdef")
    recent.write_text("ended a moment ago\n")
    assert liveness.register(tmp_path) and liveness.register(tmp_path)
    assert not ended.exists() and recent.exists()
    assert liveness.lock_path(tmp_path, liveness.HOLDER).read_text() == liveness.HOLDER + "\n"
    assert not liveness.holder_gone(tmp_path, liveness.HOLDER)
