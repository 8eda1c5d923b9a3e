"""PostgreSQL with ``sslmode=verify-full`` (issue 18): the documented URL form works end to end
(migrations, writes), refuses a server whose certificate the given CA did not sign, and the
connection really is TLS."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from dsm_node.context import build_context
from dsm_node.settings import load_settings, masked_dump
from tests.pg import postgres_server
from tests.tools import require_tool


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from tests.peers import make_certificates

    return make_certificates(tmp_path_factory.mktemp("pki"), require_tool("openssl"))


def test_postgresql_verify_full(tmp_path, pki):
    with postgres_server(ssl_cert=pki["server_cert"], ssl_key=pki["server_key"]) as server:
        plain = server.new_database()
        url = f"{plain}?sslmode=verify-full&sslrootcert={pki['ca']}"
        ctx = build_context(load_settings(overrides={"storage.data_dir": tmp_path / "a", "database.url": url}))
        try:
            ctx.auditor.record("application_start", version="tls")
            with ctx.engine.connect() as conn:
                assert conn.execute(text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).scalar() is True
        finally:
            ctx.close()
        wrong_ca = f"{plain}?sslmode=verify-full&sslrootcert={pki['other_ca']}"
        with pytest.raises(Exception, match="certificate verify failed"):
            build_context(load_settings(overrides={"storage.data_dir": tmp_path / "b", "database.url": wrong_ca}))
        # check-config shows the URL with its TLS parameters but no secret.
        secret = f"{plain.replace('dsm@', 'dsm:pg-s3cret@')}?sslmode=verify-full&sslpassword=key-s3cret"
        dumped = repr(masked_dump(load_settings(overrides={"database.url": secret})))
        assert "s3cret" not in dumped and "sslmode=verify-full" in dumped
