"""``dsm-node audit --syslog`` end to end (issue 7): the CLI reads the SQL audit trail and sends
RFC 5424 messages with PS3.15 codes to a UDP listener. (The sender's message format is unit
tested in tests/foundation/test_db_audit.py::test_syslog_rfc5424_over_udp.)"""
from __future__ import annotations

import re
import socket
import subprocess
import sys

from dsm_node.context import build_context
from dsm_node.settings import load_settings
from tests.tools import REPO

RFC5424 = re.compile(rb"^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) (\[.*\]|-) ?(.*)$", re.S)


def test_audit_syslog_cli_exports_events_with_ps315_codes(tmp_path):
    data = tmp_path / "data"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(10)
        port = rx.getsockname()[1]
        config = tmp_path / "node.yaml"
        config.write_text(f"audit:\n  syslog:\n    enabled: false\n    host: 127.0.0.1\n    port: {port}\n    protocol: udp\n")
        ctx = build_context(load_settings(config, {"storage.data_dir": data}))
        try:
            ctx.auditor.record("association_rejected", outcome=8, actor_ae="EVIL", actor_address="127.0.0.2",
                               reason="calling AE title not allowed")
            ctx.auditor.record("retention_deleted", study_uid="1.2.3.4", reason="age", instances_deleted=3)
            ctx.auditor.record("instance_stored", actor_ae="PACS", study_uid="1.2.3.4")
        finally:
            ctx.close()
        done = subprocess.run([sys.executable, "-m", "dsm_node", "audit", "--syslog", "--config", str(config),
                               "--data-dir", str(data)], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"sent 3 events to 127.0.0.1:{port}" in done.stdout
        messages = [rx.recvfrom(65536)[0] for _ in range(3)]
    parsed = [RFC5424.match(m) for m in messages]
    assert all(parsed), messages
    text = b"\n".join(messages)
    print("\n" + text.decode(errors="replace"))
    rejected, deleted, stored = messages
    assert b'EventID="110113"' in rejected and b'EventTypeCode="110126"' in rejected and b'ActorAE="EVIL"' in rejected
    assert b'EventID="110105"' in deleted and b'EventActionCode="D"' in deleted
    assert b'EventID="110104"' in stored
    # Severity follows the outcome: the serious failure is an error (3), the others informational (6).
    assert int(parsed[0].group(1)) % 8 == 3 and int(parsed[1].group(1)) % 8 == 6
