"""Helpers shared by the test suite: external tools and the optional ../shared data.

Policy (see README "Tests"): a test that needs an external program (DCMTK, dicom3tools,
Orthanc, redis-server, PostgreSQL, Chromium) FAILS when it is missing under CI=true, because
CI installs them and a skip there would hide a broken install step; on a developer machine
it is skipped with the reason. Data under ../shared exists in CI only; tests that read it
skip elsewhere (and fail in CI if it vanished).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest

# The one implementation lives in the package (the demo and the viewer use it too); re-exported
# here because the suites import their helpers from tests.tools.
from dsm_node.netutil import free_port as free_port

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TEST_DATA = Path(__file__).resolve().parent / "data"

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Debian ships some servers outside PATH.
_EXTRA_DIRS = [
    "/usr/lib/postgresql/15/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/17/bin",
    "/usr/sbin",
]


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in _EXTRA_DIRS:
        p = Path(d) / name
        if p.exists() and os.access(p, os.X_OK):
            return str(p)
    return None


def missing(msg: str) -> NoReturn:
    """Something a test needs is absent: fail under CI=true (CI installs it), skip elsewhere."""
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def require_tool(name: str) -> str:
    """Path of an external program; fail in CI, skip elsewhere, when it is missing."""
    path = find_tool(name)
    if path:
        return path
    missing(f"external tool {name!r} is not installed (CI installs it via .ci/run)")


def require_extra_tool(name: str) -> str:
    """A program the `test` extra pip-installs (dcmqi, hadolint): the test environment's own
    bin folder first (`make test` does not put .venv/bin on PATH), then PATH. Only for these:
    pynetdicom also installs `storescu`/`storescp` there, which must not stand in for DCMTK's."""
    own = Path(sys.executable).parent / name
    if own.exists() and os.access(own, os.X_OK):
        return str(own)
    return require_tool(name)


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data; skip (or fail in CI) when the folder is absent."""
    path = SHARED.joinpath("data", *parts)
    if path.exists():
        return path
    missing(f"{path} not present (../shared is only beside the checkout in CI)")

