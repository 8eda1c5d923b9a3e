"""The background loop of ``dsm-node serve`` that turns quiet studies into jobs."""
from __future__ import annotations

import datetime as dt
import logging

from ..context import NodeContext
from ..polling import PollingService
from .completeness import CompletedStudy, sweep
from .decide import StudyDecision, decide

log = logging.getLogger("dsm_node.studies")


class StudyService(PollingService):
    """Every ``completeness.poll_interval_s``: complete quiet studies, then select their series."""

    name = "completeness/selection"

    def __init__(self, ctx: NodeContext) -> None:
        interval = ctx.settings.completeness.poll_interval_s
        # The first pass runs at once: after a restart, studies that went quiet while the
        # node was down complete without waiting another interval.
        super().__init__(thread_name="dsm-studies", interval_s=interval, logger=log, first_pass_at_once=True,
                         failure_message="completeness/selection pass failed; retrying in %.1f s",
                         failure_args=(interval,), stop_timeout_s=30)
        self._ctx = ctx

    def run_once(self, now: dt.datetime | None = None) -> tuple[list[CompletedStudy], list[StudyDecision]]:
        completed = sweep(self._ctx, now)
        decisions = decide(self._ctx)
        return completed, decisions

    def poll_once(self) -> bool:
        self.run_once()
        return False
