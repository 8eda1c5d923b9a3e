"""``dsm-node serve`` as a process: real SCP, kill -9 and restart, revisions, HTTP, shutdown."""
import datetime as dt
import json
import socket

import pydicom
import pytest
from sqlalchemy import select

from dsm_node.audit import query_events
from dsm_node.cli import main
from dsm_node.db.models import Job, StudyState
from tests.nodeproc import NodeProcess
from tests.support.ct import PATIENT_NAME, SeriesSpec, write_study
from tests.tools import require_tool, shared_data

# After selection the pipeline runs the job (these nodes have no model, so it fails fast and the
# study is "failed"); what these tests check is completeness and selection.
SELECTED_OR_LATER = (StudyState.SELECTED, StudyState.FAILED)

QUIET_S = 4


@pytest.fixture
def node(tmp_path):
    made = []

    def make(**kwargs):
        n = NodeProcess(tmp_path / f"node{len(made)}", **kwargs)
        made.append(n)
        return n

    yield make
    for n in made:
        n.close()


def audit(node, event_type, study_uid=None):
    ctx = node.context()
    try:
        with ctx.sessions() as s:
            return query_events(s, event_type=event_type, study_uid=study_uid)
    finally:
        ctx.close()


def jobs(node):
    ctx = node.context()
    try:
        with ctx.sessions() as s:
            return list(s.scalars(select(Job).order_by(Job.revision)))
    finally:
        ctx.close()


def test_kill9_while_receiving_restart_completes_and_late_instance_revises(node, tmp_path, db_url, capsys):
    require_tool("storescu")
    study_uid, series = write_study(tmp_path / "study")
    n = node(quiet_period_s=QUIET_S, database_url=db_url)
    banner = n.start()
    assert banner == f"dsm-node listening on 127.0.0.1:{n.port} as DSMNODE (http on http://127.0.0.1:{n.http_port})"

    refused = n.send(tmp_path / "study", called_ae="NOTUS")  # a misconfigured peer, for the metrics
    assert refused.returncode != 0
    sent = n.send(tmp_path / "study")
    assert sent.returncode == 0, sent.stderr
    metrics = n.metrics()
    assert metrics['dsm_instances_received_total{outcome="stored"}'] == 116
    assert metrics["dsm_bytes_received_total"] > 116 * 512
    assert metrics['dsm_associations_total{outcome="accepted"}'] == 1
    assert metrics['dsm_associations_total{outcome="rejected"}'] == 1
    assert any(k.startswith("dsm_rejections_total{") for k in metrics)
    assert metrics['dsm_studies{state="receiving"}'] == 1
    n.kill9()  # well inside the quiet period
    assert n.wait_for_state(study_uid, StudyState.RECEIVING, timeout=0).completed_at is None

    n.start()
    status, body = n.get("/healthz")
    assert status == 200 and json.loads(body)["scp"]["listening"] is True
    study = n.wait_for_state(study_uid, SELECTED_OR_LATER)
    # Quiet period measured from the last stored instance, not from the restart.
    assert study.completed_at - study.last_received_at >= dt.timedelta(seconds=QUIET_S)
    assert study.selected_series_uid == series["venous"]
    assert study.selection_reason == "axial, preferred phase, 2 mm slices, 30 slices; best of 2 eligible series"
    reasons = {e.series_uid: e.detail["reason"] for e in audit(n, "series_not_selected", study_uid)}
    assert reasons == {
        series["localizer"]: "localizer/excluded image type LOCALIZER (ImageType ORIGINAL\\PRIMARY\\LOCALIZER); "
                             "2 slices, fewer than the minimum 20",
        series["thick"]: "slice thickness 7.5 mm exceeds 5 mm",
        series["plain"]: f"eligible but ranked below {series['venous']}: no contrast rather than preferred phase",
        series["derived"]: "ImageType DERIVED\\SECONDARY\\AXIAL lacks ORIGINAL/PRIMARY",
    }
    metrics = n.metrics()
    assert sum(metrics[f'dsm_studies{{state="{s}"}}'] for s in SELECTED_OR_LATER) == 1
    assert sum(v for k, v in metrics.items() if k.startswith("dsm_jobs{")) == 1

    # A late instance through the SCP: revision 2, completed and selected again, a second job.
    write_study(tmp_path / "late", (SeriesSpec("venous", "ABD PORTAL VENOUS 2.0", 1, 2.0, contrast="IOHEXOL"),),
                study_uid=study_uid, series_uids=series)
    assert n.send(tmp_path / "late").returncode == 0
    n.wait_for_state(study_uid, StudyState.RECEIVING, timeout=5)
    study = n.wait_for_state(study_uid, SELECTED_OR_LATER)
    assert study.revision == 2 and study.instance_count == 117
    assert [(j.revision, j.series_uid) for j in jobs(n)] == [(1, series["venous"]), (2, series["venous"])]

    assert main(n.cli_args("studies", "--json")) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["study_uid"], row["revision"], row["instances"], row["selected_series"]) == (
        study_uid, 2, 117, series["venous"])
    assert row["state"] in SELECTED_OR_LATER

    assert n.terminate() == 0
    assert len(audit(n, "application_start")) == 2
    [stop] = audit(n, "application_stop")  # the kill -9 left none
    assert stop.outcome == 0 and stop.detail["reason"] == "SIGTERM received"
    log = (n.data_dir / "logs" / "dsm-node.jsonl").read_text()
    assert all(json.loads(line) for line in log.splitlines())
    assert PATIENT_NAME not in log and PATIENT_NAME not in n.stdout.read_text()


