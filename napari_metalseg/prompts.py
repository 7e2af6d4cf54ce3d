"""Box prompts: the checks of a box and the rule that finds the object a box was drawn around.

GUI-free; the napari Box prompts dock (:mod:`napari_metalseg._widgets.boxes`) turns rectangles into boxes and writes
the result into a Labels layer, the :class:`~napari_metalseg.predict.Predictor` predicts inside a box.

The object rule (:func:`object_in_box`), applied to the predicted phases inside a box:

1. the *matrix* phase is the most frequent predicted phase on the box outline (what surrounds an object boxed with
   a little margin);
2. candidate pixels are those predicted as any other phase; if there are none, the whole box is the object;
3. of the 8-connected candidate regions, the object is the one covering the box centre, else the largest;
4. holes inside the object are filled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from napari_metalseg.errors import MetalsegError


def check_box(box: Sequence[float], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Validate a box ``x0, y0, x1, y1`` (pixels) against an image of ``shape`` (H, W).

    Parameters
    ----------
    box : sequence of float
        ``x0, y0, x1, y1`` in pixels (edges; ``x0 < x1``, ``y0 < y1``).
    shape : (int, int)
        Height and width of the image.

    Returns
    -------
    tuple of int
        The box with its edges rounded outwards to whole pixels.

    Raises
    ------
    MetalsegError
        Not four finite numbers, an empty box, or a box reaching outside the image.
    """
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError, OverflowError):
        raise MetalsegError(f"box {box!r}: expected four numbers x0,y0,x1,y1") from None
    h, w = shape
    if not all(np.isfinite([x0, y0, x1, y1])):
        raise MetalsegError(f"box {list(box)}: contains NaN or infinite values")
    if x1 <= x0 or y1 <= y0:
        raise MetalsegError(f"box {list(box)}: needs x0 < x1 and y0 < y1")
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise MetalsegError(f"box {list(box)} lies outside the image (width {w}, height {h})")
    return int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))


def object_in_box(phases_in_box: np.ndarray) -> np.ndarray:
    """The object a box was drawn around, from the predicted phases inside the box (see the module docstring).

    Parameters
    ----------
    phases_in_box : numpy.ndarray
        2-D phase indices of the box pixels.

    Returns
    -------
    numpy.ndarray of bool
        Same shape; True on the object (one 8-connected region, holes filled).

    Raises
    ------
    MetalsegError
        An empty or non-2-D region.
    """
    region = np.asarray(phases_in_box)
    if region.ndim != 2 or region.size == 0:
        raise MetalsegError(f"box region of shape {region.shape}: expected a non-empty 2-D array")
    outline = np.concatenate([region[0], region[-1], region[1:-1, 0], region[1:-1, -1]])
    matrix = np.bincount(outline.ravel()).argmax()
    candidates = region != matrix
    if not candidates.any():
        return np.ones(region.shape, bool)
    components, count = ndimage.label(candidates, structure=np.ones((3, 3), bool))
    centre = components[region.shape[0] // 2, region.shape[1] // 2]
    if centre == 0:
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        sizes[0] = 0
        centre = int(sizes.argmax())
    return ndimage.binary_fill_holes(components == centre)
