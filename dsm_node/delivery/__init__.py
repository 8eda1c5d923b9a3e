"""Durable delivery of results (DICOM-SEG, TID 1500 SR, secondary captures) to the PACS.

``outbox`` keeps one database row per (result, destination) and owns every state change of
those rows; ``scu`` sends a batch of files over one association; ``service`` is the loop that
claims due rows, sends them and records the outcome. The pipeline only calls
:func:`enqueue_results` in the transaction that records its results.
"""
from __future__ import annotations

from .outbox import Target, enqueue, enqueue_results, resolve_destinations
from .service import DeliveryService

__all__ = ["DeliveryService", "Target", "enqueue", "enqueue_results", "resolve_destinations"]
