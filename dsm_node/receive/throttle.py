"""Audit rows for repeated refusals, aggregated per source.

An unauthenticated host can open connections as fast as the network allows; one audit row per
refusal would let it fill the database and slow the node down. The first refusal of a kind
(event type, source address, calling AE, reason) is audited as it happens; the repeats within
``window_s`` are counted and written as one row (``repeated: N``) when the window closes, so a
sustained attack costs one row per source and reason per window. Writing happens on a thread
of its own: the accept loop only touches a counter.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("dsm_node.receive")

MAX_KEYS = 1024  # distinct sources tracked per window; beyond, repeats are counted under "*"

Key = tuple[str, str, str, str]  # event type, address, calling AE, reason


@dataclass
class _Window:
    opened: float
    outcome: int
    detail: dict[str, Any]
    repeated: int = 0


@dataclass
class _Item:
    key: Key
    outcome: int
    detail: dict[str, Any] = field(default_factory=dict)


_IDLE = _Item(("", "", "", ""), 0)


class RefusalAuditor:
    """``record()`` from any thread; ``start()``/``stop()`` run the writer (``stop`` flushes)."""

    def __init__(self, write: Callable[..., None], window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._write = write  # write(event_type, outcome=, actor_ae=, actor_address=, **detail)
        self.window_s = window_s
        self._clock = clock
        self._windows: dict[Key, _Window] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def record(self, event_type: str, *, address: str, reason: str, outcome: int,
               actor_ae: str | None = None, **detail: Any) -> None:
        key: Key = (event_type, address, actor_ae or "", reason)
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            if window is not None:
                window.repeated += 1
                return
            if len(self._windows) >= MAX_KEYS:
                key = (event_type, "*", "", "refusals from more sources than tracked")
                window = self._windows.setdefault(key, _Window(now, outcome, {}, 0))
                window.repeated += 1
                return
            self._windows[key] = _Window(now, outcome, dict(detail))
        self._queue.put(_Item(key, outcome, {"reason": reason, **detail}))

    def flush(self, everything: bool = False) -> int:
        """Queue the aggregate rows of closed windows (all windows when ``everything``)."""
        now = self._clock()
        closed: list[tuple[Key, _Window]] = []
        with self._lock:
            for key, window in list(self._windows.items()):
                if everything or now - window.opened >= self.window_s:
                    del self._windows[key]
                    if window.repeated:
                        closed.append((key, window))
        for key, window in closed:
            seconds = round(now - window.opened, 1)
            self._queue.put(_Item(key, window.outcome, {
                "reason": f"repeated {window.repeated} more times in {seconds} s: {key[3]}",
                "repeated": window.repeated, **window.detail,
            }))
        return len(closed)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dsm-refusal-audit", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.flush(everything=True)
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        else:
            self._drain()

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._emit(item)

    def _run(self) -> None:
        last_flush = self._clock()
        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                item = _IDLE
            if item is None:
                self._drain()
                return
            if item is not _IDLE:
                self._emit(item)
            if self._clock() - last_flush >= 1.0:
                self.flush()
                last_flush = self._clock()

    def _emit(self, item: _Item) -> None:
        event_type, address, actor_ae, _reason = item.key
        try:
            self._write(event_type, outcome=item.outcome, actor_ae=actor_ae or None,
                        actor_address=None if address == "*" else address, **item.detail)
        except Exception:  # noqa: BLE001 - the database may be down; the JSON log keeps it
            log.exception("refusal audit write failed")
