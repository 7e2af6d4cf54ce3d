"""Read micrographs into one normalised form: a float32 H x W grayscale image in [0, 1] plus metadata.

Conversion rules (files and in-memory arrays alike):

* integer data is divided by its dtype's maximum (``uint8`` 255 -> 1.0, ``uint16`` 65535 -> 1.0); signed data
  with negative values is scaled by its own min/max; boolean data becomes 0/1;
* float data must be finite; values already in [0, 1] are kept, others are scaled by their min/max;
* palette images get their colormap applied; colour (RGB, RGBA, palette) becomes luminance
  ``0.299 R + 0.587 G + 0.114 B`` (gray colour images stay exact); alpha is ignored;
* TIFF files are read with tifffile (with Zeiss / FEI / ImageJ metadata, see :mod:`.sem`), PNG, JPEG and BMP
  with Pillow;
* the SEM information band at the bottom is cropped (see :mod:`.infoband`).

Every problem with the input is raised as :class:`~napari_metalseg.errors.MetalsegError` naming the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from napari_metalseg.errors import MetalsegError
from napari_metalseg.io.infoband import info_band_rows
from napari_metalseg.io.sem import SemMetadata, magnification_from_filename, read_sem_metadata

TIFF_SUFFIXES = (".tif", ".tiff")
"""File suffixes of TIFF files (read and written with tifffile)."""

MICROGRAPH_SUFFIXES = (*TIFF_SUFFIXES, ".png", ".jpg", ".jpeg", ".bmp")
"""File suffixes :func:`read_micrograph` accepts (case-insensitive): the one list of image suffixes (datasets, folders
of micrographs and the napari reader use it)."""

MIN_SIZE = 8
"""Smallest accepted width and height in pixels."""

_LUMA = (0.299, 0.587, 0.114)
_TIFF_PHOTOMETRIC_OK = {0, 1, 2, 3, 6}  # MINISWHITE, MINISBLACK, RGB, PALETTE, YCBCR (decoded to RGB)
_ARRAY_FIELDS = {"source", "pixel_size_um", "magnification", "detector", "kv", "instrument"}


@dataclass
class Micrograph:
    """A micrograph ready for segmentation.

    Attributes
    ----------
    image : numpy.ndarray
        float32 H x W grayscale image in [0, 1], information band already cropped.
    source : str
        File path, or ``""`` for in-memory data.
    pixel_size_um : float or None
        Physical pixel size in micrometres when the file states it.
    magnification : float or None
        Instrument magnification, from metadata or else from the file name.
    info_band_rows : int
        Rows cropped from the bottom (0 if none).
    bit_depth : int
        Original bits per sample (1, 8, 16, 32, ...).
    dtype : str
        Original dtype name, e.g. ``"uint8"``.
    detector : str or None
        Detector / signal name (``"InLens"``, ``"ETD"``, ...).
    kv : float or None
        Accelerating voltage in kV.
    instrument : str or None
        ``"zeiss"``, ``"fei"`` or ``None``.
    original_shape : tuple of int
        Shape of the stored pixel data before conversion and cropping, e.g. ``(768, 1024)`` or ``(H, W, 3)``.
    """

    image: np.ndarray
    source: str
    pixel_size_um: float | None
    magnification: float | None
    info_band_rows: int
    bit_depth: int
    dtype: str
    detector: str | None = None
    kv: float | None = None
    instrument: str | None = None
    original_shape: tuple[int, ...] = field(default=())

    @property
    def shape(self) -> tuple[int, int]:
        """Height and width of the (cropped) image."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    def info(self) -> dict[str, Any]:
        """JSON-ready summary of the micrograph.

        Returns
        -------
        dict
            ``shape`` (cropped H, W), ``original_shape``, ``dtype``, ``bit_depth``, ``magnification``,
            ``pixel_size_um``, ``info_band_rows``, ``detector``, ``kv``, ``instrument``, ``source``; only
            built-in types (lists, ints, floats, strings, ``None``).
        """
        return {
            "shape": list(self.shape),
            "original_shape": [int(n) for n in self.original_shape],
            "dtype": self.dtype,
            "bit_depth": int(self.bit_depth),
            "magnification": _plain_float(self.magnification),
            "pixel_size_um": _plain_float(self.pixel_size_um),
            "info_band_rows": int(self.info_band_rows),
            "detector": self.detector,
            "kv": _plain_float(self.kv),
            "instrument": self.instrument,
            "source": self.source,
        }


