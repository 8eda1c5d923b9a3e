"""Series selection: which series of a complete study the model runs on, and why.

A pure function over header summaries (no database, no files), so every rule can be tested in
isolation and the reason given for each series is exactly what the audit trail records.

Eligibility (all must hold, every failure is reported): modality, required ImageType values,
no excluded ImageType value (localizer/scout), at least ``min_slices`` slices, slice thickness
at most ``max_slice_thickness_mm``, and the site's include/exclude rules. Among eligible series
the preference is: axial, then contrast-enhanced venous phase, then thinnest slices, then most
slices; the Series Instance UID breaks a remaining tie so that the choice is reproducible.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..settings import Rule, Selection

NO_ELIGIBLE_REASON = "no eligible CT series"

# The default preferred-phase pattern matches "contrast", so "non-contrast" or "w/o contrast"
# must be recognised first, otherwise the unenhanced series of a two-phase study would win.
_NON_CONTRAST = re.compile(
    r"(?i)\b(non|no|w/?o|without|pre)[\s_-]*(contrast|con|kontrast|ce)\b|\bnative?\b|\bplain\b|\bunenhanced\b|\bnc\b"
)
# Values some scanners write into ContrastBolusAgent when nothing was injected.
_NO_AGENT = {"", "NONE", "NO", "N", "-", "0", "NA", "N/A"}

PHASE_NONE, PHASE_CONTRAST, PHASE_PREFERRED = 0, 1, 2
_PHASE_WORDS = {PHASE_NONE: "no contrast", PHASE_CONTRAST: "contrast-enhanced", PHASE_PREFERRED: "preferred phase"}


@dataclass(frozen=True)
class SeriesSummary:
    """What selection knows about a series: its UID, instance count and first-instance header."""

    series_uid: str
    instance_count: int
    header: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SeriesDecision:
    series_uid: str
    eligible: bool
    selected: bool
    reason: str


@dataclass(frozen=True)
class SelectionOutcome:
    chosen: SeriesSummary | None
    decisions: tuple[SeriesDecision, ...]

    @property
    def reason(self) -> str:
        """Why the chosen series won, or the closing reason when none is eligible."""
        for decision in self.decisions:
            if decision.selected:
                return decision.reason
        return NO_ELIGIBLE_REASON


def values(raw: Any) -> list[str]:
    """A header value as a list of strings (multi-valued attributes may arrive as 'A\\B')."""
    if raw is None:
        return []
    if isinstance(raw, (list, tuple)):
        return [str(v).strip() for v in raw]
    text = str(raw)
    return [v.strip() for v in text.split("\\")] if "\\" in text else [text.strip()]


def number(raw: Any) -> float | None:
    """The first value as a float (DS/IS values are often strings), or None."""
    first = values(raw)[:1]
    try:
        value = float(first[0]) if first else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def slice_count(series: SeriesSummary) -> int:
    # Enhanced CT carries all slices of a series in one multi-frame instance.
    frames = number(series.header.get("NumberOfFrames"))
    return series.instance_count * (int(frames) if frames and frames > 1 else 1)


def is_axial(header: Mapping[str, Any], preferred: str) -> bool:
    if preferred.upper() in (v.upper() for v in values(header.get("ImageType"))):
        return True
    # ImageType often carries no third value (Enhanced CT, some vendors): use the geometry.
    iop = [number(v) for v in values(header.get("ImageOrientationPatient"))]
    if len(iop) != 6 or any(v is None for v in iop):
        return False
    r, c = iop[:3], iop[3:]
    normal_z = r[0] * c[1] - r[1] * c[0]  # type: ignore[operator]
    return abs(normal_z) >= 0.9  # within ~25 degrees of the patient's z axis


def contrast_phase(header: Mapping[str, Any], preferred_regex: str) -> int:
    description = " ".join(values(header.get("SeriesDescription")))
    if _NON_CONTRAST.search(description):
        return PHASE_NONE
    if description and re.search(preferred_regex, description):
        return PHASE_PREFERRED
    agent = " ".join(values(header.get("ContrastBolusAgent"))).strip()
    return PHASE_CONTRAST if agent.upper() not in _NO_AGENT else PHASE_NONE


def _rule_reason(rule: Rule, header: Mapping[str, Any]) -> str | None:
    """Why ``rule`` rejects the series, or None when it lets it through."""
    raw = header.get(rule.tag)
    shown = "\\".join(values(raw))
    test = f"regex {rule.regex!r}" if rule.regex is not None else ""
    if rule.min is not None or rule.max is not None:
        if rule.min is not None and rule.max is not None:
            bounds = f"range [{rule.min:g}, {rule.max:g}]"
        else:
            bounds = f">= {rule.min:g}" if rule.min is not None else f"<= {rule.max:g}"
        test = f"{test} and {bounds}" if test else bounds
    if raw is None or shown == "":
        return f"{rule.tag} absent (include rule {test})" if rule.action == "include" else None
    matched = True
    if rule.regex is not None:
        matched = re.search(rule.regex, shown) is not None
    if matched and (rule.min is not None or rule.max is not None):
        n = number(raw)
        matched = n is not None and (rule.min is None or n >= rule.min) and (rule.max is None or n <= rule.max)
    if rule.action == "include" and not matched:
        return f"{rule.tag} {shown!r} does not match include rule {test}"
    if rule.action == "exclude" and matched:
        return f"{rule.tag} {shown!r} matches exclude rule {test}"
    return None


def rejections(series: SeriesSummary, cfg: Selection) -> list[str]:
    """Every reason the series is not eligible; empty when it is."""
    header = series.header
    reasons: list[str] = []
    modality = (values(header.get("Modality"))[:1] or [""])[0]
    if modality.upper() != cfg.modality.upper():
        reasons.append(f"modality {modality or '(missing)'} is not {cfg.modality}")
    image_type = [v.upper() for v in values(header.get("ImageType"))]
    shown_type = "\\".join(image_type) or "(missing)"
    excluded = [t for t in cfg.exclude_image_type if t.upper() in image_type]
    if excluded:
        reasons.append(f"localizer/excluded image type {'/'.join(excluded)} (ImageType {shown_type})")
    missing = [t for t in cfg.require_image_type if t.upper() not in image_type]
    if missing:
        reasons.append(f"ImageType {shown_type} lacks {'/'.join(missing)}")
    slices = slice_count(series)
    if slices < cfg.min_slices:
        reasons.append(f"{slices} slices, fewer than the minimum {cfg.min_slices}")
    thickness = number(header.get("SliceThickness"))
    if thickness is not None and thickness > cfg.max_slice_thickness_mm:
        reasons.append(f"slice thickness {thickness:g} mm exceeds {cfg.max_slice_thickness_mm:g} mm")
    for rule in cfg.rules:
        reason = _rule_reason(rule, header)
        if reason:
            reasons.append(reason)
    return reasons


@dataclass(frozen=True)
class _Rank:
    series: SeriesSummary
    axial: bool
    phase: int
    thickness: float | None
    slices: int

    @property
    def key(self) -> tuple[Any, ...]:
        thickness = self.thickness if self.thickness is not None else math.inf
        return (not self.axial, -self.phase, thickness, -self.slices, self.series.series_uid)

    def describe(self) -> str:
        parts = ["axial" if self.axial else "not axial", _PHASE_WORDS[self.phase]]
        parts.append(f"{self.thickness:g} mm slices" if self.thickness is not None else "slice thickness unknown")
        parts.append(f"{self.slices} slices")
        return ", ".join(parts)

    def behind(self, winner: _Rank) -> str:
        """The first preference in which this series loses to ``winner``."""
        if self.axial != winner.axial:
            return "not axial"
        if self.phase != winner.phase:
            return f"{_PHASE_WORDS[self.phase]} rather than {_PHASE_WORDS[winner.phase]}"
        if self.thickness != winner.thickness:
            mine = f"{self.thickness:g} mm" if self.thickness is not None else "unknown"
            return f"thicker slices ({mine} vs {winner.thickness:g} mm)"
        if self.slices != winner.slices:
            return f"fewer slices ({self.slices} vs {winner.slices})"
        return "equal on every preference; the lower Series Instance UID wins"


def select_series(series: Sequence[SeriesSummary], cfg: Selection) -> SelectionOutcome:
    """Choose the series to process; give every series its reason."""
    refused: dict[str, str] = {}
    ranks: dict[str, _Rank] = {}
    for s in series:
        reasons = rejections(s, cfg)
        if reasons:
            refused[s.series_uid] = "; ".join(reasons)
        else:
            ranks[s.series_uid] = _Rank(
                series=s,
                axial=is_axial(s.header, cfg.prefer_image_type),
                phase=contrast_phase(s.header, cfg.prefer_description_regex),
                thickness=number(s.header.get("SliceThickness")),
                slices=slice_count(s),
            )
    if not ranks:
        decisions = tuple(SeriesDecision(uid, False, False, reason) for uid, reason in refused.items())
        return SelectionOutcome(chosen=None, decisions=decisions)
    winner = min(ranks.values(), key=lambda r: r.key)
    out: list[SeriesDecision] = []
    for s in series:
        uid = s.series_uid
        rank = ranks.get(uid)
        if rank is None:
            out.append(SeriesDecision(uid, eligible=False, selected=False, reason=refused[uid]))
        elif rank is winner:
            reason = f"{rank.describe()}; best of {len(ranks)} eligible series"
            out.append(SeriesDecision(uid, eligible=True, selected=True, reason=reason))
        else:
            reason = f"eligible but ranked below {winner.series.series_uid}: {rank.behind(winner)}"
            out.append(SeriesDecision(uid, eligible=True, selected=False, reason=reason))
    return SelectionOutcome(chosen=winner.series, decisions=tuple(out))
