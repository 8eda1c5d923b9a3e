"""Pipeline factories for the inference-process tests, imported by the child process by name.

``crashing``: the process dies as an out-of-memory kill would (SIGKILL) in the middle of a job.
``bounded``: the node's real pipeline (volume assembly with its bounds) with a segmenter that
must never be reached.
``guarded``: the same with a model whose estimated memory no machine has (the memory guard).
"""
from __future__ import annotations

import os
import signal


def _model_on(spacing_mm: float):
    """What the memory guard reads of a segmenter: its model grid spacing (and its catalog)."""
    return type("Model", (), {"settings": type("S", (), {"spacing": (spacing_mm,) * 3})()})()


class _Unreachable:
    model_version = "never-segments-0"
    catalog = tuple(range(45))
    model = _model_on(3.0)

    def segment(self, hu, affine_lps, patient_sex=None):  # noqa: ANN001, ANN201 - the Segmenter interface
        raise AssertionError("segmentation reached although assembly should have refused the volume")


class CrashingPipeline:
    model_version = "crash-test-0"

    def __init__(self, ctx) -> None:  # noqa: ANN001
        pass

    def process(self, ctx, job, paths, timings):  # noqa: ANN001, ANN201
        os.kill(os.getpid(), signal.SIGKILL)


def bounded(ctx):  # noqa: ANN001, ANN201
    from dsm_node.jobs.pipeline import DSMPipeline

    return DSMPipeline(ctx, segmenter=_Unreachable())


class _MicroscopicModel(_Unreachable):
    """A segmenter on a 0.01 mm model grid: any series needs more memory than a machine has."""

    model = _model_on(0.01)


def guarded(ctx):  # noqa: ANN001, ANN201
    from dsm_node.jobs.pipeline import DSMPipeline

    return DSMPipeline(ctx, segmenter=_MicroscopicModel())
