import os

# The skipped tests grouped by reason at the end of the run (a hook, found here by name).
from tests.skip_summary import pytest_terminal_summary  # noqa: F401

# Keep the CPU tests deterministic and polite on 2-core machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# DCMTK and Orthanc stall ~40 ms per PDU without this (Nagle; see ENVIRONMENT.md).
os.environ.setdefault("TCP_NODELAY", "1")
