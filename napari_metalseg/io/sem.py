"""Instrument metadata of SEM micrographs: magnification, pixel size, detector, accelerating voltage.

Read through :mod:`tifffile`, which parses the vendor tags:

* Zeiss SmartSEM, tag 34118 ``CZ_SEM`` -> ``TiffFile.sem_metadata``: a dict whose values are tuples such as
  ``('Mag', '500.00 K X')``, ``('Image Pixel Size', 543.0, 'pm')``, ``('EHT', 20.0, 'kV')`` or
  ``('Signal A', 'InLens')``.
* FEI / Thermo Fisher, tags 34680 ``FEI_SFEG`` and 34682 ``FEI_HELIOS`` -> ``TiffFile.fei_metadata``: the INI-like
  text as a dict of sections, e.g. ``{'Scan': {'PixelWidth': 1.5e-08}, 'EBeam': {'HV': 15000}}`` (SI units).
* ImageJ/Fiji calibrated TIFFs (``unit=micron`` in the ImageJ description plus ``XResolution``): pixel size only.

When the metadata gives no magnification, :func:`magnification_from_filename` reads the usual file-name
conventions (``x3000``, ``3000x``, ``5kx``, ``_500X_``). Pixel size is never guessed.

Metadata problems never make a read fail: a malformed tag gives empty metadata.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import tifffile

log = logging.getLogger(__name__)

_LENGTH_TO_UM = {
    "fm": 1e-9,
    "pm": 1e-6,
    "nm": 1e-3,
    "um": 1.0,
    "\u00b5m": 1.0,  # micro sign
    "\u03bcm": 1.0,  # Greek small letter mu
    "\\u00b5m": 1.0,  # as ImageJ writes it in its TIFF description
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
}

_NUMBER = r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
_MAG_TEXT = re.compile(rf"^\s*({_NUMBER})\s*([kKmM])?\s*[xX]?\s*$")
_LENGTH_TEXT = re.compile(rf"^\s*({_NUMBER})\s*([^\s0-9.]+)\s*$")
_MAG_PREFIX = {"": 1.0, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6}

# File-name magnification: "3000x", "5kx", "_500X_" | "x3000", "X5000", "x5k" | "mag3000", "mag_5kx".
_FILENAME_PATTERNS = (
    re.compile(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?) ?([kK])?[xX](?![A-Za-z0-9])"),
    re.compile(r"(?<![A-Za-z0-9])[xX](\d+(?:\.\d+)?)([kK])?(?![A-Za-z0-9.])"),
    re.compile(r"(?i)mag[_\- =]?(\d+(?:\.\d+)?)(k)?x?(?![A-Za-z0-9])"),
)
_MIN_FILENAME_MAG = 10.0
"""Bare numbers below this (``2x``, ``x3``) are more likely copy counters or binning than magnifications."""


@dataclass(frozen=True)
class SemMetadata:
    """Instrument metadata of one micrograph; every field is ``None`` when unknown.

    Attributes
    ----------
    instrument : str or None
        ``"zeiss"`` or ``"fei"``.
    pixel_size_um : float or None
        Physical size of one pixel in micrometres.
    magnification : float or None
        Nominal magnification as stated by the instrument (e.g. 500000 for "500.00 K X").
    detector : str or None
        Detector / signal name, e.g. ``"InLens"`` or ``"ETD"``.
    kv : float or None
        Accelerating voltage in kV.
    image_rows : int or None
        Height in rows of the scanned image when the instrument states it (FEI ``[Image] ResolutionY``);
        rows below it belong to the information band.
    """

    instrument: str | None = None
    pixel_size_um: float | None = None
    magnification: float | None = None
    detector: str | None = None
    kv: float | None = None
    image_rows: int | None = None


def read_sem_metadata(tif: tifffile.TiffFile) -> SemMetadata:
    """Read the instrument metadata of an open TIFF file.

    Parameters
    ----------
    tif : tifffile.TiffFile
        The open file.

    Returns
    -------
    SemMetadata
        Zeiss or FEI metadata when the file carries the vendor tag, else the ImageJ calibration if any,
        else empty metadata. Never raises for malformed metadata.
    """
    try:
        if tif.is_sem:
            return zeiss_metadata(tif.sem_metadata or {})
        if tif.is_fei:
            return fei_metadata(tif.fei_metadata or {})
        return SemMetadata(pixel_size_um=imagej_pixel_size_um(tif))
    except Exception as exc:  # noqa: BLE001 - metadata is optional; the pixels are what matters
        log.debug("ignoring unreadable SEM metadata in %s: %s", tif.filename, exc)
        return SemMetadata()


def zeiss_metadata(md: Mapping[str, Any]) -> SemMetadata:
    """Interpret the Zeiss ``CZ_SEM`` dict that tifffile returns as ``TiffFile.sem_metadata``.

    Parameters
    ----------
    md : Mapping
        Keys like ``'ap_mag'`` mapped to tuples ``(label, value[, unit])``.

    Returns
    -------
    SemMetadata
        With ``instrument="zeiss"``.
    """
    pixel = _first(_zeiss_length_um(md.get(key)) for key in ("ap_image_pixel_size", "ap_pixel_size"))
    mag = _first(_zeiss_magnification(md.get(key)) for key in ("ap_mag",))
    detector = _first(
        _zeiss_text(md.get(key)) for key in ("dp_detector_channel", "dp_detector_type", "dp_implied_detector")
    )
    kv = _first(_zeiss_kv(md.get(key)) for key in ("ap_actualkv", "ap_manualkv"))
    return SemMetadata(instrument="zeiss", pixel_size_um=pixel, magnification=mag, detector=detector, kv=kv)


def fei_metadata(md: Mapping[str, Any]) -> SemMetadata:
    """Interpret the FEI / Thermo Fisher dict that tifffile returns as ``TiffFile.fei_metadata``.

    Parameters
    ----------
    md : Mapping
        Sections (``'Scan'``, ``'EBeam'``, ``'Detectors'``, ``'Image'``, ...) mapped to dicts of values in SI
        units (metres, volts).

    Returns
    -------
    SemMetadata
        With ``instrument="fei"``. Magnification is ``[Image] MagCanvasRealWidth`` divided by the horizontal
        field width, and ``None`` when either is missing.
    """
    pixel_m = _first(positive_number(_section(md, sec).get("PixelWidth")) for sec in ("Scan", "EScan", "IScan"))
    volts = _first(positive_number(_section(md, sec).get("HV")) for sec in ("EBeam", "Beam", "IBeam"))
    name = _section(md, "Detectors").get("Name")
    rows = positive_number(_section(md, "Image").get("ResolutionY"))
    return SemMetadata(
        instrument="fei",
        pixel_size_um=pixel_m * 1e6 if pixel_m else None,
        magnification=_fei_magnification(md, pixel_m),
        detector=_zeiss_text(name),
        kv=volts / 1000.0 if volts else None,
        image_rows=int(rows) if rows else None,
    )


def imagej_pixel_size_um(tif: tifffile.TiffFile) -> float | None:
    """Pixel size of an ImageJ/Fiji calibrated TIFF (``unit=micron`` + ``XResolution``), else ``None``."""
    if not tif.is_imagej:
        return None
    unit = str((tif.imagej_metadata or {}).get("unit", "")).strip()
    scale = _LENGTH_TO_UM.get(unit.lower()) or _LENGTH_TO_UM.get(unit)
    tag = tif.pages.first.tags.get("XResolution")
    if scale is None or tag is None:
        return None
    num, den = tag.value
    if not num or not den:
        return None
    return positive_number(den / num * scale)


def length_to_um(value: float, unit: str) -> float | None:
    """Convert a length to micrometres.

    Parameters
    ----------
    value : float
        The number.
    unit : str
        ``fm``, ``pm``, ``nm``, ``um``/``µm``/``micron``, ``mm``, ``cm`` or ``m``.

    Returns
    -------
    float or None
        The length in micrometres, or ``None`` for an unknown unit or a non-positive / non-finite value.
    """
    scale = _LENGTH_TO_UM.get(unit.strip()) or _LENGTH_TO_UM.get(unit.strip().lower())
    number = positive_number(value)
    if scale is None or number is None:
        return None
    return number * scale


def parse_magnification(text: Any) -> float | None:
    """Parse a magnification such as ``"500.00 K X"``, ``"25 kX"``, ``"1.2 M X"``, ``"3000x"`` or ``3000``.

    Returns
    -------
    float or None
        The magnification, or ``None`` when the text is not a positive magnification.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        return positive_number(text)
    match = _MAG_TEXT.match(str(text))
    if match is None:
        return None
    return positive_number(float(match.group(1)) * _MAG_PREFIX[match.group(2) or ""])


