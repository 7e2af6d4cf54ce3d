"""Detect the information band (data bar) at the bottom of SEM micrographs.

SEM software burns a band of text (magnification, scale bar, detector, date) into the bottom rows of the saved
image. Those rows are not material and must not be segmented, so they are cropped.

Method (on the grayscale image in [0, 1]):

1. Each row is *band-like* when it is flat or saturated: at least 60 % of its pixels share one exact value (the
   band background; texture never does), or at least 90 % lie within 10 % of the image's global minimum or maximum
   (black/white bands, also after JPEG compression).
2. Walking up from the bottom (skipping at most 2 odd rows at the very bottom, as Zeiss writes one scan line
   below its band), the band is the block of consecutive band-like rows (gaps of up to 2 rows, e.g. dense text
   after JPEG compression, are tolerated). Its top edge is the sharp transition to the image rows.
3. The block is accepted only if it is 2-35 % of the image height (and at least 4 rows), carries structure
   (text or frame lines: pixels far from the row background, or rows of different background), and the image
   body above it is itself not band-like (at most 10 % band-like rows), so flat, synthetic, binary or
   gradient images are never cropped, nor are textured dark regions or featureless black/white regions at the
   bottom.

When the instrument states the scanned height (FEI ``ResolutionY``), that is used instead.
"""

from __future__ import annotations

import numpy as np

from napari_metalseg.tiles import row_bands

FLAT_FRACTION = 0.6
"""A row whose most common exact value covers at least this fraction is flat (band background)."""
EXTREME_FRACTION = 0.9
"""A row with at least this fraction of pixels near the global min/max is saturated (black/white band)."""
EXTREME_TOLERANCE = 0.1
"""Near the global min/max: within this fraction of the image's value range."""
STRUCTURE_CONTRAST = 0.25
"""Text and frame-line pixels differ from the row background by at least this fraction of the range."""
STRUCTURE_FRACTION = 0.002
"""A row with at least this fraction of contrasting pixels carries text or lines."""
MIN_BAND_FRACTION = 0.02
MIN_BAND_ROWS = 4
MAX_BAND_FRACTION = 0.35
MAX_BODY_BANDLIKE = 0.1
BOTTOM_SKIP = 2
MAX_GAP = 2
MIN_HEIGHT = 32
"""Images shorter than this are never cropped."""


def info_band_rows(image: np.ndarray, image_rows: int | None = None) -> int:
    """Number of rows of the information band at the bottom of ``image`` (0 when there is none).

    Parameters
    ----------
    image : numpy.ndarray
        2-D grayscale image (any real dtype; float32 in [0, 1] in the reader).
    image_rows : int, optional
        Height of the scanned image stated by the instrument; when smaller than the image height (and the
        difference is a plausible band) the rows below it are the band.

    Returns
    -------
    int
        Rows to crop from the bottom.
    """
    height = image.shape[0]
    if image_rows is not None and 0 < image_rows < height and height - image_rows <= MAX_BAND_FRACTION * height:
        return height - image_rows
    return detect_info_band(image)


def detect_info_band(image: np.ndarray) -> int:
    """Detect the information band from the pixels alone.

    Parameters
    ----------
    image : numpy.ndarray
        2-D grayscale image.

    Returns
    -------
    int
        Rows of the band at the bottom, 0 when the image has no band.
    """
    image = np.asarray(image)
    height = image.shape[0]
    lo, hi = float(image.min()), float(image.max())
    if image.ndim != 2 or height < MIN_HEIGHT or not hi > lo:
        return 0
    bottom = _bottom_rows(height)
    stats = _RowStats(image[height - bottom :], lo, hi)
    top = _band_top(stats.bandlike)
    if top is None:
        return 0
    rows = bottom - top
    if not _plausible_size(rows, height) or not stats.has_structure(top):
        return 0
    if _body_bandlike_fraction(image[: height - rows], lo, hi) > MAX_BODY_BANDLIKE:
        return 0
    return rows


class _RowStats:
    """Per-row statistics of a block of rows, relative to the whole image's range ``lo..hi``."""

    def __init__(self, rows: np.ndarray, lo: float, hi: float) -> None:
        span = hi - lo
        self.mode = np.empty(rows.shape[0], dtype=np.float64)
        self.flat = np.empty(rows.shape[0], dtype=np.float64)
        for i, row in enumerate(rows):
            values, counts = np.unique(row, return_counts=True)
            self.mode[i] = values[np.argmax(counts)]
            self.flat[i] = counts.max() / row.size
        tol = EXTREME_TOLERANCE * span
        extreme = np.empty(rows.shape[0], dtype=np.float64)
        self.contrast = np.empty(rows.shape[0], dtype=np.float64)
        for band in row_bands(*rows.shape):  # a band at a time: a mosaic's bottom quarter is huge
            block, mode = rows[band], self.mode[band, None]
            extreme[band] = ((block <= lo + tol) | (block >= hi - tol)).mean(axis=1)
            self.contrast[band] = (np.abs(block - mode) >= STRUCTURE_CONTRAST * span).mean(axis=1)
        self.bandlike = (self.flat >= FLAT_FRACTION) | (extreme >= EXTREME_FRACTION)
        self.span = span

    def has_structure(self, top: int) -> bool:
        """Whether rows ``top:`` carry text or lines (contrasting pixels, or backgrounds that differ)."""
        band = slice(top, None)
        if (self.contrast[band][self.bandlike[band]] >= STRUCTURE_FRACTION).any():
            return True
        modes = self.mode[band][self.bandlike[band]]
        return modes.size > 0 and float(modes.max() - modes.min()) >= STRUCTURE_CONTRAST * self.span


def _bottom_rows(height: int) -> int:
    """How many bottom rows can hold a band, plus one row of body above the largest band."""
    return min(height, int(MAX_BAND_FRACTION * height) + BOTTOM_SKIP + 2)


def _band_top(bandlike: np.ndarray) -> int | None:
    """Index (into ``bandlike``) of the top row of the bottom block of band-like rows, or ``None``."""
    i = bandlike.size - 1
    skipped = 0
    while i >= 0 and not bandlike[i] and skipped < BOTTOM_SKIP:
        i -= 1
        skipped += 1
    if i < 0 or not bandlike[i]:
        return None
    top, gap = i, 0
    for j in range(i - 1, -1, -1):
        if bandlike[j]:
            top, gap = j, 0
        else:
            gap += 1
            if gap > MAX_GAP:
                break
    return top


def _plausible_size(rows: int, height: int) -> bool:
    return max(MIN_BAND_ROWS, MIN_BAND_FRACTION * height) <= rows <= MAX_BAND_FRACTION * height


def _body_bandlike_fraction(body: np.ndarray, lo: float, hi: float, max_rows: int = 256) -> float:
    """Fraction of band-like rows in the image body (sampled to at most ``max_rows`` rows)."""
    step = max(1, body.shape[0] // max_rows)
    return float(_RowStats(body[::step], lo, hi).bandlike.mean())
