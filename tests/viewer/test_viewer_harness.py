"""Fast tests of the viewer harness pieces (no browser): OHIF config, the same-origin server,
colour conversion, screen mapping, overlay analysis, the SEG-file geometry check and the
broken-SEG generators, Orthanc + DICOMweb, network isolation and ``dsm-node view --smoke``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dsm_node.viewer.ohif import app_config, app_config_js, viewer_path
from dsm_node.viewer.proxy import ViewerHTTPServer
from tests.support.ct import write_ct_series
from tests.tools import REPO, require_tool
from tests.viewer import broken_segs
from tests.viewer import ohif_checks as checks

# --------------------------------------------------------------------------------------------
# a tiny CT series + SEG (pydicom + highdicom), written once per session


def _write_ct(out: Path, n: int = 6, size: int = 32) -> list[Path]:
    return write_ct_series(out, n, size, noise=True, noise_range=(-100, 100), explicit=True,
                           pixel_spacing=(1.0, 1.0)).files


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """CT (6 x 32 x 32), label volume, truth, and a BINARY SEG of two segments made with
    highdicom (independent of dsm_node.results)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    out = tmp_path_factory.mktemp("tiny")
    ct_paths = _write_ct(out)
    ct = checks.read_ct(ct_paths)
    labels = np.zeros((6, 32, 32), np.int32)
    for k in (1, 2, 3):  # "Liver", slices 1-3, patient-right half, growing towards the head
        labels[k, 5:15, 4:6 + 3 * k] = 6
    for k in (2, 3, 4, 5):  # "Spleen", slices 2-5, shrinking
        labels[k, 18:26, 20:32 - 2 * k] = 1
    segs = [checks.ExpectedSegment(1, "Spleen", (157, 108, 162), 1),
            checks.ExpectedSegment(2, "Liver", (221, 130, 100), 6)]
    truth = checks.Truth(ct, labels, segs)
    dss = [pydicom.dcmread(p) for p in ct.paths]
    descs = [hd.seg.SegmentDescription(
        segment_number=s.number, segment_label=s.label,
        segmented_property_category=codes.SCT.Organ, segmented_property_type=codes.SCT.Organ,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        display_color=hd.color.CIELabColor.from_rgb(*s.rgb)) for s in segs]
    arr = np.stack([labels == s.value for s in segs], axis=-1)
    seg = hd.seg.Segmentation(
        source_images=dss, pixel_array=arr, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descs, series_instance_uid=hd.UID(), series_number=50,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test",
        manufacturer_model_name="test", software_versions="0", device_serial_number="0")
    seg_path = out / "seg.dcm"
    seg.save_as(seg_path)
    return {"dir": out, "ct": ct, "truth": truth, "seg": seg_path}


# --------------------------------------------------------------------------------------------
# OHIF configuration and the same-origin server


def test_app_config_is_offline_and_same_origin():
    cfg = app_config()
    ds = cfg["dataSources"][0]["configuration"]
    assert ds["qidoRoot"] == ds["wadoRoot"] == "/dicom-web" and ds["wadoUriRoot"] == "/wado"
    assert cfg["disableConfirmationPrompts"] is True
    assert cfg["defaultDataSourceName"] == cfg["dataSources"][0]["sourceName"]
    js = app_config_js()
    assert "'ohif.tours': { $set: [] }" in js
    assert "http://" not in js and "https://" not in js  # nothing off-origin
    assert viewer_path("1.2", "3.4") == "/viewer?StudyInstanceUIDs=1.2&initialSeriesInstanceUID=3.4"


