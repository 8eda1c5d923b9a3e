"""A throw-away PostgreSQL server reachable only through a Unix socket (no TCP listener)."""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text


@contextmanager
def temporary_postgres(initdb: str, pg_ctl: str) -> Iterator[PostgresServer]:
    # PostgreSQL refuses to run as root; the Debian package provides the postgres account.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="dsm-pg-"))
    if as_user:
        shutil.chown(root, "postgres", "postgres")
    data, sockets = root / "data", root
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-U", "dsm", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True)
        options = f"-k {sockets} -c listen_addresses='' -F"
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
                       check=True, capture_output=True)
        server = PostgresServer(sockets)
        try:
            yield server
        finally:
            server.dispose()
            subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


class PostgresServer:
    def __init__(self, sockets: Path) -> None:
        self._sockets = sockets
        self._names = itertools.count(1)
        self._admin = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://dsm@/{database}?host={self._sockets}"

    def new_database(self) -> str:
        name = f"dsm_test_{next(self._names)}"
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        return self.url(name)

    def dispose(self) -> None:
        self._admin.dispose()
