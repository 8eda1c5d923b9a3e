"""Keeping an accepted instance: duplicate or conflict? -> space/quota -> temp file -> index row
-> rename into place.

Write order (the spool/index invariant): complete temp file -> index row committed -> rename
into place. A refusal deletes the temp file, so nothing reaches the spool that has no row; a
crash in between leaves a complete temp file that start-up recovery renames and the spool
check (fsck) indexes, or quarantines when it conflicts (see docs/receiving.md).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from ..context import NodeContext
from ..spool import Spool, SpoolFull
from .dataset import file_meta_bytes, header_summary, int_or_none, text_value
from .decision import Accept, Refusal, conflict_refusal
from .index import IndexConflict, IndexUnavailable, InstanceRecord, SOPInstanceConflict, find_instance, record_instance
from .status import StoreStatus

log = logging.getLogger("dsm_node.receive")


@dataclass(frozen=True)
class Kept:
    """What became of an accepted instance: ``bytes`` written (file meta included), or a
    duplicate of what is stored (nothing written, ``bytes`` 0)."""

    duplicate: bool
    bytes: int = 0


class InstanceStore:
    """Writes accepted instances to the spool and the index; refusals raise :class:`Refusal`."""

    def __init__(self, ctx: NodeContext, spool: Spool) -> None:
        self.ctx = ctx
        self.spool = spool

    def keep(self, accept: Accept, calling_ae: str, address: str) -> Kept:
        rel, ids = accept.path, accept.ids
        cmd_class = accept.request.sop_class_uid
        # Duplicate? Only a file already at its path can be one (a stat, no query, when new).
        # Any other copy of a known SOP Instance UID is caught by the index in one transaction.
        if self.spool.exists(rel):
            try:
                existing = find_instance(self.ctx.engine, accept.sop_instance_uid)
            except IndexUnavailable as exc:
                raise Refusal(StoreStatus.INDEX_UNAVAILABLE, "index database unavailable; retry later",
                              "index_unavailable", **ids) from exc
            if existing is not None and existing.deleted_at is None:
                conflict = existing.conflict_with(accept.study_uid, accept.series_uid, cmd_class)
                if conflict is not None:
                    raise conflict_refusal(conflict, ids)
                return Kept(duplicate=True)

        ts = accept.request.transfer_syntax
        meta = file_meta_bytes(cmd_class, accept.sop_instance_uid, ts, calling_ae)
        total = len(meta) + accept.size
        try:
            with accept.request.data.getbuffer() as view:
                staged = self.spool.stage(rel, (meta, view), total)
        except SpoolFull as exc:
            raise Refusal(StoreStatus.OUT_OF_RESOURCES, str(exc), "no_space", **ids) from None

        ds = accept.parsed.dataset
        record = InstanceRecord(
            study_uid=accept.study_uid,
            series_uid=accept.series_uid,
            sop_instance_uid=accept.sop_instance_uid,
            sop_class_uid=cmd_class,
            transfer_syntax_uid=ts,
            path=rel,
            size_bytes=total,
            calling_ae=calling_ae,
            peer_address=address,
            modality=text_value(ds, "Modality"),
            series_number=int_or_none(text_value(ds, "SeriesNumber")),
            series_description=text_value(ds, "SeriesDescription"),
            accession_number=text_value(ds, "AccessionNumber"),
            header=lambda: header_summary(ds),
        )
        try:
            outcome = record_instance(self.ctx, record)
            if outcome.status == "duplicate":  # stored by a parallel association meanwhile
                staged.discard()
            else:
                staged.commit()
        except SOPInstanceConflict as exc:
            staged.discard()
            raise conflict_refusal(exc, ids) from None
        except IndexConflict as exc:
            staged.discard()
            raise Refusal(StoreStatus.UID_CONFLICT, str(exc), "index_conflict", conflict=exc.kind, **ids) from None
        except IndexUnavailable as exc:
            staged.discard()
            log.error("index unavailable", extra={"error": str(exc), **ids})
            raise Refusal(StoreStatus.INDEX_UNAVAILABLE, "index database unavailable; retry later",
                          "index_unavailable", **ids) from None
        except BaseException:
            staged.discard()
            raise
        if outcome.status == "duplicate":
            return Kept(duplicate=True)
        return Kept(duplicate=False, bytes=total)