class _FakeOrthanc(BaseHTTPRequestHandler):
    seen: list = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        _FakeOrthanc.seen.append(("GET", self.path, self.headers.get("Accept")))
        body = json.dumps([{"path": self.path}]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(n)
        _FakeOrthanc.seen.append(("POST", self.path, data))
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _get(url, **kw):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, **kw), timeout=10) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def test_proxy_serves_dist_with_fallback_and_forwards_dicomweb(tmp_path):
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<html>OHIF</html>")
    (dist / "app.bundle.js").write_text("console.log(1)")
    (dist / "x.wasm").write_bytes(b"\0asm")
    (tmp_path / "secret.txt").write_text("no")
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOrthanc)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        with ViewerHTTPServer(dist, upstream.server_address[1]) as srv:
            assert srv.server_address[0] == "127.0.0.1"
            base = srv.url
            for route in ("/", "/viewer?StudyInstanceUIDs=1.2", "/segmentation/x"):
                st, body, h = _get(base + route)
                assert st == 200 and body == b"<html>OHIF</html>", route
                assert h["Cross-Origin-Embedder-Policy"] == "require-corp"
                assert h["Cross-Origin-Opener-Policy"] == "same-origin"
            st, body, h = _get(base + "/app.bundle.js")
            assert st == 200 and h["Content-Type"].startswith("text/javascript")
            assert _get(base + "/x.wasm")[2]["Content-Type"] == "application/wasm"
            assert _get(base + "/missing.bundle.js")[0] == 404
            assert _get(base + "/../secret.txt")[1] != b"no"
            assert _get(base + "/%2e%2e/secret.txt")[1] != b"no"
            st, body, _ = _get(base + "/app-config.js")
            assert st == 200 and b"/dicom-web" in body
            st, body, h = _get(base + "/dicom-web/studies?PatientID=1&limit=5",
                               headers={"Accept": "application/dicom+json"})
            assert st == 200 and json.loads(body) == [{"path": "/dicom-web/studies?PatientID=1&limit=5"}]
            assert h["Content-Type"] == "application/dicom+json"
            assert h["Cross-Origin-Embedder-Policy"] == "require-corp"
            assert _FakeOrthanc.seen[-1][2] == "application/dicom+json"
            assert _get(base + "/wado?requestType=WADO")[0] == 200
            st, _, _ = _get(base + "/dicom-web/studies", data=b"abc", method="POST")
            assert st == 404 and _FakeOrthanc.seen[-1] == ("POST", "/dicom-web/studies", b"abc")
            statuses = [r[2] for r in srv.requests]
            assert 200 in statuses and 404 in statuses
    finally:
        upstream.shutdown()
        upstream.server_close()


# --------------------------------------------------------------------------------------------
# colours, screen mapping, overlay analysis


def test_cielab_reader_round_trips_every_catalog_colour():
    import highdicom as hd

    for _index, name, rgb in checks.load_catalog(REPO / "config" / "classes.yaml"):
        lab = hd.color.CIELabColor.from_rgb(*rgb).value
        back = checks.dicom_lab_to_rgb(lab)
        assert max(abs(a - b) for a, b in zip(back, rgb)) <= 1.0, (name, rgb, lab, back)
    # The dcmqi liver SEG's colour, as OHIF 3.13 displays it: rgb(221, 130, 101).
    assert [round(v) for v in checks.dicom_lab_to_rgb([41661, 41167, 40792])] == [221, 130, 101]


def test_screen_mask_uses_the_viewport_mapping():
    mask = np.zeros((4, 6), bool)
    mask[1, 2] = True  # row 1, column 2
    state = {"canvasOfVoxel": {"0,0": [10.5, 20.5], "0,1": [12.5, 20.5], "1,0": [10.5, 22.5]}}
    m = checks.screen_mask(state, mask, (40, 40))
    ys, xs = np.nonzero(m)
    # voxel centre at canvas (10.5 + 2*2, 20.5 + 2*1) = (14.5, 22.5); 2x2 pixels around it
    assert set(zip(xs.tolist(), ys.tolist())) == {(13, 21), (14, 21), (13, 22), (14, 22)}


