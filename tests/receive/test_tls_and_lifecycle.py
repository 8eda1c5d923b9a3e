"""TLS with client certificates, the in-process StorageSCP API, and the real CT study."""
from __future__ import annotations

import json
import ssl
import subprocess
import time

import pytest
from pynetdicom.sop_class import Verification

from dsm_node.context import build_context
from dsm_node.receive import StorageSCP
from dsm_node.receive.access import AccessPolicy, is_loopback
from dsm_node.settings import Dicom, load_settings
from tests.receive.receive_helpers import NODE_AE, echo, make_ae, storescu
from tests.tools import free_port, require_tool, shared_data


def detail(row):
    return row.detail if isinstance(row.detail, dict) else json.loads(row.detail)


def test_access_policy_decisions():
    default = AccessPolicy(Dicom())
    assert default.check("ANY", "DSMNODE", "127.0.0.1").allowed
    assert default.check("ANY", "DSMNODE", "127.8.9.10").allowed
    assert default.check("ANY", "DSMNODE", "::1").allowed
    assert default.check("ANY", "DSMNODE", "::ffff:127.0.0.1").allowed
    assert not default.check("ANY", "DSMNODE", "10.0.0.5").allowed
    assert not default.check("ANY", "OTHER", "127.0.0.1").allowed
    assert default.check("ANY", "OTHER", "127.0.0.1").reject == (1, 1, 7)
    peers = AccessPolicy(Dicom(peers=[{"ae_title": "PACS", "networks": ["10.1.0.0/16", "2001:db8::/32"]}]))
    assert peers.check("PACS", "DSMNODE", "10.1.2.3").allowed
    assert peers.check("PACS", "DSMNODE", "2001:db8::7").allowed
    assert peers.check("PACS", "DSMNODE", "::ffff:10.1.2.3").allowed
    assert not peers.check("PACS", "DSMNODE", "10.2.0.1").allowed
    assert not peers.check("PACS", "DSMNODE", "127.0.0.1").allowed  # no loopback exception with peers
    assert not peers.check("OTHER", "DSMNODE", "10.1.2.3").allowed
    assert peers.check("OTHER", "DSMNODE", "10.1.2.3").reject == (1, 1, 3)
    assert not is_loopback("not-an-address")
    lax = AccessPolicy(Dicom(require_called_ae=False))
    assert lax.check("ANY", "WHATEVER", "127.0.0.1").allowed


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    openssl = require_tool("openssl")
    d = tmp_path_factory.mktemp("pki")

    def run(*args):
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=Test CA")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={'localhost' if name == 'server' else 'PACS-CLIENT'}")
        (d / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    # A client certificate from a CA the node does not trust.
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out", "rogue.pem", "-days", "2",
        "-subj", "/CN=Rogue")
    return d


def client_ctx(pki, cert: str | None):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
    if cert:
        ctx.load_cert_chain(str(pki / f"{cert}.pem"), str(pki / f"{cert}.key"))
    return ctx


def test_tls_requires_a_trusted_client_certificate(node_factory, pki):
    node = node_factory(config={"dicom": {"tls": {
        "enabled": True, "cert_file": str(pki / "server.pem"), "key_file": str(pki / "server.key"),
        "ca_file": str(pki / "ca.pem"), "require_client_cert": True}}})
    assert echo(node.port, tls_args=(client_ctx(pki, "client"), "localhost")) == 0
    assert echo(node.port, tls_args=(client_ctx(pki, None), "localhost")) is None
    assert echo(node.port, tls_args=(client_ctx(pki, "rogue"), "localhost")) is None
    assert echo(node.port) is None  # plain TCP to a TLS port
    accepted = node.wait_audit("association_accepted")
    assert len(accepted) == 1 and detail(accepted[0])["tls_subject"] == "PACS-CLIENT"
    rejected = node.wait_audit("association_rejected", 3)
    assert len(rejected) >= 3
    assert all("TLS handshake failed" in detail(r)["reason"] for r in rejected)
    assert echo(node.port, tls_args=(client_ctx(pki, "client"), "localhost")) == 0  # still serving


def test_storage_scp_in_process_start_stop(tmp_path):
    settings = load_settings(None, {"storage.data_dir": str(tmp_path / "data"), "dicom.port": free_port(),
                                    "storage.min_free_bytes": 0})
    ctx = build_context(settings)
    scp = StorageSCP(ctx)
    with pytest.raises(RuntimeError):
        _ = scp.port  # not listening yet
    scp.start()
    try:
        assert scp.port == settings.dicom.port
        assert echo(scp.port) == 0
        # An association left open is aborted after the grace period.
        ae = make_ae("LINGER", [(Verification, None)])
        assoc = ae.associate("127.0.0.1", scp.port, ae_title=NODE_AE)
        assert assoc.is_established
        t0 = time.monotonic()
        scp.stop(timeout=0.5)
        assert time.monotonic() - t0 < 10
        deadline = time.monotonic() + 10
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not assoc.is_established
        assert echo(settings.dicom.port) is None  # no longer listening
        scp.stop()  # idempotent
    finally:
        scp.stop()
        ctx.close()


def test_real_ct_study_with_storescu(shared_node):
    folder = shared_data("01_tcia_pancreatic-ct-cbct-seg_CB001", "ct")
    files = sorted(folder.glob("*.dcm"))
    assert len(files) == 79
    res = storescu(shared_node.port, files)
    assert res.returncode == 0, res.stderr
    from pydicom import dcmread

    first = dcmread(files[0], stop_before_pixels=True)
    rows = shared_node.query("select s.instance_count, s.state from studies s where s.study_uid = :u",
                             u=str(first.StudyInstanceUID))
    assert rows and rows[0].instance_count == 79
    header = shared_node.query("select header, modality from series where series_uid = :u",
                               u=str(first.SeriesInstanceUID))[0]
    h = header.header if isinstance(header.header, dict) else json.loads(header.header)
    assert header.modality == "CT" and h["Rows"] == 512 and "PatientID" not in h
    assert str(first.PatientID) not in json.dumps(h)
