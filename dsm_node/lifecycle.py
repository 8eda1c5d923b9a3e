"""Study and job life cycles: the states, one table of allowed moves each, and the check that
every state write goes through.

Study (one row per StudyInstanceUID; a late instance opens a new revision)::

    receiving -> complete -> selected ----> done      (the revision's job delivered or kept)
        ^            |           |   \\---> failed ---> done (a resend delivered it after all)
        |            +--> no_eligible
        +-- from every state but receiving: an instance arrived after receiving ended

Job (one per study revision with a chosen series)::

    selected -> queued -> running -> encoded -> delivered
                   ^         |          |
                   +---------+          +--> kept (no destination configured: the results stay
               (interrupted: requeued)  |         in the results folder, nothing is sent)
                                        +--> failed (a delivery dead-lettered; a resend can still
                                                 deliver it later: failed -> delivered)
    any non-terminal state -> failed (with reason)

The states are ``str`` enums whose values are what the database columns hold, so rows written
before these enums existed read back unchanged. Who audits what stays with the writers:
``study_revision`` (receive/index), ``study_complete`` (studies/completeness),
``series_selected``/``study_no_eligible_series`` (studies/decide) and ``job_transition``
(jobs/machine, also for the study's done/failed that follows its job).
"""
from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import TypeVar


class _State(str, Enum):
    # str() and f-strings give the stored value (as enum.StrEnum does; Python 3.10 lacks it).
    __str__ = str.__str__
    __format__ = str.__format__


class StudyState(_State):
    RECEIVING = "receiving"  # instances arriving; quiet period not yet over
    COMPLETE = "complete"  # quiet period over, waiting for selection
    SELECTED = "selected"  # a series was chosen; a job exists
    NO_ELIGIBLE = "no_eligible"  # closed: no series passed selection
    DONE = "done"  # the job of the current revision finished: results delivered (or kept)
    FAILED = "failed"  # the job of the current revision failed (the reason is in state_reason)


class JobState(_State):
    SELECTED = "selected"
    QUEUED = "queued"
    RUNNING = "running"
    ENCODED = "encoded"
    DELIVERED = "delivered"
    KEPT = "kept"  # no destination configured: the results stay in the results folder, nothing is sent
    FAILED = "failed"


St, J = StudyState, JobState

#: A new study row starts receiving; a new job row starts selected.
STUDY_INITIAL = St.RECEIVING
JOB_INITIAL = J.SELECTED

STUDY_MOVES: Mapping[StudyState, frozenset[StudyState]] = {
    St.RECEIVING: frozenset({St.COMPLETE}),
    St.COMPLETE: frozenset({St.SELECTED, St.NO_ELIGIBLE, St.RECEIVING}),
    St.SELECTED: frozenset({St.DONE, St.FAILED, St.RECEIVING}),
    St.NO_ELIGIBLE: frozenset({St.RECEIVING}),
    St.DONE: frozenset({St.RECEIVING}),
    St.FAILED: frozenset({St.DONE, St.RECEIVING}),
}

JOB_MOVES: Mapping[JobState, frozenset[JobState]] = {
    J.SELECTED: frozenset({J.QUEUED, J.FAILED}),
    J.QUEUED: frozenset({J.RUNNING, J.FAILED, J.SELECTED}),
    J.RUNNING: frozenset({J.ENCODED, J.FAILED, J.QUEUED}),
    J.ENCODED: frozenset({J.DELIVERED, J.KEPT, J.FAILED}),
    J.DELIVERED: frozenset(),
    J.KEPT: frozenset(),
    J.FAILED: frozenset({J.DELIVERED}),
}

#: Job states that end a revision's processing; the study follows (failed -> failed, else done).
JOB_TERMINAL = frozenset({J.DELIVERED, J.KEPT, J.FAILED})


class TransitionError(Exception):
    """A state write the life cycle does not allow."""


_E = TypeVar("_E", StudyState, JobState)


def _check(kind: type[_E], moves: Mapping[_E, frozenset[_E]], current: str, to: str, what: str) -> _E:
    try:
        src, dst = kind(current), kind(to)
    except ValueError as exc:
        raise TransitionError(f"{what}: {exc}") from None
    if dst not in moves[src]:
        raise TransitionError(f"{what}: {src.value} -> {dst.value} is not allowed")
    return dst


def check_study(current: str, to: str, what: str = "study") -> StudyState:
    """The study state ``to`` after checking ``current -> to`` against :data:`STUDY_MOVES`."""
    return _check(StudyState, STUDY_MOVES, current, to, what)


def check_job(current: str, to: str, what: str = "job") -> JobState:
    """The job state ``to`` after checking ``current -> to`` against :data:`JOB_MOVES`."""
    return _check(JobState, JOB_MOVES, current, to, what)


def study_sources(to: StudyState) -> list[str]:
    """Stored values of the study states that may move to ``to``: the ``WHERE state IN (...)``
    of a conditional UPDATE, so a bulk write cannot make a move the table does not allow."""
    return sorted(src.value for src, targets in STUDY_MOVES.items() if to in targets)
