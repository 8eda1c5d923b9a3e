"""What the result writers need to know besides the image: identity, UIDs, naming."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..settings import Results
from .uids import ResultUIDs, device_uid

if TYPE_CHECKING:
    from ..settings import Settings

SEG_TYPES = ("BINARY", "LABELMAP")

# ResultOptions field -> its setting in ``results:``; the defaults below are read from the
# settings schema, so a default changes in one place (dsm_node/settings.py) for the node, the
# CLI and library callers alike.
FROM_SETTINGS = {
    "uid_root": "uid_root",
    "seg_type": "seg_type",
    "seg_series_description": "seg_series_description",
    "sr_series_description": "sr_series_description",
    "seg_series_number": "seg_series_number",
    "sr_series_number": "sr_series_number",
    "manufacturer": "manufacturer",
    "institution_name": "institution_name",
    "organs_include_tumors": "organs_include_tumors",
    "lesion_min_volume_ml": "lesion_min_volume_ml",
    "key_images": "secondary_capture",
    "key_images_max_lesions": "key_images_max_lesions",
    "sc_series_description": "sc_series_description",
    "sc_series_number": "sc_series_number",
}


def _schema(option: str) -> Any:
    """The settings schema's default for a ResultOptions field."""
    return Results.model_fields[FROM_SETTINGS[option]].default


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
    uid_root: str = _schema("uid_root")
    seg_type: str = _schema("seg_type")
    seg_series_description: str = _schema("seg_series_description")
    sr_series_description: str = _schema("sr_series_description")
    seg_series_number: int = _schema("seg_series_number")
    sr_series_number: int = _schema("sr_series_number")
    manufacturer: str = _schema("manufacturer")
    institution_name: str | None = _schema("institution_name")
    software_version: str = ""  # the node's version; "" = dsm_node.__version__
    device_serial_number: str = "0"
    device_uid: str | None = None  # None = derived from uid_root + manufacturer + model name
    revision: int = 0  # study revision (a late instance re-runs the study as revision + 1)
    omit_empty_frames: bool | None = None
    content_label: str = "DSM"
    # BINARY: organ segment = tissue + its tumours, hole-filled (overlapping the tumour segment)
    organs_include_tumors: bool = _schema("organs_include_tumors")
    lesion_min_volume_ml: float = _schema("lesion_min_volume_ml")  # smaller lesions: no measurement group
    key_images: bool = _schema("key_images")  # Secondary Capture key images beside the SEG and SR
    key_images_max_lesions: int = _schema("key_images_max_lesions")
    sc_series_description: str = _schema("sc_series_description")
    sc_series_number: int = _schema("sc_series_number")

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
        mapped = {option: getattr(r, setting) for option, setting in FROM_SETTINGS.items()}
        opts = cls(model_version=model_version, model_name=model_name, revision=revision, **mapped)
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
