"""Celery remote control (issue 18): anyone who can write to Redis used to be able to stop the
workers with broadcast('shutdown'), and the worker then exited 0 (no systemd restart). Now the
control channel is off, and a worker stopped other than by a signal exits 1."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

from dsm_node.jobs.celery_app import make_celery
from dsm_node.settings import load_settings
from tests.nodeproc import NodeProcess
from tests.pipeline.loop import node_yaml
from tests.pipeline.test_loop_celery import start_redis, start_worker, wait_ready
from tests.tools import REPO


def _control(broker: str, command: str):  # noqa: ANN202
    app = make_celery(load_settings(overrides={"executor.broker_url": broker}))
    try:
        if command == "ping":
            return app.control.ping(timeout=2)
        return app.control.broadcast(command)
    finally:
        app.close()


def _worker_for(tmp_path, tiny_checkpoint, net, broker: str):  # noqa: ANN001, ANN202
    """A `dsm-node worker` on ``broker``, ready; returns (node, process, log)."""
    node = NodeProcess(tmp_path / "node", quiet_period_s=1, net=net,
                       extra_yaml=node_yaml(tiny_checkpoint, None, executor="celery", broker=broker))
    worker, log = start_worker(net, node, "w1")
    wait_ready([log])
    return node, worker, log


def test_broadcast_shutdown_has_no_effect_on_a_worker(tmp_path, tiny_checkpoint, net):
    redis, port = start_redis(net, tmp_path / "redis")
    broker = f"redis://127.0.0.1:{port}/0"
    _, worker, log = _worker_for(tmp_path, tiny_checkpoint, net, broker)
    try:
        net.call(_control, broker, "shutdown")
        assert net.call(_control, broker, "ping") == []  # nobody listens on the control channel
        time.sleep(1)
        assert worker.poll() is None, log.read_text()[-2000:]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0  # a requested stop is a clean one
    finally:
        if worker.poll() is None:
            worker.kill()
        redis.terminate()
        redis.wait(10)


def test_a_worker_stopped_without_a_signal_exits_non_zero(tmp_path, net):
    redis, port = start_redis(net, tmp_path / "redis")
    broker = f"redis://127.0.0.1:{port}/0"
    # The node's worker loop on an app with remote control switched back on: the broadcast
    # stops it, and the exit status must tell systemd to restart it.
    script = textwrap.dedent(f"""
        import sys
        from dsm_node.commands.worker import run_worker
        from dsm_node.jobs.celery_app import make_celery
        from dsm_node.settings import load_settings
        app = make_celery(load_settings(overrides={{"executor.broker_url": {broker!r}}}))
        app.conf.worker_enable_remote_control = True
        sys.exit(run_worker(app, ["worker", "--pool=solo", "--without-gossip", "--without-mingle",
                                  "--hostname=ctl@test", "--loglevel=INFO"]))
    """)
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = net.popen([sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_ready([log])
        net.call(_control, broker, "shutdown")
        assert proc.wait(60) == 1, log.read_text()[-2000:]
        assert "stopped without a stop signal" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        redis.terminate()
        redis.wait(10)


def test_rediss_with_a_password_end_to_end(tmp_path, tiny_checkpoint, net):
    """The documented broker form ``rediss://:PASSWORD@host:port/0?ssl_cert_reqs=required&ssl_ca_certs=CA``:
    a worker connects over TLS with the password and receives what the node sends."""
    from dsm_node.context import build_context
    from dsm_node.jobs.executors import CeleryExecutor
    from tests.peers import make_certificates
    from tests.tools import free_port, require_tool

    pki = make_certificates(tmp_path / "pki", require_tool("openssl"))
    port = free_port()
    (tmp_path / "redis").mkdir()
    redis = net.popen(
        [require_tool("redis-server"), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(pki["server_cert"]), "--tls-key-file", str(pki["server_key"]),
         "--tls-ca-cert-file", str(pki["ca"]), "--tls-auth-clients", "no", "--requirepass", "s3cret-redis",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path / "redis")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    net.wait_listening(port)
    broker = f"rediss://:s3cret-redis@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={pki['ca']}"
    node, worker, log = _worker_for(tmp_path, tiny_checkpoint, net, broker)
    try:
        ctx = build_context(load_settings(node.config, {"storage.data_dir": node.data_dir}))
        try:
            net.call(CeleryExecutor(ctx).submit, 424242)  # no such job: the worker says so
        finally:
            ctx.close()
        deadline = time.monotonic() + 60
        while "424242 does not exist" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "424242 does not exist" in log.read_text(), log.read_text()[-2000:]
        assert "s3cret-redis" not in log.read_text()
        wrong = broker.replace("s3cret-redis", "guess")
        try:
            net.call(_control, wrong, "ping")
        except Exception as exc:  # noqa: BLE001 - kombu wraps redis' AuthenticationError
            assert "auth" in f"{type(exc).__name__} {exc}".lower() or "password" in str(exc).lower()
        else:
            raise AssertionError("a wrong password was accepted")
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(60)
        redis.terminate()
        redis.wait(10)
