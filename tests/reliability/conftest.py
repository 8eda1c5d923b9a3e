"""Fixtures of the reliability suite (issue 7): reuse the other suites' helpers, add few.

The whole-loop fixtures (tiny seeded checkpoint, loopback network) come from tests/pipeline.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parents[1]
for sub in ("pipeline", "receive"):
    if str(_TESTS / sub) not in sys.path:
        sys.path.append(str(_TESTS / sub))

from pg import postgres_server  # noqa: E402
from pipeline.conftest import net, tiny_checkpoint  # noqa: E402,F401 - fixtures reused as they are

ARTIFACTS = _TESTS / "artifacts"


@pytest.fixture(scope="session")
def postgres():
    with postgres_server() as server:
        yield server
