"""What one job does between "running" and "encoded": volume -> DSM -> SEG + SR + key images -> outbox."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from ..context import NodeContext
from ..db.engine import transaction
from ..db.models import Job, Result
from ..delivery.outbox import enqueue_results
from ..infer.memory import MemoryRefused, segmenter_guard, spill_folder
from ..infer.segmenter import Segmenter, segmenter_from_settings
from ..results.options import ResultOptions
from ..results.outputs import earlier_lesions, write_results
from ..volume import VolumeError, assemble_volume
from .task import JobInputError


class DSMPipeline:
    """Holds the loaded model; ``process`` runs one job's stages and records their timings."""

    def __init__(self, ctx: NodeContext, segmenter: Segmenter | None = None) -> None:
        self.segmenter = segmenter or segmenter_from_settings(ctx.settings)
        self.model_version = self.segmenter.model_version

    def process(self, ctx: NodeContext, job: Job, paths: list[Path], timings: dict[str, float]) -> dict[str, Any]:
        t = time.perf_counter()
        try:
            volume = assemble_volume(paths, max_voxels=ctx.settings.inference.max_voxels,
                                     budget=segmenter_guard(ctx.settings, self.segmenter),
                                     spill_dir=spill_folder(ctx.settings, ctx.settings.storage.work_dir))
        except VolumeError as exc:
            raise JobInputError(f"volume assembly: {exc}") from None
        except MemoryRefused as exc:  # before decoding: a clear reason instead of the kernel's OOM kill
            raise JobInputError(f"memory: {exc}") from None
        timings["assembly"] = time.perf_counter() - t

        t = time.perf_counter()
        seg_out = self.segmenter.segment(volume.hu, volume.affine_lps, patient_sex=volume.patient_sex)
        timings["inference"] = time.perf_counter() - t

        t = time.perf_counter()
        options = ResultOptions.from_settings(ctx.settings, model_version=self.model_version, revision=job.revision)
        study_dir = ctx.results_dir / job.study.study_uid
        out_dir = study_dir / f"r{job.revision}"
        # Lesions reported for earlier revisions keep their tracking numbers and UIDs.
        known = earlier_lesions(study_dir, job.revision, volume)
        written = write_results(volume, seg_out.labels, seg_out.catalog, options, out_dir, known=known)
        seg, sr = written.seg, written.sr
        timings["encoding"] = time.perf_counter() - t

        files = written.files()  # no class found: no SEG and no key images, the SR says "no findings"
        with transaction(ctx.sessions) as s:
            db_job = s.get_one(Job, job.id)
            results = [self._record(s, db_job, kind, ds, path, ctx) for kind, ds, path in files]
            s.flush()
            enqueue_results(s, ctx.settings, results, ctx.auditor)
        return {
            "model_version": self.model_version,
            "segments": [
                {"name": name, "voxels": voxels, "volume_ml": round(voxels * volume.voxel_volume_mm3 / 1000.0, 2)}
                for name, voxels in seg_out.found.items()
            ],
            "seg_sop_instance_uid": seg.dataset.SOPInstanceUID if seg is not None else None,
            "sr_sop_instance_uid": sr.dataset.SOPInstanceUID,
            "lesions": [
                {"id": les.tracking_identifier, "long_axis_mm": round(les.long_axis.length_mm, 1),
                 "short_axis_mm": round(les.short_axis.length_mm, 1), "volume_ml": round(les.volume_cm3, 2)}
                for les in sr.lesions
            ],
            "key_images": len(written.key_images.datasets) if written.key_images else 0,
            "stage_detail": seg_out.timings,
        }

    @staticmethod
    def _record(session: Any, job: Job, kind: str, ds: Any, path: Path, ctx: NodeContext) -> Result:
        """Result row for a written file; a re-run writes the same UIDs, so update in place."""
        uid = str(ds.SOPInstanceUID)
        row: Result | None = session.scalars(select(Result).where(Result.sop_instance_uid == uid)).one_or_none()
        rel = str(Path(path).relative_to(ctx.results_dir))
        if row is None:
            row = Result(
                job=job, kind=kind, sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=uid,
                series_uid=str(ds.SeriesInstanceUID), path=rel,
            )
            session.add(row)
            ctx.auditor.record(
                "result_created", session=session, study_uid=job.study.study_uid, series_uid=job.series_uid,
                job_id=job.id, kind=kind, sop_instance_uid=uid,
            )
        row.path = rel
        row.size_bytes = Path(path).stat().st_size
        return row
