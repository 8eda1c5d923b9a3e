"""The background loop of ``dsm-node serve`` that turns quiet studies into jobs."""
from __future__ import annotations

import datetime as dt
import logging
import threading

from ..context import NodeContext
from .completeness import CompletedStudy, sweep
from .decide import StudyDecision, decide

log = logging.getLogger("dsm_node.studies")


class StudyService:
    """Every ``completeness.poll_interval_s``: complete quiet studies, then select their series."""

    name = "completeness/selection"

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, now: dt.datetime | None = None) -> tuple[list[CompletedStudy], list[StudyDecision]]:
        completed = sweep(self._ctx, now)
        decisions = decide(self._ctx)
        return completed, decisions

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="dsm-studies", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        interval = self._ctx.settings.completeness.poll_interval_s
        # The first pass runs at once: after a restart, studies that went quiet while the
        # node was down complete without waiting another interval.
        while True:
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - a database hiccup must not end the loop
                log.exception("completeness/selection pass failed; retrying in %.1f s", interval)
            if self._stop.wait(interval):
                return
