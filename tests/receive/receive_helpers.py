"""Helpers for the receiving-side tests: a node in a subprocess, SCUs, database queries."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification
from sqlalchemy import create_engine, text

from tests.tools import REPO, free_port

NODE_AE = "DSMNODE"


class Node:
    """``python -m dsm_node.receive`` in a subprocess (what the kill -9 test kills)."""

    def __init__(self, data_dir: Path, *, config: dict[str, Any] | None = None, db_url: str | None = None,
                 port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.db_url = db_url
        cfg = {"logging": {"stdout": True, "file": False, "level": "INFO"}, "storage": {"min_free_bytes": 0}}
        for section, values in (config or {}).items():
            cfg.setdefault(section, {}).update(values)
        self.config_path = self.data_dir / "node.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.proc: subprocess.Popen[bytes] | None = None
        self.output: list[str] = []
        self._engine = None

    @property
    def spool(self) -> Path:
        return self.data_dir / "spool"

    def start(self, timeout: float = 90) -> Node:
        cmd = [sys.executable, "-m", "dsm_node.receive", "--config", str(self.config_path),
               "--data-dir", str(self.data_dir), "--port", str(self.port)]
        if self.db_url:
            cmd += ["--database-url", self.db_url]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("DSM_NODE__DATABASE__URL", None)
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        ready = threading.Event()

        def drain() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                self.output.append(line)
                if line.startswith("listening on"):
                    ready.set()

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("node did not start:\n" + "\n".join(self.output[-40:]))
        return self

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    # Database ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.db_url or f"sqlite:///{(self.data_dir / 'dsm-node.db').resolve()}"

    @property
    def engine(self):  # type: ignore[no-untyped-def]
        if self._engine is None:
            self._engine = create_engine(self.url)
        return self._engine

    def query(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params))

    def audit(self, event_type: str | None = None) -> list[Any]:
        if event_type is None:
            return self.query("select * from audit_events order by id")
        return self.query("select * from audit_events where event_type = :t order by id", t=event_type)

    def instance_uids(self) -> set[str]:
        return {r.sop_instance_uid for r in self.query("select sop_instance_uid from instances")}

    def spool_files(self) -> list[Path]:
        return sorted(p for p in self.spool.rglob("*") if p.is_file()) if self.spool.exists() else []

    def wait_audit(self, event_type: str, count: int = 1, timeout: float = 10) -> list[Any]:
        """Audit rows written after the association ends arrive a moment after the SCU returns."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.audit(event_type)
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)

    def close(self) -> None:
        self.stop()
        if self._engine is not None:
            self._engine.dispose()


def make_ae(calling: str = "TESTSCU", contexts: list[tuple[str, list[str] | None]] | None = None) -> AE:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    for abstract, syntaxes in contexts or []:
        if syntaxes:
            ae.add_requested_context(abstract, syntaxes)
        else:
            ae.add_requested_context(abstract)
    return ae


def echo(port: int, calling: str = "TESTSCU", called: str = NODE_AE, **kwargs: Any) -> int | None:
    """C-ECHO status, or None when the association was rejected/aborted."""
    ae = make_ae(calling, [(Verification, None)])
    assoc = ae.associate("127.0.0.1", port, ae_title=called, **kwargs)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


def store(port: int, items: list[Dataset | Path | str], *, calling: str = "TESTSCU", called: str = NODE_AE,
          chunked: bool = False, transfer_syntaxes: list[str] | None = None) -> list[tuple[int | None, str | None]]:
    """Send datasets or files on one association; return (status, ErrorComment) per item.

    ``chunked`` sends files as raw bytes without decoding them (pynetdicom's documented
    ``STORE_SEND_CHUNKED_DATASET``), which is how garbage or truncated data sets are sent.
    """
    from pydicom import dcmread

    classes: dict[str, list[str]] = {}
    for item in items:
        if isinstance(item, Dataset):
            sop, ts = str(item.SOPClassUID), str(item.file_meta.TransferSyntaxUID)
        else:
            meta = dcmread(item, stop_before_pixels=True, specific_tags=[]).file_meta
            sop, ts = str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
        classes.setdefault(sop, [])
        if ts not in classes[sop]:
            classes[sop].append(ts)
    ae = make_ae(calling)
    for sop, tss in classes.items():
        for ts in transfer_syntaxes or tss:  # one context per transfer syntax: each gets accepted
            ae.add_requested_context(sop, [ts])
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = chunked
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=called)
        if not assoc.is_established:
            raise AssertionError("association not established")
        out: list[tuple[int | None, str | None]] = []
        try:
            for item in items:
                rsp = assoc.send_c_store(item)
                if "Status" not in rsp:
                    out.append((None, None))
                else:
                    out.append((int(rsp.Status), str(rsp.get("ErrorComment", "")) or None))
        finally:
            if assoc.is_established:
                assoc.release()
        return out
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def storescu(port: int, files: list[Path], *, called: str = NODE_AE, calling: str = "STORESCU",
             verbose: bool = False, no_halt: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    from tests.tools import require_tool

    exe = require_tool("storescu")
    cmd = [exe, "-aet", calling, "-aec", called, *(["-v"] if verbose else []), *(["-nh"] if no_halt else []),
           "127.0.0.1", str(port), *map(str, files)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def file_with_body(path: Path, sop_class: str, sop_instance: str, body: bytes,
                   transfer_syntax: str = "1.2.840.10008.1.2") -> Path:
    """A DICOM file with valid File Meta and an arbitrary (garbage/truncated) data set body."""
    from dsm_node.receive.dataset import file_meta_bytes

    path.write_bytes(file_meta_bytes(sop_class, sop_instance, transfer_syntax, None) + body)
    return path


def body_of(path: Path) -> bytes:
    from pynetdicom.dsutils import split_dataset

    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]
