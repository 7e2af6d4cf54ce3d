"""The working scale of a model: one physical pixel size that every micrograph is resampled to, for training and for
prediction, so that a grain of 4 um looks the same to the model at x2000 and at x6000.

A run trained on micrographs whose pixel sizes are all known (SEM metadata, ``metadata.csv``, the napari layer's
calibration) works at the geometric mean of their pixel sizes; a micrograph given at prediction with its pixel size
is resampled to it, and its phase map resampled back. Without pixel sizes nothing is resampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from napari_metalseg.data.samples import Sample
from napari_metalseg.errors import MetalsegError
from napari_metalseg.io.sem import positive_number

MAX_ZOOM = 8.0
"""Largest resampling factor either way (a micrograph 8 times finer or coarser than the working scale)."""

ZOOM_TOLERANCE = 0.02
"""A micrograph within 2 % of the working scale is used as it is."""


def working_pixel_size(samples: Sequence[Sample]) -> float | None:
    """The working scale of a run on ``samples``: the geometric mean of their pixel sizes (um), or ``None`` when
    any of them has none (then nothing is resampled)."""
    sizes = [positive_number(s.pixel_size_um) for s in samples]
    if not sizes or any(p is None for p in sizes):
        return None
    return float(np.exp(np.mean(np.log(sizes))))


def zoom_factor(pixel_size_um: float | None, working_um: float | None, *, name: str = "the micrograph") -> float:
    """How much a micrograph of ``pixel_size_um`` is enlarged to reach ``working_um`` (1.0 when either is unknown or
    they agree within :data:`ZOOM_TOLERANCE`).

    Raises
    ------
    MetalsegError
        When the factor is beyond :data:`MAX_ZOOM` either way.
    """
    pixel, working = positive_number(pixel_size_um), positive_number(working_um)
    if pixel is None or working is None:
        return 1.0
    zoom = pixel / working
    if abs(zoom - 1.0) <= ZOOM_TOLERANCE:
        return 1.0
    if not 1 / MAX_ZOOM <= zoom <= MAX_ZOOM:
        raise MetalsegError(
            f"{name}: its pixel size {pixel * 1000:.3g} nm is {max(zoom, 1 / zoom):.1f} times "
            f"{'coarser' if zoom > 1 else 'finer'} than the model's working scale ({working * 1000:.3g} nm per pixel; "
            f"at most {MAX_ZOOM:g} times): check the pixel size, or train a model on micrographs at this scale"
        )
    return zoom


def scaled_shape(shape: tuple[int, int], zoom: float) -> tuple[int, int]:
    """The shape of a ``shape`` image enlarged ``zoom`` times (at least 1 x 1)."""
    return max(1, round(shape[0] * zoom)), max(1, round(shape[1] * zoom))


def resample_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` (H, W) resampled to ``shape``: bilinear, smoothed first when it shrinks (no aliasing)."""
    from skimage.transform import resize

    shrinks = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    out = resize(image, shape, order=1, anti_aliasing=shrinks, preserve_range=True, mode="reflect")
    return out.astype(np.float32)


def resample_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A label image (phase indices, 255 unlabeled) resampled to ``shape`` by the nearest pixel."""
    h, w = labels.shape
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.intp), w - 1)
    return labels[np.ix_(rows, cols)]


def to_working_scale(samples: Sequence[Sample], working_um: float | None) -> list[Sample]:
    """``samples`` resampled to ``working_um`` (image bilinear, mask by the nearest pixel); each then states
    ``working_um`` as its pixel size. Unchanged without a working scale."""
    if working_um is None:
        return list(samples)
    out = []
    for s in samples:
        zoom = zoom_factor(s.pixel_size_um, working_um, name=s.name)
        if zoom == 1.0:
            out.append(replace(s, pixel_size_um=working_um) if s.pixel_size_um else s)
            continue
        shape = scaled_shape(s.image.shape, zoom)
        out.append(
            replace(
                s,
                image=resample_image(s.image, shape),
                mask=resample_labels(s.mask, shape),
                pixel_size_um=working_um,
            )
        )
    return out