def test_overlay_analysis_tells_segments_apart():
    rng = np.random.default_rng(1)
    grey = rng.uniform(0, 255, (30, 30))
    hidden = np.repeat(grey[..., None], 3, axis=-1)
    shown = hidden.copy()
    red, blue = np.array([230, 60, 50.0]), np.array([60, 120, 240.0])
    shown[2:10, 2:10] = 0.5 * red + 0.5 * hidden[2:10, 2:10]
    shown[15:25, 15:25] = 0.5 * blue + 0.5 * hidden[15:25, 15:25]
    shown = np.rint(shown).astype(np.float32)
    for h in (hidden.astype(np.float32), None):
        an = checks.analyse_overlay(shown, h, [tuple(red), tuple(blue)])
        assert (an.assigned[2:10, 2:10] == 0).all() and (an.assigned[15:25, 15:25] == 1).all()
        assert (an.assigned >= 0).sum() == 64 + 100
        assert abs(float(np.median(an.alpha[2:10, 2:10])) - 0.5) < 0.03
    # A colour that is not the expected one is not explained by it.
    an = checks.analyse_overlay(shown, None, [tuple(blue)])
    assert (an.assigned[2:10, 2:10] == -1).all()


# --------------------------------------------------------------------------------------------
# SEG file geometry and the broken variants (no viewer)


def test_seg_file_check_passes_a_correct_seg(tiny):
    assert checks.check_seg_file(tiny["seg"], tiny["truth"]) == []
    table = checks.seg_segment_table(tiny["seg"])
    assert [t["label"] for t in table] == ["Spleen", "Liver"]
    assert all(max(abs(a - b) for a, b in zip(t["rgb"], s.rgb)) <= 1
               for t, s in zip(table, tiny["truth"].segments))


@pytest.mark.parametrize("variant", broken_segs.VARIANTS)
def test_broken_variants_are_what_they_claim(tiny, variant, tmp_path):
    p = broken_segs.make_variant(tiny["seg"], variant, tmp_path, tiny["ct"])
    good = pydicom.dcmread(tiny["seg"])
    bad = pydicom.dcmread(p)
    assert bad.SeriesInstanceUID != good.SeriesInstanceUID
    assert bad.SOPInstanceUID != good.SOPInstanceUID
    assert bad.StudyInstanceUID == good.StudyInstanceUID
    problems = checks.check_seg_file(p, tiny["truth"])
    if variant in ("blank_labels", "recoloured"):
        assert problems == []
        table = checks.seg_segment_table(p)
        if variant == "blank_labels":
            assert [t["label"] for t in table] == ["", ""]
        else:
            assert [round(v) for v in table[0]["rgb"]] == [221, 130, 100]
    else:
        assert problems, f"{variant}: not detected by the SEG file check"
    if variant == "shifted_position_only":
        assert any("contradicts" in m for m in problems)


def _fake_obs(truth: checks.Truth, shift: int = 0, labels=None) -> dict:
    """Observations as the driver records them, made from the truth (optionally shifted)."""
    lm = []
    n = len(truth.ct.ipp)
    for k, ipp in enumerate(truth.ct.ipp):
        segs = {}
        src = k - shift
        for s in truth.segments:
            if 0 <= src < n:
                m = truth.mask(s)[src]
                if m.any():
                    r, c = np.nonzero(m)
                    segs[str(s.number)] = {"n": int(m.sum()), "centroid": [r.mean(), c.mean()]}
        lm.append({"ipp": ipp.tolist(), "segments": segs})
    names = labels or [s.label for s in truth.segments]
    return {"name": "fake", "labelmap": lm,
            "panelRows": [{"text": t, "color": "rgb({}, {}, {})".format(*s.rgb)}
                          for t, s in zip(names, truth.segments)],
            "segments": [{"segmentIndex": s.number, "label": t, "color": [*s.rgb, 255]}
                         for t, s in zip(names, truth.segments)]}


