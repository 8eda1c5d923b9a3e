"""Ingest benchmark: the node's C-STORE SCP against a bare pynetdicom SCP and DCMTK storescp.

    .venv/bin/python bench/ingest.py [--instances 200] [--size 512] [--rounds 3] [--explore]

Generates an uncompressed CT study (random pixels: ~0.5 MB per instance at 512x512) and one
copy with fresh UIDs per measurement (so that no receiver ever sees a duplicate), and sends
them with DCMTK ``storescu`` (TCP_NODELAY=1) to:

  node          ``python -m dsm_node.receive``, default durable mode (temp file + fsync +
                rename, index row committed before Success), SQLite;
  bare          a pynetdicom SCP that only writes each data set to a temp file, fsyncs and
                renames: the least any durable pynetdicom receiver can do. Same max PDU and
                the same pynetdicom configuration as the node (LOG_HANDLER_LEVEL "none");
  bare-default  the same bare SCP with pynetdicom's default configuration (reference);
  storescp      DCMTK storescp --max-pdu 131072 (TCP_NODELAY=1; it does not fsync),

once over one association and once with the study split over 4 parallel associations (four
storescu processes). All servers run for the whole benchmark; each round measures every peer
(order rotated per round) on the same copy, so ratios are paired within a round. Prints MB/s,
per-round ratios node/bare and node/storescp with their ranges, and the node's peak RSS.
``--explore`` adds the reactor experiments (docs/receiving.md): max PDU unlimited, and two
node processes sharing the port (SO_REUSEPORT).

The whole run happens in a private network namespace when possible (root + ``unshare``):
Debian's storescp listens on all interfaces, which then means loopback only. Without a
namespace storescp is skipped. On a shared machine figures are noisy: compare the paired
ratios, and use several rounds.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dsm_node.netutil import free_port  # noqa: E402 - after the path line above

PY = sys.executable
ENV = {**os.environ, "TCP_NODELAY": "1", "PYTHONUNBUFFERED": "1"}
NETNS_FLAG = "DSM_BENCH_IN_NETNS"

BARE_SCP = textwrap.dedent(
    """
    import os, signal, sys, tempfile, threading
    from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
    out, port, pdu, tuned = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    if tuned:
        _config.LOG_HANDLER_LEVEL = "none"

    def on_store(event):
        fd, tmp = tempfile.mkstemp(dir=out, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(event.encoded_dataset())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(out, event.request.AffectedSOPInstanceUID + ".dcm"))
        return 0x0000

    ae = AE("BARE")
    ae.maximum_pdu_size = pdu
    ae.maximum_associations = 16
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax)
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    print("listening", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    done.wait()
    server.shutdown()
    """
)


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


class RssSampler(threading.Thread):
    """Peak resident set size of a group of processes (sum), sampled every 20 ms."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        import psutil

        self.procs = [psutil.Process(p) for p in pids]
        self.peak = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            total = 0
            for p in self.procs:
                try:
                    total += p.memory_info().rss
                except Exception:
                    pass
            self.peak = max(self.peak, total)
            self._halt.wait(0.02)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


@dataclass
class Peer:
    name: str
    port: int
    aec: str
    procs: list[subprocess.Popen] = field(default_factory=list)
    data: Path | None = None
    rss: RssSampler | None = None

    received: int = 0

    def cpu(self) -> float:
        """CPU seconds (user + system, all threads) used by the server processes so far."""
        import psutil

        total = 0.0
        for p in self.procs:
            try:
                t = psutil.Process(p.pid).cpu_times()
                total += t.user + t.system
            except Exception:
                pass
        return total

    def stored(self) -> int:
        """Instances stored so far (the node: rows in its index; others: files seen)."""
        assert self.data is not None
        db = self.data / "dsm-node.db"
        if db.exists():
            with sqlite3.connect(db) as conn:
                return conn.execute("select count(*) from instances").fetchone()[0]
        return self.received

    def check_and_prune(self, expected: int) -> None:
        """Count what a plain receiver wrote, then delete it (keeps the disk footprint small)."""
        assert self.data is not None
        if (self.data / "dsm-node.db").exists():
            return
        files = [p for p in self.data.rglob("*") if p.is_file() and not p.name.startswith(".")]
        self.received += len(files)
        for f in files:
            f.unlink()

    def close(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def start_node(work: Path, name: str, max_pdu: int, processes: int = 1) -> Peer:
    data = Path(tempfile.mkdtemp(dir=work, prefix=f"{name.replace(' ', '_')}-"))
    cfg = data / "node.yaml"
    cfg.write_text(f"dicom:\n  max_pdu: {max_pdu}\nstorage:\n  min_free_bytes: 0\nlogging:\n  stdout: false\n")
    peer = Peer(name, free_port(), "DSMNODE", data=data)
    for _ in range(processes):
        cmd = [PY, "-m", "dsm_node.receive", "--config", str(cfg), "--data-dir", str(data), "--port", str(peer.port)]
        if processes > 1:
            cmd.append("--reuse-port")
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        peer.procs.append(proc)
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while True:  # one at a time: migrations and reconciliation must not race
            line = proc.stdout.readline()
            if b"listening on" in line:
                break
            if (not line and proc.poll() is not None) or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start")
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
    peer.rss = RssSampler([p.pid for p in peer.procs])
    peer.rss.start()
    return peer


def start_bare(work: Path, name: str, max_pdu: int, tuned: bool) -> Peer:
    data = Path(tempfile.mkdtemp(dir=work, prefix=f"{name}-"))
    script = work / "bare_scp.py"
    script.write_text(BARE_SCP)
    peer = Peer(name, free_port(), "BARE", data=data)
    proc = subprocess.Popen([PY, str(script), str(data), str(peer.port), str(max_pdu), "1" if tuned else "0"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peer.procs.append(proc)
    wait_port(peer.port, proc)
    return peer


def start_storescp(work: Path) -> Peer | None:
    if shutil.which("storescp") is None or os.environ.get(NETNS_FLAG) != "1":
        return None
    data = Path(tempfile.mkdtemp(dir=work, prefix="storescp-"))
    peer = Peer("storescp", free_port(), "ANY", data=data)
    proc = subprocess.Popen(["storescp", "--max-pdu", "131072", "-od", str(data), str(peer.port)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peer.procs.append(proc)
    wait_port(peer.port, proc)
    return peer


def send(files: list[Path], peer: Peer, parallel: int) -> float:
    chunks = [files[i::parallel] for i in range(parallel)]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(["storescu", "-aec", peer.aec, "127.0.0.1", str(peer.port), *map(str, chunk)], env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for chunk in chunks
    ]
    errors = []
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            errors.append(err.decode(errors="replace")[-400:])
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"storescu to {peer.name} failed: " + " | ".join(errors))
    return elapsed


def enter_netns() -> None:
    """Re-run this script in a private network namespace (loopback only), if possible."""
    if os.environ.get(NETNS_FLAG) == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        print("note: no private network namespace (needs root, unshare, ip): storescp is skipped", flush=True)
        return
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        print("note: unshare -n is not permitted here: storescp is skipped", flush=True)
        return
    env = {**os.environ, NETNS_FLAG: "1"}
    os.execvpe("unshare", ["unshare", "-n", sys.executable, *sys.argv], env)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="measurements per peer and mode (ranges are printed)")
    ap.add_argument("--max-pdu", type=int, default=131072, help="max PDU of the node and the bare SCP")
    ap.add_argument("--explore", action="store_true", help="also run the reactor experiments")
    ap.add_argument("--work", help="folder for the temp data (default: a temp dir under .cache)")
    args = ap.parse_args()
    if shutil.which("storescu") is None:
        print("DCMTK storescu is required (apt-get install dcmtk)", file=sys.stderr)
        return 2
    enter_netns()

    import numpy as np

    from training.phantom.writers import write_dicom_series

    base = Path(args.work) if args.work else REPO / ".cache"
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=base, prefix="bench-ingest-"))
    peers: list[Peer] = []
    try:
        modes = [1, args.parallel]
        # Random HU (incompressible, like real CT on the wire), the same pixels in every copy;
        # fresh UIDs per copy. Volume axes (column, row, slice), 0.8 mm pixels, 2.5 mm slices.
        noise = np.random.default_rng(0).integers(-1000, 1500, (args.size, args.size, args.instances), dtype=np.int16)
        affine = np.diag([0.8, 0.8, 2.5, 1.0])
        copies = [write_dicom_series(noise, affine, work / f"study{i}") for i in range(args.rounds * len(modes))]
        total = sum(f.stat().st_size for f in copies[0])
        print(f"study: {args.instances} instances, {total / 1e6:.1f} MB, {args.size}x{args.size}, uncompressed; "
              f"node/bare max PDU {args.max_pdu}; storescu with TCP_NODELAY=1; {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        peers.append(start_node(work, "node", args.max_pdu))
        peers.append(start_bare(work, "bare", args.max_pdu, tuned=True))
        peers.append(start_bare(work, "bare-default", args.max_pdu, tuned=False))
        sc = start_storescp(work)
        if sc is not None:
            peers.append(sc)
        if args.explore:
            peers.append(start_node(work, "node pdu=0", 0))
            peers.append(start_bare(work, "bare pdu=0", 0, tuned=True))
            peers.append(start_node(work, "node 2 procs", args.max_pdu, processes=2))
        results: dict[tuple[str, int], list[float]] = {}
        cpu_ms: dict[tuple[str, int], list[float]] = {}
        for rnd in range(args.rounds):
            order = peers[rnd % len(peers):] + peers[: rnd % len(peers)]
            for m, parallel in enumerate(modes):
                files = copies[rnd * len(modes) + m]
                for peer in order:
                    cpu0 = peer.cpu()
                    seconds = send(files, peer, parallel)
                    results.setdefault((peer.name, parallel), []).append(total / seconds / 1e6)
                    cpu_ms.setdefault((peer.name, parallel), []).append((peer.cpu() - cpu0) / len(files) * 1000)
                    peer.check_and_prune(args.instances)
            line = ", ".join(
                f"{p}@{n}: {results[(p, n)][-1]:.0f}" for n in modes for p in [q.name for q in peers]
            )
            print(f"round {rnd + 1}: MB/s {line}", flush=True)
        time.sleep(1)
        for copy in copies:
            for f in copy:
                f.unlink()
        expected = args.instances * args.rounds * len(modes)
        report(peers, results, cpu_ms, modes, expected)
    finally:
        for p in peers:
            p.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(peers: list[Peer], results: dict[tuple[str, int], list[float]], cpu_ms: dict[tuple[str, int], list[float]],
           modes: list[int], expected: int) -> None:
    print(f"\n{'peer':<14}{'mode':<9}{'MB/s median':>12}{'range':>16}{'CPU ms/inst':>13}{'stored':>9}")
    for n in modes:
        for peer in peers:
            vals = results[(peer.name, n)]
            cpu = statistics.median(cpu_ms[(peer.name, n)])
            stored = peer.stored() if n == modes[0] else ""
            flag = "" if stored in ("", expected) else f" (expected {expected})"
            print(f"{peer.name:<14}{f'{n} assoc':<9}{statistics.median(vals):>12.1f}"
                  f"{f'{min(vals):.1f}-{max(vals):.1f}':>16}{cpu:>13.2f}{stored!s:>9}{flag}")
    names = [p.name for p in peers]
    print()
    for n in modes:
        node = results[("node", n)]
        for other in ("bare", "bare-default", "storescp"):
            if other in names:
                ratios = [a / b for a, b in zip(node, results[(other, n)])]
                print(f"node/{other:<13}{n} assoc: median {statistics.median(ratios):.2f}, "
                      f"range {min(ratios):.2f}-{max(ratios):.2f} (paired per round)")
        if "storescp" in names:
            ratios = [a / b for a, b in zip(results[("bare", n)], results[("storescp", n)])]
            print(f"bare/storescp     {n} assoc: median {statistics.median(ratios):.2f}, "
                  f"range {min(ratios):.2f}-{max(ratios):.2f}")
    for peer in peers:
        if peer.rss is not None:
            print(f"{peer.name}: peak RSS {peer.rss.stop() / 1e6:.0f} MB"
                  f"{' (both processes)' if len(peer.procs) > 1 else ''}")


if __name__ == "__main__":
    sys.exit(main())