@dataclass
class _Pixels:
    """Pixel data as stored, before conversion to grayscale."""

    data: np.ndarray  # H x W or H x W x C
    bit_depth: int
    dtype: str
    colormap: np.ndarray | None = None  # 3 x N palette (TIFF)
    min_is_white: bool = False
    sem: SemMetadata = field(default_factory=SemMetadata)


def read_micrograph(path: str | Path, crop_info_band: bool = True) -> Micrograph:
    """Read a micrograph file.

    Parameters
    ----------
    path : str or pathlib.Path
        A ``.tif``/``.tiff``, ``.png``, ``.jpg``/``.jpeg`` or ``.bmp`` file holding one 2-D image.
    crop_info_band : bool, default True
        Detect the SEM information band at the bottom and crop it.

    Returns
    -------
    Micrograph
        The float32 grayscale image in [0, 1] with its metadata.

    Raises
    ------
    MetalsegError
        The file is missing, empty, of an unsupported type, unreadable or damaged, a stack of images, too
        small, or holds NaN / infinite values.
    """
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        pixels = _read_tiff(path)
    else:
        pixels = _read_pillow(path)
    gray = _to_gray(pixels, str(path))
    rows = info_band_rows(gray, pixels.sem.image_rows) if crop_info_band else 0
    sem = pixels.sem
    return Micrograph(
        image=np.ascontiguousarray(gray[: gray.shape[0] - rows]),
        source=str(path),
        pixel_size_um=sem.pixel_size_um,
        magnification=sem.magnification or magnification_from_filename(path.name),
        info_band_rows=rows,
        bit_depth=pixels.bit_depth,
        dtype=pixels.dtype,
        detector=sem.detector,
        kv=sem.kv,
        instrument=sem.instrument,
        original_shape=tuple(int(n) for n in pixels.data.shape),
    )


def micrograph_from_array(array: Any, **metadata: Any) -> Micrograph:
    """Build a :class:`Micrograph` from in-memory data with the same conversion rules as files.

    Parameters
    ----------
    array : array_like
        H x W grayscale or H x W x C (C = 1..4: gray, gray+alpha, RGB, RGBA) data of any real dtype.
    **metadata
        Optional ``source``, ``pixel_size_um``, ``magnification``, ``detector``, ``kv``, ``instrument``, and
        ``crop_info_band`` (default ``False``: in-memory data is taken as shown). When ``magnification`` is
        missing it is read from the ``source`` file name if that states one.

    Returns
    -------
    Micrograph
        A new float32 image; the input array is never modified or shared.

    Raises
    ------
    MetalsegError
        The data is not a single 2-D image, is too small, or holds NaN / infinite values.
    TypeError
        An unknown metadata keyword.
    """
    crop = bool(metadata.pop("crop_info_band", False))
    unknown = set(metadata) - _ARRAY_FIELDS
    if unknown:
        raise TypeError(f"micrograph_from_array() got unknown metadata {', '.join(sorted(unknown))}")
    source = str(metadata.get("source") or "")
    name = source or "in-memory image"
    data = np.asarray(array)
    _check_array_shape(data, name)
    bits = 1 if data.dtype == np.bool_ else data.dtype.itemsize * 8
    gray = _to_gray(_Pixels(data, bits, data.dtype.name), name)
    rows = info_band_rows(gray) if crop else 0
    magnification = metadata.get("magnification")
    if magnification is None and source:
        magnification = magnification_from_filename(source)
    return Micrograph(
        image=np.ascontiguousarray(gray[: gray.shape[0] - rows]),
        source=source,
        pixel_size_um=metadata.get("pixel_size_um"),
        magnification=magnification,
        info_band_rows=rows,
        bit_depth=bits,
        dtype=data.dtype.name,
        detector=metadata.get("detector"),
        kv=metadata.get("kv"),
        instrument=metadata.get("instrument"),
        original_shape=tuple(int(n) for n in data.shape),
    )


# --- files -----------------------------------------------------------------------------------------------------


