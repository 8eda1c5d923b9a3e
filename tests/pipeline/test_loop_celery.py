"""Scale-out: the node enqueues jobs in a real Redis, two `dsm-node worker` processes run them.

One worker is killed (SIGKILL) in the middle of its job; the job must finish on the other
worker and the PACS must receive exactly one SR (and at most one SEG) instance.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.nodeproc import NodeProcess
from tests.peers import StoreSCP
from tests.pipeline.loop import assert_results_received, job_transitions, node_yaml, wait_job
from tests.tools import REPO, free_port, require_tool

SR_3D = "1.2.840.10008.5.1.4.1.1.88.34"


def start_redis(net, folder: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    proc = net.popen(
        [require_tool("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    net.wait_listening(port)
    return proc, port


def start_worker(net, node: NodeProcess, name: str) -> tuple[subprocess.Popen, Path]:
    log = node.root / f"{name}.log"
    with log.open("wb") as out:
        proc = net.popen(
            [sys.executable, "-m", "dsm_node", *node.cli_args("worker", "--device", "cpu", "--name", f"{name}@test")],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ},
        )
    return proc, log


def wait_ready(logs: list[Path], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(" ready." in p.read_text(errors="replace") for p in logs):
            return
        time.sleep(0.3)
    raise AssertionError("workers not ready:\n" + "\n".join(p.read_text(errors="replace")[-1500:] for p in logs))


def test_two_celery_workers_and_one_killed_mid_job(tmp_path, tiny_checkpoint, phantom_study, net):
    redis, redis_port = start_redis(net, tmp_path / "redis")
    pacs = StoreSCP(net, require_tool("storescp"), free_port(), tmp_path / "pacs").start()
    yaml = node_yaml(tiny_checkpoint, pacs.port, executor="celery", broker=f"redis://127.0.0.1:{redis_port}/0")
    node = NodeProcess(tmp_path / "node", quiet_period_s=1, net=net, extra_yaml=yaml)
    workers = []
    try:
        node.start()
        workers = [start_worker(net, node, f"w{i}") for i in (1, 2)]
        wait_ready([log for _, log in workers])
        assert node.send(phantom_study).returncode == 0

        running = wait_job(node, {"running"})
        victim_pid = int(running.worker.split(":")[1])  # host:pid:token
        assert victim_pid in {p.pid for p, _ in workers}, (running.worker, [p.pid for p, _ in workers])
        os.kill(victim_pid, signal.SIGKILL)

        job = wait_job(node, {"delivered"}, predicate=lambda j: j.worker != running.worker)
        received = pacs.received()
    finally:
        for proc, _ in workers:
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in workers:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        node.terminate()
        pacs.stop()
        redis.terminate()
        redis.wait(10)

    survivor = next(p.pid for p, _ in workers if p.pid != victim_pid)
    assert job.worker.split(":")[1] == str(survivor)
    assert job.attempts == 2
    assert ("running", "queued") in job_transitions(node, job.id)
    sr = [d for d in received.values() if d.SOPClassUID == SR_3D]
    assert len(sr) == 1 and sr[0].SOPInstanceUID == job.summary["sr_sop_instance_uid"]
    assert_results_received(received, job)
