"""What every stage needs at hand: settings, database sessions, the auditor, data folders."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from .audit import Auditor
from .db.engine import make_engine, make_sessionmaker, upgrade
from .fsmodes import tighten
from .settings import Settings


@dataclass
class NodeContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    auditor: Auditor

    @property
    def spool_dir(self) -> Path:
        return self.settings.storage.spool_dir

    @property
    def results_dir(self) -> Path:
        return self.settings.storage.results_dir

    def close(self) -> None:
        self.engine.dispose()


def build_context(settings: Settings, migrate: bool | None = None, *, create_dirs: bool = True) -> NodeContext:
    """Open the database (migrating it when configured) and make the data folders
    (``create_dirs=False``: an operator command on an existing node makes none)."""
    folders = (settings.storage.data_dir, settings.storage.spool_dir, settings.storage.results_dir)
    if create_dirs:
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
    url = settings.database_url
    if url.startswith("sqlite:///"):
        db = Path(url.split("///", 1)[1])
        tighten(*folders, db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))
    else:
        tighten(*folders)
    if settings.database.auto_migrate if migrate is None else migrate:
        upgrade(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    syslog = None
    if settings.audit.syslog.enabled:
        from .syslog import SyslogSender

        syslog = SyslogSender(settings.audit.syslog, app_name=settings.dicom.ae_title)
    return NodeContext(settings=settings, engine=engine, sessions=sessions, auditor=Auditor(sessions, syslog))
