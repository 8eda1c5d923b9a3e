"""A throw-away Orthanc (Debian package) with the DICOMweb plugin, in a temporary directory.

Used by the viewer harness (tests/viewer) and by `dsm-node view`. Orthanc 1.10 has no bind
option: its HTTP server listens on every interface. We therefore disable its DICOM listener
entirely (DICOMweb over HTTP is all OHIF needs), keep ``RemoteAccessAllowed: false`` (Orthanc
then answers 403 to any client that is not the local host) and, in tests, run it inside a
private network namespace (see :mod:`dsm_node.viewer.netns`).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from dsm_node.netutil import free_port

DICOMWEB_PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/plugins/libOrthancDicomWeb.so",
)


class OrthancError(RuntimeError):
    pass


def find_orthanc() -> str | None:
    for name in ("Orthanc", "orthanc"):
        path = shutil.which(name)
        if path:
            return path
    for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc"):
        if os.access(p, os.X_OK):
            return p
    return None


def find_dicomweb_plugin() -> str | None:
    for p in DICOMWEB_PLUGIN_CANDIDATES:
        if os.path.exists(p):
            return p
    return None


@dataclass
class UploadResult:
    """What Orthanc reported for the uploaded files."""

    instances: list[dict] = field(default_factory=list)  # Orthanc JSON answers
    studies: set[str] = field(default_factory=set)  # Orthanc study ids


class Orthanc:
    """Context manager: ``with Orthanc() as o: o.upload(files)``; REST at ``o.url``."""

    def __init__(self, http_port: int | None = None, workdir: str | Path | None = None,
                 verbose: bool = False):
        self.http_port = http_port or free_port()
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="dsm-orthanc-"))
        self.verbose = verbose
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict:
        plugin = find_dicomweb_plugin()
        if plugin is None:
            raise OrthancError("Orthanc DICOMweb plugin not found (Debian: apt-get install "
                               "orthanc-dicomweb)")
        return {
            "Name": "dsm-node-viewer",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            # No DICOM listener: OHIF only speaks DICOMweb, and Orthanc cannot bind to
            # loopback only.
            "DicomServerEnabled": False,
            "DicomPort": free_port(),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpCompressionEnabled": False,  # loopback: compression only costs CPU
            "KeepAlive": True,
            "TcpNoDelay": True,
            "HttpThreadsCount": 8,
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "StableAge": 3600,
            "StorageCompression": False,
            "Plugins": [plugin],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "WadoRoot": "/wado",
                "Host": f"127.0.0.1:{self.http_port}",
                "Ssl": False,
                # Answer QIDO with the full study/series metadata OHIF asks for.
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            },
        }

    def start(self, timeout: float = 30.0) -> Orthanc:
        exe = find_orthanc()
        if exe is None:
            raise OrthancError("Orthanc not installed (Debian: apt-get install orthanc "
                               "orthanc-dicomweb)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=2))
        env = dict(os.environ, TCP_NODELAY="1")
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([exe, "--logdir=" + str(self.workdir)] +
                                     (["--verbose"] if self.verbose else []) + [str(cfg)],
                                     stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise OrthancError(f"Orthanc exited with {self.proc.returncode}: "
                                   f"{self.log_tail()}")
            try:
                self.get_json("/system")
                return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        self.stop()
        raise OrthancError(f"Orthanc did not answer within {timeout} s: {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        texts = []
        for p in [self.log_path, *sorted(self.workdir.glob("Orthanc*.log*"))]:
            try:
                texts.append(p.read_text(errors="replace"))
            except OSError:
                pass
        return "\n".join(texts)[-n:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- REST ---------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: bytes | None = None,
                 content_type: str | None = None, timeout: float = 60.0) -> bytes:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read()

    def get_json(self, path: str):
        return json.loads(self._request("GET", path, timeout=5.0))

    def upload(self, files) -> UploadResult:
        """POST each DICOM file to /instances; raise on any rejected file."""
        result = UploadResult()
        for f in files:
            data = Path(f).read_bytes()
            try:
                answer = json.loads(self._request("POST", "/instances", data,
                                                  "application/dicom"))
            except urllib.error.HTTPError as e:
                raise OrthancError(f"Orthanc rejected {f}: HTTP {e.code} "
                                   f"{e.read()[:300]!r}") from e
            if answer.get("Status") not in ("Success", "AlreadyStored"):
                raise OrthancError(f"Orthanc rejected {f}: {answer}")
            result.instances.append(answer)
            result.studies.add(answer.get("ParentStudy"))
        return result