def magnification_from_filename(name: str) -> float | None:
    """Magnification written in a file name: ``x3000``, ``3000x``, ``X5000``, ``5kx``, ``_500X_``, ``mag3000``.

    Parameters
    ----------
    name : str
        A file name or path; only the last component without its suffix is read.

    Returns
    -------
    float or None
        The magnification, or ``None`` when the name states none, states several different ones, or
        only a bare number below 10 (``copy_x2``). Resolutions like ``1024x768`` are not magnifications.
    """
    stem = re.sub(r"\.[A-Za-z]{1,5}$", "", re.split(r"[\\/]", str(name))[-1])
    found = set()
    for pattern in _FILENAME_PATTERNS:
        for number, kilo in pattern.findall(stem):
            value = float(number) * (1000.0 if kilo else 1.0)
            if kilo or value >= _MIN_FILENAME_MAG:
                found.add(value)
    return found.pop() if len(found) == 1 else None


def _zeiss_parts(entry: Any) -> tuple[Any, str | None]:
    """``('Label', value[, unit])`` -> ``(value, unit)``; a bare value passes through."""
    if isinstance(entry, tuple | list):
        if len(entry) >= 3:
            return entry[1], str(entry[2])
        if len(entry) == 2:
            return entry[1], None
        return (entry[0], None) if entry else (None, None)
    return entry, None


