import os
import stat
import subprocess
import sys

import pytest

from dsm_node import config_doc
from dsm_node.settings import ConfigError, Settings, config_warnings, load_settings, masked_dump


def test_defaults_are_secure_and_local():
    s = Settings()
    assert s.dicom.host == "127.0.0.1" and s.dicom.peers == []
    assert s.http.host == "127.0.0.1"
    assert s.storage.fsync is True
    assert s.database_url.startswith("sqlite:///") and s.database_url.endswith("var/dsm-node.db")


def test_precedence_file_env_flags(tmp_path, monkeypatch):
    cfg = tmp_path / "node.yaml"
    cfg.write_text("dicom:\n  port: 1000\n  ae_title: FILEAE\ncompleteness:\n  quiet_period_s: 5\n")
    monkeypatch.setenv("DSM_NODE__DICOM__PORT", "2000")
    s = load_settings(cfg, {"dicom.ae_title": "FLAGAE"})
    assert s.dicom.port == 2000  # env beats file
    assert s.dicom.ae_title == "FLAGAE"  # flags beat everything
    assert s.completeness.quiet_period_s == 5  # file beats defaults
    assert s.dicom.max_pdu == Settings().dicom.max_pdu  # sibling keys keep their defaults


@pytest.mark.parametrize(
    "text, key",
    [
        ("dicom:\n  prot: 104\n", "dicom.prot: unknown key"),
        ("dicom:\n  port: 70000\n", "dicom.port"),
        ("dicom:\n  ae_title: THIS_AE_TITLE_IS_TOO_LONG\n", "dicom.ae_title"),
        ("dicom:\n  peers:\n    - {ae_title: PACS, networks: [not-a-cidr]}\n", "dicom.peers.0.networks"),
        ("results:\n  uid_root: '1.02.3.'\n", "results.uid_root"),
        ("dicom:\n  tls: {enabled: true}\n", "dicom.tls"),
        ("selection:\n  rules:\n    - {tag: SeriesDescription}\n", "selection.rules.0"),
    ],
)
def test_errors_name_the_bad_key(tmp_path, text, key):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert key in str(err.value)
    assert str(cfg) in str(err.value)


def test_unknown_env_key_is_an_error(monkeypatch):
    monkeypatch.setenv("DSM_NODE__STORAGE__QUOTA", "1")
    with pytest.raises(ConfigError, match="storage.quota: unknown key"):
        load_settings()


def test_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(bad)


def test_secrets_are_masked_and_world_readable_warning(tmp_path):
    cfg = tmp_path / "node.yaml"
    cfg.write_text("database:\n  url: postgresql://dsm:s3cret@127.0.0.1/dsm\n")
    os.chmod(cfg, 0o644)
    s = load_settings(cfg)
    dumped = masked_dump(s)
    assert "s3cret" not in repr(dumped)
    assert dumped["database"]["url"] == "postgresql://dsm:***@127.0.0.1/dsm"
    assert s.database_url.endswith("s3cret@127.0.0.1/dsm")
    warnings = config_warnings(s, cfg)
    assert any("world-readable" in w for w in warnings)
    os.chmod(cfg, 0o600)
    assert not any("world-readable" in w for w in config_warnings(s, cfg))


