"""Key images: a small Secondary Capture series every viewer can show.

Many PACS viewers cannot display DICOM-SEG (older ones ignore the SOP class; Weasis 4.6
disables SEG objects over 400 frames), so, like commercial AI products, the node also sends a
handful of ordinary images with the results burnt in:

* one overview: an axial image through the largest lesion (else the slice with the most
  segmented area) and a coronal image through the same point, every segment filled in its
  catalog colour, a legend with each segment's name, colour and volume and each lesion's axes;
* one image per lesion (largest first, at most ``key_images_max_lesions``): the axial slice
  of its measurement, segments outlined, the lesion outlined in its colour, its long axis
  (yellow) and short axis (cyan) drawn, and a legend with its volume, axes, longest 3-D
  diameter and mean HU and the structures on that image with their volumes;
* "NOT FOR DIAGNOSTIC USE" on every image, orientation letters at the image edges.

Images follow the radiological convention whatever the source orientation (see
:mod:`.display`). Encoding: Secondary Capture Image Storage, RGB, 8 bit, uncompressed
(any reader, DCMTK ``dcmj2pnm`` included), ConversionType WSD, BurnedInAnnotation YES; same
study, own series ("DSM key images - NOT FOR DIAGNOSTIC USE", 9903), UIDs as the SEG/SR
(deterministic, revision-aware: one per image name), the AIR contributing equipment item, and
a Source Image Sequence naming the CT image a lesion image shows.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from model.spill import copy_out

from . import coding
from .common import character_set, check_source, quiet_source_warnings, save
from .display import DisplayFrame
from .options import ResultOptions
from .seg import SegResult
from .segments import WITH_TUMORS, SegmentPlan

if TYPE_CHECKING:
    from highdicom.sc import SCImage
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..volume.assembly import Volume
    from .lesions import Lesion
    from .segments import PlannedSegment
    from .sr import SRResult

#: An RGB colour, 0..255 per component (a catalog class's ``color``).
Colour = tuple[int, ...]
#: A legend line: text, colour swatch or None, bold.
LegendLine = tuple[str, Colour | None, bool]

BANNER = "NOT FOR DIAGNOSTIC USE"
SIZE_PX = (960, 720)  # width, height
_DPI = 100
_SOFT_TISSUE = (40.0, 400.0)  # window level, width
_LUNG = (-600.0, 1500.0)


@dataclass
class KeyImage:
    name: str  # "overview" or the lesion's tracking identifier
    title: str
    rgb: np.ndarray  # (rows, columns, 3) uint8
    source_slice: int | None = None  # volume slice shown (lesion images of axial series)
    axial_only: bool = True  # False when the image also holds a non-axial panel


@dataclass
class KeyImagesResult:
    images: list[KeyImage]
    datasets: list[SCImage] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


# ---- rendering --------------------------------------------------------------------------------
def _grey(hu2d: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    level, width = window
    hu2d = np.asarray(hu2d, dtype=np.float32)  # int16 volumes: the same float32 arithmetic as before
    grey: np.ndarray = np.clip((hu2d - (level - width / 2)) / width, 0, 1)
    return grey


def _rgb(colour: Colour) -> tuple[float, float, float]:
    return cast("tuple[float, float, float]", tuple(float(c) / 255.0 for c in colour))


def _new_figure() -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    w, h = SIZE_PX
    fig = Figure(figsize=(w / _DPI, h / _DPI), dpi=_DPI, facecolor="black")
    fig.text(0.5, 0.975, f"DSM AI result - {BANNER}", color="#ff4040", ha="center", va="top",
             fontsize=13, fontweight="bold")
    fig.text(0.5, 0.012, BANNER, color="#ff4040", ha="center", va="bottom", fontsize=10, fontweight="bold")
    return fig


def _to_rgb(fig: Figure) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3])


def _orientation_letters(ax: Axes, top: str, bottom: str, left: str, right: str) -> None:
    # Any: matplotlib's own type for its text keyword arguments.
    style: dict[str, Any] = dict(color="#ffd24d", fontsize=11, fontweight="bold", transform=ax.transAxes)
    ax.text(0.5, 0.995, top, ha="center", va="top", **style)
    ax.text(0.5, 0.005, bottom, ha="center", va="bottom", **style)
    ax.text(0.005, 0.5, left, ha="left", va="center", **style)
    ax.text(0.995, 0.5, right, ha="right", va="center", **style)


def _image_axes(fig: Figure, rect: tuple[float, float, float, float], image: np.ndarray, aspect: float,
                window: tuple[float, float]) -> Axes:
    ax = fig.add_axes(rect, facecolor="black")
    ax.imshow(_grey(image, window), cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    return ax


def _fill(ax: Axes, masks: list[tuple[np.ndarray, Colour]], aspect: float, alpha: float) -> None:
    if not masks:
        return
    shape = masks[0][0].shape
    over = np.zeros(shape + (4,), np.float32)
    for mask, colour in masks:  # later ones (tumours, catalog order) paint over earlier ones
        over[mask, :3] = _rgb(colour)
        over[mask, 3] = alpha
    ax.imshow(over, aspect=aspect, interpolation="nearest")


def _contour(ax: Axes, mask: np.ndarray, colour: Colour, width: float) -> None:
    if mask.any():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[_rgb(colour)], linewidths=width)


def _legend(fig: Figure, x: float, y: float, lines: list[LegendLine]) -> None:
    """Legend text from (x, y) down: (text, colour swatch or None, bold)."""
    from matplotlib.patches import Rectangle

    step = 0.032
    for text, colour, bold in lines:
        if colour is not None:
            fig.patches.append(Rectangle((x, y - 0.018), 0.018, 0.022, transform=fig.transFigure,
                                         facecolor=_rgb(colour), edgecolor="white", linewidth=0.5))
        fig.text(x + (0.026 if colour is not None else 0), y, text, color="white", va="top", ha="left",
                 fontsize=10.5 if bold else 9.5, fontweight="bold" if bold else "normal")
        y -= step * (1.25 if bold else 1.0)


@dataclass
class _Scene:
    """Display-ordered views of the CT, the SEG's segments and the lesions."""

    frame: DisplayFrame
    hu: np.ndarray  # display (S, P, L) view of the CT
    partition: np.ndarray  # display view of the plan's partition
    plan: SegmentPlan
    volumes: dict[int, float]  # segment number -> cm3 as reported in the SR

    def segment_mask(self, number: int, display_slice: np.ndarray) -> np.ndarray:
        return self.plan.plane_mask(display_slice, number)

    def segment_name(self, p: PlannedSegment) -> str:
        return f"{p.entry.name} (incl. tumours)" if p.method == WITH_TUMORS and p.included_tumors else p.entry.name


