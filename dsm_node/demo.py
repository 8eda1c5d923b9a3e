"""The node's whole loop on one machine, for `dsm-node demo` (`make demo`), the end-to-end
benchmark (bench/e2e.py) and the viewer harness's whole-loop case: a node on embedded defaults
in a child process, a local PACS stand-in, one study sent, SEG + SR waited for, the timings.

The local receiver is a pynetdicom C-STORE SCP bound to 127.0.0.1 (the node's destination).
``SHARED_CT`` is the real CT of ../shared/data/01 when present; ``phantom_study`` makes a
study with the trainer's phantom generator otherwise.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pydicom

from dsm_node.netutil import free_port
from training.real_data import shared_data_dir

SHARED_CT = shared_data_dir() / "01_tcia_pancreatic-ct-cbct-seg_CB001" / "ct"
SEG_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}
SR_3D = "1.2.840.10008.5.1.4.1.1.88.34"


class LocalReceiver:
    """The PACS stand-in: stores what the node sends, notes when each object arrived."""

    def __init__(self, folder: Path, ae_title: str = "DEMOPACS") -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.arrivals: dict[str, tuple[float, Path, str]] = {}  # SOP Instance UID -> (time, path, SOP class)
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts

        def on_store(event):  # type: ignore[no-untyped-def]
            ds = event.dataset
            ds.file_meta = event.file_meta
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            with self._lock:
                self.arrivals[str(ds.SOPInstanceUID)] = (time.time(), path, str(ds.SOPClassUID))
            return 0x0000

        self._server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])

    def results(self) -> dict[str, tuple[float, Path]]:
        with self._lock:
            out: dict[str, tuple[float, Path]] = {}
            for t, path, sop_class in self.arrivals.values():
                kind = "SEG" if sop_class in SEG_CLASSES else "SR" if sop_class == SR_3D else sop_class
                out[kind] = (t, path)
            return out

    def stop(self) -> None:
        self._server.shutdown()


@dataclass
class NodeRun:
    root: Path
    quiet_period_s: float
    receiver_port: int
    checkpoint: Path | None = None
    port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    peak_rss_mb: float = 0.0  # the node and its children (the inference process), sampled every 0.2 s

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "node.yaml"
        lines = [
            f"completeness: {{quiet_period_s: {self.quiet_period_s}, poll_interval_s: 0.2}}",
            "storage: {min_free_bytes: 0}",
            "delivery:",
            f"  destinations: [{{name: demo-pacs, ae_title: DEMOPACS, host: 127.0.0.1, port: {self.receiver_port}}}]",
            "  backoff_initial_s: 1",
        ]
        if self.checkpoint:
            lines.append(f"inference: {{checkpoint: {self.checkpoint}}}")
        config.write_text("\n".join(lines) + "\n")
        self.log = (self.root / "node.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dsm_node", "serve", "--config", str(config), "--data-dir", str(self.root / "data"),
             "--port", str(self.port), "--http-port", str(self.http_port)],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        # Loading torch and the model takes minutes on a busy 2-core machine: wait for the line.
        deadline = time.monotonic() + 600
        while b"dsm-node listening on" not in (self.root / "node.log").read_bytes():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the node exited: {(self.root / 'node.log').read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("the node did not start listening within 600 s")
            time.sleep(0.2)
        threading.Thread(target=self._watch_rss, daemon=True).start()

    def _watch_rss(self) -> None:
        # The node's whole process tree: jobs run in an inference child process (jobs/child.py),
        # which holds the model and the series; the node process alone is a fraction of it.
        try:
            p = psutil.Process(self.proc.pid)
            while self.proc.poll() is None:
                total = p.memory_info().rss
                for child in p.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:  # a child that ended between the listing and the read
                        pass
                self.peak_rss_mb = max(self.peak_rss_mb, total / 2**20)
                time.sleep(0.2)
        except psutil.Error:
            pass

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)
        self.log.close()

    def job(self) -> dict:
        from sqlalchemy import select

        from .context import build_context
        from .db.models import Job
        from .settings import load_settings

        ctx = build_context(load_settings(self.root / "node.yaml", {"storage.data_dir": self.root / "data"}), migrate=False)
        try:
            with ctx.sessions() as s:
                job = s.scalars(select(Job).order_by(Job.id.desc())).first()
                return {} if job is None else {
                    "state": job.state, "reason": job.reason, "timings": job.timings, "summary": job.summary,
                    "updated_at": job.updated_at.timestamp(),
                }
        finally:
            ctx.close()


def send(folder: Path, port: int) -> float:
    """Send every file of ``folder`` with DCMTK storescu (pynetdicom if DCMTK is absent); return the end time."""
    import shutil

    storescu = shutil.which("storescu")
    if storescu:
        done = subprocess.run(
            [storescu, "-aet", "DEMOPACS", "-aec", "DSMNODE", "127.0.0.1", str(port), "+sd", str(folder)],
            capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"},
        )
        if done.returncode != 0:
            raise RuntimeError(f"storescu failed: {done.stderr[-2000:]}")
        return time.time()
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title="DEMOPACS")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="DSMNODE")
    for path in sorted(folder.iterdir()):
        assoc.send_c_store(pydicom.dcmread(path))
    assoc.release()
    return time.time()


def phantom_study(folder: Path, slices: int = 120, size: int = 256, seed: int = 11) -> Path:
    from training.phantoms import make_phantom, write_dicom_series

    spacing = 400.0 / size
    image, _label, affine = make_phantom(seed, shape=(size, size, slices), spacing=(spacing, spacing, 2.5))
    write_dicom_series(image, affine, folder, uid_seed=f"demo-{seed}-{slices}-{size}", patient_name="PHANTOM^DEMO")
    return folder


def run_once(study: Path, work: Path, quiet_period_s: float, checkpoint: Path | None = None) -> dict:
    receiver = LocalReceiver(work / "received")
    node = NodeRun(work / "node", quiet_period_s, receiver.port, checkpoint)
    try:
        node.start()
        t_send = time.time()
        t_last = send(study, node.port)
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            got = receiver.results()
            job = node.job()
            if job.get("state") == "failed":
                raise RuntimeError(f"job failed: {job['reason']}")
            summary = job.get("summary") or {}
            # The results are queued (and may arrive) a moment before the job records its summary.
            if "SR" in got and "model_version" in summary and ("SEG" in got or not summary.get("segments")):
                break
            time.sleep(0.2)
        else:
            raise RuntimeError("no results within 30 minutes")
        t_done = max(t for t, _ in got.values())
        job = node.job()
    finally:
        node.stop()
        receiver.stop()
    timings = job["timings"]
    after_quiet = t_done - t_last - quiet_period_s
    stages = {k: round(timings.get(k, 0.0), 2) for k in ("assembly", "inference", "encoding")}
    return {
        "study": str(study),
        "instances": len(list(study.iterdir())),
        "send_s": round(t_last - t_send, 2),
        "quiet_period_s": quiet_period_s,
        "after_quiet_period_s": round(after_quiet, 2),
        "stages_s": stages,
        "other_s": round(after_quiet - sum(stages.values()), 2),  # selection, queueing, delivery
        "node_peak_rss_mb": round(node.peak_rss_mb),
        "segments": job["summary"]["segments"],
        "model_version": job["summary"]["model_version"],
        "received": {k: str(p) for k, (_, p) in got.items()},
    }


def overlays_from_results(study: Path, seg_path: Path, out: Path) -> list[Path]:
    """Decode the SEG the node sent back onto the CT and draw the overlay PNGs."""
    import highdicom as hd
    import numpy as np

    from model.catalog import load_catalog

    from .infer.overlays import write_overlays
    from .volume import assemble_volume, files_of

    volume = assemble_volume(files_of([study]))
    seg = hd.seg.segread(seg_path)
    catalog = load_catalog()
    labels = np.zeros(volume.hu.shape, dtype=np.uint8)
    sop_uids = [f.sop_instance_uid for f in volume.frames]
    numbers = list(seg.segment_numbers)
    stack = seg.get_pixels_by_source_instance(source_sop_instance_uids=sop_uids, segment_numbers=numbers,
                                              assert_missing_frames_are_empty=True)
    for n, number in enumerate(numbers):
        name = seg.get_segment_description(number).segment_label
        labels[stack[..., n] > 0] = catalog.by_name(name).index
    return write_overlays(volume.hu, labels, volume.spacing, catalog, out, title="DSM demo")
