from __future__ import annotations

import argparse
import contextlib
import io
import random
import shutil
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from dsm_node.audit import query_events
from dsm_node.context import build_context
from dsm_node.db.engine import transaction
from dsm_node.db.models import (
    AuditEvent,
    Delivery,
    DeliveryState,
    Job,
    JobState,
    Result,
    Study,
    StudyState,
    utcnow,
)
from dsm_node.delivery import DeliveryService, enqueue_results
from dsm_node.settings import load_settings
from tests.delivery.delivery_objects import ResultFile, build_results
from tests.peers import LoopbackNet
from tests.pg import PostgresServer, postgres_server

FAST_RETRIES = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2, "timeout_s": 5, "max_attempts": 5}


def pacs(port: int, name: str = "pacs", ae_title: str = "PACS", **extra: Any) -> dict[str, Any]:
    return {"name": name, "ae_title": ae_title, "host": "127.0.0.1", "port": port, **extra}


class Node:
    """A migrated node database under ``root`` whose configuration can be changed between steps."""

    def __init__(
        self,
        root: Path,
        net: LoopbackNet,
        delivery: dict[str, Any],
        peers: list[dict[str, Any]] | None,
        database_url: str | None = None,
    ) -> None:
        self.root, self.net, self.database_url = root, net, database_url
        self.config_path = root / "node.yaml"
        root.mkdir(parents=True, exist_ok=True)
        self.ctx: Any = None
        self.configure(delivery, peers)

    def configure(self, delivery: dict[str, Any], peers: list[dict[str, Any]] | None = None) -> None:
        config = {
            "storage": {"data_dir": str(self.root / "var"), "fsync": False},
            "dicom": {"ae_title": "DSMNODE", "peers": peers or []},
            "delivery": {**FAST_RETRIES, **delivery},
        }
        if self.database_url:
            config["database"] = {"url": self.database_url}
        self.config_path.write_text(yaml.safe_dump(config))
        if self.ctx is not None:
            self.ctx.close()
        self.ctx = build_context(load_settings(self.config_path))
        self.service = DeliveryService(self.ctx, rng=random.Random(7))

    def add_results(
        self, files: list[ResultFile], calling_ae: str | None = "MODALITY", peer_address: str | None = "127.0.0.1"
    ) -> list[Result]:
        """Record ``files`` as the results of a new job and enqueue them, as the pipeline does."""
        with transaction(self.ctx.sessions) as s:
            study = s.scalar(select(Study).where(Study.study_uid == files[0].study_uid))
            if study is None:
                study = Study(study_uid=files[0].study_uid, calling_ae=calling_ae, peer_address=peer_address)
                s.add(study)
                s.flush()
            job = Job(study=study, revision=len(study.jobs) + 1, series_uid="1.2.3.4", state=JobState.ENCODED)
            # The study stands where selection leaves it for this revision (dsm_node.lifecycle:
            # the job's end moves it to done or failed from there).
            study.revision, study.state = job.revision, StudyState.SELECTED.value
            s.add(job)
            s.flush()
            results = []
            for f in files:
                relative = Path(f"job-{job.id}") / f.path.name
                (self.ctx.results_dir / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f.path, self.ctx.results_dir / relative)
                results.append(
                    Result(
                        job=job, kind=f.kind, sop_class_uid=f.sop_class_uid, sop_instance_uid=f.sop_instance_uid,
                        series_uid=f.series_uid, path=str(relative), size_bytes=f.path.stat().st_size,
                    )
                )
            s.add_all(results)
            enqueue_results(s, self.ctx.settings, results, self.ctx.auditor)
        return results

    def deliver(self) -> int:
        """One delivery pass, inside the test network."""
        return self.net.call(self.service.run_once)

    def rows(self, state: str | None = None) -> list[Delivery]:
        with self.ctx.sessions() as s:
            stmt = select(Delivery).order_by(Delivery.id)
            if state:
                stmt = stmt.where(Delivery.state == state)
            return list(s.scalars(stmt))

    def events(self, event_type: str) -> list[AuditEvent]:
        with self.ctx.sessions() as s:
            return query_events(s, event_type=event_type)

    def wait_until_due(self) -> None:
        pending = [r.next_attempt_at for r in self.rows(DeliveryState.PENDING)]
        if pending:
            time.sleep(max(0.0, (min(pending) - utcnow()).total_seconds()) + 0.01)

    def cli(self, module: ModuleType, *argv: str) -> tuple[int, str, str]:
        """Run a command module the way ``dsm-node`` does, against this node's configuration."""
        parser = argparse.ArgumentParser()
        parser.add_argument("--config")
        module.configure(parser)
        args = parser.parse_args(["--config", str(self.config_path), *argv])
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = module.run(args)
        return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def net():
    network = LoopbackNet()
    yield network
    network.close()


@pytest.fixture(scope="session")
def result_files(tmp_path_factory) -> dict[str, ResultFile]:
    return build_results(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="session")
def postgres() -> PostgresServer:
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request) -> str | None:
    """None (SQLite in the node's data dir) or a fresh PostgreSQL database."""
    return request.getfixturevalue("postgres").new_database(unix_socket=True) if request.param == "postgres" else None


@pytest.fixture
def make_node(tmp_path, net):
    made: list[Node] = []

    def make(peers: list[dict[str, Any]] | None = None, database_url: str | None = None, **delivery: Any) -> Node:
        node = Node(tmp_path / f"node{len(made)}", net, delivery, peers, database_url)
        made.append(node)
        return node

    yield make
    for node in made:
        node.ctx.close()
