"""The whole loop with the in-process executor: storescu -> node -> DSM -> SEG + SR -> storescp."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pydicom

from tests.nodeproc import NodeProcess
from tests.peers import StoreSCP
from tests.pipeline.loop import assert_results_received, audit_events, job_transitions, node_yaml, wait_job
from tests.tools import REPO, free_port, require_tool

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SR_3D = "1.2.840.10008.5.1.4.1.1.88.34"


def start_pacs(net, tmp_path) -> StoreSCP:
    return StoreSCP(net, require_tool("storescp"), free_port(), tmp_path / "pacs").start()


def test_study_comes_back_as_seg_and_sr(tmp_path, tiny_checkpoint, phantom_study, net):
    pacs = start_pacs(net, tmp_path)
    node = NodeProcess(tmp_path / "node", quiet_period_s=1, net=net, extra_yaml=node_yaml(tiny_checkpoint, pacs.port))
    try:
        node.start()
        sent = node.send(phantom_study)
        assert sent.returncode == 0, sent.stderr
        job = wait_job(node, {"delivered"})
        received = pacs.received()
    finally:
        node.terminate()
        pacs.stop()

    ct = pydicom.dcmread(next(phantom_study.iterdir()), stop_before_pixels=True)
    by_class = {ds.SOPClassUID: ds for ds in received.values()}
    sr = by_class[SR_3D]
    assert sr.StudyInstanceUID == ct.StudyInstanceUID and sr.SeriesInstanceUID != ct.SeriesInstanceUID
    assert job.summary["sr_sop_instance_uid"] == sr.SOPInstanceUID
    if job.summary["segments"]:
        seg = by_class[SEG]
        assert seg.StudyInstanceUID == ct.StudyInstanceUID
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.SeriesInstanceUID
        assert seg.FrameOfReferenceUID == ct.FrameOfReferenceUID
        assert {s.SegmentLabel for s in seg.SegmentSequence} == {s["name"] for s in job.summary["segments"]}
    else:
        assert SEG not in by_class and job.summary["seg_sop_instance_uid"] is None
    assert_results_received(received, job)
    assert set(job.timings) >= {"assembly", "inference", "encoding", "total"}
    assert job.model_version == "test-tiny-0"
    assert job_transitions(node, job.id) == [
        ("selected", "queued"), ("queued", "running"), ("running", "encoded"), ("encoded", "delivered"),
    ]


def test_without_a_destination_the_results_are_kept_and_the_states_say_so(tmp_path, tiny_checkpoint, phantom_study, net):
    """The reported defect: with no destination a job went encoded -> delivered ("delivered",
    green) although nothing was sent, and nothing said where the results were."""
    node = NodeProcess(tmp_path / "node", quiet_period_s=1, net=net, extra_yaml=node_yaml(tiny_checkpoint, None))
    try:
        node.start()
        results = (node.data_dir / "results").resolve()
        assert f"no delivery destination configured: results stay in {results}/<StudyInstanceUID>/r<revision>/" \
            in node.stderr.read_text()
        assert node.send(phantom_study).returncode == 0
        job = wait_job(node, {"kept"})
        status, page = node.get("/status")
    finally:
        node.terminate()
    study_uid = pydicom.dcmread(next(phantom_study.iterdir()), stop_before_pixels=True).StudyInstanceUID
    where = results / study_uid / "r1"
    assert job.reason == f"no destination configured: results kept in {where}"
    assert job_transitions(node, job.id)[-1] == ("encoded", "kept")
    assert (where / f"SR_{job.summary['sr_sop_instance_uid']}.dcm").is_file()
    study = node.wait_for_state(study_uid, "done", timeout=0)
    assert study.state_reason == job.reason
    jobs_table = page.split('id="jobs"', 1)[1].split("</table>", 1)[0]
    assert status == 200 and '<span class="st st-kept">kept</span>' in jobs_table and str(where) in jobs_table
    assert "st st-delivered" not in page


def test_a_node_killed_during_inference_finishes_the_job_after_restart(tmp_path, tiny_checkpoint, phantom_study, net):
    """The restarted node takes its dead predecessor's job back at once: the heartbeat timeout
    is set to 10 minutes here, longer than the test may wait, so only that path can pass."""
    pacs = start_pacs(net, tmp_path)
    node = NodeProcess(tmp_path / "node", quiet_period_s=1, net=net,
                       extra_yaml=node_yaml(tiny_checkpoint, pacs.port, stale_after_s=600))
    try:
        node.start()
        assert node.send(phantom_study).returncode == 0
        killed = wait_job(node, {"running"})
        node.kill9()
        restart = time.monotonic()
        node.start()
        listening = time.monotonic()
        resumed = wait_job(node, {"running", "encoded", "delivered"}, predicate=lambda j: j.worker != killed.worker)
        resumed_at = time.monotonic()
        job = wait_job(node, {"delivered"})
        received = pacs.received()
    finally:
        node.terminate()
        pacs.stop()
    transitions = job_transitions(node, job.id)
    assert ("running", "queued") in transitions, transitions  # the interruption is on record
    assert job.attempts == 2 and resumed.worker != killed.worker
    [interrupted] = audit_events(node, "job_interrupted")
    assert interrupted.detail["cause"] == "process_ended" and interrupted.detail["worker"] == killed.worker
    starts = audit_events(node, "application_start")
    in_node = (interrupted.time - starts[-1].time).total_seconds()
    print(f"\nkill -9 during inference: restart -> job running again {resumed_at - restart:.1f} s "
          f"(process start {listening - restart:.1f} s, listening -> running {resumed_at - listening:.1f} s); "
          f"application_start -> job_interrupted (taken back) {in_node:.2f} s; heartbeat timeout 600 s")
    # Exactly one SR (and at most one SEG) instance: deterministic UIDs make a re-run harmless.
    assert len([d for d in received.values() if d.SOPClassUID == SR_3D]) == 1


def test_infer_cli_refuses_an_unknown_excluded_class(tmp_path, phantom_study):
    cmd = [sys.executable, "-m", "dsm_node", "infer", str(phantom_study), "--out", str(tmp_path / "out"),
           "--exclude-class", "zero-shot", "--exclude-class", "Livre"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ}, timeout=600)
    assert done.returncode == 2 and "exclude_classes: unknown ['Livre']" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_infer_cli_on_dicom_and_nifti(tmp_path, tiny_checkpoint, phantom_study):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dsm_node", "infer", str(phantom_study), "--out", str(out),
           "--checkpoint", str(tiny_checkpoint), "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ}, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_version"] == "test-tiny-0"
    for name in ("labels.nii.gz", "anomaly.nii.gz", "overlays/overview.png"):
        assert (out / name).exists(), name
    assert any(f.startswith("SR_") for f in summary["files"])

    import nibabel as nib
    import numpy as np

    labels = nib.load(out / "labels.nii.gz")
    assert labels.shape == (32, 32, 24)
    found = {int(v) for v in np.unique(np.asarray(labels.dataobj))} - {0}
    assert len(found) == len(summary["segments"])

    # The NIfTI path: the labels NIfTI written above has the CT's grid; run on a NIfTI CT.
    from training.phantoms import make_phantom

    image, _lab, affine = make_phantom(3, shape=(32, 32, 24), spacing=(6.0, 6.0, 4.5))
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "ct.nii.gz")
    out2 = tmp_path / "out2"
    cmd2 = [*cmd[:4], str(tmp_path / "ct.nii.gz"), "--out", str(out2), *cmd[7:], "--no-overlays"]
    done = subprocess.run(cmd2, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    nifti_labels = np.asarray(nib.load(out2 / "labels.nii.gz").dataobj)
    # Same CT on the same grid: the labels agree (DICOM stores integer HU, hence not bit-exact).
    assert nifti_labels.shape == labels.shape
    assert (nifti_labels == np.asarray(labels.dataobj)).mean() > 0.99
    # The anomaly map, streamed to its NIfTI block by block, holds the values of the whole map
    # the segmenter returns in memory for the same input.
    from dsm_node.infer.segmenter import Segmenter
    from dsm_node.volume import ras_to_lps

    ct = nib.load(tmp_path / "ct.nii.gz")
    hu = np.asarray(ct.dataobj, dtype=np.float32).transpose(2, 1, 0)
    whole = Segmenter(tiny_checkpoint, device="cpu").segment(hu, ras_to_lps(ct.affine), want_anomaly=True).anomaly
    streamed = np.asarray(nib.load(out2 / "anomaly.nii.gz").dataobj)
    assert streamed.dtype == np.float32 and np.array_equal(streamed, whole.transpose(2, 1, 0))
    assert set(json.loads((out2 / "summary.json").read_text())["peak_rss_mb"]) >= {"segment", "nifti"}
