"""A real, throw-away PostgreSQL server for tests (shared helper; owner: receiving side).

    with postgres_server() as pg:          # or the ``postgres`` fixture in a conftest
        url = pg.new_database()            # a fresh, empty database per test
        pg.stop(); pg.start()              # e.g. to test "database unavailable"

initdb into a temp folder and ``pg_ctl start`` with a Unix socket in that folder and a TCP
listener on 127.0.0.1 only (free port). PostgreSQL refuses to run as root: as root the server
runs as the ``postgres`` account (``runuser -u postgres``; the Debian package creates it), and
the temp folder is handed to that account. fsync is off: the data is thrown away.
A missing PostgreSQL fails under CI=true and skips elsewhere (``tools.require_tool``).
"""
from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.tools import free_port, missing, require_tool


class PostgresServer:
    def __init__(self, root: Path, initdb: str, pg_ctl: str, as_user: list[str], extra_options: str = "") -> None:
        self.root = root
        self.extra_options = extra_options
        self.data = root / "data"
        self.sockets = root
        self.port = free_port()
        self._pg_ctl = pg_ctl
        self._as_user = as_user
        self._names = itertools.count(1)
        subprocess.run(
            [*as_user, initdb, "-D", str(self.data), "-U", "dsm", "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True,
        )
        self.start()

    def url(self, database: str = "postgres", unix_socket: bool = False) -> str:
        """TCP on 127.0.0.1, or the Unix socket: it also reaches the server from a thread or process
        inside another network namespace (the delivery tests' loopback-only peers)."""
        if unix_socket:
            return f"postgresql+psycopg://dsm@/{database}?host={self.sockets}&port={self.port}"
        return f"postgresql+psycopg://dsm@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-k {self.sockets} -c listen_addresses=127.0.0.1 -p {self.port} -F -c max_connections=200"
        if self.extra_options:
            options += " " + self.extra_options
        res = subprocess.run(
            [*self._as_user, self._pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w",
             "-t", "60", "start"],
            capture_output=True, text=True,
        )
        if res.returncode != 0:
            log = (self.root / "log").read_text(errors="replace")[-2000:] if (self.root / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {res.stderr}\n{log}")

    def stop(self, mode: str = "fast") -> None:
        subprocess.run([*self._as_user, self._pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop"],
                       capture_output=True)

    def new_database(self, unix_socket: bool = False) -> str:
        import psycopg

        name = f"dsm_test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=dsm dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name, unix_socket)


@contextmanager
def postgres_server(ssl_cert: Path | None = None, ssl_key: Path | None = None) -> Iterator[PostgresServer]:
    """``ssl_cert``/``ssl_key``: serve TLS too (copied beside the data, readable by the server only)."""
    initdb = require_tool("initdb")
    pg_ctl = require_tool("pg_ctl")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="dsm-pg-"))
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            missing("running as root and there is no 'postgres' account to run PostgreSQL as")
        as_user = [require_tool("runuser"), "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
        os.chmod(root, 0o700)
    server = None
    extra = ""
    if ssl_cert is not None and ssl_key is not None:
        for src, name in ((ssl_cert, "server.crt"), (ssl_key, "server.key")):
            shutil.copy(src, root / name)
            os.chmod(root / name, 0o600)
            if as_user:
                shutil.chown(root / name, "postgres", "postgres")
        extra = f"-c ssl=on -c ssl_cert_file={root / 'server.crt'} -c ssl_key_file={root / 'server.key'}"
    try:
        server = PostgresServer(root, initdb, pg_ctl, as_user, extra)
        yield server
    finally:
        if server is not None:
            server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
