"""/healthz and /metrics in process, on an ephemeral port."""
import dataclasses
import errno
import json
import socket
import urllib.error
import urllib.request

import pytest
from sqlalchemy import create_engine

from dsm_node.context import build_context
from dsm_node.db.engine import transaction
from dsm_node.db.models import Job, Study, StudyState
from dsm_node.http import HttpService
from dsm_node.metrics import INSTANCES_RECEIVED
from dsm_node.settings import load_settings


@pytest.fixture
def ctx(tmp_path):
    ctx = build_context(load_settings(overrides={"storage.data_dir": tmp_path, "storage.min_free_bytes": 0}))
    yield ctx
    ctx.close()


@pytest.fixture
def serve_http():
    started = []

    def start(ctx, listening=True):
        service = HttpService(ctx, scp_listening=lambda: listening, port=0)
        service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def test_healthz_ok_and_unhealthy_when_scp_down(ctx, serve_http):
    up = serve_http(ctx, listening=True)
    status, ctype, body = get(up.url + "/healthz")
    health = json.loads(body)
    assert status == 200 and ctype == "application/json"
    assert health["status"] == "ok" and health["database"] == {"reachable": True}
    assert health["scp"]["listening"] is True and health["disk"]["ok"] is True and health["version"]

    down = serve_http(ctx, listening=False)
    status, _, body = get(down.url + "/healthz")
    assert status == 503 and json.loads(body)["scp"]["listening"] is False


def test_healthz_reports_an_unreachable_database(ctx, serve_http, tmp_path):
    broken = dataclasses.replace(ctx, engine=create_engine(f"sqlite:///{tmp_path}/missing/dir/x.db"))
    service = serve_http(broken)
    status, _, body = get(service.url + "/healthz")
    health = json.loads(body)
    assert status == 503 and health["status"] == "unhealthy"
    assert health["database"]["reachable"] is False and "OperationalError" in health["database"]["error"]


def test_healthz_fails_below_the_free_disk_minimum(ctx, serve_http):
    ctx.settings.storage.min_free_bytes = 1 << 62
    status, _, body = get(serve_http(ctx).url + "/healthz")
    assert status == 503 and json.loads(body)["disk"]["ok"] is False


def test_metrics_read_states_from_the_database(ctx, serve_http):
    with transaction(ctx.sessions) as s:
        s.add_all([Study(study_uid="1.2.3"), Study(study_uid="1.2.4"), Study(study_uid="1.2.5", state=StudyState.SELECTED)])
        s.flush()
        s.add(Job(study_id=3, revision=1, series_uid="1.2.5.1"))
    INSTANCES_RECEIVED.labels(outcome="stored").inc(0)
    service = serve_http(ctx)
    status, ctype, text = get(service.url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    lines = set(text.splitlines())
    assert 'dsm_studies{state="receiving"} 2.0' in lines
    assert 'dsm_studies{state="selected"} 1.0' in lines
    assert 'dsm_studies{state="no_eligible"} 0.0' in lines
    assert 'dsm_jobs{state="selected"} 1.0' in lines
    assert 'dsm_deliveries{state="dead"} 0.0' in lines
    assert any(line.startswith('dsm_instances_received_total{outcome="stored"}') for line in lines)

    with transaction(ctx.sessions) as s:
        s.get(Study, 1).state = StudyState.COMPLETE
    lines = set(get(service.url + "/metrics")[2].splitlines())
    assert 'dsm_studies{state="receiving"} 1.0' in lines and 'dsm_studies{state="complete"} 1.0' in lines


def test_unknown_path_is_404_and_routes_can_be_added(ctx, serve_http):
    from dsm_node.http import Response

    service = serve_http(ctx)
    status, _, body = get(service.url + "/nothing")
    assert status == 404 and json.loads(body) == {"error": "not found"}  # no route listing
    service.add_route("/status", lambda: Response(200, "text/html", b"<p>ok</p>"))
    assert get(service.url + "/status")[:3] == (200, "text/html", "<p>ok</p>")


def test_port_in_use_raises_address_in_use(ctx):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        service = HttpService(ctx, port=holder.getsockname()[1])
        with pytest.raises(OSError) as raised:
            service.start()
        assert raised.value.errno == errno.EADDRINUSE