def _check_file(path: Path) -> None:
    if not path.exists():
        raise MetalsegError(f"{path}: file not found")
    if path.is_dir():
        raise MetalsegError(f"{path}: is a folder, not an image file")
    if path.suffix.lower() not in MICROGRAPH_SUFFIXES:
        kind = f"'{path.suffix}'" if path.suffix else "without a suffix"
        raise MetalsegError(f"{path}: unsupported file type {kind}; metalseg reads {', '.join(MICROGRAPH_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise MetalsegError(f"{path}: file is empty (0 bytes)")


def _read_tiff(path: Path) -> _Pixels:
    try:
        with tifffile.TiffFile(path) as tif:
            return _tiff_pixels(tif, path)
    except MetalsegError:
        raise
    except Exception as exc:  # noqa: BLE001 - translate any reader failure into one line naming the file
        raise MetalsegError(f"{path}: not a readable TIFF image, the file may be damaged ({_reason(exc)})") from None


def _tiff_pixels(tif: tifffile.TiffFile, path: Path) -> _Pixels:
    series = tif.series[0]
    page = series.keyframe
    _check_stack(series.axes, series.shape, str(path))
    _check_tiff_complete(series.pages, path)
    if int(page.photometric) not in _TIFF_PHOTOMETRIC_OK:
        raise MetalsegError(
            f"{path}: unsupported TIFF colour model {page.photometric.name}; save it as grayscale or RGB"
        )
    data = series.asarray()
    if "S" in series.axes and series.axes.index("S") < series.axes.index("Y"):
        data = np.moveaxis(data, series.axes.index("S"), -1)  # planar RGB -> H x W x C
    _check_size(data.shape, str(path))
    colormap = page.colormap if int(page.photometric) == 3 else None
    return _Pixels(
        data=data,
        bit_depth=int(page.bitspersample),
        dtype=data.dtype.name,
        colormap=colormap,
        min_is_white=int(page.photometric) == 0,
        sem=read_sem_metadata(tif),
    )


def _check_tiff_complete(pages: Any, path: Path) -> None:
    """A file cut short loses the end of its pixel data; tifffile may otherwise fill it with zeros."""
    size = path.stat().st_size
    for page in pages:
        if page is None:
            continue
        ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False) if n]
        if ends and max(ends) > size:
            raise MetalsegError(f"{path}: file is truncated (pixel data ends at byte {max(ends)}, file has {size})")


def _read_pillow(path: Path) -> _Pixels:
    try:
        with Image.open(path) as im:
            frames = int(getattr(im, "n_frames", 1))
            if frames > 1:
                raise MetalsegError(_stack_message(str(path), frames))
            im.load()
            data, bits, dtype = _pillow_array(im)
    except MetalsegError:
        raise
    except UnidentifiedImageError:
        raise MetalsegError(f"{path}: not a readable image (content is not a known image format)") from None
    except Exception as exc:  # noqa: BLE001 - translate any reader failure into one line naming the file
        raise MetalsegError(f"{path}: not a readable image, the file may be damaged ({_reason(exc)})") from None
    _check_size(data.shape, str(path))
    return _Pixels(data=data, bit_depth=bits, dtype=dtype)