def test_labelmap_panel_and_colour_checks_on_synthetic_observations(tiny):
    truth = tiny["truth"]
    good = _fake_obs(truth)
    assert checks.check_labelmap(good, truth) == []
    assert checks.check_panel(good, truth) == []
    assert checks.check_colours(good, truth, tiny["seg"]) == []
    assert checks.check_labelmap(_fake_obs(truth, shift=1), truth)
    assert checks.check_panel(_fake_obs(truth, labels=["Segment 1", "Segment 2"]), truth)
    reordered = _fake_obs(truth)
    reordered["panelRows"].reverse()
    assert checks.check_panel(reordered, truth)
    wrong = _fake_obs(truth)
    wrong["segments"][0]["color"] = [0, 255, 0, 255]
    assert checks.check_colours(wrong, truth, tiny["seg"])


def test_network_check():
    ok = {"requests": ["http://127.0.0.1:8000/viewer", "data:image/png;base64,xx",
                       "blob:http://127.0.0.1:8000/uuid"], "failedRequests": []}
    assert checks.check_network(ok, {"interfaces": ["lo"], "serverRequests": []}) == []
    bad = {"requests": ["http://127.0.0.1:8000/", "https://fonts.example.org/x.woff"],
           "failedRequests": []}
    assert checks.check_network(bad)
    assert checks.check_network(ok, {"interfaces": ["eth0", "lo"], "serverRequests": []})


def test_console_check_lists_known_harmless_messages():
    obs = {"console": [{"type": "error", "text": "IMAGE_LOAD_ERROR TypeError: handler is not a function"},
                       {"type": "warning", "text": "anything"}], "pageErrors": []}
    assert checks.check_console(obs) == []
    obs["console"].append({"type": "error", "text": "TypeError: x is undefined"})
    assert checks.check_console(obs)


# --------------------------------------------------------------------------------------------
# Orthanc, isolation, dsm-node view


def test_orthanc_dicomweb_through_the_proxy(tiny, tmp_path):
    require_tool("Orthanc")
    from dsm_node.viewer.orthanc import find_dicomweb_plugin
    from dsm_node.viewer.stack import ViewerStack

    if find_dicomweb_plugin() is None:
        require_tool("libOrthancDicomWeb.so")
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<html></html>")
    with ViewerStack(dist=dist) as stack:
        assert stack.upload([*tiny["ct"].paths, tiny["seg"]]) == 7
        st, body, h = _get(stack.url + f"/dicom-web/studies?StudyInstanceUID={tiny['ct'].study_uid}",
                           headers={"Accept": "application/dicom+json"})
        assert st == 200 and len(json.loads(body)) == 1
        st, body, _ = _get(stack.url + f"/dicom-web/studies/{tiny['ct'].study_uid}/series")
        mods = sorted(s["00080060"]["Value"][0] for s in json.loads(body))
        assert mods == ["CT", "SEG"]
        # Orthanc's own config: no DICOM listener, no remote access.
        cfg = stack.orthanc.config()
        assert cfg["DicomServerEnabled"] is False and cfg["RemoteAccessAllowed"] is False


def _with_repo_on_path() -> dict[str, str]:
    """The environment for a child Python that imports this checkout's dsm_node (from any cwd)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def test_isolated_processes_see_only_loopback():
    from dsm_node.viewer.netns import isolated_argv, netns_available

    ok, why = netns_available()
    if not ok:
        pytest.skip(why)
    code = "from dsm_node.viewer.netns import interfaces; print(interfaces())"
    out = subprocess.run(isolated_argv([sys.executable, "-c", code]), capture_output=True,
                         text=True, timeout=30, env=_with_repo_on_path())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['lo']"


def test_view_command_smoke(tiny):
    require_tool("Orthanc")
    from dsm_node.viewer.ohif import ohif_dist

    if ohif_dist(required=False) is None:
        pytest.skip("OHIF not installed (scripts/install-viewer.sh)")
    out = subprocess.run([sys.executable, "-m", "dsm_node", "view", str(tiny["dir"]), "--port", "0", "--smoke"],
                         capture_output=True, text=True, timeout=120,
                         env={**_with_repo_on_path(), "TCP_NODELAY": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "smoke check passed" in out.stdout
    assert "initialSeriesInstanceUID=" in out.stdout  # the link opens the SEG
    if os.geteuid() == 0:
        assert "private network namespace" in out.stdout
