"""Fixtures of the reliability suite (issue 7): reuse the other suites' helpers, add few.

The whole-loop fixtures (tiny seeded checkpoint, loopback network) come from tests/pipeline.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.pg import postgres_server
from tests.pipeline.conftest import net, tiny_checkpoint  # noqa: F401 - fixtures reused as they are

_TESTS = Path(__file__).resolve().parents[1]

ARTIFACTS = _TESTS / "artifacts"


@pytest.fixture(scope="session")
def postgres():
    with postgres_server() as server:
        yield server
