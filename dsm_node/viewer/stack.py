"""Orthanc + the same-origin OHIF server, brought up together."""
from __future__ import annotations

import time
from pathlib import Path

from .ohif import app_config_js, ohif_dist, viewer_path
from .orthanc import Orthanc
from .proxy import ViewerHTTPServer


class ViewerStack:
    """``with ViewerStack() as s: s.upload(files); s.viewer_url(study, seg_series)``."""

    def __init__(self, http_port: int = 0, orthanc_port: int | None = None,
                 dist: str | Path | None = None, workdir: str | Path | None = None,
                 listen_socket=None):
        self.listen_socket = listen_socket
        self.dist = Path(dist) if dist else ohif_dist()
        self.orthanc = Orthanc(http_port=orthanc_port, workdir=workdir)
        self.http_port = http_port
        self.server: ViewerHTTPServer | None = None
        self.timings: dict[str, float] = {}

    def start(self) -> ViewerStack:
        t0 = time.monotonic()
        self.orthanc.start()
        self.timings["orthanc_start_s"] = time.monotonic() - t0
        try:
            self.server = ViewerHTTPServer(self.dist, self.orthanc.http_port,
                                           port=self.http_port, app_config=app_config_js(),
                                           sock=self.listen_socket).start()
        except BaseException:
            self.orthanc.stop()
            raise
        return self

    def upload(self, files) -> int:
        t0 = time.monotonic()
        res = self.orthanc.upload(files)
        self.timings["upload_s"] = self.timings.get("upload_s", 0.0) + time.monotonic() - t0
        return len(res.instances)

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def viewer_url(self, study_uid: str, series_uid: str | None = None) -> str:
        return self.url + viewer_path(study_uid, series_uid)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.orthanc.stop()

    def __enter__(self) -> ViewerStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