def test_node_yaml_and_reference_are_generated_and_current():
    assert config_doc.YAML_PATH.read_text() == config_doc.render_yaml(), "run: python -m dsm_node.config_doc --write"
    assert config_doc.DOC_PATH.read_text() == config_doc.render_markdown(), "run: python -m dsm_node.config_doc --write"
    assert load_settings(config_doc.YAML_PATH) == Settings()


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "dsm_node", *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def test_check_config_cli(tmp_path):
    cfg = tmp_path / "node.yaml"
    cfg.write_text("dicom:\n  port: 4242\ndatabase:\n  url: postgresql://u:pw@127.0.0.1/x\n")
    os.chmod(cfg, stat.S_IRUSR | stat.S_IWUSR)
    out = run_cli("check-config", "--config", str(cfg), "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 0, out.stderr
    assert "port: 4242" in out.stdout and "u:***@" in out.stdout and "pw@" not in out.stdout
    cfg.write_text("dicom:\n  portt: 1\n")
    out = run_cli("check-config", "--config", str(cfg))
    assert out.returncode == 2
    assert "dicom.portt: unknown key" in out.stderr


def test_renamed_key_old_spelling_still_loads(tmp_path, monkeypatch, caplog):
    """results.organs_include_tumours (before the identifiers took the catalog's "tumor") is
    read from YAML and the environment as organs_include_tumors, with a warning."""
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text("results:\n  organs_include_tumours: true\n  seg_type: BINARY\n")
    new.write_text("results:\n  organs_include_tumors: true\n  seg_type: BINARY\n")
    with caplog.at_level("WARNING", logger="dsm_node.settings"):
        s = load_settings(old)
    assert s == load_settings(new) and s.results.organs_include_tumors is True
    assert "results.organs_include_tumours is deprecated, use results.organs_include_tumors" in caplog.text
    monkeypatch.setenv("DSM_NODE__RESULTS__ORGANS_INCLUDE_TUMOURS", "true")
    assert load_settings() == load_settings(new)  # not an unknown environment key either
    monkeypatch.delenv("DSM_NODE__RESULTS__ORGANS_INCLUDE_TUMOURS")
    os.chmod(old, stat.S_IRUSR | stat.S_IWUSR)
    out = run_cli("check-config", "--config", str(old), "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 0, out.stderr
    assert "organs_include_tumors: true" in out.stdout and "organs_include_tumours" not in out.stdout


def test_unknown_environment_section_is_an_error(monkeypatch):
    monkeypatch.setenv("DSM_NODE__DATABSE__URL", "postgresql://x")
    with pytest.raises(ConfigError, match=r"databse: unknown key \(from DSM_NODE__DATABSE__URL\)"):
        load_settings()
    monkeypatch.delenv("DSM_NODE__DATABSE__URL")
    monkeypatch.setenv("DSM_NODE__DICOM__TLS__KEYFILE", "/x")
    with pytest.raises(ConfigError, match="dicom.tls.keyfile: unknown key"):
        load_settings()
    monkeypatch.delenv("DSM_NODE__DICOM__TLS__KEYFILE")
    monkeypatch.setenv("DSM_NODE__DICOM__TLS__ENABLED", "false")  # nested keys that exist are fine
    monkeypatch.setenv("DSM_NODE__DATABASE__URL", "sqlite:///x.db")
    assert load_settings().database_url == "sqlite:///x.db"


def test_secrets_anywhere_in_a_url_are_masked():
    from dsm_node.settings import mask_url

    s = load_settings(overrides={
        "database.url": "postgresql+psycopg://dsm:pw1@db/dsm?sslmode=verify-full&sslpassword=pw2",
        "executor.broker_url": "rediss://:pw3@redis:6380/0?ssl_cert_reqs=required",
        "delivery.destinations": [{"name": "x", "ae_title": "X", "host": "h", "port": 104}],
    })
    dumped = repr(masked_dump(s))
    assert not any(p in dumped for p in ("pw1", "pw2", "pw3"))
    assert "sslmode=verify-full" in dumped and "ssl_cert_reqs=required" in dumped
    assert mask_url("redis://h/0?password=abc&db=1") == "redis://h/0?password=***&db=1"


def test_every_private_key_file_is_checked(tmp_path):
    keys = {name: tmp_path / f"{name}.key" for name in ("dicom", "dest", "syslog")}
    for path in keys.values():
        path.write_text("key")
        os.chmod(path, 0o600)
    s = load_settings(overrides={
        "dicom.tls": {"enabled": True, "cert_file": str(tmp_path / "c.pem"), "key_file": str(keys["dicom"]),
                      "require_client_cert": False},
        "delivery.destinations": [{"name": "pacs", "ae_title": "PACS", "host": "h", "port": 104,
                                   "tls": {"enabled": True, "key_file": str(keys["dest"]), "cert_file": str(tmp_path / "c.pem"),
                                           "require_client_cert": False}}],
        "audit.syslog": {"protocol": "tls", "key_file": str(keys["syslog"])},
    })
    assert not [w for w in config_warnings(s, None) if "private key" in w]
    # The operator guide's layout: root:<node's group> 0640 is fine for the node's own group.
    os.chmod(keys["dicom"], 0o640)
    os.chown(keys["dicom"], -1, os.getgid())
    assert not [w for w in config_warnings(s, None) if "private key" in w]
    os.chmod(keys["dest"], 0o644)
    os.chmod(keys["syslog"], 0o604)
    warned = [w for w in config_warnings(s, None) if "private key" in w]
    assert len(warned) == 2
    assert any(w.startswith("delivery.destinations.0.tls.key_file") for w in warned)
    assert any(w.startswith("audit.syslog.key_file") for w in warned)
