"""A background loop that runs one pass of a service every so often, on a thread of its own.

The node's services that poll the database (completeness/selection, the job dispatcher,
delivery, retention) share this life cycle: :meth:`PollingService.start` (idempotent),
:meth:`~PollingService.stop` (sets the stop flag, wakes the loop, joins the thread),
:meth:`~PollingService.wake` (run the next pass now instead of after the interval) and
:attr:`~PollingService.running`. A subclass names its thread and interval and implements
:meth:`~PollingService.poll_once`. An exception in a pass is logged and the loop goes on after
the interval: a database or network hiccup must not end a service for good.
"""
from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod


class PollingService(ABC):
    """A thread calling :meth:`poll_once` every ``interval_s`` until stopped.

    ``first_pass_at_once``: the first pass runs when the thread starts (otherwise after one
    interval). ``stop_timeout_s``: how long :meth:`stop` waits for the pass under way.
    ``failure_message`` (%-style, with ``failure_args``): logged, with the traceback, when a
    pass raises.
    """

    def __init__(self, *, thread_name: str, interval_s: float, logger: logging.Logger,
                 failure_message: str, failure_args: tuple[object, ...] = (), first_pass_at_once: bool = False,
                 stop_timeout_s: float = 30.0) -> None:
        self.thread_name = thread_name
        self.interval_s = interval_s
        self.stop_timeout_s = stop_timeout_s
        self.first_pass_at_once = first_pass_at_once
        self._log = logger
        self._failure_message = failure_message
        self._failure_args = failure_args
        self._stopping = threading.Event()
        # Set by wake() and stop(); the loop waits on it between passes and clears it before a
        # pass, so a wake-up that arrives during a pass makes the next one start at once.
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def poll_once(self) -> bool:
        """One pass. True when there may be more to do at once (the next pass starts without
        waiting); False to wait for the interval or a :meth:`wake`."""

    # Life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the thread (nothing happens when it is started already)."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the loop to end and wait up to ``timeout`` seconds (default ``stop_timeout_s``)
        for the pass under way; harmless when not started."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.stop_timeout_s if timeout is None else timeout)
            self._thread = None

    def wake(self) -> None:
        """Run the next pass now instead of after the interval."""
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called: a long pass may end early."""
        return self._stopping.is_set()

    # The loop -------------------------------------------------------------------------------
    def _loop(self) -> None:
        busy = self.first_pass_at_once
        while True:
            if not busy:
                self._wake.wait(self.interval_s)
            # Cleared before the stop check: stop() sets the flag before waking, so a stop that
            # comes after this point always finds the next wait already woken.
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                busy = bool(self.poll_once())
            except Exception:  # noqa: BLE001 - logged; the next pass comes after the interval
                self._log.exception(self._failure_message, *self._failure_args)
                busy = False
