import json
import socket

from sqlalchemy import inspect, select

from dsm_node.audit import EVENTS, SERIOUS_FAILURE, query_events
from dsm_node.context import build_context
from dsm_node.db.engine import current_revision
from dsm_node.db.models import AuditEvent
from dsm_node.settings import load_settings
from dsm_node.syslog import SyslogSender, format_rfc5424


def make_ctx(tmp_path, **overrides):
    return build_context(load_settings(overrides={"storage.data_dir": tmp_path, **overrides}))


def test_migrations_create_every_table(tmp_path):
    ctx = make_ctx(tmp_path)
    tables = set(inspect(ctx.engine).get_table_names())
    assert {"studies", "series", "instances", "jobs", "results", "deliveries", "audit_events"} <= tables
    assert current_revision(ctx.settings.database_url) is not None
    with ctx.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_audit_rows_carry_ps315_codes(tmp_path):
    ctx = make_ctx(tmp_path)
    ctx.auditor.record("association_rejected", outcome=SERIOUS_FAILURE, actor_ae="EVIL", actor_address="10.0.0.9",
                       reason="unknown peer")
    ctx.auditor.record("application_start")
    with ctx.sessions() as s:
        events = query_events(s)
        rejected = query_events(s, event_type="association_rejected")
    assert [e.event_type for e in events] == ["association_rejected", "application_start"]
    assert rejected[0].event_code == "110113" and rejected[0].outcome == 8
    assert rejected[0].detail == {"reason": "unknown peer"}
    assert events[1].event_code == "110100"
    assert all(k.code.startswith("1101") for k in EVENTS.values())


def test_audit_in_callers_transaction_rolls_back_with_it(tmp_path):
    ctx = make_ctx(tmp_path)
    try:
        with ctx.sessions() as s, s.begin():
            ctx.auditor.record("echo", session=s)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    with ctx.sessions() as s:
        assert s.scalars(select(AuditEvent)).all() == []


def test_syslog_rfc5424_over_udp(tmp_path):
    ctx = make_ctx(tmp_path)
    event = ctx.auditor.record("association_rejected", outcome=8, actor_ae="X", actor_address="10.1.1.1", reason='bad "peer"')
    line = format_rfc5424(event, EVENTS["association_rejected"], "DSMNODE", hostname="node1").decode()
    assert line.startswith("<83>1 ")  # facility 10 (auth) * 8 + severity 3 (outcome 8 = error)
    assert 'EventID="110113"' in line and 'EventTypeCode="110126"' in line and 'ActorAE="X"' in line
    assert json.loads(line.split("] ", 1)[1]) == {"reason": 'bad "peer"'}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        cfg = ctx.settings.audit.syslog.model_copy(update={"enabled": True, "port": rx.getsockname()[1]})
        SyslogSender(cfg, "DSMNODE").send(event, EVENTS["association_rejected"])
        data, _ = rx.recvfrom(65536)
    assert b'EventID="110113"' in data


def test_migrations_match_the_models(tmp_path):
    """A schema change without its Alembic migration fails here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from dsm_node.db.models import Base

    ctx = make_ctx(tmp_path)
    with ctx.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_datetimes_come_back_timezone_aware(tmp_path):
    ctx = make_ctx(tmp_path)
    event = ctx.auditor.record("echo")
    with ctx.sessions() as s:
        assert s.get(AuditEvent, event.id).time.tzinfo is not None
