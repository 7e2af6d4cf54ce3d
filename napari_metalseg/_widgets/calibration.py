"""The physical calibration of a layer: its magnification and pixel size in micrometres, where known.

The micrograph metadata written by the plugin's reader (``metadata["metalseg_micrograph"]``) wins; else the pixel size
is the layer's ``scale`` when its ``units`` are a length (``um``, ``nm``, ``mm`` ...). The Training dock stores it with
the samples and the training set, the Quantify dock measures island sizes with it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_metalseg.io.sem import positive_number

from .layers import MICROGRAPH_KEY


def scale_um(layer: Any) -> float | None:
    """The x pixel size in um from ``scale`` when the layer's units are a length (None for pixels)."""
    units = getattr(layer, "units", None)
    scale = np.asarray(getattr(layer, "scale", [1.0]), dtype=float)
    if units is None or len(units) == 0 or scale.size == 0:
        return None
    if scale.size >= 2 and not np.isclose(scale[-1], scale[-2], rtol=1e-6):
        return None  # non-square pixels: no single pixel size
    try:
        return positive_number((float(scale[-1]) * units[-1]).to("micrometer").magnitude)
    except Exception:  # noqa: BLE001 - pint raises DimensionalityError for "pixel" and others
        return None


def layer_calibration(layer: Any) -> tuple[float | None, float | None]:
    """``(magnification, pixel size in um)`` of an image layer; None where unknown (see the module docstring)."""
    if layer is None:
        return None, None
    info = (getattr(layer, "metadata", None) or {}).get(MICROGRAPH_KEY) or {}
    magnification = positive_number(info.get("magnification"))
    pixel_size = positive_number(info.get("pixel_size_um")) or scale_um(layer)
    return magnification, pixel_size
