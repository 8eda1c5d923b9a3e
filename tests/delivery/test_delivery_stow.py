"""STOW-RS destinations (kind: stow) against Orthanc's DICOMweb plugin as the real peer: basic
auth, HTTPS with certificate verification, wrong credentials to dead letter and resend, and
Orthanc stopped in the middle of a batch."""
from __future__ import annotations

import io
import json
import threading
import time

import pydicom
import pytest

from dsm_node.audit import SERIOUS_FAILURE, SUCCESS
from dsm_node.commands import resend
from dsm_node.db.models import DeliveryState
from dsm_node.delivery import stow
from dsm_node.settings import ConfigError, load_settings, masked_dump
from tests.peers import OrthancWeb, make_certificates
from tests.tools import free_port, require_tool

USERS = {"dsm": "s3cret-pw"}


def stow_destination(url: str, **extra) -> dict:
    return {"name": "web", "kind": "stow", "url": url, **extra}


def basic(user: str = "dsm", password: str = "s3cret-pw") -> dict:
    return {"type": "basic", "username": user, "password": password}


@pytest.fixture
def orthanc_tool():
    require_tool("Orthanc")
    import os

    if not os.path.exists("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"):
        from tests.tools import missing

        missing("the Orthanc DICOMweb plugin is not installed (Debian: orthanc-dicomweb)")


def test_results_reach_orthanc_by_stow_rs_with_basic_auth(make_node, result_files, net, tmp_path, orthanc_tool):
    peer = OrthancWeb(net, tmp_path / "orthanc", free_port(), users=USERS).start()
    try:
        node = make_node(destinations=[stow_destination(peer.url, auth=basic())])
        files = [result_files[k] for k in ("SEG", "SR", "SC")]
        node.add_results(files)
        assert node.deliver() == 3
        stored = peer.instances()
    finally:
        peer.stop()
    rows = node.rows()
    assert [(r.state, r.attempts, r.last_status) for r in rows] == [(DeliveryState.DELIVERED, 1, "HTTP 200")] * 3
    assert rows[0].host == "127.0.0.1" and rows[0].ae_title == ""
    for f in files:
        got = pydicom.dcmread(io.BytesIO(stored[f.sop_instance_uid]))
        assert got.SOPClassUID == f.sop_class_uid
        if f.kind == "SEG":
            assert got.PixelData == pydicom.dcmread(f.path).PixelData
    attempts = node.events("delivery_attempt")
    assert {e.outcome for e in attempts} == {SUCCESS} and attempts[0].actor_ae is None
    assert attempts[0].detail["destination"] == "web" and attempts[0].detail["status"] == "HTTP 200"
    # nothing about the password in the audit trail
    assert "s3cret" not in json.dumps([e.detail for e in node.events("delivery_attempt")])


def test_wrong_password_dead_letters_then_resend_delivers(make_node, result_files, net, tmp_path, orthanc_tool):
    peer = OrthancWeb(net, tmp_path / "orthanc", free_port(), users=USERS).start()
    try:
        node = make_node(destinations=[stow_destination(peer.url, auth=basic(password="wrong"))], max_attempts=2)
        node.add_results([result_files["SR"]])
        node.deliver()
        node.wait_until_due()
        node.deliver()
        (row,) = node.rows()
        assert (row.state, row.attempts, row.last_status) == (DeliveryState.DEAD, 2, "HTTP 401")
        assert {e.outcome for e in node.events("delivery_attempt")} == {SERIOUS_FAILURE}
        assert len(node.events("delivery_dead_letter")) == 1
        # the operator fixes the password and re-sends
        node.configure({"destinations": [stow_destination(peer.url, auth=basic())]})
        rc, out, err = node.cli(resend, str(row.id))
        assert rc == 0, err
        node.deliver()
        assert result_files["SR"].sop_instance_uid in peer.instances()
    finally:
        peer.stop()
    (row,) = node.rows()
    assert (row.state, row.attempts, row.last_status) == (DeliveryState.DELIVERED, 1, "HTTP 200")


class _StowStub:
    """A minimal STOW-RS endpoint (stores nothing, answers 200) over HTTP or HTTPS, recording
    each request's path and headers. For what Orthanc cannot do here: Orthanc 1.10.1 (Debian
    12) crashes in civetweb on any HTTPS request (segfault, seen with curl too)."""

    def __init__(self, certs: dict | None = None) -> None:
        import ssl
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                seen.append((self.path, self.headers.get("Authorization"), self.headers.get("Content-Type")))
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if certs is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(certs["server_cert"]), str(certs["server_key"]))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_port}/pacs/dicom-web"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


