"""A scripted, headless viewer session: Orthanc + OHIF + Chromium, optionally network-isolated.

Host side::

    result = run_session({"files": [...], "driver": "tests/viewer/ohif_driver.cjs",
                          "out": "artifacts/", "cases": [{"name": ..., "study": ...,
                          "series": SEG_SERIES_UID, "srSeries": ..., "probes": {...}}]})

runs ``python -m dsm_node.viewer.session SPEC.json`` inside ``unshare -n`` (loopback only),
which starts the stack, uploads the files, runs the Node/Playwright driver against it and
writes into ``out``: the driver's ``observations.json`` and screenshots, ``session.json``
(timings, network interfaces seen inside, the same-origin server's request log).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .netns import interfaces, isolated_argv, netns_available
from .ohif import node_modules, ohif_dist, viewer_path

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    env = os.environ.get("DSM_CHROMIUM")
    if env:
        return env
    for name in CHROMIUM_CANDIDATES:
        p = shutil.which(name)
        if p:
            return p
    return None


class SessionError(RuntimeError):
    pass


def run_session(spec: dict, isolate: bool = True, timeout: float = 600.0,
                python: str | None = None) -> dict:
    """Run a session in a child process; return session.json (+ observations) as a dict."""
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "session_spec.json"
    spec_path.write_text(json.dumps(spec, indent=1, default=str))
    argv = [python or sys.executable, "-m", "dsm_node.viewer.session", str(spec_path)]
    if isolate:
        ok, why = netns_available()
        if not ok:
            raise SessionError(f"cannot isolate the viewer session: {why}")
        argv = isolated_argv(argv)
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, TCP_NODELAY="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(repo),
                                                        os.environ.get("PYTHONPATH")])))
    import resource

    t0 = time.monotonic()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True,
                          timeout=timeout)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    (out / "session.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    session_file = out / "session.json"
    if not session_file.exists():
        raise SessionError(f"viewer session failed (rc={proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(session_file.read_text())
    result["returncode"] = proc.returncode
    result["wallSeconds"] = time.monotonic() - t0
    # CPU used by the whole session (Orthanc, server, Node, Chromium and its renderers):
    # divided by the cores available it is what the wall time would be on an idle machine.
    result.setdefault("cpuSeconds", round((ru1.ru_utime - ru0.ru_utime)
                                          + (ru1.ru_stime - ru0.ru_stime), 1))
    obs_file = out / "observations.json"
    result["observations"] = json.loads(obs_file.read_text()) if obs_file.exists() else None
    result["log"] = proc.stdout[-5000:] + proc.stderr[-5000:]
    return result


def _become_subreaper() -> None:
    """Adopt orphaned descendants (Chromium re-parents its helper processes), so that they
    are reaped here and their CPU time is counted in session.json."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _reap_orphans(timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)


def _main(spec_path: str) -> int:
    from .stack import ViewerStack

    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    session: dict = {"interfaces": interfaces(), "timings": {}}
    _become_subreaper()
    chromium = spec.get("chromium") or find_chromium()
    if not chromium:
        raise SessionError("chromium not installed (Debian: apt-get install chromium)")
    nm = node_modules()
    ohif_dist()
    node = shutil.which("node")
    if not node:
        raise SessionError("node not installed")
    rc = 1
    t0 = time.monotonic()
    stack = ViewerStack(orthanc_port=spec.get("orthancPort"))
    try:
        stack.start()
        n = stack.upload(spec["files"])
        session["uploaded"] = n
        session["timings"].update(stack.timings)
        driver_spec = {
            "baseUrl": stack.url,
            "chromium": chromium,
            "outDir": str(out),
            "width": spec.get("width", 1400),
            "height": spec.get("height", 900),
            "loadTimeoutMs": spec.get("loadTimeoutMs", 120000),
            "cases": [{
                "name": c["name"],
                "viewerPath": viewer_path(c["study"], c.get("series")),
                "srSeriesUID": c.get("srSeries"),
                "srSearchTerms": c.get("srSearchTerms"),
                "probes": c.get("probes", {}),
                "maxSegments": c.get("maxSegments"),
                "hiddenShots": c.get("hiddenShots", False),
                **({"srViewPath": viewer_path(c["study"], c["srView"]), "srViewSeriesUID": c["srView"]}
                   if c.get("srView") else {}),
                **c.get("driverOptions", {}),  # case-specific steps of the driver (e.g. lesions)
            } for c in spec["cases"]],
        }
        dspec = out / "driver_spec.json"
        dspec.write_text(json.dumps(driver_spec, indent=1))
        env = dict(os.environ, NODE_PATH=str(nm))
        t1 = time.monotonic()
        proc = subprocess.run([node, spec["driver"], str(dspec)], env=env,
                              timeout=spec.get("driverTimeout", 540))
        rc = proc.returncode
        session["timings"]["driver_s"] = time.monotonic() - t1
    finally:
        if stack.server is not None:
            session["serverRequests"] = stack.server.requests
        session["orthancLogTail"] = stack.orthanc.log_tail(3000)
        stack.stop()
        session["timings"]["total_s"] = time.monotonic() - t0
        session["driverReturnCode"] = rc
        _reap_orphans()
        import resource

        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        session["cpuSeconds"] = round(ru.ru_utime + ru.ru_stime, 1)
        (out / "session.json").write_text(json.dumps(session, indent=1))
    return rc


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