def _zeiss_magnification(entry: Any) -> float | None:
    value, unit = _zeiss_parts(entry)
    if value is None:
        return None
    return parse_magnification(f"{value} {unit}" if unit else value)


def _zeiss_length_um(entry: Any) -> float | None:
    value, unit = _zeiss_parts(entry)
    if value is None:
        return None
    if unit is None:
        match = _LENGTH_TEXT.match(str(value))
        if match is None:
            return None
        value, unit = float(match.group(1)), match.group(2)
    number = _to_float(value)
    return length_to_um(number, unit) if number is not None else None


def _zeiss_kv(entry: Any) -> float | None:
    value, unit = _zeiss_parts(entry)
    number = positive_number(value)
    if number is None:
        return None
    unit = (unit or "kV").strip()
    if unit.lower() == "v":
        return number / 1000.0
    return number if unit.lower() == "kv" else None


def _zeiss_text(entry: Any) -> str | None:
    """A non-empty text value (``('Signal A', 'InLens')`` -> ``'InLens'``), else ``None``."""
    value, _ = _zeiss_parts(entry)
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    return text or None


def _fei_magnification(md: Mapping[str, Any], pixel_m: float | None) -> float | None:
    canvas = positive_number(_section(md, "Image").get("MagCanvasRealWidth"))
    if canvas is None:
        return None
    hfw = _first(
        positive_number(_section(md, sec).get(key))
        for sec, key in (("EBeam", "HFW"), ("EScan", "HorFieldsize"), ("Scan", "HorFieldsize"))
    )
    width_px = positive_number(_section(md, "Image").get("ResolutionX"))
    if hfw is None and pixel_m and width_px:
        hfw = pixel_m * width_px
    return canvas / hfw if hfw else None


def _section(md: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    section = md.get(name)
    return section if isinstance(section, Mapping) else {}


def _to_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def positive_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number > 0 (a number or its text), else ``None``: the one test of a
    usable magnification or pixel size (metadata, layer calibration, a run's working scale)."""
    number = _to_float(value)
    return number if number is not None and number > 0 else None


def _first(values: Any) -> Any:
    """First value of an iterable that is not ``None``."""
    return next((v for v in values if v is not None), None)