def _segment_lines(scene: _Scene, numbers: Iterable[int]) -> list[LegendLine]:
    out: list[LegendLine] = []
    for n in numbers:
        p = scene.plan.by_number(n)
        out.append((f"{scene.segment_name(p)}  {scene.volumes.get(n, 0.0):.1f} ml", tuple(p.entry.color), False))
    return out


def _lesion_lines(lesion: Lesion) -> list[LegendLine]:
    lines: list[LegendLine] = [
        (f"long {lesion.long_axis.length_mm:.1f} mm, short {lesion.short_axis.length_mm:.1f} mm", None, False),
        (f"volume {lesion.volume_cm3:.2f} ml", None, False)]
    if lesion.max_diameter_mm is not None:
        lines.append((f"longest 3-D diameter {lesion.max_diameter_mm:.1f} mm", None, False))
    if lesion.mean_hu is not None:
        lines.append((f"mean {lesion.mean_hu:.0f} HU", None, False))
    return lines


def _window(hu2d: np.ndarray, mask: np.ndarray | None) -> tuple[float, float]:
    """Lung window for findings in air-filled tissue, soft tissue otherwise."""
    values = hu2d[mask] if mask is not None and mask.any() else None
    if values is not None and np.median(values) < -300:
        return _LUNG
    return _SOFT_TISSUE


def _lesion_display_mask(scene: _Scene, lesion: Lesion, labels: np.ndarray, d: int) -> np.ndarray:
    comp = lesion.mask(labels)
    zyx = np.argwhere(comp) + [s.start for s in lesion.box]
    disp = np.rint(scene.frame.point(zyx)).astype(int)
    on = disp[disp[:, 0] == d]
    out = np.zeros(scene.hu.shape[1:], bool)
    out[on[:, 1], on[:, 2]] = True
    return out