def _pillow_array(im: Image.Image) -> tuple[np.ndarray, int, str]:
    """Pixel array, bits per sample and original dtype name of a loaded Pillow image."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=bool), 1, "bool"
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16), 16, "uint16"
    if mode == "I":
        data = np.asarray(im)
        if data.size and data.min() >= 0 and data.max() <= 65535:
            return data.astype(np.uint16), 16, "uint16"
        return data, 32, data.dtype.name
    if mode == "F":
        return np.asarray(im, dtype=np.float32), 32, "float32"
    if mode in ("L", "LA", "RGB", "RGBA"):
        return np.asarray(im), 8, "uint8"
    return np.asarray(im.convert("RGB")), 8, "uint8"  # P, PA, CMYK, YCbCr, LAB, HSV, ...


# --- shared checks and conversion ------------------------------------------------------------------------------


def _check_stack(axes: str, shape: tuple[int, ...], name: str) -> None:
    count = math.prod(n for ax, n in zip(axes, shape, strict=True) if ax not in "YXS")
    if count > 1:
        raise MetalsegError(_stack_message(name, count))


def _check_array_shape(data: np.ndarray, name: str) -> None:
    if data.ndim == 3 and 1 <= data.shape[-1] <= 4:
        _check_size(data.shape, name)  # H x W x C
        return
    if data.ndim > 2:
        raise MetalsegError(_stack_message(name, math.prod(data.shape[:-2])))
    if data.ndim < 2:
        raise MetalsegError(f"{name}: is not a 2-D image (shape {data.shape})")
    _check_size(data.shape, name)


def _stack_message(name: str, count: int) -> str:
    return f"{name}: is a stack of {count} images; metalseg needs a single 2-D micrograph"


def _check_size(shape: tuple[int, ...], name: str) -> None:
    height, width = int(shape[0]), int(shape[1])
    if height < MIN_SIZE or width < MIN_SIZE:
        raise MetalsegError(
            f"{name}: image is {width}x{height} pixels; metalseg needs at least {MIN_SIZE} pixels in each dimension"
        )


def _to_gray(pixels: _Pixels, name: str) -> np.ndarray:
    """float32 H x W image in [0, 1] from stored pixels."""
    if pixels.colormap is not None:
        gray = _luminance(_apply_colormap(pixels.data, pixels.colormap))
    else:
        unit = _to_unit(pixels.data, name)
        gray = _channels_to_gray(unit, name) if unit.ndim == 3 else unit
        if pixels.min_is_white:
            gray = 1.0 - gray
    gray = gray.astype(np.float32, copy=False)  # a new array: clipped in place (no copy of a huge mosaic)
    return np.clip(gray, 0.0, 1.0, out=gray)


def _to_unit(data: np.ndarray, name: str) -> np.ndarray:
    """Values scaled to [0, 1] as float32 (a new array)."""
    if data.dtype == np.bool_:
        return data.astype(np.float32)
    if np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(data.dtype)
        if info.min < 0 and data.min() < 0:
            return _min_max(data.astype(np.float64))
        if data.dtype.itemsize <= 2:  # exact in float32 (the same values as through float64), no float64 copies
            return np.divide(data, np.float32(info.max), dtype=np.float32)
        return (data.astype(np.float64) / info.max).astype(np.float32)
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all():
            raise MetalsegError(f"{name}: image holds NaN or infinite values")
        lo, hi = float(data.min()), float(data.max())
        if lo >= 0.0 and hi <= 1.0:
            return data.astype(np.float32, copy=True)
        return _min_max(data.astype(np.float64))
    raise MetalsegError(f"{name}: unsupported pixel type {data.dtype}")


def _min_max(data: np.ndarray) -> np.ndarray:
    lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        return np.zeros(data.shape, dtype=np.float32)
    if not math.isfinite(hi - lo):  # finite values spanning more than float64 holds: halve them first
        data, lo, hi = data / 2, lo / 2, hi / 2
    return ((data - lo) / (hi - lo)).astype(np.float32)


def _channels_to_gray(data: np.ndarray, name: str) -> np.ndarray:
    channels = data.shape[-1]
    if channels in (1, 2):  # gray, gray + alpha
        return data[..., 0]
    if channels in (3, 4):  # RGB, RGBA
        return _luminance(data[..., :3])
    raise MetalsegError(f"{name}: image has {channels} channels; metalseg needs grayscale or RGB")


def _apply_colormap(indices: np.ndarray, colormap: np.ndarray) -> np.ndarray:
    """H x W x 3 float32 RGB in [0, 1] from palette indices and a 3 x N TIFF colormap (16- or 8-bit)."""
    scale = 65535.0 if colormap.max() > 255 else 255.0
    table = (np.asarray(colormap, dtype=np.float64).T / scale).astype(np.float32)  # N x 3
    return np.take(table, indices.astype(np.intp), axis=0, mode="clip")


def _luminance(rgb: np.ndarray) -> np.ndarray:
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = (_LUMA[0] * red + _LUMA[1] * green + _LUMA[2] * blue).astype(np.float32)
    return np.where((red == green) & (green == blue), red, luma)  # gray pixels keep their exact value


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _plain_float(value: float | None) -> float | None:
    return None if value is None else float(value)
