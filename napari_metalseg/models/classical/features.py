"""The feature stack of the classical pixel classifier: ilastik-like multiscale filter responses per pixel.

numpy and scipy only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from napari_metalseg.errors import MetalsegError

FEATURE_SET = "ilastik-v1"
"""Identifier of :func:`pixel_features` (the filters, their order and their discretisation); part of signatures."""

DEFAULT_SIGMAS: tuple[float, ...] = (0.7, 1.6, 3.5, 5.0, 10.0)
"""Filter scales in pixels: ilastik's set without 1.0 (close to 0.7 and 1.6; dropping it saves 1/6 of the time)."""

PER_SCALE = ("gaussian", "gradient", "laplacian", "dog", "hessian_max", "hessian_min", "structure_max", "structure_min")
"""Features computed at every scale, in order (see :func:`pixel_features`)."""

TRUNCATE = 3.0
"""Gaussian kernels are cut at this many sigmas (vigra's, hence ilastik's, default window)."""

MAX_TILE = 16384
_MAX_SIGMA = 256.0
_MAX_SCALES = 16


def check_sigmas(sigmas: Sequence[float]) -> tuple[float, ...]:
    """Filter scales as a tuple of floats: 1..16 distinct, increasing, each in (0, 256] pixels."""
    try:
        values = tuple(float(s) for s in sigmas)
    except (TypeError, ValueError):
        raise MetalsegError(f"sigmas {sigmas!r}: expected a sequence of numbers") from None
    if not values:
        raise MetalsegError("sigmas: at least one filter scale is needed")
    if len(values) > _MAX_SCALES or not all(math.isfinite(s) and 0 < s <= _MAX_SIGMA for s in values):
        raise MetalsegError(f"sigmas {list(values)}: at most {_MAX_SCALES} scales, each in (0, {_MAX_SIGMA:g}] pixels")
    if list(values) != sorted(set(values)):
        raise MetalsegError(f"sigmas {list(values)}: scales must be distinct and increasing")
    return values


def n_features(sigmas: Sequence[float] = DEFAULT_SIGMAS) -> int:
    """Number of feature channels ``F`` that :func:`pixel_features` returns for ``sigmas``."""
    return 1 + len(PER_SCALE) * len(sigmas)


def feature_names(sigmas: Sequence[float] = DEFAULT_SIGMAS) -> list[str]:
    """Names of the ``F`` feature channels, e.g. ``["raw", "gaussian@0.7", ...]``."""
    return ["raw"] + [f"{name}@{s:g}" for s in sigmas for name in PER_SCALE]


def _radius(sigma: float) -> int:
    return int(TRUNCATE * float(sigma) + 0.5)  # scipy.ndimage's kernel radius


def feature_radius(sigmas: Sequence[float] = DEFAULT_SIGMAS) -> int:
    """Pixels of context a feature depends on: blocks computed with this halo equal the whole-image features."""
    sigmas = check_sigmas(sigmas)
    radius, previous = 1, 0
    for s in sigmas:
        # gaussian + two finite differences; structure tensor: gradient of the previous scale, smoothed at s
        radius = max(radius, _radius(s) + 2, previous + 1 + _radius(s))
        previous = _radius(s)
    return radius


def _diff1(a: np.ndarray, axis: int) -> np.ndarray:
    """Central difference ``(a[i+1] - a[i-1]) / 2`` with reflected borders (float32)."""
    out = np.empty_like(a)
    src = np.moveaxis(a, axis, 0)
    dst = np.moveaxis(out, axis, 0)
    np.subtract(src[2:], src[:-2], out=dst[1:-1])
    dst[1:-1] *= 0.5
    dst[0] = 0.5 * (src[1] - src[0])
    dst[-1] = 0.5 * (src[-1] - src[-2])
    return out


def _diff2(a: np.ndarray, axis: int) -> np.ndarray:
    """Second difference ``a[i+1] - 2 a[i] + a[i-1]`` with reflected borders (float32)."""
    out = np.empty_like(a)
    src = np.moveaxis(a, axis, 0)
    dst = np.moveaxis(out, axis, 0)
    np.add(src[2:], src[:-2], out=dst[1:-1])
    dst[1:-1] -= 2 * src[1:-1]
    dst[0] = src[1] - src[0]
    dst[-1] = src[-2] - src[-1]
    return out