def test_a_failed_job_shows_as_failed_with_its_reason_everywhere(node, tmp_path, capsys):
    """The reported defect: a study whose job failed was "done" with a green pill."""
    require_tool("storescu")
    study_uid, _ = write_study(tmp_path / "study", (SeriesSpec("venous", "ABD PORTAL VENOUS 2.0", 24, 2.0),))
    n = node(quiet_period_s=1)
    n.start()
    # No destination configured: serve says at start-up where results would stay.
    startup = n.stderr.read_text()
    assert f"no delivery destination configured: results stay in {(n.data_dir / 'results').resolve()}/" in startup
    assert n.send(tmp_path / "study").returncode == 0
    study = n.wait_for_state(study_uid, StudyState.FAILED, timeout=60)
    assert "no-model.pt" in study.state_reason  # the job's reason: its checkpoint does not exist

    assert main(n.cli_args("studies", "--json")) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["state"], row["reason"]) == ("failed", study.state_reason)
    status, page = n.get("/status")
    assert status == 200
    studies_table = page.split('id="studies"', 1)[1].split("</table>", 1)[0]
    assert '<span class="st st-failed">failed</span>' in studies_table and "no-model.pt" in studies_table
    assert ".st-failed" in page and "st-done" not in studies_table
    metrics = n.metrics()
    assert metrics['dsm_studies{state="failed"}'] == 1 and metrics['dsm_studies{state="done"}'] == 0
    assert metrics['dsm_jobs{state="failed"}'] == 1 and metrics['dsm_jobs_failed{cause="error"}'] == 1
    assert n.terminate() == 0


def test_port_in_use_exits_with_a_clear_message(node):
    n = node(quiet_period_s=1)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", n.port))
        holder.listen()
        with pytest.raises(AssertionError) as failed:
            n.start()
    assert "exited with 1" in str(failed.value)
    assert f"dsm-node: cannot start DICOM SCP on 127.0.0.1:{n.port}: the port is already in use" in str(failed.value)
    [stop] = audit(n, "application_stop")
    assert stop.outcome == 8 and "already in use" in stop.detail["reason"]


def test_real_ct_is_completed_and_selected(node, db_url):
    require_tool("storescu")
    ct = shared_data("01_tcia_pancreatic-ct-cbct-seg_CB001", "ct")
    n = node(quiet_period_s=1, database_url=db_url)
    n.start()
    assert n.send(ct).returncode == 0
    study_uid = pydicom.dcmread(next(ct.iterdir()), stop_before_pixels=True).StudyInstanceUID
    study = n.wait_for_state(study_uid, SELECTED_OR_LATER)
    assert study.selected_series_uid == "1.3.6.1.4.1.14519.5.2.1.302382790855582445722435410442490497846"
    assert study.selection_reason == "axial, no contrast, 3 mm slices, 79 slices; best of 1 eligible series"
    [complete] = audit(n, "study_complete", study_uid)
    assert complete.detail["instance_count"] == 79 and complete.detail["revision"] == 1
    assert n.terminate() == 0
