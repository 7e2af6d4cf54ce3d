"""Random fields for the synthetic micrographs: smooth and fine noise, and a vectorised integer hash."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth Gaussian-like noise with correlation length ~``scale`` px and unit standard deviation (float32).

    White noise on a coarse grid (spacing ``scale``) interpolated with cubic B-splines, done as two small
    matrix products so it costs about as much as one pass over the image.
    """
    scale = max(float(scale), 1.0)
    gh, gw = int(math.ceil(shape[0] / scale)) + 4, int(math.ceil(shape[1] / scale)) + 4
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    my = _bspline_matrix(shape[0], gh, scale, rng.uniform(0, scale))
    mx = _bspline_matrix(shape[1], gw, scale, rng.uniform(0, scale))
    out = (my @ coarse) @ mx.T
    return out / (float(out.std()) + 1e-12)


def _bspline_matrix(n_out: int, n_in: int, scale: float, offset: float) -> np.ndarray:
    """(n_out, n_in) matrix that samples a cubic B-spline through ``n_in`` knots every ``1/scale`` knot."""
    pos = (np.arange(n_out) + offset) / scale + 1.0
    i0 = np.floor(pos).astype(np.int64)
    f = pos - i0
    weights = ((1 - f) ** 3 / 6, (3 * f**3 - 6 * f**2 + 4) / 6, (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6, f**3 / 6)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    rows = np.arange(n_out)
    for j, w in enumerate(weights):
        np.add.at(m, (rows, np.clip(i0 - 1 + j, 0, n_in - 1)), w.astype(np.float32))
    return m


def fine_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Blurred white noise with unit standard deviation (float32)."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return noise / (noise.std() + 1e-12)


def hash01(*keys: np.ndarray | int) -> np.ndarray:
    """Deterministic pseudo-random numbers in [0, 1) from integer keys (vectorised; a 32-bit mixing hash)."""
    mask = np.uint64(0xFFFFFFFF)
    h = np.zeros(np.broadcast(*[np.asarray(k) for k in keys]).shape, dtype=np.uint64)
    for i, key in enumerate(keys):
        k = np.asarray(key).astype(np.int64).astype(np.uint64) & mask
        h = ((h ^ k) * np.uint64(0x9E3779B1 + 2 * i)) & mask
        h ^= h >> np.uint64(15)
        h = (h * np.uint64(0x2C1B3C6D)) & mask
        h ^= h >> np.uint64(12)
    return (h & mask).astype(np.float64) / 4294967296.0
