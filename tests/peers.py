"""Real network peers for the delivery tests, and a loopback-only network to run them in.

Debian's storescp listens on every interface. Where the test runs as root, the servers and the
code under test share a private network namespace whose only interface is loopback: servers
are started there with nsenter, and Python code joins it per thread with setns(2) (a thread's
network namespace is inherited by the threads it starts, so pynetdicom's association threads
follow). Elsewhere everything runs on the host's loopback, sending only to 127.0.0.1.
"""
from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt

from dsm_node.viewer.netns import isolated_argv, netns_available

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000


class LoopbackNet:
    def __init__(self) -> None:
        usable, self.why_not = netns_available()
        self._holder: subprocess.Popen[bytes] | None = None
        if usable:
            self._holder = subprocess.Popen(isolated_argv(["sleep", "3600"]))
            deadline = time.monotonic() + 10
            while _comm(self._holder.pid) != "sleep":  # `ip link set lo up` has run once sleep is exec'd
                if time.monotonic() > deadline or self._holder.poll() is not None:
                    raise RuntimeError("could not create the loopback-only network namespace")
                time.sleep(0.01)

    @property
    def isolated(self) -> bool:
        return self._holder is not None

    def _ns_path(self) -> str:
        assert self._holder is not None
        return f"/proc/{self._holder.pid}/ns/net"

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        if self._holder is not None:
            argv = ["nsenter", f"--net={self._ns_path()}", "--", *argv]
        return subprocess.Popen(argv, **kwargs)

    def thread(self, target: Callable[[], Any], name: str | None = None) -> threading.Thread:
        """A thread (not started) that runs ``target`` inside the namespace."""

        def run() -> None:
            self._enter()
            target()

        return threading.Thread(target=run, name=name, daemon=True)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` run in the namespace; exceptions propagate."""
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn(*args)
            except BaseException as exc:  # handed to the calling thread
                box["error"] = exc

        worker = self.thread(run)
        worker.start()
        worker.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _enter(self) -> None:
        if self._holder is None:
            return
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(self._ns_path(), os.O_RDONLY)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns: {os.strerror(err)}")
        finally:
            os.close(fd)

    def wait_listening(self, port: int, timeout_s: float = 10) -> None:
        def probe() -> None:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        return
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)

        self.call(probe)

    def close(self) -> None:
        if self._holder is not None:
            self._holder.terminate()
            self._holder.wait(10)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class StoreSCP:
    """DCMTK storescp as the PACS: writes what it receives under ``out_dir``."""

    def __init__(self, net: LoopbackNet, storescp: str, port: int, out_dir: Path, ae_title: str = "PACS") -> None:
        self._net, self._argv = net, [storescp, "-aet", ae_title, "-od", str(out_dir), str(port)]
        self.port, self.out_dir = port, out_dir
        self._proc: subprocess.Popen[bytes] | None = None
        out_dir.mkdir(parents=True, exist_ok=True)

    def start(self) -> StoreSCP:
        env = {**os.environ, "TCP_NODELAY": "1"}
        self._proc = self._net.popen(self._argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._net.wait_listening(self.port)
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)

    def received(self) -> dict[str, Dataset]:
        """SOP Instance UID -> the dataset storescp wrote."""
        found = {}
        for path in self.out_dir.iterdir():
            ds = pydicom.dcmread(path)
            found[ds.SOPInstanceUID] = ds
        return found


class ScriptedSCP:
    """A pynetdicom storage SCP that answers C-STOREs with scripted statuses, then Success,
    each after ``delay_s``."""

    def __init__(
        self,
        net: LoopbackNet,
        port: int,
        statuses: list[int] | None = None,
        ae_title: str = "PACS",
        ssl_context: Any | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self._net, self.port, self._ssl, self._delay = net, port, ssl_context, delay_s
        self._statuses = list(statuses or [])
        self._lock = threading.Lock()
        self.received: list[str] = []  # SOP Instance UIDs in arrival order, repeats kept
        self.peer_certs: list[dict[str, Any]] = []
        self._ae = AE(ae_title=ae_title)
        self._ae.supported_contexts = AllStoragePresentationContexts
        self._ae.require_called_aet = True
        self._server: Any = None

    def _on_store(self, event: Any) -> Any:
        time.sleep(self._delay)  # a slow archive
        with self._lock:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
            status = self._statuses.pop(0) if self._statuses else 0x0000
        if status == 0x0000:
            return 0x0000
        rsp = Dataset()
        rsp.Status = status
        rsp.ErrorComment = "scripted by the test"
        return rsp

    def _on_open(self, event: Any) -> None:
        sock = event.assoc.dul.socket.socket
        if hasattr(sock, "getpeercert"):
            with self._lock:
                self.peer_certs.append(sock.getpeercert())

    def start(self) -> ScriptedSCP:
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_OPEN, self._on_open)]
        self._server = self._net.call(
            lambda: self._ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers, ssl_context=self._ssl)
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


class RawServer:
    """A TCP listener that is not a DICOM peer: ``mode`` 'silent' accepts and never answers,
    'close' accepts and hangs up at once."""

    def __init__(self, net: LoopbackNet, port: int, mode: str) -> None:
        self._net, self.port, self._mode = net, port, mode
        self._sock: socket.socket | None = None
        self._held: list[socket.socket] = []

    def start(self) -> RawServer:
        def listen() -> socket.socket:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", self.port))
            s.listen()
            return s

        self._sock = self._net.call(listen)
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def _serve(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            if self._mode == "close":
                conn.close()
            else:
                self._held.append(conn)

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
        for conn in self._held:
            conn.close()


def make_certificates(folder: Path, openssl: str) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, plus an unrelated CA."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=folder)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        run("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN=test {ca}")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=dsm {name}")
        (folder / f"{name}.ext").write_text(ext + "\n")
        run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        )
    return {
        "ca": folder / "ca.pem", "other_ca": folder / "other-ca.pem",
        "server_cert": folder / "server.pem", "server_key": folder / "server.key",
        "client_cert": folder / "client.pem", "client_key": folder / "client.key",
    }


class OrthancWeb:
    """Orthanc with its DICOMweb plugin as a STOW-RS peer (DICOM listener off), optionally with
    HTTP basic auth and HTTPS; started inside the test network."""

    def __init__(self, net: LoopbackNet, root: Path, port: int, *, users: dict[str, str] | None = None,
                 certificate: Path | None = None) -> None:
        import json
        import shutil

        self._net, self.root, self.port = net, root, port
        self._orthanc = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        root.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "dsm-test-stow", "HttpPort": port, "DicomServerEnabled": False,
            "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(users), "RegisteredUsers": users or {},
            "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        if certificate is not None:
            config.update(SslEnabled=True, SslCertificate=str(certificate))
        (root / "orthanc.json").write_text(json.dumps(config, indent=1))
        self.users = users or {}
        self.scheme = "https" if certificate is not None else "http"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/dicom-web"

    def start(self) -> OrthancWeb:
        log = (self.root / "orthanc.log").open("ab")
        self._proc = self._net.popen([self._orthanc, str(self.root / "orthanc.json")], stdout=log, stderr=log)
        self._net.wait_listening(self.port, timeout_s=60)
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(30)

    def _get(self, path: str):
        import base64
        import json
        import ssl
        import urllib.request

        req = urllib.request.Request(f"{self.scheme}://127.0.0.1:{self.port}{path}")
        if self.users:
            user, password = next(iter(self.users.items()))
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        context = ssl._create_unverified_context() if self.scheme == "https" else None  # the test's own server
        with urllib.request.urlopen(req, timeout=30, context=context) as r:
            body = r.read()
        return json.loads(body) if path != "/file" and not path.endswith("/file") else body

    def instances(self) -> dict[str, bytes]:
        """SOP Instance UID -> the stored file, as Orthanc keeps it."""
        out = {}
        for orthanc_id in self._net.call(self._get, "/instances"):
            tags = self._net.call(self._get, f"/instances/{orthanc_id}/simplified-tags")
            out[tags["SOPInstanceUID"]] = self._net.call(self._get, f"/instances/{orthanc_id}/file")
        return out
