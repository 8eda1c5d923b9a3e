"""The polling-service base of the node's background loops: start/stop/wake, busy passes, and a
pass that raises. The interval is an hour throughout, so any second pass a test waits for can
only come from wake(), a busy pass or the loop surviving an error, never from the timer."""
from __future__ import annotations

import logging
import threading

import pytest

from dsm_node.polling import PollingService

HOUR = 3600.0
WAIT = 10.0  # generous bound on waiting for a thread; never a timing assertion

log = logging.getLogger("tests.polling")


class Counter(PollingService):
    def __init__(self, *, first_pass_at_once: bool = True, busy_passes: int = 0, fail_passes: int = 0,
                 block: bool = False) -> None:
        super().__init__(thread_name="test-polling", interval_s=HOUR, logger=log, stop_timeout_s=WAIT,
                         failure_message="test pass %d failed", failure_args=(7,),
                         first_pass_at_once=first_pass_at_once)
        self.passes = 0
        self.busy_passes = busy_passes
        self.fail_passes = fail_passes
        self.block = block
        self.entered = threading.Event()
        self.saw_stopping = False
        self._changed = threading.Condition()

    def poll_once(self) -> bool:
        with self._changed:
            self.passes += 1
            self._changed.notify_all()
        self.entered.set()
        if self.block:  # a long pass that ends early once stop() is called
            for _ in range(int(WAIT * 100)):
                if self.stopping:
                    self.saw_stopping = True
                    break
                threading.Event().wait(0.01)
        if self.passes <= self.fail_passes:
            raise RuntimeError("database hiccup")
        return self.passes <= self.busy_passes

    def wait_for(self, passes: int) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.passes >= passes, WAIT)


def threads_named(name: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name == name and t.is_alive())


@pytest.fixture
def service():
    made: list[Counter] = []

    def make(**kwargs) -> Counter:
        made.append(Counter(**kwargs))
        return made[-1]

    yield make
    for s in made:
        s.stop()


def test_start_is_idempotent_and_stop_ends_the_thread(service):
    s = service()
    before = threads_named("test-polling")
    s.start()
    thread = s._thread
    s.start()
    assert s._thread is thread and threads_named("test-polling") == before + 1
    assert s.wait_for(1) and s.running
    s.stop()  # wakes the hour-long wait: the join does not time out
    assert not s.running and thread is not None and not thread.is_alive()
    assert s.passes == 1


def test_stop_without_start_is_harmless(service):
    s = service()
    s.stop()
    s.stop(timeout=0)
    assert not s.running and s.passes == 0


def test_wake_runs_the_next_pass_now(service):
    s = service(first_pass_at_once=False)
    s.start()
    s.wake()
    assert s.wait_for(1)
    s.wake()
    assert s.wait_for(2)


def test_a_busy_pass_is_followed_by_the_next_at_once(service):
    s = service(busy_passes=3)
    s.start()
    assert s.wait_for(4)  # three busy passes, then the fourth, which waits
    s.stop()
    assert s.passes == 4


def test_a_pass_that_raises_is_logged_and_the_loop_goes_on(service, caplog):
    s = service(fail_passes=2)
    with caplog.at_level(logging.ERROR, logger="tests.polling"):
        s.start()
        assert s.wait_for(1)
        s.wake()
        assert s.wait_for(2)
        s.wake()
        assert s.wait_for(3)
    assert s.running
    failures = [r for r in caplog.records if r.name == "tests.polling"]
    assert [r.getMessage() for r in failures] == ["test pass 7 failed"] * 2
    assert all(r.exc_info and r.exc_info[0] is RuntimeError for r in failures)


def test_stop_during_a_pass_lets_it_see_stopping_and_runs_no_other(service):
    s = service(block=True, busy_passes=100)
    s.start()
    assert s.entered.wait(WAIT)
    s.stop()
    assert s.saw_stopping and not s.running
    assert s.passes == 1  # busy, yet no further pass after stop


def test_a_stopped_service_starts_again(service):
    s = service()
    s.start()
    assert s.wait_for(1)
    s.stop()
    s.start()
    assert s.wait_for(2) and s.running
