"""One synthetic micrograph: pixel size from magnification, microstructure, then its rendered image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_metalseg.data.synth.checks import (
    check_feature_count,
    check_fractions,
    check_magnification,
    check_size,
    make_rng,
)
from napari_metalseg.data.synth.geometry import build_microstructure
from napari_metalseg.data.synth.imaging import render
from napari_metalseg.data.synth.style import Style
from napari_metalseg.errors import MetalsegError

FIELD_WIDTH_AT_1X_UM = 127_000.0
"""Field width at 1x (the 127 mm Polaroid convention most SEMs still use to define magnification)."""


def pixel_size_for(magnification: float, size: int) -> float:
    """Pixel size in micrometres of a ``size`` pixels wide SEM frame at ``magnification``.

    The field width is ``127 mm / magnification`` (the usual SEM magnification convention: 127 mm is the width
    of the reference print), sampled with ``size`` pixels. A 1024 px frame at 3000x has 0.0413 um pixels.

    Parameters
    ----------
    magnification : float
        Nominal SEM magnification (e.g. 3000 for 3000x).
    size : int
        Image width in pixels.

    Returns
    -------
    float
        Micrometres per pixel.
    """
    magnification = check_magnification(magnification)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise MetalsegError(f"image width must be a positive integer number of pixels, got {size!r}")
    return FIELD_WIDTH_AT_1X_UM / magnification / int(size)


def synthesize_micrograph(
    size: int | tuple[int, int],
    fractions: Sequence[float] = (0.5, 0.3, 0.2),
    magnification: float = 3000,
    seed: int | np.random.Generator = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Make one synthetic SEM micrograph of a multiphase steel and its exact phase mask.

    Parameters
    ----------
    size : int or (int, int)
        Image size in pixels: ``S`` for ``S x S`` or ``(height, width)``; each at least 64.
    fractions : sequence of float
        Target area fraction of each phase (2..5 phases, non-negative, summing to 1). Phase 0 renders as
        ferrite (matrix), 1 as martensite, 2 as bainite, 3 as a lamellar (pearlite-like) and 4 as a globular
        carbide (spheroidite-like) constituent. Achieved fractions are within about 0.002 of the targets.
    magnification : float
        SEM magnification; sets the pixel size (see :func:`pixel_size_for`) and so the size of every feature.
    seed : int or numpy.random.Generator
        Random seed; the same seed gives identical arrays.

    Returns
    -------
    image : numpy.ndarray
        ``float32`` array of shape ``(H, W)`` with values in ``[0, 1]``.
    mask : numpy.ndarray
        ``uint8`` array of shape ``(H, W)`` with phase indices ``0..K-1`` (every pixel labelled).

    Raises
    ------
    MetalsegError
        On a bad size, fractions, magnification or seed.
    """
    shape = check_size(size)
    targets = check_fractions(fractions)
    magnification = check_magnification(magnification)
    rng = make_rng(seed)
    px_um = pixel_size_for(magnification, shape[1])
    check_feature_count(shape, px_um, magnification)

    style = Style.draw(rng, len(targets))
    micro = build_microstructure(shape, targets, 1.0 / px_um, style, rng)
    image = render(micro, style, rng)
    return image, micro.mask
