"""Reading just enough of a received data set, and the series header kept for selection.

The SCP stores the bytes as received; this module only decodes the element headers (pydicom
converts values lazily, on access) to find the UIDs, detect truncated or garbage data and, for
the first instance of a series, build the header summary used by series selection. Pixel data
is never decoded.
"""
from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_keyword, dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    JPEG2000,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

#: SOP classes the node processes; every other storage class follows dicom.other_sop_classes.
PROCESSED_SOP_CLASSES: frozenset[str] = frozenset({CTImageStorage, EnhancedCTImageStorage})

#: Transfer syntaxes accepted for every storage SOP class (bytes are stored as received).
TRANSFER_SYNTAXES: list[str] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]

PREAMBLE = b"\x00" * 128 + b"DICM"
_MAX_INFLATED = 4 * 1024**3
#: A deflated data set is inflated in pieces of this size; only the part before the pixel data
#: is kept (doubling from 1 MiB up to MAX_DEFLATED_HEADER), the rest is counted and dropped.
_INFLATE_CHUNK = 1 << 20
MAX_DEFLATED_HEADER = 64 << 20


class UnparseableDataset(ValueError):
    """The received bytes are not a readable DICOM data set (0xC210)."""


class DatasetTooLarge(UnparseableDataset):
    """The data set is larger than allowed once inflated (0xC214), or its header is."""


@dataclass
class ParsedInstance:
    dataset: Dataset
    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_uid: str | None
    series_uid: str | None
    has_pixel_data: bool = False


def text_value(ds: Dataset, keyword: str) -> str | None:
    """A single-valued string attribute, read cheaply from the undecoded element.

    pydicom's value conversion (hooks, validation, character sets) costs ~0.1 ms per element;
    for the few attributes read per instance the raw bytes are decoded directly when they are
    plain ASCII (UIDs always are), falling back to pydicom for anything else.
    """
    tag = tag_for_keyword(keyword)
    if tag is None:
        return None
    try:
        elem = ds.get_item(tag)
    except Exception:
        return None
    if elem is None:
        return None
    if isinstance(elem, RawDataElement):
        raw = elem.value
        if raw is None:
            return None
        try:
            text = bytes(raw).decode("ascii")
        except UnicodeDecodeError:
            text = None
        if text is not None:
            text = text.strip("\x00 ")
            return text or None
        try:
            value = ds[tag].value
        except Exception:
            return None
    else:
        value = elem.value
    if value is None or isinstance(value, (bytes, list, MultiValue)):
        return None
    text = str(value).strip("\x00 ")
    return text or None


_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # (Float/DoubleFloat) Pixel Data
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_SEQ_DELIMITER_LE = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_SEQ_DELIMITER_BE = b"\xff\xfe\xe0\xdd\x00\x00\x00\x00"


def _stop_at_pixels(tag: int, vr: str | None, length: int) -> bool:
    return tag in _PIXEL_TAGS


