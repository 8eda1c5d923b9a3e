"""pytest plugin (loaded by tests/conftest.py): the skipped tests grouped by reason at the end of
the run, so `make test` on a machine without the external peers says what did not run and why."""
from __future__ import annotations

import os
from collections import Counter

import pytest


def _skip_reason(report: pytest.TestReport) -> str:
    # A skip's longrepr is (file, line, "Skipped: reason"); anything else is shown as it is.
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return str(report.longrepr)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Skipped tests grouped by reason, most frequent first: on a machine without the external
    peers (DCMTK, Orthanc, dicom3tools, redis, PostgreSQL, Chromium) or ../shared this says what
    did not run and why. Under CI=true a missing peer fails instead (tests/tools.py)."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons = Counter(_skip_reason(report) for report in skipped)
    where = "CI=true: only optional checks may skip" if os.environ.get("CI", "").lower() in ("1", "true", "yes") \
        else "under CI=true a missing CI peer or ../shared fails instead"
    terminalreporter.write_sep("=", f"{len(skipped)} skipped, by reason ({where})")
    for reason, count in reasons.most_common():
        terminalreporter.write_line(f"{count:5d}  {reason}")
