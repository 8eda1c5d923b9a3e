"""Prometheus metrics of the node.

Counters are incremented where things happen (receive, pipeline, delivery); state gauges
(studies, jobs, deliveries by state) are read from the database at scrape time, because the
database is the source of truth and several processes may share it.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

INSTANCES_RECEIVED = Counter(
    "dsm_instances_received", "C-STORE requests by outcome (stored, duplicate, ignored, rejected, no_space)",
    ["outcome"], registry=REGISTRY,
)
BYTES_RECEIVED = Counter("dsm_bytes_received", "Bytes of instances stored", registry=REGISTRY)
ASSOCIATIONS = Counter(
    "dsm_associations", "Association requests by outcome (accepted, rejected)", ["outcome"], registry=REGISTRY
)
REJECTIONS = Counter("dsm_rejections", "Refused associations and instances by reason", ["reason"], registry=REGISTRY)
ACTIVE_ASSOCIATIONS = Gauge("dsm_active_associations", "Associations currently open", registry=REGISTRY)
ASSOCIATION_LIMIT = Gauge(
    "dsm_association_limit", "Associations that may be open at once (dicom.max_associations)", registry=REGISTRY
)
PENDING_CONNECTIONS = Gauge(
    "dsm_pending_connections", "Connections accepted whose association is not (yet) established", registry=REGISTRY
)
CONNECTIONS_REFUSED = Counter(
    "dsm_connections_refused",
    "Connections closed before an association: address, pending_source, pending_total, associate_timeout, "
    "associate_too_large", ["reason"], registry=REGISTRY,
)
STORE_SECONDS = Histogram(
    "dsm_store_seconds", "Time to make one instance durable and recorded",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0), registry=REGISTRY,
)
JOB_STAGE_SECONDS = Histogram(
    "dsm_job_stage_seconds", "Pipeline stage durations", ["stage"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600), registry=REGISTRY,
)
DELIVERY_ATTEMPTS = Counter(
    "dsm_delivery_attempts", "Delivery attempts by outcome (delivered, failed, dead)", ["outcome"], registry=REGISTRY
)
STUDIES_BY_STATE = Gauge("dsm_studies", "Studies by state (from the database)", ["state"], registry=REGISTRY)
JOBS_BY_STATE = Gauge("dsm_jobs", "Jobs by state (from the database)", ["state"], registry=REGISTRY)
JOBS_FAILED = Gauge(
    "dsm_jobs_failed", "Failed jobs by cause (input, delivery, interrupted, error), from the database", ["cause"],
    registry=REGISTRY,
)
DELIVERIES_BY_STATE = Gauge("dsm_deliveries", "Deliveries by state (from the database)", ["state"], registry=REGISTRY)
