"""Pipeline factories for the inference-process tests, imported by the child process by name.

``crashing``: the process dies as an out-of-memory kill would (SIGKILL) in the middle of a job.
``bounded``: the node's real pipeline (volume assembly with its bounds) with a segmenter that
must never be reached.
"""
from __future__ import annotations

import os
import signal


class _Unreachable:
    model_version = "never-segments-0"

    def segment(self, hu, affine_lps):  # noqa: ANN001, ANN201 - the Segmenter interface
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
