"""Checks of a source series before anything is computed from it (``dsm-node infer``, ``export``).

Results go back into the source's study and series context, so a series that cannot carry them
(missing or invalid UIDs) or that is not CT is refused before the model is loaded or any
inference runs, with one line saying why -- not after minutes of work with a traceback.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage

from ..spool import uid_problem

if TYPE_CHECKING:
    from ..volume.assembly import Volume

#: The SOP classes the node segments (the receiver processes the first two).
CT_SOP_CLASSES = frozenset({CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage})


class InputError(ValueError):
    """The source series cannot be processed; the message is one line naming every problem."""


@contextlib.contextmanager
def checked_reading() -> Iterator[None]:
    """Read a source without pydicom's reading warnings (an invalid UID value, a VR guessed for a
    file that is not DICOM): what matters is reported once, by the volume assembly's error or
    :func:`check_ct_source`, as the one line the operator gets."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
        yield


def check_ct_source(volume: Volume) -> None:
    """Raise :class:`InputError` unless ``volume`` is a CT series whose UIDs can carry results."""
    problems: list[str] = []
    missing = []
    for name, value in (("StudyInstanceUID", volume.study_instance_uid),
                        ("SeriesInstanceUID", volume.series_instance_uid),
                        ("FrameOfReferenceUID", volume.frame_of_reference_uid)):
        if not value:
            missing.append(name)
        elif (why := uid_problem(value)) is not None:
            problems.append(f"invalid {name} {value[:70]!r} ({why})")
    if missing:
        problems.insert(0, f"no {' and no '.join(missing)}")
    sops = [f.sop_instance_uid for f in volume.frames]
    if not all(sops):
        problems.append(f"{sum(1 for s in sops if not s)} instance(s) without SOPInstanceUID")
    bad = sorted({s for s in sops if s and uid_problem(s) is not None})
    if bad:
        problems.append(f"{len(bad)} invalid SOPInstanceUID(s), e.g. {bad[0][:70]!r} ({uid_problem(bad[0])})")
    modalities = sorted({str(h.get("Modality", "") or "").strip() or "(none)" for h in volume.headers})
    if modalities != ["CT"]:
        problems.append(f"modality {'/'.join(modalities)}, not CT")
    classes = sorted({f.sop_class_uid for f in volume.frames} - CT_SOP_CLASSES)
    if classes:
        problems.append(f"SOP class {', '.join(c or '(none)' for c in classes)} is not a CT image")
    if problems:
        raise InputError("the series cannot be processed: " + "; ".join(problems))
