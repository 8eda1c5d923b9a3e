"""Run only the receiving side: ``python -m dsm_node.receive --data-dir D --port P``.

Builds the settings (file < environment < flags), the context (database migrated), reconciles
the spool, starts the SCP and blocks until SIGTERM/SIGINT. Prints ``listening on HOST:PORT``
once associations are accepted. Used by the tests and the ingest benchmark; ``dsm-node serve``
runs the same pieces together with the rest of the node.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from ..context import build_context
from ..logs import configure_logging
from ..settings import ConfigError, load_settings


def main(argv: list[str] | None = None) -> int:
    from ..fsmodes import restrict_umask

    restrict_umask()  # files 0640, folders 0750 at most, whatever the caller's umask
    parser = argparse.ArgumentParser(prog="python -m dsm_node.receive", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML configuration file")
    parser.add_argument("--data-dir", help="storage.data_dir")
    parser.add_argument("--host", help="dicom.host")
    parser.add_argument("--port", type=int, help="dicom.port (0 = any free port)")
    parser.add_argument("--ae-title", help="dicom.ae_title")
    parser.add_argument("--database-url", help="database.url (default: SQLite under the data dir)")
    parser.add_argument("--reuse-port", action="store_true",
                        help="set SO_REUSEPORT so several receiver processes can share the port")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {
        "storage.data_dir": args.data_dir,
        "dicom.host": args.host,
        "dicom.ae_title": args.ae_title,
        "database.url": args.database_url,
    }
    if args.port is not None:
        overrides["dicom.port"] = args.port if args.port else None
    try:
        settings = load_settings(args.config, overrides)
    except ConfigError as exc:
        print(f"dsm_node.receive: {exc}", file=sys.stderr)
        return 2
    if args.port == 0:
        # Port 0 (tests) is outside the schema's range: bind any free port.
        object.__setattr__(settings.dicom, "port", 0)
    lg = settings.logging
    configure_logging(lg.level, lg.stdout, (settings.storage.log_dir / "dsm-node.jsonl") if lg.file else None)

    from .reconcile import reconcile
    from .scp import StorageSCP

    ctx = build_context(settings)
    reconcile(ctx)
    scp = StorageSCP(ctx, reuse_port=args.reuse_port)
    stop = threading.Event()

    def _signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _signal)
    signal.signal(signal.SIGINT, _signal)
    scp.start()
    print(f"listening on {settings.dicom.host}:{scp.port}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        scp.stop()
        ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