def _check_pixel_element(view: memoryview, pos: int, implicit: bool, little: bool, encapsulated: bool = False,
                         total: int | None = None, tail: bytes | None = None) -> None:
    """Verify the pixel data element at ``pos`` is complete, without copying its value, and
    that it is encapsulated exactly when the transfer syntax says so (otherwise nothing could
    ever decode it: refuse now rather than fail the job later).

    ``view`` holds at least the element header; ``total`` is the data set's full length and
    ``tail`` its last bytes when ``view`` is only its beginning (an inflated deflate stream)."""
    total = len(view) if total is None else total
    end = "<" if little else ">"
    if min(total, len(view)) - pos < 12:
        raise UnparseableDataset(f"truncated: pixel data element header at byte {pos} of {total}")
    if implicit:
        length = struct.unpack_from(end + "I", view, pos + 4)[0]
        start = pos + 8
    elif bytes(view[pos + 4 : pos + 6]) in _LONG_VRS:
        length = struct.unpack_from(end + "I", view, pos + 8)[0]
        start = pos + 12
    else:
        length = struct.unpack_from(end + "H", view, pos + 6)[0]
        start = pos + 8
    if encapsulated != (length == 0xFFFFFFFF) and bytes(view[pos : pos + 4]) in (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10"):
        if encapsulated:
            raise UnparseableDataset("pixel data is not encapsulated although the transfer syntax is compressed")
        raise UnparseableDataset("pixel data is encapsulated although the transfer syntax is uncompressed")
    if length == 0xFFFFFFFF:
        # Encapsulated: the fragments end with a sequence delimitation item, normally the last
        # 8 bytes of the data set (allow some trailing data, e.g. Data Set Trailing Padding).
        delimiter = _SEQ_DELIMITER_LE if little else _SEQ_DELIMITER_BE
        last = tail if tail is not None else bytes(view[max(start, total - 4096) :])
        if last.find(delimiter) < 0:
            raise UnparseableDataset("truncated: encapsulated pixel data has no sequence delimiter")
    elif start + length > total:
        raise UnparseableDataset(f"truncated: pixel data declares {length} bytes, {total - start} received")


def _inflated_chunks(data: memoryview) -> Iterator[bytes]:
    """The inflated deflate stream, ``_INFLATE_CHUNK`` bytes at most at a time."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pos = 0
    while not inflater.eof:
        if inflater.unconsumed_tail:
            src: bytes | memoryview = inflater.unconsumed_tail
        elif pos < len(data):
            src, pos = data[pos : pos + _INFLATE_CHUNK], pos + _INFLATE_CHUNK
        else:
            rest = inflater.flush()
            if rest:
                yield rest
            return
        out = inflater.decompress(src, _INFLATE_CHUNK)
        if out:
            yield out


def _reaches_pixels(head: bytes | bytearray, little: bool, implicit: bool) -> bool:
    """Whether the element headers in ``head`` lead to a complete pixel data element header."""
    try:
        fp = io.BytesIO(head)
        read_dataset(fp, implicit, little, stop_when=_stop_at_pixels)
    except Exception:  # cut in the middle of an element: need more
        return False
    pos = fp.tell()
    return pos + 12 <= len(head) and int.from_bytes(head[pos : pos + 2], "little" if little else "big") == 0x7FE0


def _inflate(buf: io.BytesIO, max_inflated: int) -> tuple[io.BytesIO, int, bytes]:
    """Inflate a deflated data set without ever holding more of it than its beginning.

    Returns (the beginning, up to and including the pixel data element's header; the whole
    data set when it is smaller or has no pixel data), the inflated length, its last 4096 bytes.
    Refuses (:class:`DatasetTooLarge`) beyond ``max_inflated`` bytes, or a header (everything
    before the pixel data) beyond :data:`MAX_DEFLATED_HEADER`.
    """
    head = bytearray()
    want = _INFLATE_CHUNK
    complete = False  # the head reaches the pixel data element
    total = 0
    tail = b""
    try:
        with buf.getbuffer() as data:
            for out in _inflated_chunks(data):
                total += len(out)
                if total > max_inflated:
                    raise DatasetTooLarge(f"deflated data set inflates beyond {max_inflated} bytes")
                tail = (tail + out)[-4096:]
                if complete:
                    continue
                head += out
                if len(head) >= want:
                    complete = _reaches_pixels(head, little=True, implicit=False)
                    want *= 2
                    if not complete and len(head) > MAX_DEFLATED_HEADER:
                        raise DatasetTooLarge(
                            f"deflated data set: no pixel data within the first {MAX_DEFLATED_HEADER} bytes")
    except zlib.error as exc:
        raise UnparseableDataset(f"deflated data set could not be inflated: {exc}") from None
    return io.BytesIO(bytes(head)), total, tail


def parse_dataset(buf: bytes | io.BytesIO, transfer_syntax: str, max_inflated: int = _MAX_INFLATED) -> ParsedInstance:
    """Decode the element headers of a received data set; raise :class:`UnparseableDataset`.

    ``buf`` is the data set as received on the presentation context whose transfer syntax is
    ``transfer_syntax`` (no preamble, no file meta): pynetdicom's ``request.DataSet`` or bytes.
    A deflated data set is inflated piecewise up to ``max_inflated`` bytes (more raises
    :class:`DatasetTooLarge`), keeping only what comes before the pixel data.
    Reading stops at the pixel data, whose element header and length are checked without
    copying the value. Detects truncation (an element shorter than declared) and data with no
    SOP Class/Instance UID. Never decodes pixel data.
    """
    ts = UID(transfer_syntax)
    fp = buf if isinstance(buf, io.BytesIO) else io.BytesIO(bytes(buf))  # bytes: shared, no copy
    total: int | None = None
    tail: bytes | None = None
    if ts == DeflatedExplicitVRLittleEndian:
        fp, total, tail = _inflate(fp, max_inflated)
    fp.seek(0)
    implicit = ts == ImplicitVRLittleEndian
    little = ts != ExplicitVRBigEndian
    try:
        ds = read_dataset(fp, implicit, little, stop_when=_stop_at_pixels)
        pos = fp.tell()
        with fp.getbuffer() as view:
            stopped_early = pos < len(view)
            if stopped_early:
                _check_pixel_element(view, pos, implicit, little, ts.is_encapsulated, total, tail)
        if not stopped_early:
            elements = list(ds._dict.values())  # raw elements as read (values undecoded)
            last = elements[-1] if elements else None
            if isinstance(last, RawDataElement) and last.length != 0xFFFFFFFF and last.value is not None:
                if len(last.value) != last.length:
                    raise UnparseableDataset(
                        f"truncated: element {last.tag} declares {last.length} bytes, {len(last.value)} received"
                    )
        sop_class = text_value(ds, "SOPClassUID")
        sop_instance = text_value(ds, "SOPInstanceUID")
        study = text_value(ds, "StudyInstanceUID")
        series = text_value(ds, "SeriesInstanceUID")
    except UnparseableDataset:
        raise
    except Exception as exc:  # pydicom raises many types on malformed input
        raise UnparseableDataset(f"data set could not be parsed: {type(exc).__name__}: {exc}"[:300]) from None
    if not sop_class and not sop_instance:
        raise UnparseableDataset("not a DICOM data set: no SOP Class UID and no SOP Instance UID")
    return ParsedInstance(ds, sop_class, sop_instance, study, series, stopped_early)


def _short(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _pad(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


_IMPL_UID = _short(0x0002, 0x0012, b"UI", _pad(PYNETDICOM_IMPLEMENTATION_UID, b"\x00"))
_IMPL_VERSION = _short(0x0002, 0x0013, b"SH", _pad(PYNETDICOM_IMPLEMENTATION_VERSION, b" "))
_VERSION = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str | None) -> bytes:
    """Preamble + 'DICM' + File Meta Information (PS3.10 7.1) for a spool file.

    Encoded directly (Explicit VR Little Endian, group 0002): this runs for every instance and
    pydicom's generic writer costs ~0.5 ms; tests check the result against pydicom.
    """
    body = b"".join(
        (
            _VERSION,
            _short(0x0002, 0x0002, b"UI", _pad(sop_class_uid, b"\x00")),
            _short(0x0002, 0x0003, b"UI", _pad(sop_instance_uid, b"\x00")),
            _short(0x0002, 0x0010, b"UI", _pad(transfer_syntax, b"\x00")),
            _IMPL_UID,
            _IMPL_VERSION,
            _short(0x0002, 0x0016, b"AE", _pad(source_ae[:16], b" ")) if source_ae else b"",
        )
    )
    return PREAMBLE + struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body)) + body


# Series header --------------------------------------------------------------------------

#: Groups never copied: Patient (0010) incl. OtherPatientIDs*, Clinical Trial Subject (0012),
#: Visit (0038), Scheduled/Performed Procedure Step and order identifiers (0040), Study
#: acquisition/requesting details (0032).
_EXCLUDED_GROUPS = frozenset({0x0010, 0x0012, 0x0032, 0x0038, 0x0040, 0x4008})
#: VRs never copied: person names, dates / date-times (quasi-identifiers), sequences and bulk.
_EXCLUDED_VRS = frozenset({"PN", "DA", "DT", "SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "UR"})
#: Identifying attributes outside those groups/VRs.
_EXCLUDED_KEYWORDS = frozenset(
    {
        "AccessionNumber",  # kept in studies.accession_number for traceability, not duplicated
        "IssuerOfAccessionNumberSequence",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "ReferringPhysicianAddress",
        "ReferringPhysicianTelephoneNumbers",
        "PersonAddress",
        "PersonTelephoneNumbers",
        "StudyID",
        "OtherPatientIDs",
        "MedicalRecordLocator",
        "PatientTransportArrangements",
        "AdmissionID",
        "CurrentPatientLocation",
    }
)
_MAX_TEXT = 1024


def _jsonable(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (list, MultiValue, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (bytes, bytearray)):
        return None
    return str(value).strip("\x00 ")


def header_summary(ds: Dataset) -> dict[str, Any]:
    """JSON-friendly top-level attributes of an instance, by keyword, for series selection.

    Non-sequence, non-private, non-bulk elements only; never the Patient module or any other
    patient-identifying attribute (see the exclusion lists above).
    """
    out: dict[str, Any] = {}
    for tag in list(ds.keys()):
        if tag.is_private or tag.group in _EXCLUDED_GROUPS or tag.group in (0x0000, 0x0002) or tag.element == 0:
            continue
        if 0x6000 <= tag.group <= 0x60FF or tag.group == 0x7FE0 or 0x5000 <= tag.group <= 0x50FF:
            continue  # overlays, pixel data, curves
        # Decide from the dictionary and the raw element BEFORE decoding the value, so that an
        # excluded value (e.g. a person name) is never converted (nor echoed by a warning).
        try:
            keyword = dictionary_keyword(tag)
            raw = ds.get_item(tag)
            vr = getattr(raw, "VR", None) or dictionary_VR(tag)
        except (KeyError, Exception):
            continue
        if not keyword or keyword in _EXCLUDED_KEYWORDS or vr in _EXCLUDED_VRS or "or" in (vr or ""):
            continue
        try:
            value = _jsonable(ds[tag].value)
        except Exception:
            continue
        if isinstance(value, str) and len(value) > _MAX_TEXT:
            continue
        out[keyword] = value
    return out


def int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