def render_lesion(scene: _Scene, lesion: Lesion, labels: np.ndarray) -> KeyImage:
    frame = scene.frame
    centre = frame.point((lesion.slice_index, *lesion.long_axis.midpoint))
    d = int(round(centre[0]))
    hu2d, part2d = copy_out(scene.hu[d]), scene.partition[d]
    sp = frame.spacing
    aspect = sp[1] / sp[2]
    lesion_mask = _lesion_display_mask(scene, lesion, labels, d)
    fig = _new_figure()
    ax = _image_axes(fig, (0.01, 0.05, 0.62, 0.88), hu2d, aspect, _window(hu2d, lesion_mask))
    numbers = [p.number for p in scene.plan.segments if scene.segment_mask(p.number, part2d).any()]
    _fill(ax, [(scene.segment_mask(n, part2d), scene.plan.by_number(n).entry.color) for n in numbers], aspect, 0.18)
    for n in numbers:
        _contour(ax, scene.segment_mask(n, part2d), scene.plan.by_number(n).entry.color, 0.8)
    _contour(ax, lesion_mask, lesion.entry.color, 2.2)
    if frame.slices_are_axial:
        for axis, colour in ((lesion.long_axis, "#ffff00"), (lesion.short_axis, "#00ffff")):
            pts = frame.point([(lesion.slice_index, *axis.start), (lesion.slice_index, *axis.end)])
            ax.plot(pts[:, 2], pts[:, 1], color=colour, linewidth=2.0, marker="o", markersize=3.5)
    _orientation_letters(ax, "A", "P", "R", "L")
    lines: list[LegendLine] = [(lesion.tracking_identifier, tuple(lesion.entry.color), True), *_lesion_lines(lesion)]
    if frame.slices_are_axial:
        lines.append(("yellow: long axis, cyan: short axis", None, False))
    else:
        lines.append(("axes measured on the acquisition plane (see SR)", None, False))
    lines += [("", None, False), ("On this image:", None, True), *_segment_lines(scene, numbers)]
    _legend(fig, 0.645, 0.9, lines)
    rgb = _to_rgb(fig)
    return KeyImage(lesion.tracking_identifier, f"{lesion.tracking_identifier}: long {lesion.long_axis.length_mm:.1f} mm",
                    rgb, source_slice=lesion.slice_index if frame.slices_are_axial else None)


def render_overview(scene: _Scene, lesions: Sequence[Lesion], title: str = "") -> KeyImage:
    frame = scene.frame
    if lesions:
        les = lesions[0]
        centre = frame.point((les.slice_index, *les.long_axis.midpoint))
    else:
        counts = (scene.partition > 0).reshape(len(scene.partition), -1).sum(axis=1)
        d = int(counts.argmax())
        rows, cols = np.nonzero(scene.partition[d])
        centre = np.array([d, rows.mean() if len(rows) else scene.hu.shape[1] / 2,
                           cols.mean() if len(cols) else scene.hu.shape[2] / 2])
    d, r, c = (int(round(v)) for v in centre)
    sp = frame.spacing
    fig = _new_figure()
    views = [
        ((0.01, 0.05, 0.40, 0.88), copy_out(scene.hu[d]), scene.partition[d], sp[1] / sp[2], ("A", "P", "R", "L")),
        ((0.42, 0.05, 0.26, 0.88), copy_out(scene.hu[::-1, r, :]), scene.partition[::-1, r, :], sp[0] / sp[2],
         ("S", "I", "R", "L")),
    ]
    for rect, image, part, aspect, letters in views:
        ax = _image_axes(fig, rect, image, aspect, _SOFT_TISSUE)
        numbers = [p.number for p in scene.plan.segments]
        # Organs first, then tumours (catalog order), so a tumour is seen over its organ.
        _fill(ax, [(scene.segment_mask(n, part), scene.plan.by_number(n).entry.color) for n in numbers], aspect, 0.45)
        _orientation_letters(ax, *letters)
    lines: list[LegendLine] = [(title or "Overview", None, True), *_segment_lines(scene, [p.number for p in scene.plan.segments])]
    if lesions:
        lines += [("", None, False), ("Lesions (long x short axis):", None, True)]
        lines += [(f"{les.tracking_identifier}: {les.long_axis.length_mm:.1f} x {les.short_axis.length_mm:.1f} mm",
                   tuple(les.entry.color), False) for les in lesions]
    _legend(fig, 0.70, 0.9, lines[:26])
    if len(lines) > 26:
        fig.text(0.70, 0.06, f"... {len(lines) - 26} more in the SR", color="white", fontsize=9)
    return KeyImage("overview", "overview", _to_rgb(fig), axial_only=False)


def make_scene(volume_hu: np.ndarray, affine_lps: np.ndarray, plan: SegmentPlan, volumes: dict[int, float]) -> _Scene:
    frame = DisplayFrame.from_affine(affine_lps, volume_hu.shape)
    return _Scene(frame, frame.array(volume_hu), frame.array(plan.partition), plan, volumes)


def render_key_images(volume_hu: np.ndarray, affine_lps: np.ndarray, labels: np.ndarray, plan: SegmentPlan,
                      lesions: Iterable[Lesion], volumes: dict[int, float],
                      max_lesions: int = 6, title: str = "") -> list[KeyImage]:
    """The overview plus one image per lesion (largest first), as RGB arrays."""
    scene = make_scene(volume_hu, affine_lps, plan, volumes)
    ordered = sorted(lesions, key=lambda les: -les.volume_cm3)
    images = [render_overview(scene, ordered, title)]
    images += [render_lesion(scene, les, labels) for les in ordered[:max_lesions]]
    return images


