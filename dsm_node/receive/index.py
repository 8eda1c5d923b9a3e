"""The instance index: Study / Series / Instance rows for every spool file.

One small transaction per instance, written with SQLAlchemy Core statements (no ORM identity
map on the hot path). The transaction starts with a write to the study row, which takes the
SQLite write lock (or the PostgreSQL row lock) before anything is read, so parallel
associations serialise cleanly instead of failing on a stale read snapshot.

Rules:
- a SOP Instance UID is stored once: a second copy in the same series with the same SOP class
  is a *duplicate* (Success, no change); one that names another study, series or SOP class is
  a *conflict* (:class:`SOPInstanceConflict`, refused; nothing is recorded);
- a late instance for a study whose state is not ``receiving`` (complete, selected,
  no_eligible, done) starts a new revision: ``revision += 1``, state back to ``receiving``,
  ``study_revision`` audited in the same transaction (never a silent merge);
- the first instance of a series provides ``Series.header`` (see ``dataset.header_summary``:
  no patient-identifying attribute is ever stored).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, bindparam, func, insert, literal_column, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ..db.models import Instance, Series, Study, utcnow
from ..lifecycle import STUDY_INITIAL, StudyState, check_study, study_sources

if TYPE_CHECKING:
    from ..context import NodeContext

studies = Study.__table__
series_t = Series.__table__
instances = Instance.__table__


class IndexUnavailable(Exception):
    """The database could not record the instance (refuse it rather than acknowledge)."""


class IndexConflict(ValueError):
    """The instance contradicts what is indexed (e.g. its series belongs to another study)."""

    kind = "series"


class SOPInstanceConflict(IndexConflict):
    """The SOP Instance UID is indexed already, in another series (or study) or SOP class."""

    kind = "sop_instance"

    def __init__(self, message: str, *, study_uid: str, series_uid: str, sop_class_uid: str) -> None:
        super().__init__(message)
        self.study_uid = study_uid
        self.series_uid = series_uid
        self.sop_class_uid = sop_class_uid


@dataclass
class InstanceRecord:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str  # relative to the spool directory
    size_bytes: int
    calling_ae: str | None = None
    peer_address: str | None = None
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    accession_number: str | None = None
    # Header summary for a new series: a dict, or a callable evaluated only when the series
    # row is created (the first instance), which keeps the common path cheap.
    header: dict[str, Any] | Callable[[], dict[str, Any]] | None = None
    received_at: dt.datetime | None = None


@dataclass
class IndexOutcome:
    status: str  # "stored" | "duplicate" | "restored" (file re-stored after retention deleted it)
    study_id: int
    series_id: int
    instance_id: int
    revision: int
    new_revision: bool = False
    new_study: bool = False
    new_series: bool = False
    previous_state: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExistingInstance:
    id: int
    path: str
    deleted_at: dt.datetime | None
    study_uid: str
    series_uid: str
    sop_class_uid: str

    def conflict_with(self, study_uid: str, series_uid: str, sop_class_uid: str) -> SOPInstanceConflict | None:
        """The conflict a new copy with these UIDs would be, or None when it is the same instance."""
        return _conflict(self.study_uid, self.series_uid, self.sop_class_uid, study_uid, series_uid, sop_class_uid)


def _conflict(old_study: str, old_series: str, old_class: str, study_uid: str, series_uid: str,
              sop_class_uid: str) -> SOPInstanceConflict | None:
    if (old_study, old_series, old_class) == (study_uid, series_uid, sop_class_uid):
        return None
    where = "study" if old_study != study_uid else ("series" if old_series != series_uid else "SOP class")
    return SOPInstanceConflict(
        f"SOP Instance UID already stored in another {where}",
        study_uid=old_study, series_uid=old_series, sop_class_uid=old_class,
    )


class _Duplicate(Exception):
    def __init__(self, outcome: IndexOutcome) -> None:
        self.outcome = outcome


def _clip(value: str | None, n: int) -> str | None:
    return value[:n] if isinstance(value, str) else value


# Statements are built once: constructing and cache-keying Core statements costs more than
# executing them (measured ~1 ms per instance), so the hot path only binds parameters.
_STUDY_BUMP = (
    update(studies)
    .where(studies.c.study_uid == bindparam("b_uid"))
    .values(last_received_at=bindparam("b_now"), instance_count=studies.c.instance_count + 1)
    .returning(studies.c.id, studies.c.state, studies.c.revision)
)
_STUDY_REVISION = (
    update(studies)
    .where(studies.c.id == bindparam("b_id"), studies.c.state.in_(study_sources(StudyState.RECEIVING)))
    .values(
        revision=studies.c.revision + 1,
        state=StudyState.RECEIVING.value,
        state_reason=None,
        completed_at=None,
        selected_series_uid=None,
        selection_reason=None,
        calling_ae=bindparam("b_ae"),
        peer_address=bindparam("b_addr"),
    )
    .returning(studies.c.revision)
)
_SERIES_BUMP = (
    update(series_t)
    .where(series_t.c.series_uid == bindparam("b_uid"))
    .values(instance_count=series_t.c.instance_count + 1, last_received_at=bindparam("b_now"))
    .returning(series_t.c.id, series_t.c.study_id)
)
_FIND_INSTANCE = (
    select(instances.c.id, instances.c.path, instances.c.deleted_at, series_t.c.series_uid, studies.c.study_uid,
           instances.c.sop_class_uid, instances.c.series_id)
    .join(series_t, series_t.c.id == instances.c.series_id)
    .join(studies, studies.c.id == series_t.c.study_id)
    .where(instances.c.sop_instance_uid == bindparam("b_uid"))
)
_INSERT_IGNORE: dict[tuple[str, str], Any] = {}


def _insert_ignore(conn: Connection, table, values: dict[str, Any], key: str):  # type: ignore[no-untyped-def]
    """INSERT ... ON CONFLICT (key) DO NOTHING RETURNING id: the new id, or None on conflict."""
    cache_key = (conn.dialect.name, table.name)
    stmt = _INSERT_IGNORE.get(cache_key)
    if stmt is None:
        if conn.dialect.name == "sqlite":
            stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])
        elif conn.dialect.name == "postgresql":
            stmt = postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
        else:  # other backends: no ON CONFLICT; a race surfaces as IntegrityError
            stmt = insert(table)
        stmt = _INSERT_IGNORE[cache_key] = stmt.returning(table.c.id)
    return conn.execute(stmt, values).first()


_LOCKS: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _writer_lock(engine: Engine) -> Any:
    """SQLite: one writer at a time inside this process.

    SQLite allows one writer; a connection that finds the database locked backs off in steps
    of 1, 2, 5, 10, ... 100 ms (busy handler), so parallel associations waiting for each
    other's 0.3 ms transactions stalled for up to ~100 ms (measured p99 80 ms with four
    threads). Queueing on a lock instead hands the database over at once. PostgreSQL has row
    locks and needs nothing.
    """
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    with _LOCKS_GUARD:
        lock = _LOCKS.get(engine)
        if lock is None:
            lock = _LOCKS[engine] = threading.Lock()
    return lock


def find_instance(engine: Engine, sop_instance_uid: str) -> ExistingInstance | None:
    """The indexed instance with this SOP Instance UID, if any (raises IndexUnavailable)."""
    try:
        with engine.connect() as conn:
            row = conn.execute(_FIND_INSTANCE, {"b_uid": sop_instance_uid}).first()
    except SQLAlchemyError as exc:
        raise IndexUnavailable(f"database error: {type(exc).__name__}") from exc
    if row is None:
        return None
    return ExistingInstance(row.id, row.path, row.deleted_at, row.study_uid, row.series_uid, row.sop_class_uid)


def record_instance(ctx: NodeContext, rec: InstanceRecord) -> IndexOutcome:
    """Record one stored instance (study, series, instance rows) in ONE transaction.

    Returns the outcome; raises :class:`IndexUnavailable` on any database error (nothing is
    committed then) and :class:`IndexConflict` when the data contradicts the index.
    """
    now = rec.received_at or utcnow()
    try:
        with _writer_lock(ctx.engine):
            fast = _fast_record(ctx.engine, rec, now)
            if fast is not None:
                return fast
            with ctx.engine.begin() as conn:
                return _record(conn, ctx, rec, now)
    except _Duplicate as dup:  # raised inside the transaction: everything rolled back
        return dup.outcome
    except (IndexConflict, IndexUnavailable):
        raise
    except SQLAlchemyError as exc:
        raise IndexUnavailable(f"database error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc


# The common case -- study receiving, series known, new instance -- runs three prebuilt
# statements straight on the DBAPI cursor: SQLAlchemy's per-execution work (cache lookup,
# result objects, pool reset) cost more than the statements themselves (~0.3 ms CPU, ~0.5 ms
# wall per instance measured). The SQL and the bind processors come from SQLAlchemy, compiled
# once per dialect. Anything else (new study or series, late instance, duplicate) rolls the
# fast transaction back and takes the full path below, the single source of the rules.
_FAST_STUDY = (
    update(studies)
    .where(studies.c.study_uid == bindparam("b_uid"), studies.c.state == bindparam("b_state"))
    .values(last_received_at=bindparam("b_now"), instance_count=studies.c.instance_count + literal_column("1"))
    .returning(studies.c.id, studies.c.revision)
)
_FAST_SERIES = (
    update(series_t)
    .where(series_t.c.series_uid == bindparam("b_uid"), series_t.c.study_id == bindparam("b_study"))
    .values(instance_count=series_t.c.instance_count + literal_column("1"), last_received_at=bindparam("b_now"))
    .returning(series_t.c.id)
)
_FAST_INSTANCE_COLUMNS = ("series_id", "sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "path",
                          "size_bytes", "received_at", "study_revision", "ignored", "calling_ae")
_FAST: dict[tuple[str, str], tuple[str, list[str], dict[str, Any]]] = {}


def _fast_statement(dialect: Any, name: str) -> tuple[str, list[str], dict[str, Any]]:
    """(SQL, parameter names in order, bind processors) of a fast-path statement."""
    key = (dialect.name, name)
    found = _FAST.get(key)
    if found is None:
        if name == "study":
            stmt = _FAST_STUDY
        elif name == "series":
            stmt = _FAST_SERIES
        else:
            ins = sqlite.insert(instances) if dialect.name == "sqlite" else postgresql.insert(instances)
            stmt = (
                ins.values({c: bindparam(f"b_{c}") for c in _FAST_INSTANCE_COLUMNS})
                .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
                .returning(instances.c.id)
            )
        compiled = stmt.compile(dialect=dialect)
        names = list(compiled.positiontup or []) if dialect.positional else list(compiled.binds)
        processors = {n: compiled.binds[n].type.bind_processor(dialect) for n in compiled.binds}
        found = _FAST[key] = (compiled.string, names, processors)
    return found


def _fast_params(dialect: Any, name: str, values: dict[str, Any]) -> tuple[str, Any]:
    sql, names, processors = _fast_statement(dialect, name)
    processed = {}
    for n in names:
        value = values[n]
        proc = processors.get(n)
        processed[n] = proc(value) if proc is not None else value
    return sql, (tuple(processed[n] for n in names) if dialect.positional else processed)


def _fast_record(engine: Engine, rec: InstanceRecord, now: dt.datetime) -> IndexOutcome | None:
    dialect = engine.dialect
    if dialect.name not in ("sqlite", "postgresql"):
        return None
    dbapi_errors = getattr(dialect, "loaded_dbapi", None) or dialect.dbapi
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        cur = raw.cursor()
        try:
            cur.execute(*_fast_params(dialect, "study", {"b_uid": rec.study_uid, "b_state": StudyState.RECEIVING.value,
                                                         "b_now": now}))
            row = cur.fetchone()
            if row is not None:
                study_id, revision = row
                cur.execute(*_fast_params(dialect, "series", {"b_uid": rec.series_uid, "b_study": study_id,
                                                              "b_now": now}))
                srow = cur.fetchone()
                if srow is not None:
                    values = {
                        "b_series_id": srow[0],
                        "b_sop_instance_uid": rec.sop_instance_uid,
                        "b_sop_class_uid": rec.sop_class_uid,
                        "b_transfer_syntax_uid": rec.transfer_syntax_uid,
                        "b_path": rec.path,
                        "b_size_bytes": rec.size_bytes,
                        "b_received_at": now,
                        "b_study_revision": revision,
                        "b_ignored": False,
                        "b_calling_ae": _clip(rec.calling_ae, 16),
                    }
                    cur.execute(*_fast_params(dialect, "instance", values))
                    irow = cur.fetchone()
                    if irow is not None:
                        raw.commit()
                        return IndexOutcome("stored", study_id, srow[0], irow[0], revision)
            raw.rollback()  # not the common case: the full path decides
            return None
        except dbapi_errors.Error as exc:
            try:
                raw.rollback()
            except dbapi_errors.Error:
                conn.invalidate()
            raise IndexUnavailable(f"database error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc
        finally:
            try:
                cur.close()
            except Exception:
                pass


def _record(conn: Connection, ctx: NodeContext, rec: InstanceRecord, now: dt.datetime) -> IndexOutcome:
    calling_ae = _clip(rec.calling_ae, 16)
    peer_address = _clip(rec.peer_address, 64)

    # 1. Study: a write first (takes the lock), then create when missing.
    new_study = False
    row = conn.execute(_STUDY_BUMP, {"b_uid": rec.study_uid, "b_now": now}).first()
    if row is None:
        created = _insert_ignore(
            conn,
            studies,
            dict(
                study_uid=rec.study_uid,
                revision=1,
                state=STUDY_INITIAL.value,
                first_received_at=now,
                last_received_at=now,
                instance_count=1,
                calling_ae=calling_ae,
                peer_address=peer_address,
                accession_number=_clip(rec.accession_number, 16) or None,
            ),
            "study_uid",
        )
        if created is not None:
            study_id, state, revision, new_study = created.id, STUDY_INITIAL, 1, True
        else:  # created by a parallel association a moment ago
            row = conn.execute(_STUDY_BUMP, {"b_uid": rec.study_uid, "b_now": now}).one()
    if row is not None:
        study_id, state, revision = row.id, row.state, row.revision

    # 2. A late instance for a study already past receiving: new revision. (Rolled back with
    #    everything else if the instance turns out to be a duplicate in step 4.)
    new_revision = False
    previous_state = None
    if state != StudyState.RECEIVING:
        previous_state = state
        check_study(state, StudyState.RECEIVING, f"study {rec.study_uid}")
        revision = conn.execute(
            _STUDY_REVISION, {"b_id": study_id, "b_ae": calling_ae, "b_addr": peer_address}
        ).scalar_one()
        new_revision = True

    # 3. Series.
    new_series = False
    srow = conn.execute(_SERIES_BUMP, {"b_uid": rec.series_uid, "b_now": now}).first()
    if srow is None:
        header = rec.header() if callable(rec.header) else (rec.header or {})
        created = _insert_ignore(
            conn,
            series_t,
            dict(
                study_id=study_id,
                series_uid=rec.series_uid,
                modality=_clip(rec.modality, 16),
                series_number=rec.series_number,
                series_description=_clip(rec.series_description, 64),
                header=header,
                instance_count=1,
                last_received_at=now,
            ),
            "series_uid",
        )
        if created is not None:
            series_id, new_series = created.id, True
        else:
            srow = conn.execute(_SERIES_BUMP, {"b_uid": rec.series_uid, "b_now": now}).one()
    if srow is not None:
        if srow.study_id != study_id:
            raise IndexConflict(f"SeriesInstanceUID {rec.series_uid} already belongs to another study")
        series_id = srow.id

    # 4. Instance: insert; a conflict on the SOP Instance UID is a duplicate (roll back all)
    #    unless retention had deleted the file, in which case the row is revived. A copy that
    #    names another series (so another study too, possibly) or SOP class is a conflict,
    #    refused whether or not retention deleted the file: one UID, one object.
    values = dict(
        series_id=series_id,
        sop_class_uid=rec.sop_class_uid,
        transfer_syntax_uid=rec.transfer_syntax_uid,
        path=rec.path,
        size_bytes=rec.size_bytes,
        received_at=now,
        study_revision=revision,
        ignored=False,
        calling_ae=calling_ae,
    )
    created = _insert_ignore(conn, instances, dict(sop_instance_uid=rec.sop_instance_uid, **values), "sop_instance_uid")
    if created is not None:
        instance_id, status = created.id, "stored"
    else:
        existing = conn.execute(_FIND_INSTANCE, {"b_uid": rec.sop_instance_uid}).one()
        if existing.series_id != series_id or existing.sop_class_uid != rec.sop_class_uid:
            conflict = _conflict(existing.study_uid, existing.series_uid, existing.sop_class_uid,
                                 rec.study_uid, rec.series_uid, rec.sop_class_uid)
            assert conflict is not None
            raise conflict
        if existing.deleted_at is None:
            raise _Duplicate(IndexOutcome("duplicate", study_id, existing.series_id, existing.id, revision))
        conn.execute(update(instances).where(instances.c.id == existing.id).values(deleted_at=None, **values))
        instance_id, status = existing.id, "restored"

    if new_revision:
        # The audit row joins this transaction (committed or rolled back with the instance).
        with Session(bind=conn) as session:
            ctx.auditor.record(
                "study_revision",
                actor_ae=calling_ae,
                actor_address=peer_address,
                study_uid=rec.study_uid,
                series_uid=rec.series_uid,
                session=session,
                revision=revision,
                previous_state=previous_state,
                reason="instance received after the study left the receiving state",
                sop_instance_uid=rec.sop_instance_uid,
            )
            session.flush()
    return IndexOutcome(
        status,
        study_id,
        series_id,
        instance_id,
        revision,
        new_revision=new_revision,
        new_study=new_study,
        new_series=new_series,
        previous_state=previous_state,
    )


def spool_usage(engine: Engine) -> int:
    """Bytes of the instances currently on disk according to the index."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.coalesce(func.sum(instances.c.size_bytes), 0)).where(instances.c.deleted_at.is_(None))
            ).scalar_one()
        )


def indexed_among(engine: Engine, paths: list[str]) -> set[str]:
    """Those of the spool ``paths`` (``study/series/sop.dcm``) that have an instance row whose
    file was not deleted by retention. Looked up by SOP Instance UID (the unique index)."""
    found: set[str] = set()
    sops = [p.rsplit("/", 1)[-1][: -len(".dcm")] for p in paths]
    with engine.connect() as conn:
        for i in range(0, len(sops), 500):
            rows = conn.execute(
                select(instances.c.path).where(
                    instances.c.sop_instance_uid.in_(sops[i : i + 500]), instances.c.deleted_at.is_(None)
                )
            ).scalars()
            found.update(rows)
    return found & set(paths)