def test_https_certificate_is_verified(make_node, result_files, net, tmp_path):
    certs = make_certificates(tmp_path / "pki", require_tool("openssl"))
    stub = net.call(_StowStub, certs)  # listening inside the test network, where the node sends
    try:
        trusted = make_node(destinations=[stow_destination(stub.url, web_tls={"ca_file": str(certs["ca"])})])
        trusted.add_results([result_files["SR"]])
        trusted.deliver()
        other = make_node(destinations=[stow_destination(stub.url, web_tls={"ca_file": str(certs["other_ca"])})])
        other.add_results([result_files["SC"]])
        other.deliver()
        unchecked = make_node(destinations=[stow_destination(stub.url, web_tls={"verify": False})])
        unchecked.add_results([result_files["SEG"]])
        unchecked.deliver()
    finally:
        stub.stop()
    assert [(r.state, r.last_status) for r in trusted.rows()] == [(DeliveryState.DELIVERED, "HTTP 200")]
    (row,) = other.rows()
    assert (row.state, row.last_status) == (DeliveryState.PENDING, "tls_error")
    assert "CERTIFICATE_VERIFY_FAILED" in row.last_error
    assert [r.state for r in unchecked.rows()] == [DeliveryState.DELIVERED]
    assert len(stub.seen) == 2  # the untrusted server never saw the instance


def test_orthanc_stopped_mid_delivery_loses_nothing_and_stores_each_once(make_node, net, tmp_path, orthanc_tool,
                                                                         monkeypatch):
    from tests.delivery.delivery_objects import build_results

    batches = [build_results(tmp_path / f"set{i}") for i in range(3)]
    files = [b[k] for b in batches for k in ("SEG", "SR", "SC")]
    port = free_port()
    peer = OrthancWeb(net, tmp_path / "orthanc", port, users=USERS).start()
    node = make_node(destinations=[stow_destination(peer.url, auth=basic())], max_attempts=50)
    for b in batches:
        node.add_results([b[k] for k in ("SEG", "SR", "SC")])
    # Orthanc goes down right after it has answered the 4th instance of the batch.
    answered = []
    real_post = stow._post

    def post_then_maybe_stop(*args, **kwargs):
        outcome = real_post(*args, **kwargs)
        answered.append(outcome.status)
        if len(answered) == 4:
            peer.stop()
        return outcome

    monkeypatch.setattr(stow, "_post", post_then_maybe_stop)
    attempted = node.deliver()
    assert attempted == len(files)
    states = [r.state for r in node.rows()]
    assert states.count(DeliveryState.DELIVERED) == 4 and states.count(DeliveryState.PENDING) == len(files) - 4
    failed = [r for r in node.rows() if r.state == DeliveryState.PENDING]
    assert {r.last_status for r in failed} <= {"refused", "aborted", "connect_failed"}
    # Orthanc comes back (same storage); the service delivers the rest by itself
    peer = OrthancWeb(net, tmp_path / "orthanc", port, users=USERS).start()
    try:
        net.call(node.service.start)
        deadline = time.monotonic() + 30
        while any(r.state != DeliveryState.DELIVERED for r in node.rows()):
            assert time.monotonic() < deadline, [(r.state, r.last_status) for r in node.rows()]
            time.sleep(0.05)
        node.service.stop()
        stored = peer.instances()
    finally:
        peer.stop()
    assert sorted(stored) == sorted(f.sop_instance_uid for f in files)  # each exactly once in Orthanc
    rows = node.rows()
    assert all(r.state == DeliveryState.DELIVERED for r in rows)
    delivered_events = [e for e in node.events("delivery_attempt") if e.outcome == SUCCESS]
    assert sorted(e.detail["delivery_id"] for e in delivered_events) == sorted(r.id for r in rows)


def test_bearer_token_and_masked_secrets(tmp_path):
    """The token goes out as 'Authorization: Bearer'; check-config masks tokens and passwords."""
    import yaml

    from dsm_node.delivery.scu import Outgoing
    from dsm_node.delivery.targets import configured_targets
    from tests.delivery.delivery_objects import build_results

    stub = _StowStub()
    sr = build_results(tmp_path / "r")["SR"]
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"delivery": {"destinations": [
        stow_destination(stub.url, auth={"type": "bearer", "token": "tok-123"}),
        stow_destination(stub.url, name="b", auth=basic(password="pw-456"))]}}))
    settings = load_settings(config)
    target = configured_targets(settings)[0]
    try:
        ((_item, outcome),) = list(stow.send_batch(target, [Outgoing(1, sr.sop_instance_uid, sr.path)],
                                                    calling_ae="X", timeout_s=5))
    finally:
        stub.stop()
    assert outcome.delivered and outcome.status == "HTTP 200" and not outcome.warning
    ((path, auth, content_type),) = stub.seen
    assert (path, auth) == ("/pacs/dicom-web/studies", "Bearer tok-123")
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    dumped = json.dumps(masked_dump(settings))
    assert "tok-123" not in dumped and "pw-456" not in dumped and dumped.count("***") == 2
    with pytest.raises(ConfigError, match="stow destination needs url"):
        config.write_text(yaml.safe_dump({"delivery": {"destinations": [{"name": "x", "kind": "stow"}]}}))
        load_settings(config)
    with pytest.raises(ConfigError, match="credentials in auth"):
        config.write_text(yaml.safe_dump({"delivery": {"destinations": [stow_destination("http://u:p@h/dw")]}}))
        load_settings(config)
    with pytest.raises(ConfigError, match="dimse destination needs"):
        config.write_text(yaml.safe_dump({"delivery": {"destinations": [{"name": "x", "ae_title": "PACS"}]}}))
        load_settings(config)
