"""Fitting the classical pixel classifier on labelled pixels: the balanced pixel draw and LightGBM training."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.classical.classifier import PixelClassifier
from napari_metalseg.models.classical.features import (
    DEFAULT_SIGMAS,
    FEATURE_SET,
    MAX_TILE,
    check_sigmas,
    feature_names,
    features_at,
    n_features,
    usable_cpus,
)
from napari_metalseg.models.classical.textformat import compose_text
from napari_metalseg.phases import MAX_PHASES, UNLABELED

if TYPE_CHECKING:
    from napari_metalseg.data.samples import Sample

DEFAULT_TILE = 1024
DEFAULT_MAX_PIXELS = 60_000
DEFAULT_ESTIMATORS = 20
DEFAULT_LEAVES = 15
DEFAULT_LEARNING_RATE = 0.3

PARALLEL_FIT_ROWS = 200_000
"""Training pixels above which LightGBM trains on several threads (see :func:`fit_classifier`)."""


def _check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < minimum:
        raise MetalsegError(f"{name} {value!r}: expected an integer >= {minimum}")
    return int(value)


def _quotas(available: np.ndarray, budget: int) -> np.ndarray:
    """Split ``budget`` pixels evenly over the phases, giving what a scarce phase cannot use to the others."""
    quotas = np.zeros_like(available)
    order = [k for k in np.argsort(available, kind="stable") if available[k] > 0]
    left = budget
    for i, k in enumerate(order):
        quotas[k] = min(int(available[k]), left // (len(order) - i))
        left -= quotas[k]
    return quotas


def _phase_list(phases: Sequence[int]) -> str:
    return ", ".join(str(int(k)) for k in phases)


def draw_pixels(
    masks: Sequence[np.ndarray], num_phases: int, max_pixels: int, *, seed: int = 0, counts: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Draw training pixels among the labelled pixels of ``masks``, balanced per phase.

    The ``max_pixels`` budget is split evenly over the labelled phases; a phase with fewer labelled pixels than
    its share gives all of them and the others share what it leaves. Within a phase the pixels are drawn
    uniformly (without replacement) over all masks.

    Parameters
    ----------
    masks
        uint8 masks (phase ``0..K-1``, 255 unlabeled).
    num_phases
        ``K``.
    max_pixels
        Budget of pixels in all.
    seed
        Seed of the draw.
    counts
        Precomputed (n_masks, K) labelled-pixel counts (else counted here).

    Returns
    -------
    list of (flat_indices, phases)
        Per mask: the drawn flat pixel indices (sorted within each phase) and their phase.
    """
    if counts is None:
        counts = np.stack([np.bincount(np.asarray(m).ravel(), minlength=UNLABELED + 1)[:num_phases] for m in masks])
    rng = np.random.default_rng(seed)
    quotas = _quotas(counts.sum(0), max_pixels)
    picks: list[list[np.ndarray]] = [[] for _ in masks]
    phases: list[list[np.ndarray]] = [[] for _ in masks]
    for p in np.flatnonzero(quotas):
        per_mask = rng.multivariate_hypergeometric(counts[:, p], int(quotas[p]))
        for i, m in enumerate(per_mask):
            if m:
                where = np.flatnonzero(np.asarray(masks[i]).ravel() == p)
                picks[i].append(np.sort(rng.choice(where, int(m), replace=False)))
                phases[i].append(np.full(int(m), p, np.uint8))
    return [
        (np.concatenate(f) if f else np.zeros(0, np.int64), np.concatenate(c) if c else np.zeros(0, np.uint8))
        for f, c in zip(picks, phases, strict=True)
    ]


