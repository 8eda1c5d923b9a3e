"""Structured JSON-lines logging.

Datasets are never logged; records carry UIDs, AE titles and addresses only, so patient
name/ID cannot reach a log through this module.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from pathlib import Path

_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "INFO", stdout: bool = True, file: Path | None = None) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = JsonFormatter()
    if stdout:
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(formatter)
        root.addHandler(h)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(file, encoding="utf-8")
        fh.setFormatter(formatter)
        root.addHandler(fh)
    root.setLevel(level)
    # pynetdicom logs every PDU at DEBUG/INFO; keep only its warnings.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # Alembic announces its plugins and context at INFO on every start.
    logging.getLogger("alembic").setLevel(logging.WARNING)
