"""Database rows as the receive index would leave them, for tests that need no network."""
from __future__ import annotations

import datetime as dt
import itertools

from sqlalchemy import select

from dsm_node.db.engine import transaction
from dsm_node.db.models import Instance, Series, Study, StudyState

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
_counter = itertools.count(1)


def ct_header(description="ABDOMEN", thickness=1.0, image_type=("ORIGINAL", "PRIMARY", "AXIAL"), **extra):
    return {"Modality": "CT", "ImageType": list(image_type), "SeriesDescription": description,
            "SliceThickness": str(thickness), "ImageOrientationPatient": [1, 0, 0, 0, 1, 0], **extra}


def add_instances(ctx, study_uid: str, series_uid: str, count: int, at: dt.datetime, header: dict | None = None) -> None:
    """Store ``count`` instances received at ``at``; a late one reopens the study as a new revision."""
    with transaction(ctx.sessions) as s:
        study = s.scalar(select(Study).where(Study.study_uid == study_uid))
        if study is None:
            study = Study(study_uid=study_uid, first_received_at=at, last_received_at=at, calling_ae="PACS")
            s.add(study)
            s.flush()
        elif study.state != StudyState.RECEIVING:
            study.revision += 1
            study.state = StudyState.RECEIVING
        series = s.scalar(select(Series).where(Series.series_uid == series_uid))
        if series is None:
            header = header or ct_header()
            series = Series(study_id=study.id, series_uid=series_uid, modality=header.get("Modality"),
                            series_description=header.get("SeriesDescription"), header=header)
            s.add(series)
            s.flush()
        for _ in range(count):
            n = next(_counter)
            s.add(Instance(series_id=series.id, sop_instance_uid=f"{series_uid}.{n}", sop_class_uid=CT_IMAGE,
                           transfer_syntax_uid="1.2.840.10008.1.2", path=f"x/{n}.dcm", size_bytes=1000,
                           received_at=at, study_revision=study.revision))
        series.instance_count += count
        series.last_received_at = at
        study.instance_count += count
        study.last_received_at = at
