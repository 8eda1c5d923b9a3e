"""The audit trail is tamper-evident (issue 18): a hash chain that `dsm-node audit --verify`
walks; deleted, altered and foreign rows are reported; CSV export neutralises formulas;
events reach syslog only after their transaction committed, also over TLS (RFC 5425)."""
from __future__ import annotations

import csv
import io
import socket
import ssl
import subprocess
import sys
import threading

import pytest
from sqlalchemy import select, text

from dsm_node.audit_chain import GENESIS, verify
from dsm_node.context import build_context
from dsm_node.db.engine import upgrade
from dsm_node.db.models import AuditChain, AuditEvent
from dsm_node.settings import load_settings
from tests.tools import REPO, require_tool


@pytest.fixture(scope="module")
def postgres():
    from tests.pg import postgres_server

    with postgres_server() as server:
        yield server


def make_ctx(tmp_path, config: str = ""):
    cfg = tmp_path / "node.yaml"
    cfg.write_text(config or "logging:\n  file: false\n")
    return build_context(load_settings(cfg, {"storage.data_dir": tmp_path / "data"})), cfg


def audit_cli(cfg, data, *args):
    return subprocess.run([sys.executable, "-m", "dsm_node", "audit", "--config", str(cfg), "--data-dir", str(data),
                           *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def sql(ctx, statement: str, **params) -> None:
    with ctx.engine.begin() as conn:
        conn.execute(text(statement), params)


def test_chain_is_gapless_across_commits_and_rollbacks(tmp_path):
    ctx, _ = make_ctx(tmp_path)
    ctx.auditor.record("application_start", version="t")
    try:
        with ctx.sessions() as s, s.begin():
            ctx.auditor.record("echo", session=s)
            raise RuntimeError("rolled back")
    except RuntimeError:
        pass
    with ctx.sessions() as s, s.begin():
        ctx.auditor.record("echo", session=s, actor_ae="A")
        ctx.auditor.record("echo", session=s, actor_ae="B")
    with ctx.sessions() as s:
        rows = s.scalars(select(AuditEvent).order_by(AuditEvent.chain_seq)).all()
        assert [r.chain_seq for r in rows] == [1, 2, 3]
        assert rows[0].chain_prev == GENESIS and rows[1].chain_prev == rows[0].chain_hash
        assert s.get(AuditChain, 1).seq == 3 and s.get(AuditChain, 1).hash == rows[2].chain_hash
        report = verify(s)
    assert report.ok and report.rows == 3
    ctx.close()


def test_verify_reports_deleted_altered_and_foreign_rows(tmp_path):
    ctx, cfg = make_ctx(tmp_path)
    for i in range(6):
        ctx.auditor.record("association_rejected", outcome=8, actor_ae=f"AE{i}", reason="unknown peer")
    data = tmp_path / "data"
    done = audit_cli(cfg, data, "--verify")
    assert done.returncode == 0 and "6 rows, head at position 6: intact" in done.stdout

    sql(ctx, "DELETE FROM audit_events WHERE chain_seq = 2")
    sql(ctx, "UPDATE audit_events SET detail = :d WHERE chain_seq = 4", d='{"reason": "nothing to see"}')
    sql(ctx, "DELETE FROM audit_events WHERE chain_seq = 6")
    sql(ctx, "INSERT INTO audit_events (time, event_type, event_code, event_action, outcome, detail) "
             "VALUES ('2026-01-01 00:00:00.000000', 'echo', '110100', 'E', 0, '{}')")
    done = audit_cli(cfg, data, "--verify")
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "TAMPERED: rows deleted: chain positions 2..2 missing" in out
    assert "TAMPERED: row altered: position 4" in out
    assert "TAMPERED: rows deleted at the end: chain positions 6..6 missing" in out
    assert "TAMPERED: 1 row(s) outside the chain" in out
    ctx.close()


def test_a_rewritten_chain_is_caught_by_an_anchor_kept_outside(tmp_path):
    ctx, cfg = make_ctx(tmp_path)
    first = ctx.auditor.record("echo", actor_ae="A")
    ctx.auditor.record("echo", actor_ae="B")
    anchor = f"{first.chain_seq}:{first.chain_hash}"
    # Someone with write access changes row 1 and recomputes every hash after it.
    sql(ctx, "UPDATE audit_events SET actor_ae = 'Z' WHERE chain_seq = 1")
    with ctx.sessions() as s, s.begin():
        from dsm_node.audit_chain import row_hash

        prev = GENESIS
        for row in s.scalars(select(AuditEvent).order_by(AuditEvent.chain_seq)):
            row.chain_prev, row.chain_hash = prev, row_hash(prev, row)
            prev = row.chain_hash
        s.get(AuditChain, 1).hash = prev
    assert audit_cli(cfg, tmp_path / "data", "--verify").returncode == 0  # self-consistent again
    done = audit_cli(cfg, tmp_path / "data", "--verify", "--anchor", anchor)
    assert done.returncode == 1 and "position 1 differs from its anchor" in done.stdout
    ctx.close()


def test_rows_written_before_the_chain_existed_are_chained_by_the_migration(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0001")
    from sqlalchemy import create_engine

    engine = create_engine(url)
    with engine.begin() as conn:
        for ae in ("OLD1", "OLD2"):
            conn.execute(text("INSERT INTO audit_events (time, event_type, event_code, event_action, outcome, actor_ae,"
                              " detail) VALUES ('2026-11-30 10:00:00.000000', 'echo', '110100', 'E', 0, :ae, "
                              "'{\"n\": 1}')"), {"ae": ae})
    engine.dispose()
    ctx = build_context(load_settings(overrides={"storage.data_dir": tmp_path / "data", "database.url": url}))
    ctx.auditor.record("echo", actor_ae="NEW")
    with ctx.sessions() as s:
        assert [r.actor_ae for r in s.scalars(select(AuditEvent).order_by(AuditEvent.chain_seq))] == ["OLD1", "OLD2", "NEW"]
        assert verify(s).ok
    ctx.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_writers_keep_one_chain(tmp_path, backend, request):
    overrides = {"storage.data_dir": tmp_path / "data"}
    if backend == "postgresql":
        overrides["database.url"] = request.getfixturevalue("postgres").new_database()
    ctx = build_context(load_settings(overrides=overrides))

    def write(n: int) -> None:
        for i in range(25):
            ctx.auditor.record("echo", actor_ae=f"T{n}", i=i)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with ctx.sessions() as s:
        report = verify(s)
    assert report.ok, report.problems
    assert report.rows == 100 and report.head_seq == 100
    ctx.close()


def test_csv_export_neutralises_formulas(tmp_path):
    ctx, cfg = make_ctx(tmp_path)
    ctx.auditor.record("association_rejected", outcome=8, actor_ae="=cmd|'/c calc'!A", actor_address="@evil",
                       reason="+1 unknown")
    ctx.close()
    done = audit_cli(cfg, tmp_path / "data", "--csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert rows[0]["actor_ae"] == "'=cmd|'/c calc'!A" and rows[0]["actor_address"] == "'@evil"
    assert rows[0]["outcome"] == "8"
    for row in rows:
        assert not any(str(v).startswith(("=", "+", "-", "@", "\t", "\r")) for v in row.values())


def _udp_listener():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(0.5)
    return rx


def test_syslog_gets_events_only_after_commit(tmp_path):
    rx = _udp_listener()
    port = rx.getsockname()[1]
    ctx, _ = make_ctx(tmp_path, f"logging:\n  file: false\naudit:\n  syslog:\n    enabled: true\n    port: {port}\n")
    try:
        with ctx.sessions() as s, s.begin():
            ctx.auditor.record("echo", session=s, actor_ae="ROLLEDBACK")
            s.rollback()
        with ctx.sessions() as s, s.begin():
            ctx.auditor.record("echo", session=s, actor_ae="COMMITTED")
            ctx.auditor._syslog.flush()
            with pytest.raises(TimeoutError):
                rx.recvfrom(65536)  # nothing leaves before the commit
        ctx.auditor._syslog.flush()
        rx.settimeout(10)
        message = rx.recvfrom(65536)[0]
        assert b'ActorAE="COMMITTED"' in message and b"ChainSeq=\"1\"" in message
        rx.settimeout(0.5)
        with pytest.raises(TimeoutError):
            rx.recvfrom(65536)  # and nothing of the rolled-back one
    finally:
        rx.close()
        ctx.close()


def test_syslog_over_tls_rfc5425(tmp_path):
    from tests.peers import make_certificates

    pki = make_certificates(tmp_path / "pki", require_tool("openssl"))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(pki["server_cert"]), str(pki["server_key"]))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            buf = b""
            while len(received) < 2:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                buf += chunk
                while b" " in buf:  # octet counting: MSG-LEN SP SYSLOG-MSG
                    length, _, rest = buf.partition(b" ")
                    if len(rest) < int(length):
                        break
                    received.append(rest[: int(length)])
                    buf = rest[int(length):]

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    config = (f"logging:\n  file: false\naudit:\n  syslog:\n    enabled: true\n    protocol: tls\n    port: {port}\n"
              f"    ca_file: {pki['ca']}\n")
    ctx, _ = make_ctx(tmp_path, config)
    try:
        ctx.auditor.record("association_rejected", outcome=8, actor_ae="EVIL", reason="unknown peer")
        ctx.auditor.record("echo", actor_ae="PACS")
        assert ctx.auditor._syslog.flush()
        thread.join(10)
    finally:
        listener.close()
        ctx.close()
    assert len(received) == 2
    assert b'EventID="110113"' in received[0] and b'ActorAE="EVIL"' in received[0]
    assert b'ChainSeq="2"' in received[1]
