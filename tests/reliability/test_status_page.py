"""The /status page in-process (issue 7, administrator's view): content, escaping, empty state.

The page in a real node and in headless Chromium is checked in test_e2e_delivery_crash.py.
"""
from __future__ import annotations

import urllib.request

import pytest

from dsm_node.context import build_context
from dsm_node.db.engine import transaction
from dsm_node.db.models import Series, Study
from dsm_node.http import HttpService
from dsm_node.settings import load_settings
from dsm_node.status_page import register


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_status_page_escapes_and_shows_only_uids_and_counts(tmp_path, request, database):
    url = request.getfixturevalue("postgres").new_database() if database == "postgresql" else None
    ctx = build_context(load_settings(None, {"storage.data_dir": tmp_path / "data", "database.url": url}))
    http = HttpService(ctx, host="127.0.0.1", port=0)
    register(http, ctx)
    http.start()
    try:
        with urllib.request.urlopen(f"{http.url}/status", timeout=10) as r:
            empty = r.read().decode()
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
        assert "no studies yet" in empty and "no errors yet" in empty

        with transaction(ctx.sessions) as s:
            study = Study(study_uid="1.2.3.4.5", state="no_eligible", instance_count=7, calling_ae="PACS",
                          state_reason="<b>no eligible series</b>")
            s.add_all([study, Series(study=study, series_uid="1.2.3.4.5.6", modality="CT")])
        ctx.auditor.record("association_rejected", outcome=8, actor_ae="<script>", actor_address="127.0.0.1",
                           reason="<script>alert(1)</script>", patient_name="Must^NotShow")
        with urllib.request.urlopen(f"{http.url}/status", timeout=10) as r:
            page = r.read().decode()
        assert "1.2.3.4.5" in page and "no_eligible" in page and ">7<" in page
        assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "&lt;b&gt;no eligible series&lt;/b&gt;" in page
        assert "association_rejected" in page and "110113" in page and "serious failure" in page
        assert "Must^NotShow" not in page  # audit details pass an allow-list of keys
        assert 'http-equiv="refresh"' in page and "<link" not in page and "src=" not in page
    finally:
        http.stop()
        ctx.close()
