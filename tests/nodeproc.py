"""Run ``dsm-node serve`` as a real subprocess, talk to it over DICOM and HTTP, and read its DB.

``extra_yaml`` adds whole configuration sections (e.g. ``inference:``/``delivery:``) to the
node's file; the sections written here (completeness, storage, database) must not repeat there.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from tests.tools import REPO, free_port, require_tool

if TYPE_CHECKING:
    from tests.peers import LoopbackNet

from dsm_node.context import build_context
from dsm_node.db.models import Study
from dsm_node.settings import load_settings

BANNER = "dsm-node listening on "


class NodeProcess:
    def __init__(
        self,
        root: Path,
        *,
        quiet_period_s: float,
        database_url: str | None = None,
        extra_yaml: str = "",
        net: LoopbackNet | None = None,
    ) -> None:
        self.net = net
        self.root = root
        self.data_dir = root / "data"
        self.config = root / "node.yaml"
        root.mkdir(parents=True, exist_ok=True)
        self.port, self.http_port = free_port(), free_port()
        lines = [
            "completeness:", f"  quiet_period_s: {quiet_period_s}", "  poll_interval_s: 0.2",
            "storage:", "  min_free_bytes: 0",
        ]
        if database_url:
            lines += ["database:", f"  url: {json.dumps(database_url)}"]
        if "inference:" not in extra_yaml:
            # Tests of receiving/completeness/selection do not load a model: jobs fail fast with
            # "checkpoint does not exist" instead of running the demo model for minutes.
            lines += ["inference:", f"  checkpoint: {json.dumps(str(root / 'no-model.pt'))}"]
        self.config.write_text("\n".join(lines) + "\n" + extra_yaml)
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    # Process ------------------------------------------------------------------------------
    def cli_args(self, *args: str) -> list[str]:
        """Arguments of a ``dsm-node`` command run against this node's configuration and data."""
        return [*args, "--config", str(self.config), "--data-dir", str(self.data_dir)]

    def start(self, timeout: float = 60) -> str:
        """Start and wait for the listening line; return it."""
        self.runs += 1
        self.stdout, self.stderr = self.root / f"stdout-{self.runs}.log", self.root / f"stderr-{self.runs}.log"
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            popen = self.net.popen if self.net is not None else subprocess.Popen
            self.proc = popen(
                [sys.executable, "-m", "dsm_node",
                 *self.cli_args("serve", "--port", str(self.port), "--http-port", str(self.http_port))],
                stdout=out, stderr=err, cwd=REPO, env={**os.environ, "TCP_NODELAY": "1"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stderr.read_text()
            if BANNER in text:
                return next(line for line in text.splitlines() if BANNER in line)
            if self.proc.poll() is not None:
                raise AssertionError(f"dsm-node serve exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.1)
        raise AssertionError("dsm-node serve did not start in time")

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int | None:
        """SIGTERM and the exit status; None when it was never started (a test that skipped or
        failed before ``start`` cleans up only what it started)."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    # DICOM --------------------------------------------------------------------------------
    def send(self, folder: Path, called_ae: str = "DSMNODE") -> subprocess.CompletedProcess:
        storescu = require_tool("storescu")
        argv = [storescu, "-aet", "PACS", "-aec", called_ae, "127.0.0.1", str(self.port), "+sd", str(folder)]
        if self.net is not None:
            proc = self.net.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "TCP_NODELAY": "1"})
            out, err = proc.communicate(timeout=120)
            return subprocess.CompletedProcess(argv, proc.returncode, out.decode(), err.decode())
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**os.environ, "TCP_NODELAY": "1"})

    # HTTP ---------------------------------------------------------------------------------
    def get(self, path: str) -> tuple[int, str]:
        if self.net is not None:
            return self.net.call(self._get, path)
        return self._get(path)

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metrics(self) -> dict[str, float]:
        status, text = self.get("/metrics")
        assert status == 200
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    # Database -----------------------------------------------------------------------------
    def context(self):
        return build_context(load_settings(self.config, {"storage.data_dir": self.data_dir}), migrate=False)

    def wait_for_state(self, study_uid: str, state: str | tuple[str, ...], timeout: float = 30) -> Study:
        """Wait until the study is in ``state`` (or any of several states)."""
        states = (state,) if isinstance(state, str) else state
        ctx = self.context()
        try:
            deadline = time.monotonic() + timeout
            while True:
                with ctx.sessions() as s:
                    study = s.scalar(select(Study).where(Study.study_uid == study_uid))
                if study is not None and study.state in states:
                    return study
                if time.monotonic() > deadline:
                    raise AssertionError(f"study {study_uid} is {study.state if study else 'unknown'}, not {state}")
                time.sleep(0.2)
        finally:
            ctx.close()
