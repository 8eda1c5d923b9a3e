"""Deterministic result UIDs.

Same source series + model version + output kind + study revision -> the same UIDs, so a
re-sent result replaces the earlier copy in the PACS instead of duplicating it; a new model
version or a new study revision gives new UIDs. Built with pydicom's ``generate_uid(prefix,
entropy_srcs)`` (SHA-512 of the sources, appended to the site's UID root).
"""
from __future__ import annotations

import re

from pydicom.uid import generate_uid

#: pydicom's root; used only when no site root is configured (settings.results.uid_root).
DEFAULT_UID_ROOT = "1.2.826.0.1.3680043.8.498."
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

#: Output kinds (each gets its own UID); part of the entropy, so never rename them.
KINDS = ("seg-series", "seg-instance", "sr-series", "sr-instance", "seg-dimension-organization",
         "sc-series", "sc-instance")


def is_valid_uid(uid: str) -> bool:
    """PS3.5 9.1: digits and dots, no empty or leading-zero components, at most 64 chars."""
    return bool(uid) and len(uid) <= 64 and bool(_UID_RE.match(uid))


def result_uid(
    uid_root: str | None,
    source_series_uid: str,
    model_version: str,
    kind: str,
    *,
    revision: int = 0,
    extra: str = "",
) -> str:
    """A deterministic UID under ``uid_root`` for one output of one processed series.

    ``kind`` names the output (see :data:`KINDS`, or ``tracking:<class>`` etc.); ``extra``
    distinguishes several UIDs of the same kind (e.g. one tracking UID per segment).
    """
    root = uid_root or DEFAULT_UID_ROOT
    if not root.endswith("."):
        root += "."
    if not source_series_uid:
        raise ValueError("the source SeriesInstanceUID is empty: cannot derive result UIDs")
    parts = ["dsm-node-result-uid/v1", root, source_series_uid, str(model_version), kind, str(int(revision)), extra]
    # generate_uid concatenates its sources without a separator: length-prefix each one so
    # that ("ab", "c") and ("a", "bc") cannot collide.
    entropy = [f"{len(p)}:{p}|" for p in parts]
    uid = str(generate_uid(prefix=root, entropy_srcs=entropy))
    assert is_valid_uid(uid), uid
    return uid


class ResultUIDs:
    """All UIDs of one result set (SEG + SR) for a series, model version and revision."""

    def __init__(self, uid_root: str | None, source_series_uid: str, model_version: str, revision: int = 0):
        self.uid_root = uid_root
        self.source_series_uid = source_series_uid
        self.model_version = model_version
        self.revision = revision

    def _get(self, kind: str, extra: str = "") -> str:
        return result_uid(self.uid_root, self.source_series_uid, self.model_version, kind,
                          revision=self.revision, extra=extra)

    @property
    def seg_series(self) -> str:
        return self._get("seg-series")

    @property
    def seg_instance(self) -> str:
        return self._get("seg-instance")

    @property
    def sr_series(self) -> str:
        return self._get("sr-series")

    @property
    def sr_instance(self) -> str:
        return self._get("sr-instance")

    @property
    def sc_series(self) -> str:
        return self._get("sc-series")

    def sc_instance(self, name: str) -> str:
        """One key image (``name``: "overview", "<class> lesion <n>")."""
        return self._get("sc-instance", name)

    @property
    def dimension_organization(self) -> str:
        return self._get("seg-dimension-organization")

    def tracking(self, class_name: str) -> str:
        """Tracking UID of one segment / measurement group (same in the SEG and the SR)."""
        return self._get("tracking", class_name)


def lesion_tracking_uid(uid_root: str | None, study_uid: str, key: str) -> str:
    """Tracking UID of a lesion: study + a key of its class and position, without revision or
    model version, so the same lesion found again in a later revision keeps its UID."""
    root = uid_root or DEFAULT_UID_ROOT
    if not root.endswith("."):
        root += "."
    if not study_uid:
        raise ValueError("the StudyInstanceUID is empty: cannot derive lesion tracking UIDs")
    parts = ["dsm-node-lesion-uid/v1", root, study_uid, key]
    return str(generate_uid(prefix=root, entropy_srcs=[f"{len(p)}:{p}|" for p in parts]))


def device_uid(uid_root: str | None, manufacturer: str, model_name: str) -> str:
    """A stable Device UID for the algorithm (SR device observer, AIR contributing equipment).

    It identifies the device (manufacturer + model name) under the site root; versions are
    reported separately (SoftwareVersions, Algorithm Version), so it does not change with them.
    """
    root = uid_root or DEFAULT_UID_ROOT
    if not root.endswith("."):
        root += "."
    parts = ["dsm-node-device-uid/v1", root, manufacturer, model_name]
    return str(generate_uid(prefix=root, entropy_srcs=[f"{len(p)}:{p}|" for p in parts]))
