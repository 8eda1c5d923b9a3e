"""``/status``: a read-only page for administrators, served by the node's HttpService.

One self-contained HTML document (inline CSS, no scripts, no external assets) that reloads
itself every ``REFRESH_S`` seconds: recent studies, jobs, deliveries, recent errors from the
audit trail and the receive throughput of the last hour. It shows UIDs, AE titles, states,
counts and reasons only; the database holds no patient name or ID, and audit details are shown
through an allow-list of keys so that nothing else can leak onto the page.
"""
from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import desc, func, select

from . import __version__
from .context import NodeContext
from .db.models import AuditEvent, Delivery, Instance, Job, Result, Series, Study, utcnow
from .http import HttpService, Response, health

REFRESH_S = 10
ROWS = 50
# Audit detail keys shown on the page (values are status codes, reasons and counts).
_DETAIL_KEYS = ("status", "reason", "code", "error", "destination", "job_id", "delivery_id", "attempt", "state",
                "cause", "stored_study_uid", "stored_series_uid")


def register(http: HttpService, ctx: NodeContext) -> None:
    """Add ``/status`` to an HttpService."""
    http.add_route("/status", StatusPage(ctx, http))


class StatusPage:
    def __init__(self, ctx: NodeContext, http: HttpService | None = None) -> None:
        self._ctx = ctx
        self._http = http

    def __call__(self) -> Response:
        return Response(200, "text/html; charset=utf-8", self.render().encode())

    # Data --------------------------------------------------------------------------------
    def snapshot(self, now: dt.datetime | None = None) -> dict[str, Any]:
        now = now or utcnow()
        hour_ago = now - dt.timedelta(hours=1)
        with self._ctx.sessions() as s:
            on_disk = (
                select(func.count(Instance.id))
                .join(Series, Instance.series_id == Series.id)
                .where(Series.study_id == Study.id, Instance.deleted_at.is_(None))
                .scalar_subquery()
            )
            studies = s.execute(
                select(
                    on_disk.label("on_disk"), Study.study_uid, Study.state, Study.state_reason, Study.instance_count,
                    Study.revision,
                    Study.selected_series_uid, Study.selection_reason, Study.calling_ae, Study.last_received_at,
                ).order_by(desc(Study.last_received_at)).limit(ROWS)
            ).all()
            jobs = s.execute(
                select(
                    Job.id, Study.study_uid, Job.revision, Job.state, Job.attempts, Job.reason, Job.timings,
                    Job.worker, Job.created_at, Job.updated_at,
                ).join(Study, Job.study_id == Study.id).order_by(desc(Job.id)).limit(ROWS)
            ).all()
            deliveries = s.execute(
                select(
                    Delivery.id, Result.kind, Result.sop_instance_uid, Delivery.destination, Delivery.ae_title,
                    Delivery.state, Delivery.attempts, Delivery.last_status, Delivery.last_error,
                    Delivery.next_attempt_at, Delivery.delivered_at,
                ).join(Result, Delivery.result_id == Result.id).order_by(desc(Delivery.id)).limit(ROWS)
            ).all()
            errors = s.execute(
                select(
                    AuditEvent.time, AuditEvent.event_type, AuditEvent.event_code, AuditEvent.outcome,
                    AuditEvent.actor_ae, AuditEvent.actor_address, AuditEvent.study_uid, AuditEvent.detail,
                ).where(AuditEvent.outcome != 0).order_by(desc(AuditEvent.id)).limit(ROWS)
            ).all()
            received = s.execute(
                select(Instance.received_at, Instance.size_bytes).where(Instance.received_at >= hour_ago)
            ).all()
            totals = {
                "studies": s.scalar(select(func.count()).select_from(Study)) or 0,
                "instances": s.scalar(select(func.count()).select_from(Instance)) or 0,
                "jobs": s.scalar(select(func.count()).select_from(Job)) or 0,
                "deliveries": s.scalar(select(func.count()).select_from(Delivery)) or 0,
            }
        minutes = [{"instances": 0, "bytes": 0} for _ in range(60)]
        for when, size in received:
            when = when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
            age_min = int((now - when).total_seconds() // 60)
            if 0 <= age_min < 60:
                slot = minutes[59 - age_min]
                slot["instances"] += 1
                slot["bytes"] += int(size or 0)
        return {
            "now": now, "studies": studies, "jobs": jobs, "deliveries": deliveries, "errors": errors,
            "minutes": minutes, "totals": totals,
        }

    # HTML --------------------------------------------------------------------------------
    def render(self) -> str:
        data = self.snapshot()
        ctx = self._ctx
        try:
            ok, hz = health(ctx, None)
            db_ok = hz["database"]["reachable"]
            disk = hz["disk"]
        except Exception:  # noqa: BLE001 - the page still renders
            db_ok, disk = False, {"free_bytes": 0, "ok": False}
        minutes = data["minutes"]
        inst_hour = sum(m["instances"] for m in minutes)
        bytes_hour = sum(m["bytes"] for m in minutes)
        peak = max((m["instances"] for m in minutes), default=0) or 1
        bars = "".join(
            f'<div class="bar" title="{m["instances"]} instances, {_bytes(m["bytes"])} ({59 - i} min ago)">'
            f'<span style="height:{round(100 * m["instances"] / peak)}%"></span></div>'
            for i, m in enumerate(minutes)
        )
        studies = _table(
            [
                "Study Instance UID", "State", "Rev", "Instances", "On disk", "Calling AE", "Selected series", "Reason",
                "Last received",
            ],
            (
                [_uid(r.study_uid), _badge(r.state), r.revision, r.instance_count,
                 r.on_disk if r.on_disk or not r.instance_count else "0 (retention)", r.calling_ae or "",
                 _uid(r.selected_series_uid), r.state_reason or r.selection_reason or "", _time(r.last_received_at)]
                for r in data["studies"]
            ),
            "studies",
        )
        jobs = _table(
            ["Job", "Study Instance UID", "Rev", "State", "Attempts", "Timings (s)", "Worker", "Created", "Updated", "Reason"],
            (
                [r.id, _uid(r.study_uid), r.revision, _badge(r.state), r.attempts, _timings(r.timings),
                 r.worker or "", _time(r.created_at), _time(r.updated_at), r.reason or ""]
                for r in data["jobs"]
            ),
            "jobs",
        )
        deliveries = _table(
            ["#", "Kind", "SOP Instance UID", "Destination", "AE", "State", "Attempts", "Last status", "Last error",
             "Next attempt", "Delivered"],
            (
                [r.id, r.kind, _uid(r.sop_instance_uid), r.destination, r.ae_title, _badge(r.state), r.attempts,
                 r.last_status or "", r.last_error or "",
                 _time(r.next_attempt_at) if r.state in ("pending", "in_progress") else "", _time(r.delivered_at)]
                for r in data["deliveries"]
            ),
            "deliveries",
        )
        errors = _table(
            ["Time", "Event", "Code", "Outcome", "AE", "Address", "Study Instance UID", "Detail"],
            (
                [_time(r.time), r.event_type, r.event_code, _outcome(r.outcome), r.actor_ae or "", r.actor_address or "",
                 _uid(r.study_uid), _detail(r.detail)]
                for r in data["errors"]
            ),
            "errors",
        )
        t = data["totals"]
        http = f" &middot; http {html.escape(self._http.url)}" if self._http is not None else ""
        return _PAGE.format(
            refresh=REFRESH_S,
            ae=html.escape(ctx.settings.dicom.ae_title),
            version=html.escape(__version__),
            now=_time(data["now"]),
            http=http,
            db="reachable" if db_ok else "UNREACHABLE",
            db_class="ok" if db_ok else "bad",
            disk=_bytes(int(disk.get("free_bytes", 0))),
            disk_class="ok" if disk.get("ok") else "bad",
            studies_n=t["studies"], instances_n=t["instances"], jobs_n=t["jobs"], deliveries_n=t["deliveries"],
            inst_hour=inst_hour, bytes_hour=_bytes(bytes_hour),
            inst_min=f"{inst_hour / 60:.1f}", bytes_min=_bytes(bytes_hour // 60),
            bars=bars, studies=studies, jobs=jobs, deliveries=deliveries, errors=errors, rows=ROWS,
        )


class _Html(str):
    """Markup built here from escaped parts (everything else is escaped by _table)."""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _uid(uid: str | None) -> str:
    return _Html(f'<span class="uid">{_e(uid)}</span>') if uid else ""


def _badge(state: str | None) -> str:
    return _Html(f'<span class="st st-{_e(state)}">{_e(state)}</span>')


def _time(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    value = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _outcome(code: int) -> str:
    name = {0: "success", 4: "minor failure", 8: "serious failure", 12: "major failure"}.get(code, str(code))
    return _Html(f'<span class="oc oc-{int(code)}">{_e(name)}</span>')


def _timings(timings: dict[str, Any] | None) -> str:
    if not timings:
        return ""
    parts = []
    for key in ("assembly", "inference", "encoding", "total"):
        if key in timings and isinstance(timings[key], (int, float)):
            parts.append(f"{key} {timings[key]:.1f}")
    return ", ".join(parts)


def _detail(detail: dict[str, Any] | None) -> str:
    if not isinstance(detail, dict):
        return ""
    parts = [f"{k}={str(detail[k])[:160]}" for k in _DETAIL_KEYS if k in detail and detail[k] not in (None, "")]
    return "; ".join(parts)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], name: str) -> str:
    body = []
    for row in rows:
        cells = "".join(f"<td>{c if isinstance(c, _Html) else _e(c)}</td>" for c in row)
        body.append(f"<tr>{cells}</tr>")
    if not body:
        body.append(f'<tr><td class="empty" colspan="{len(headers)}">no {name} yet</td></tr>')
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f'<table id="{name}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh}">
<title>dsm-node status - {ae}</title>
<style>
body{{font:13px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f6f8;color:#1d2733}}
header{{background:#1d3557;color:#fff;padding:10px 18px;display:flex;gap:24px;align-items:baseline;flex-wrap:wrap}}
header h1{{font-size:18px;margin:0}} header .meta{{opacity:.85}}
main{{padding:12px 18px}} section{{background:#fff;border:1px solid #d8dee6;border-radius:6px;margin:0 0 14px;padding:8px 12px}}
h2{{font-size:14px;margin:4px 0 8px}} .cards{{display:flex;gap:12px;flex-wrap:wrap}}
.card{{background:#fff;border:1px solid #d8dee6;border-radius:6px;padding:8px 14px;min-width:120px}}
.card b{{display:block;font-size:20px}} .ok{{color:#1a7f37}} .bad{{color:#c62828;font-weight:bold}}
table{{border-collapse:collapse;width:100%}}
th,td{{text-align:left;padding:3px 6px;border-bottom:1px solid #e6eaef;vertical-align:top}}
td{{overflow-wrap:anywhere}}
th{{background:#eef2f6;font-weight:600}} td.empty{{color:#888;font-style:italic}}
.uid{{font-family:ui-monospace,Menlo,monospace;font-size:11px;word-break:break-all}}
.st{{padding:1px 6px;border-radius:8px;background:#e3e8ee;white-space:nowrap}}
.st-delivered,.st-done{{background:#d4edda}} .st-failed,.st-dead{{background:#f8d7da;color:#8a1c1c;font-weight:600}}
.st-kept{{background:#e4dcf3}}
.st-running,.st-in_progress,.st-receiving{{background:#fff3cd}} .st-pending,.st-queued{{background:#dbe9f9}}
.oc-4{{color:#a15c00}} .oc-8,.oc-12{{color:#c62828;font-weight:600}}
.chart{{display:flex;align-items:flex-end;height:70px;gap:2px;border-bottom:1px solid #999}}
.bar{{flex:1;height:100%;display:flex;align-items:flex-end}}
.bar span{{display:block;width:100%;background:#457b9d;min-height:1px}}
footer{{color:#666;padding:0 18px 12px}}
</style></head>
<body>
<header><h1>dsm-node status</h1><span class="meta">AE {ae} &middot; version {version} &middot; {now} UTC{http}</span></header>
<main>
<div class="cards">
<div class="card">Database<b class="{db_class}">{db}</b></div>
<div class="card">Free disk<b class="{disk_class}">{disk}</b></div>
<div class="card">Studies<b>{studies_n}</b></div>
<div class="card">Instances<b>{instances_n}</b></div>
<div class="card">Jobs<b>{jobs_n}</b></div>
<div class="card">Deliveries<b>{deliveries_n}</b></div>
<div class="card" id="throughput">Received last hour<b>{inst_hour} instances</b>{bytes_hour}
&middot; {inst_min} instances/min &middot; {bytes_min}/min</div>
</div>
<section><h2>Instances received per minute, last hour</h2><div class="chart">{bars}</div></section>
<section><h2>Recent studies (latest {rows})</h2>{studies}</section>
<section><h2>Jobs</h2>{jobs}</section>
<section><h2>Deliveries</h2>{deliveries}</section>
<section><h2>Recent errors (audit trail, outcome &ne; success)</h2>{errors}</section>
</main>
<footer>Read-only. Refreshes every {refresh} s. UIDs, AE titles and counts only: no patient data.</footer>
</body></html>
"""