def fit_classifier(
    samples: list[Sample],
    num_phases: int,
    *,
    tile_size: int = DEFAULT_TILE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    n_estimators: int = DEFAULT_ESTIMATORS,
    num_leaves: int = DEFAULT_LEAVES,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    seed: int = 0,
    features: list[np.ndarray] | None = None,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    num_threads: int | None = None,
) -> PixelClassifier:
    """Fit a :class:`PixelClassifier` on the labelled pixels of ``samples`` (partial labels are the normal case).

    Up to ``max_pixels`` labelled pixels are drawn, the same number per phase where the labels allow (a scarce
    phase gives what it has and the others share the rest; :func:`draw_pixels`), uniformly over the pixels of
    that phase in all images. The drawn pixels are not re-weighted: with scribbles below the budget, the
    scribbles' proportions are the prior (as in ilastik); class weights were measured to trade much precision
    of a rare phase for little recall. Phases with no labelled pixel get probability 0 and are listed in
    :attr:`PixelClassifier.unlabeled_phases`.

    Parameters
    ----------
    samples
        Images with masks (``0..K-1`` phase, 255 unlabeled).
    num_phases
        Number of phases ``K`` of the model.
    tile_size
        Tile the predictor uses (``img_size`` of the model); larger images are filtered in tiles of this size
        (with a halo, so the features equal whole-image ones) to bound memory.
    max_pixels
        Most training pixels in all.
    n_estimators, num_leaves, learning_rate
        LightGBM boosting rounds (one tree per labelled phase per round; one per round for two phases), leaves
        per tree and shrinkage.
    seed
        Seed of the pixel draw and of LightGBM; the same seed gives the same model text.
    features
        Precomputed :func:`pixel_features` of each sample (same ``sigmas``), e.g. cached by the live preview.
    sigmas
        Filter scales of :func:`pixel_features`.
    num_threads
        LightGBM training threads. Default: one below :data:`PARALLEL_FIT_ROWS` training pixels, else the CPUs
        this process may use. Boosting synchronises its threads at every split; on a 2-core machine whose other
        core is busy (napari drawing, another job) two threads took 4-18 s instead of 0.8 s for 60 000 pixels,
        while one thread is never slower than 0.9 s there.

    Returns
    -------
    PixelClassifier

    Raises
    ------
    MetalsegError
        No sample, no labelled pixel, a single labelled phase, mask values outside ``0..K-1`` / 255, an image with
        NaN or infinite values, or bad settings.
    """
    import lightgbm as lgb

    from napari_metalseg.data.samples import Sample

    k = _check_positive_int("num_phases", num_phases, 2)
    if k > MAX_PHASES:
        raise MetalsegError(f"num_phases {k}: at most {MAX_PHASES} phases")
    tile_size = _check_positive_int("tile_size", tile_size, 16)
    if tile_size > MAX_TILE:
        raise MetalsegError(f"tile_size {tile_size}: at most {MAX_TILE} pixels")
    max_pixels = _check_positive_int("max_pixels", max_pixels, 2)
    n_estimators = _check_positive_int("n_estimators", n_estimators)
    num_leaves = _check_positive_int("num_leaves", num_leaves, 2)
    if not (isinstance(learning_rate, int | float) and math.isfinite(learning_rate) and learning_rate > 0):
        raise MetalsegError(f"learning_rate {learning_rate!r}: expected a positive number")
    seed = _check_positive_int("seed", seed, 0)
    sigmas = check_sigmas(sigmas)
    if not samples:
        raise MetalsegError("no images to fit the classical pixel classifier on")
    if features is not None and len(features) != len(samples):
        raise ValueError(f"features: {len(features)} arrays for {len(samples)} samples")

    counts = np.zeros((len(samples), k), np.int64)
    for i, sample in enumerate(samples):
        if not isinstance(sample, Sample):
            raise TypeError(f"samples[{i}] is a {type(sample).__name__}, expected a Sample")
        mask = np.asarray(sample.mask)
        if mask.dtype != np.uint8:
            if not np.issubdtype(mask.dtype, np.integer) or mask.min(initial=0) < 0 or mask.max(initial=0) > 255:
                raise MetalsegError(
                    f"{sample.name}: the mask must hold phase indices 0..{k - 1} and {UNLABELED} "
                    f"(uint8), got {mask.dtype}"
                )
            mask = mask.astype(np.uint8)
        values = np.bincount(mask.ravel(), minlength=UNLABELED + 1)
        bad = [v for v in np.flatnonzero(values) if k <= v != UNLABELED]
        if bad:
            raise MetalsegError(
                f"{sample.name}: the mask holds value(s) {_phase_list(bad[:5])} but the model has "
                f"{k} phases (0..{k - 1}; {UNLABELED} = unlabeled)"
            )
        counts[i] = values[:k]
        if counts[i].any() and not np.isfinite(sample.image).all():
            raise MetalsegError(f"{sample.name}: the image contains NaN or infinite values")
        if features is not None:
            expected = (n_features(sigmas), *mask.shape)
            if tuple(features[i].shape) != expected:
                raise ValueError(f"features[{i}] has shape {tuple(features[i].shape)}, expected {expected}")
    totals = counts.sum(0)
    labeled = [int(p) for p in np.flatnonzero(totals)]
    if not labeled:
        raise MetalsegError(f"no labelled pixels in the {len(samples)} image(s): scribble at least two phases")
    if len(labeled) == 1:
        raise MetalsegError(
            f"only phase {labeled[0]} is labelled: at least two phases must be scribbled to train "
            "the classical pixel classifier"
        )
    unlabeled = [p for p in range(k) if p not in labeled]

    draws = draw_pixels(
        [np.asarray(s.mask).astype(np.uint8, copy=False) for s in samples], k, max_pixels, seed=seed, counts=counts
    )
    rows, labels = [], []
    for sample, (flat, phase), feats in zip(samples, draws, features or [None] * len(samples), strict=True):
        if flat.size == 0:
            continue
        if feats is not None:
            feats = np.asarray(feats, dtype=np.float32)
            rows.append(feats.reshape(feats.shape[0], -1)[:, flat].T)
        else:
            rows.append(features_at(np.asarray(sample.image, dtype=np.float32), flat, sigmas, tile_size))
        labels.append(np.searchsorted(labeled, phase).astype(np.int32))  # phase -> LightGBM class 0..P-1
    x = np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)
    y = np.concatenate(labels)

    if num_threads is None:
        threads = usable_cpus() if y.size > PARALLEL_FIT_ROWS else 1
    else:
        threads = _check_positive_int("num_threads", num_threads)
    binary = len(labeled) == 2
    params: dict[str, Any] = {
        "objective": "binary" if binary else "multiclass",
        "num_leaves": num_leaves,
        "learning_rate": float(learning_rate),
        "min_data_in_leaf": 10,
        "lambda_l2": 1.0,
        "max_bin": 63,
        "feature_fraction": 0.8,
        "seed": seed,
        "deterministic": True,
        "force_col_wise": True,
        "num_threads": threads,
        "verbosity": -1,
    }
    if not binary:
        params["num_class"] = len(labeled)
    # bin edges from a 20 000-pixel subsample: halves the binning time of a full budget, same model quality
    dataset = lgb.Dataset(
        x,
        label=y,
        feature_name=feature_names(sigmas),
        free_raw_data=True,
        params={"max_bin": 63, "bin_construct_sample_cnt": 20_000, "verbosity": -1},
    )
    booster = lgb.train(params, dataset, num_boost_round=n_estimators)
    header = {
        "num_phases": k,
        "feature_set": FEATURE_SET,
        "sigmas": list(sigmas),
        "tile_size": tile_size,
        "labeled_phases": labeled,
        "unlabeled_phases": unlabeled,
        "objective": params["objective"],
        "n_features": n_features(sigmas),
        "lightgbm": lgb.__version__,
    }
    # rebuilt from its own text, so the fitted model predicts exactly what a saved and reloaded one does
    return PixelClassifier.from_text(compose_text(header, booster.model_to_string()), "the fitted classifier")