# ---- DICOM ----------------------------------------------------------------------------------------
def build_key_images(volume: Volume, labels: np.ndarray, seg: SegResult, sr: SRResult, options: ResultOptions) -> KeyImagesResult:
    """Secondary Capture datasets for the SEG's segments and the SR's lesions."""
    from highdicom.sc import SCImage

    t0 = time.perf_counter()
    check_source(volume)
    volumes = {s.number: sr.measurements[s.label].volume_cm3 for s in seg.segments if s.label in sr.measurements}
    # Only a SEG with its plan gets key images (write_results checks).
    images = render_key_images(volume.hu, volume.affine_lps, labels, seg.plan, sr.lesions, volumes,  # type: ignore[arg-type]
                               max_lesions=options.key_images_max_lesions)
    t1 = time.perf_counter()
    uids = options.uids(volume.series_instance_uid)
    datasets: list[SCImage] = []
    for number, image in enumerate(images, start=1):
        with quiet_source_warnings():
            ds = SCImage.from_ref_dataset(
                ref_dataset=volume.headers[0], pixel_array=image.rgb, photometric_interpretation="RGB",
                bits_allocated=8, coordinate_system="PATIENT",
                series_instance_uid=uids.sc_series, series_number=options.sc_series_number,
                sop_instance_uid=uids.sc_instance(image.name), instance_number=number,
                manufacturer=options.manufacturer, patient_orientation=("L", "P"),
                series_description=options.sc_series_description[:64],
                specific_character_set=character_set(volume),
            )
        _finish(ds, volume, image, options)
        datasets.append(ds)
    t2 = time.perf_counter()
    return KeyImagesResult(images, datasets, timings={"render_s": t1 - t0, "encode_s": t2 - t1})


def _finish(ds: SCImage, volume: Volume, image: KeyImage, options: ResultOptions) -> None:
    from pydicom.dataset import Dataset

    ds.ConversionType = "WSD"  # rendered by a workstation, not digitised film
    ds.BurnedInAnnotation = "YES"
    ds.ImageComments = f"{image.title} - {BANNER}"[:10240]
    ds.DerivationDescription = f"{options.model_name} {options.model_version} results rendered on the CT"[:1024]
    if not image.axial_only:
        # axial and coronal panels side by side: no single orientation (highdicom types the
        # attributes it sets by its own arguments; pydicom takes any value of the VR)
        ds.PatientOrientation = ""  # type: ignore[assignment]
    # The images show the body part of the CT; without one, Laterality (Type 2C) is "unknown".
    body_part = str(volume.headers[0].get("BodyPartExamined", "") or "")
    if body_part:
        ds.BodyPartExamined = body_part
    else:
        ds.Laterality = ""
    ds.ManufacturerModelName = options.model_name
    ds.SoftwareVersions = list(options.software_versions)  # type: ignore[assignment]  # as PatientOrientation
    if options.institution_name:
        ds.InstitutionName = options.institution_name
    if image.source_slice is not None:
        frame = volume.frames[image.source_slice]
        ref = Dataset()
        ref.ReferencedSOPClassUID = frame.sop_class_uid
        ref.ReferencedSOPInstanceUID = frame.sop_instance_uid
        if volume.is_multiframe:
            ref.ReferencedFrameNumber = frame.frame_number
        ds.SourceImageSequence = [ref]
    equipment = list(ds.get("ContributingEquipmentSequence", []))
    equipment.append(coding.air_contributing_equipment(
        manufacturer=options.manufacturer, model_name=options.model_name,
        software_versions=options.software_versions, device_uid=options.algorithm_device_uid,
        institution_name=options.institution_name,
        description=f"AI key images by {options.model_name} {options.model_version}"))
    ds.ContributingEquipmentSequence = equipment


def write_key_images(volume: Volume, labels: np.ndarray, seg: SegResult, sr: SRResult, options: ResultOptions,
                     out_dir: str | os.PathLike[str]) -> KeyImagesResult:
    """Build the key images and write each as ``out_dir/SC_<SOPInstanceUID>.dcm``."""
    result = build_key_images(volume, labels, seg, sr, options)
    t = time.perf_counter()
    result.paths = [save(ds, Path(out_dir) / f"SC_{ds.SOPInstanceUID}.dcm") for ds in result.datasets]
    result.timings["write_s"] = time.perf_counter() - t
    return result


def write_pngs(images: list[KeyImage], out_dir: str | os.PathLike[str]) -> list[Path]:
    """The rendered images as PNG files (``overview.png``, ``NN_<lesion>.png``)."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for rank, image in enumerate(images):
        stem = "overview" if image.name == "overview" else f"{rank:02d}_" + "".join(
            ch if ch.isalnum() else "_" for ch in image.name.lower())
        path = out / f"{stem}.png"
        Image.fromarray(image.rgb).save(path)
        paths.append(path)
    return paths
