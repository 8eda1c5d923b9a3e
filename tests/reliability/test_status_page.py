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


def test_status_page_stays_within_1200_px_with_many_studies(tmp_path):
    """The reported defect: long reasons (a results path, a UID list) pushed the tables past the
    window. Rendered in headless Chromium at 1200 px with more studies than the page lists."""
    import re
    import subprocess

    from dsm_node.db.models import Delivery, Job, Result
    from dsm_node.status_page import ROWS, StatusPage
    from tests.tools import require_tool

    chromium = require_tool("chromium")
    ctx = build_context(load_settings(None, {"storage.data_dir": tmp_path / "data"}))
    path = "/var/lib/dsm-node/results/" + "1.2.826.0.1.3680043.8.498." + "7" * 36 + "/r1"
    try:
        with transaction(ctx.sessions) as s:
            for i in range(ROWS + 30):
                uid = f"1.2.826.0.1.3680043.8.498.{10 ** 30 + i}.{i}"
                failed = i % 2 == 0
                reason = (f"volume assembly: {path}/slice_{i}.dcm short pixel data" if failed
                          else f"no destination configured: results kept in {path}")
                study = Study(study_uid=uid, state="failed" if failed else "done", state_reason=reason,
                              instance_count=300, calling_ae="PACS_ARCHIVE_01", selected_series_uid=uid + ".2")
                job = Job(study=study, revision=1, series_uid=uid + ".2", state="failed" if failed else "kept",
                          reason=reason, attempts=3, worker=f"worker-{'x' * 40}.hospital.example.org:4242",
                          timings={"assembly": 1.0, "inference": 30.0, "encoding": 2.0, "total": 33.0})
                result = Result(job=job, kind="SEG", sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
                                sop_instance_uid=uid + ".9", series_uid=uid + ".8", path="x")
                s.add_all([study, job, result, Delivery(
                    result=result, destination="pacs-" + "y" * 40, ae_title="PACSARCHIVE_01", host="pacs.example.org",
                    port=104, state="dead", attempts=12, last_status="connect_failed",
                    last_error=f"[Errno 111] Connection refused: {path}")])
        ctx.auditor.record("instance_conflict", outcome=8, actor_ae="PACS", actor_address="127.0.0.1",
                           reason="SOP Instance UID already stored in another study", status="0xC213",
                           error="/".join(["1.2.826.0.1.3680043.8.498.12345678901234567890"] * 4))
        page = StatusPage(ctx).render()
    finally:
        ctx.close()
    assert page.count('<span class="st st-failed">failed</span>') >= ROWS // 2
    assert len(re.findall(r"<tr>", page.split('id="studies"', 1)[1].split("</table>", 1)[0])) == ROWS + 1
    # Measure the laid-out page: a probe script (added to this copy only; the page has none)
    # writes the document's scroll and client widths into the title, read with --dump-dom.
    probe = ("<script>addEventListener('load',()=>{document.title='W'+document.documentElement.scrollWidth"
             "+'x'+document.documentElement.clientWidth})</script>")
    html_file = tmp_path / "status.html"
    html_file.write_text(page.replace("</body>", probe + "</body>"))
    profile = tmp_path / "chromium-profile"
    out = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
         "--window-size=1200,900", "--dump-dom", html_file.as_uri()],
        capture_output=True, text=True, timeout=120, env={"HOME": str(profile), "PATH": "/usr/bin:/bin"})
    found = re.search(r"<title>W(\d+)x(\d+)</title>", out.stdout)
    assert found, out.stderr[-2000:]
    scroll, client = int(found.group(1)), int(found.group(2))
    assert client > 1100 and scroll <= client, f"page is {scroll} px wide in a {client} px window"
