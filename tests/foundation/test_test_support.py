"""The test suite's own machinery: the skip summary that `make test` prints on a machine without
the external peers, the CI rule that turns a missing peer into a failure, and helpers that clean
up only what they started."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.nodeproc import NodeProcess

TESTS = Path(__file__).resolve().parents[1]

SAMPLE = textwrap.dedent(
    """
    import pytest
    from tests.tools import missing, require_tool

    def test_peer_one():
        require_tool("no-such-peer-program")

    def test_peer_two():
        require_tool("no-such-peer-program")

    def test_optional():
        pytest.skip("optional thing absent")

    def test_runs():
        assert True
    """
)


def _run_sample(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    # the checkout (the sample imports tests.tools) and tests/ (the skip_summary plugin by name)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS.parent), str(TESTS), env.get("PYTHONPATH")]))
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "skip_summary", "-p", "no:cacheprovider",
                           "-q", "--rootdir", str(tmp_path), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_skips_are_summarised_by_reason(tmp_path):
    done = _run_sample(tmp_path, ci=False)
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "3 skipped, by reason" in line)
    assert lines[start + 1].split(None, 1) == ["2", "external tool 'no-such-peer-program' is not installed "
                                                    "(CI installs it via .ci/run)"]
    assert lines[start + 2].split(None, 1) == ["1", "optional thing absent"]


def test_a_missing_peer_fails_under_ci(tmp_path):
    done = _run_sample(tmp_path, ci=True)
    assert done.returncode == 1, done.stdout
    assert "2 failed, 1 passed, 1 skipped" in done.stdout
    assert "1 skipped, by reason" in done.stdout


def test_node_never_started_is_not_terminated(tmp_path):
    node = NodeProcess(tmp_path / "node", quiet_period_s=1)
    assert node.terminate() is None
    node.close()
