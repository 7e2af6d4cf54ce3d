"""The tile layout of a micrograph: which model-sized tiles cover it, how they blend, and which ones a box needs.

GUI-free and torch-free (also :func:`row_bands`, bands of rows of a huge micrograph). The
:class:`~napari_metalseg.predict.Predictor` embeds every tile of a :class:`TileGrid`
once and caches the embeddings; a prediction decodes all tiles and blends them with :func:`blend_window`, a box
prompt decodes only :meth:`TileGrid.tiles_for_box`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

BAND_PIXELS = 1 << 22
"""Pixels in a band of rows of :func:`row_bands` (16 MiB of float32)."""


def row_bands(height: int, width: int, pixels: int = BAND_PIXELS) -> Iterator[slice]:
    """Slices of consecutive rows, about ``pixels`` pixels each (at least one row), covering ``height`` rows of
    ``width`` pixels: how a huge micrograph is converted or checked without full-size temporaries."""
    rows = max(1, pixels // max(1, width))
    for y in range(0, height, rows):
        yield slice(y, min(height, y + rows))


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with at least ``overlap`` pixels of overlap."""
    if length <= tile:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def blend_window(size: int, floor: float = 1e-2) -> np.ndarray:
    """2-D weight window for overlap blending: a squared sine, highest in the tile centre, never zero."""
    ramp = np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2
    ramp = np.maximum(ramp, floor)
    return np.outer(ramp, ramp).astype(np.float32)


@dataclass(frozen=True)
class TileGrid:
    """Square tiles of side ``size`` covering an image of ``shape`` (H, W), overlapping by ``overlap`` pixels.

    The image is padded at the bottom/right to ``padded_shape``: at least one tile on each side, and a multiple of
    ``multiple`` (with ``size`` and ``overlap`` multiples of it, every tile then starts on a multiple of it: on a
    whole pixel of a decoder map that many times coarser). Tile ``i`` starts at ``origins[i]`` (y, x) of the padded
    image. Tiles are numbered row by row.
    """

    shape: tuple[int, int]
    size: int
    overlap: int
    multiple: int = 1

    @property
    def padded_shape(self) -> tuple[int, int]:
        """(H, W) of the padded image."""
        m = self.multiple
        return tuple(-(-max(side, self.size) // m) * m for side in self.shape)

    @cached_property
    def origins(self) -> tuple[tuple[int, int], ...]:
        """(y, x) of every tile's top-left corner, row by row."""
        ph, pw = self.padded_shape
        ys, xs = tile_starts(ph, self.size, self.overlap), tile_starts(pw, self.size, self.overlap)
        return tuple((y, x) for y in ys for x in xs)

    def __len__(self) -> int:
        return len(self.origins)

    def tiles_for_box(self, box: tuple[int, int, int, int], margin: int = 0) -> list[int]:
        """The tiles a box prompt ``x0, y0, x1, y1`` is decoded on.

        A box that fits inside a tile is decoded on one tile only, the one whose centre is nearest the box centre
        (the box sees the most context there); a box that fits in no tile is decoded on every tile it overlaps
        when grown by ``margin`` pixels, and the tiles are blended as in a whole prediction.
        """
        x0, y0, x1, y1 = box
        s = self.size
        inside = [i for i, (y, x) in enumerate(self.origins) if x <= x0 and x1 <= x + s and y <= y0 and y1 <= y + s]
        if inside:
            cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
            return [
                min(
                    inside,
                    key=lambda i: (self.origins[i][0] + s / 2 - cy) ** 2 + (self.origins[i][1] + s / 2 - cx) ** 2,
                )
            ]
        x0, y0, x1, y1 = x0 - margin, y0 - margin, x1 + margin, y1 + margin
        return [i for i, (y, x) in enumerate(self.origins) if x < x1 and x0 < x + s and y < y1 and y0 < y + s]
