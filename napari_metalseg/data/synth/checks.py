"""Argument checks of the synthetic-data generator: one clear :class:`MetalsegError` per bad value."""

from __future__ import annotations

import math

import numpy as np

from napari_metalseg.data.synth.style import FRAGMENT_RATIO, GRAIN_UM
from napari_metalseg.errors import MetalsegError

MIN_SIZE = 64
MAX_SIZE = 8192
MIN_PHASES = 2
MAX_PHASES = 5
FRACTION_SUM_TOL = 0.01
MAX_SEEDS = 400_000


def check_size(size: object) -> tuple[int, int]:
    """Image size as ``(height, width)`` from ``S`` or ``(H, W)``; each side in ``MIN_SIZE..MAX_SIZE``."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        dims = (int(size), int(size))
    elif (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)
    ):
        dims = (int(size[0]), int(size[1]))
    else:
        raise MetalsegError(f"size must be an integer or a (height, width) pair of integers, got {size!r}")
    if min(dims) < MIN_SIZE or max(dims) > MAX_SIZE:
        raise MetalsegError(f"size {dims[0]}x{dims[1]} is out of range: each side must be {MIN_SIZE}..{MAX_SIZE} px")
    return dims


def check_fractions(fractions: object) -> np.ndarray:
    """Target phase fractions as an array (2..5 non-negative numbers summing to 1), renormalised."""
    try:
        values = np.asarray(fractions, dtype=float)
    except (TypeError, ValueError):
        raise MetalsegError(f"fractions must be a list of numbers, got {fractions!r}") from None
    if values.ndim != 1 or not MIN_PHASES <= values.size <= MAX_PHASES:
        raise MetalsegError(f"fractions must list {MIN_PHASES}..{MAX_PHASES} phase fractions, got {fractions!r}")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise MetalsegError(f"fractions must be non-negative numbers, got {fmt_list(values)}")
    total = float(values.sum())
    if abs(total - 1.0) > FRACTION_SUM_TOL:
        raise MetalsegError(f"fractions must sum to 1, got {fmt_list(values)} (sum {total:.4g})")
    return values / total


def check_magnification(magnification: object) -> float:
    """A positive, finite magnification as a float."""
    try:
        value = float(magnification)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise MetalsegError(f"magnification must be a number, got {magnification!r}") from None
    if isinstance(magnification, bool) or not math.isfinite(value) or value <= 0:
        raise MetalsegError(f"magnification must be a positive number, got {magnification!r}")
    return value


def check_magnifications(magnifications: object) -> list[float]:
    """A non-empty list of magnifications (a single number counts as a list of one)."""
    if isinstance(magnifications, (int, float)):
        magnifications = [magnifications]
    if isinstance(magnifications, str):
        raise MetalsegError(f"magnifications must be a list of numbers, got the string {magnifications!r}")
    try:
        mags = [check_magnification(m) for m in magnifications]  # type: ignore[union-attr]
    except TypeError:
        raise MetalsegError(f"magnifications must be a list of numbers, got {magnifications!r}") from None
    if not mags:
        raise MetalsegError("magnifications must list at least one magnification")
    return mags


def check_feature_count(shape: tuple[int, int], px_um: float, magnification: float) -> None:
    """Refuse a magnification whose features would be under 2 px or too many to tessellate."""
    spacing = GRAIN_UM / FRAGMENT_RATIO / px_um
    seeds = (shape[0] / spacing + 6) * (shape[1] / spacing + 6)
    if spacing < 2.0 or seeds > MAX_SEEDS:
        raise MetalsegError(
            f"magnification {magnification:g}x is too low for a {shape[1]} px wide image: "
            f"grains would be {GRAIN_UM / px_um:.1f} px; use a higher magnification"
        )


def check_count(n: object) -> int:
    """A positive integer number of images."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise MetalsegError(f"number of images must be a positive integer, got {n!r}")
    return int(n)


def check_seed_int(seed: object) -> int:
    """A non-negative integer seed."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MetalsegError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def make_rng(seed: object) -> np.random.Generator:
    """A random generator from a seed, or the generator itself."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(check_seed_int(seed))


def check_splits(splits: object) -> np.ndarray:
    """Train/val/test proportions as an array of three non-negative numbers summing to 1."""
    try:
        props = np.asarray(splits, dtype=float)
    except (TypeError, ValueError):
        raise MetalsegError(f"splits must be three numbers (train, val, test), got {splits!r}") from None
    if props.shape != (3,) or not np.all(np.isfinite(props)) or np.any(props < 0) or props.sum() <= 0:
        raise MetalsegError(f"splits must be three non-negative numbers (train, val, test), got {splits!r}")
    return props / props.sum()


def fmt_list(values: np.ndarray) -> str:
    """Numbers as a short ``(a, b, c)`` string for error messages."""
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"