def pixel_features(
    image: np.ndarray, *, sigmas: Sequence[float] = DEFAULT_SIGMAS, threads: int | None = None
) -> np.ndarray:
    """ilastik-like multiscale pixel features of a grey image.

    Channel 0 is the raw intensity. Then, for every scale ``s`` in ``sigmas`` (the :data:`PER_SCALE` order):
    Gaussian smoothing ``G_s``, gradient magnitude of ``G_s``, Laplacian of Gaussian (trace of the Hessian of
    ``G_s``), difference of Gaussians ``G_s - G_prev`` (the previous scale, the raw image for the first), the two
    Hessian eigenvalues (ridges / valleys / blobs) and the two structure-tensor eigenvalues (gradient outer
    products of the previous scale smoothed at ``s``: edge strength and orientation coherence, i.e. texture).
    Derivatives are finite differences of ``G_s`` (as ``skimage.feature.multiscale_basic_features``), which
    costs one Gaussian filter per scale instead of six; kernels are cut at :data:`TRUNCATE` sigmas.

    Parameters
    ----------
    image
        (H, W) grey image, intensities in [0, 1] (not normalised here: tiles of one micrograph must share a scale).
    sigmas
        Increasing filter scales in pixels.
    threads
        Scales computed in parallel (scipy and numpy release the GIL); default: the CPUs this process may use.
        The result does not depend on it.

    Returns
    -------
    numpy.ndarray
        (F, H, W) float32 with ``F = 1 + 8 * len(sigmas)`` (:func:`n_features`, :func:`feature_names`).
    """
    sigmas = check_sigmas(sigmas)
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"pixel_features expects a 2-D grey image, got shape {img.shape}")
    if min(img.shape) < 3:
        raise ValueError(f"pixel_features needs at least 3 x 3 pixels, got shape {img.shape}")
    img = np.ascontiguousarray(img, dtype=np.float32)
    out = np.empty((n_features(sigmas), *img.shape), np.float32)
    out[0] = img
    width = len(PER_SCALE)
    blocks = [out[1 + width * i : 1 + width * (i + 1)] for i in range(len(sigmas))]

    def smooth(i: int) -> None:
        ndimage.gaussian_filter(img, sigmas[i], output=blocks[i][0], mode="reflect", truncate=TRUNCATE)

    def scale(i: int) -> None:
        o, s = blocks[i], sigmas[i]
        g, previous = o[0], (blocks[i - 1][0] if i else img)
        gy, gx = _diff1(g, 0), _diff1(g, 1)
        np.hypot(gx, gy, out=o[1])
        hyy, hxx, hxy = _diff2(g, 0), _diff2(g, 1), _diff1(gy, 1)
        np.add(hxx, hyy, out=o[2])
        np.subtract(g, previous, out=o[3])
        _eigen(hxx, hxy, hyy, o[4], o[5])
        del gy, gx, hyy, hxx, hxy
        py, px = _diff1(previous, 0), _diff1(previous, 1)  # the structure tensor's inner gradient
        jxy = ndimage.gaussian_filter(px * py, s, mode="reflect", truncate=TRUNCATE)
        np.square(px, out=px)
        np.square(py, out=py)
        jxx = ndimage.gaussian_filter(px, s, mode="reflect", truncate=TRUNCATE)
        jyy = ndimage.gaussian_filter(py, s, mode="reflect", truncate=TRUNCATE)
        _eigen(jxx, jxy, jyy, o[6], o[7])

    order = list(range(len(sigmas)))[::-1]  # the largest (slowest) scales first
    workers = min(len(order), threads or usable_cpus())
    if workers > 1 and img.size >= 1 << 16:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers, thread_name_prefix="metalseg-features") as pool:
            list(pool.map(smooth, order))  # every scale's G first: each scale's other features need G_prev
            list(pool.map(scale, order))
    else:
        for i in order:
            smooth(i)
        for i in order:
            scale(i)
    return out


def _eigen(a: np.ndarray, b: np.ndarray, c: np.ndarray, big: np.ndarray, small: np.ndarray) -> None:
    """Eigenvalues of the symmetric 2x2 matrices ``[[a, b], [b, c]]`` into ``big`` >= ``small``."""
    gap = np.subtract(a, c)
    gap *= 0.5
    np.square(gap, out=gap)
    gap += np.square(b)
    np.sqrt(gap, out=gap)  # half the distance between the eigenvalues
    np.add(a, c, out=big)
    big *= 0.5  # their mean
    np.subtract(big, gap, out=small)
    big += gap


def features_at(image: np.ndarray, flat: np.ndarray, sigmas: tuple[float, ...], block: int) -> np.ndarray:
    """Features (n, F) of the pixels ``flat`` (flat indices) of ``image``, computed block by block with a halo.

    Images up to ``block`` pixels on a side are filtered whole; larger ones in ``block`` x ``block`` pieces (only
    those holding a requested pixel) padded by :func:`feature_radius`, which gives the whole-image values with
    bounded memory.
    """
    h, w = image.shape
    f = n_features(sigmas)
    if h <= block and w <= block:
        return pixel_features(image, sigmas=sigmas).reshape(f, -1)[:, flat].T.copy()
    ys, xs = np.divmod(flat, w)
    out = np.empty((flat.size, f), np.float32)
    r = feature_radius(sigmas)
    for by in range(0, h, block):
        for bx in range(0, w, block):
            sel = np.flatnonzero((ys >= by) & (ys < by + block) & (xs >= bx) & (xs < bx + block))
            if sel.size == 0:
                continue
            y0, y1, x0, x1 = max(0, by - r), min(h, by + block + r), max(0, bx - r), min(w, bx + block + r)
            feats = pixel_features(image[y0:y1, x0:x1], sigmas=sigmas)
            out[sel] = feats[:, ys[sel] - y0, xs[sel] - x0].T
    return out


def usable_cpus() -> int:
    """CPUs this process may use (its affinity), capped by ``OMP_NUM_THREADS`` when that is set.

    (Not ``torch.get_num_threads()``: the predictor lowers it to one around its light decoders, which would
    starve this heavy one.)
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        n = min(n, int(os.environ.get("OMP_NUM_THREADS", "") or n))
    except ValueError:
        pass
    return max(1, n)
