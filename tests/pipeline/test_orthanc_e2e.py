"""Orthanc as the PACS, with deploy/orthanc/autoroute.lua: upload a study over REST, Orthanc
routes it to the node, the node's SEG + SR land in the same study; nobody touches anything."""
from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.nodeproc import NodeProcess
from tests.pipeline.loop import jobs, node_yaml, wait_job
from tests.tools import REPO, free_port, require_tool

DEPLOY = REPO / "deploy" / "orthanc"
orthanc_stable_age_s = 2


class Orthanc:
    def __init__(self, net, root: Path, node_port: int) -> None:
        self.net, self.root = net, root
        self.http_port, self.dicom_port = free_port(), free_port()
        config = json.loads((DEPLOY / "orthanc.json").read_text())
        config.update(
            HttpPort=self.http_port,
            DicomPort=self.dicom_port,
            StorageDirectory=str(root / "db"),
            IndexDirectory=str(root / "db"),
            RemoteAccessAllowed=False,
            StableAge=orthanc_stable_age_s,
            DicomModalities={"dsm": ["DSMNODE", "127.0.0.1", node_port]},
            LuaScripts=[str(DEPLOY / "autoroute.lua")],
            Plugins=[],
        )
        config.pop("DicomWeb", None)
        root.mkdir(parents=True, exist_ok=True)
        (root / "orthanc.json").write_text(json.dumps(config, indent=2))
        self.log = root / "orthanc.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Orthanc:
        with self.log.open("wb") as out:
            self.proc = self.net.popen([require_tool("Orthanc"), str(self.root / "orthanc.json")], stdout=out,
                                       stderr=subprocess.STDOUT)
        self.net.wait_listening(self.http_port, timeout_s=60)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def _request(self, method: str, path: str, body: bytes | None = None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method)
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def rest(self, method: str, path: str, body: bytes | None = None):
        return self.net.call(self._request, method, path, body)


def test_orthanc_routes_the_study_and_receives_seg_and_sr(tmp_path, tiny_checkpoint, phantom_study, net):
    node = NodeProcess(tmp_path / "node", quiet_period_s=1, net=net, extra_yaml="")
    orthanc = Orthanc(net, tmp_path / "orthanc", node.port)
    node.config.write_text(
        node.config.read_text()
        + node_yaml(tiny_checkpoint, None)
        + "delivery:\n"
        + f"  destinations: [{{name: orthanc, ae_title: ORTHANC, host: 127.0.0.1, port: {orthanc.dicom_port}}}]\n"
        + "  backoff_initial_s: 0.5\n"
    )
    try:
        orthanc.start()
        node.start()
        for path in sorted(phantom_study.iterdir()):
            orthanc.rest("POST", "/instances", path.read_bytes())
        study_id = orthanc.rest("GET", "/studies")[0]

        job = wait_job(node, {"delivered"}, timeout=300)
        modalities: dict[str, list] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            series = orthanc.rest("GET", f"/studies/{study_id}/series")
            modalities = {s["MainDicomTags"]["Modality"]: s for s in series}
            if "SR" in modalities and ("SEG" in modalities or not job.summary["segments"]):
                break
            time.sleep(0.5)
        seg_tags = None
        if "SEG" in modalities:
            seg_instance = modalities["SEG"]["Instances"][0]
            seg_tags = orthanc.rest("GET", f"/instances/{seg_instance}/tags?simplify")
        # Results arriving make the study unstable again: the Lua script must not re-route it.
        time.sleep(orthanc_stable_age_s + 3)
        routed_jobs = jobs(node)
        routed_count = orthanc.rest("GET", f"/studies/{study_id}/metadata?expand").get("DsmRoutedCtCount")
    finally:
        node.terminate()
        orthanc.stop()

    assert "CT" in modalities and "SR" in modalities, (modalities.keys(), orthanc.log.read_text()[-2000:])
    ct_series_uid = modalities["CT"]["MainDicomTags"]["SeriesInstanceUID"]
    assert len(modalities["SR"]["Instances"]) == 1
    if job.summary["segments"]:
        assert len(modalities["SEG"]["Instances"]) == 1
        assert seg_tags["ReferencedSeriesSequence"][0]["SeriesInstanceUID"] == ct_series_uid
        assert seg_tags["SOPInstanceUID"] == job.summary["seg_sop_instance_uid"]
    assert routed_count == str(len(modalities["CT"]["Instances"]))
    assert len(routed_jobs) == 1, [(j.revision, j.state) for j in routed_jobs]
    assert routed_jobs[0].series_uid == ct_series_uid
