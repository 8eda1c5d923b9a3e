"""What the result writers need to know besides the image: identity, UIDs, naming."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .uids import DEFAULT_UID_ROOT, ResultUIDs, device_uid

if TYPE_CHECKING:
    from ..settings import Settings

SEG_TYPES = ("BINARY", "LABELMAP")


def _node_version() -> str:
    try:
        from dsm_node import __version__

        return str(__version__)
    except Exception:  # pragma: no cover - package metadata missing
        return "0"


@dataclass(frozen=True)
class ResultOptions:
    """Options of one result set. ``from_settings`` maps ``settings.results``.

    ``omit_empty_frames``: None = the default per type (BINARY: omit frames where a segment is
    absent; LABELMAP: keep every slice). See docs/results.md "Empty frames".
    """

    model_version: str
    model_name: str = "DSM"
    uid_root: str = DEFAULT_UID_ROOT
    seg_type: str = "BINARY"
    seg_series_description: str = "DSM segmentation - not for diagnostic use"
    sr_series_description: str = "DSM measurements - not for diagnostic use"
    seg_series_number: int = 9901
    sr_series_number: int = 9902
    manufacturer: str = "dsm-node"
    institution_name: str | None = None
    software_version: str = ""  # the node's version; "" = dsm_node.__version__
    device_serial_number: str = "0"
    device_uid: str | None = None  # None = derived from uid_root + manufacturer + model name
    revision: int = 0  # study revision (a late instance re-runs the study as revision + 1)
    omit_empty_frames: bool | None = None
    content_label: str = "DSM"
    organs_include_tumours: bool = False  # BINARY: organ segment = tissue + its tumours, hole-filled (overlap)
    lesion_min_volume_ml: float = 0.5  # smaller tumour components get no lesion measurement group
    key_images: bool = True  # Secondary Capture key images beside the SEG and SR
    key_images_max_lesions: int = 6
    sc_series_description: str = "DSM key images - NOT FOR DIAGNOSTIC USE"
    sc_series_number: int = 9903

    def __post_init__(self) -> None:
        if self.seg_type not in SEG_TYPES:
            raise ValueError(f"seg_type must be one of {SEG_TYPES}, got {self.seg_type!r}")
        if not str(self.model_version).strip():
            raise ValueError("model_version is required (it is the Algorithm Version and part of the UIDs)")

    @classmethod
    def from_settings(cls, settings: Settings, *, model_version: str, model_name: str = "DSM", revision: int = 0,
                      **overrides: Any) -> ResultOptions:
        """Build from a ``dsm_node.settings.Settings`` (its ``results`` section)."""
        r = settings.results
        opts = cls(
            model_version=model_version,
            model_name=model_name,
            uid_root=r.uid_root,
            seg_type=r.seg_type,
            seg_series_description=r.seg_series_description,
            sr_series_description=r.sr_series_description,
            seg_series_number=r.seg_series_number,
            sr_series_number=r.sr_series_number,
            manufacturer=r.manufacturer,
            institution_name=r.institution_name,
            revision=revision,
            organs_include_tumours=r.organs_include_tumours,
            lesion_min_volume_ml=r.lesion_min_volume_ml,
            key_images=r.secondary_capture,
            key_images_max_lesions=r.key_images_max_lesions,
            sc_series_description=r.sc_series_description,
            sc_series_number=r.sc_series_number,
        )
        return replace(opts, **overrides) if overrides else opts

    # ------------------------------------------------------------------------------------------
    @property
    def node_version(self) -> str:
        return self.software_version or _node_version()

    @property
    def software_versions(self) -> list[str]:
        """SoftwareVersions: the node, then the model."""
        return [f"dsm-node {self.node_version}"[:64], f"{self.model_name} {self.model_version}"[:64]]

    @property
    def algorithm_device_uid(self) -> str:
        return self.device_uid or device_uid(self.uid_root, self.manufacturer, self.model_name)

    def uids(self, source_series_uid: str) -> ResultUIDs:
        return ResultUIDs(self.uid_root, source_series_uid, self.model_version, self.revision)

    def omit_empty(self, seg_type: str | None = None) -> bool:
        if self.omit_empty_frames is not None:
            return self.omit_empty_frames
        return (seg_type or self.seg_type) == "BINARY"
