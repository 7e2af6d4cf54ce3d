"""The classical pixel classifier: multiscale filter features + LightGBM gradient-boosted trees.

This is what labs use today (ilastik pixel classification, Fiji Trainable Weka, Labkit): every pixel is described
by smoothed intensity, edge and texture responses at several scales (:func:`pixel_features`), and a tree ensemble
is trained on exactly the pixels the user scribbled (:func:`fit_classifier`). It needs no GPU and no pretrained
weights, trains in about a second and is fast enough to be the live preview of the napari annotation loop.

:class:`PixelClassifier` honours the same contract as :class:`~.phase_sam.PhaseSAM` (``preprocess`` /
``embed`` / ``decode`` / ``signature``), so the tiled predictor caches its features per tile like SAM embeddings.

Storage is plain text, never pickle: one header line ``# napari-metalseg classical v1 {json}`` followed by
LightGBM's own text model (:meth:`PixelClassifier.to_text`). :func:`load_classifier` refuses anything else
(binary bytes, a pickle payload, another header or version, truncated or modified text) with one
:class:`~napari_metalseg.errors.MetalsegError` naming the file.

numpy, scipy and the standard library only at import time; torch and lightgbm are imported when needed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy import ndimage

from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import MAX_PHASES, UNLABELED

if TYPE_CHECKING:
    import torch

    from napari_metalseg.data.samples import Sample

__all__ = [
    "DEFAULT_SIGMAS",
    "FEATURE_SET",
    "FORMAT_VERSION",
    "HEADER_PREFIX",
    "PixelClassifier",
    "draw_pixels",
    "feature_names",
    "feature_radius",
    "fit_classifier",
    "load_classifier",
    "n_features",
    "pixel_features",
    "save_classifier",
]

FEATURE_SET = "ilastik-v1"
"""Identifier of :func:`pixel_features` (the filters, their order and their discretisation); part of signatures."""

DEFAULT_SIGMAS: tuple[float, ...] = (0.7, 1.6, 3.5, 5.0, 10.0)
"""Filter scales in pixels: ilastik's set without 1.0 (close to 0.7 and 1.6; dropping it saves 1/6 of the time)."""

PER_SCALE = ("gaussian", "gradient", "laplacian", "dog", "hessian_max", "hessian_min", "structure_max", "structure_min")
"""Features computed at every scale, in order (see :func:`pixel_features`)."""

TRUNCATE = 3.0
"""Gaussian kernels are cut at this many sigmas (vigra's, hence ilastik's, default window)."""

HEADER_PREFIX = "# napari-metalseg classical "
FORMAT_VERSION = "v1"

DEFAULT_TILE = 1024
DEFAULT_MAX_PIXELS = 60_000
DEFAULT_ESTIMATORS = 20
DEFAULT_LEAVES = 15
DEFAULT_LEARNING_RATE = 0.3

PARALLEL_FIT_ROWS = 200_000
"""Training pixels above which LightGBM trains on several threads (see :func:`fit_classifier`)."""

LOG_ZERO = -1.0e4
"""Log-probability of a phase that was never labelled: finite (safe to interpolate), ``exp`` of it is exactly 0."""

_CHUNK = 1 << 16
"""Pixels per LightGBM prediction call (a cache-friendly transposed copy of the (F, H, W) features)."""

_MAX_FILE_BYTES = 256 << 20
_MAX_TILE = 16384
_MAX_SIGMA = 256.0
_MAX_SCALES = 16
_HEADER_KEYS = {
    "num_phases",
    "feature_set",
    "sigmas",
    "tile_size",
    "labeled_phases",
    "unlabeled_phases",
    "objective",
    "n_features",
    "lightgbm",
    "model_sha256",
}


# -- features ----------------------------------------------------------------------------------------------------
def _check_sigmas(sigmas: Sequence[float]) -> tuple[float, ...]:
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
    sigmas = _check_sigmas(sigmas)
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
    sigmas = _check_sigmas(sigmas)
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
    workers = min(len(order), threads or _num_threads())
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


def _features_at(image: np.ndarray, flat: np.ndarray, sigmas: tuple[float, ...], block: int) -> np.ndarray:
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


# -- fitting -----------------------------------------------------------------------------------------------------
def _num_threads() -> int:
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
    if tile_size > _MAX_TILE:
        raise MetalsegError(f"tile_size {tile_size}: at most {_MAX_TILE} pixels")
    max_pixels = _check_positive_int("max_pixels", max_pixels, 2)
    n_estimators = _check_positive_int("n_estimators", n_estimators)
    num_leaves = _check_positive_int("num_leaves", num_leaves, 2)
    if not (isinstance(learning_rate, int | float) and math.isfinite(learning_rate) and learning_rate > 0):
        raise MetalsegError(f"learning_rate {learning_rate!r}: expected a positive number")
    seed = _check_positive_int("seed", seed, 0)
    sigmas = _check_sigmas(sigmas)
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
            rows.append(_features_at(np.asarray(sample.image, dtype=np.float32), flat, sigmas, tile_size))
        labels.append(np.searchsorted(labeled, phase).astype(np.int32))  # phase -> LightGBM class 0..P-1
    x = np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)
    y = np.concatenate(labels)

    if num_threads is None:
        threads = _num_threads() if y.size > PARALLEL_FIT_ROWS else 1
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
    return PixelClassifier.from_text(_compose(header, booster.model_to_string()), "the fitted classifier")


def _compose(header: dict[str, Any], body: str) -> str:
    header = {**header, "model_sha256": hashlib.sha256(body.encode("utf-8")).hexdigest()}
    return f"{HEADER_PREFIX}{FORMAT_VERSION} {json.dumps(header, sort_keys=True, separators=(',', ':'))}\n{body}"


# -- the model ---------------------------------------------------------------------------------------------------
class PixelClassifier:
    """A fitted LightGBM pixel classifier behind the project's model contract (CPU only, no gradients).

    Build it with :func:`fit_classifier`, :meth:`from_text` or :func:`load_classifier`, not directly.

    Parameters
    ----------
    booster
        The LightGBM ``Booster`` (parsed from ``body``).
    header
        The validated JSON header (see :meth:`to_text`).
    body
        LightGBM's text model, exactly as stored.

    Attributes
    ----------
    kind, img_size, predict_size, num_phases, guidance, supports_boxes, light_decoder, finetune_mode, n_parameters
        The model contract; ``img_size`` = ``predict_size`` = the tile size; ``n_parameters`` counts tree nodes.
    sigmas
        Filter scales of :func:`pixel_features`.
    labeled_phases, unlabeled_phases
        Phases that had labelled pixels, and those that had none (always probability 0).
    """

    kind = "classical"
    guidance = "none"
    supports_boxes = False
    light_decoder = False
    finetune_mode = None

    def __init__(self, *, booster: Any, header: dict[str, Any], body: str) -> None:
        self._booster = booster
        self._header = dict(header)
        self._body = body
        self.num_phases = int(header["num_phases"])
        self.img_size = int(header["tile_size"])
        self.predict_size = self.img_size
        self.sigmas = tuple(float(s) for s in header["sigmas"])
        self.labeled_phases = tuple(int(p) for p in header["labeled_phases"])
        self.unlabeled_phases = tuple(int(p) for p in header["unlabeled_phases"])
        self.binary = header["objective"] == "binary"
        self.n_trees = int(booster.num_trees())
        leaves = sum(int(n) for n in re.findall(r"^num_leaves=(\d+)$", body, flags=re.MULTILINE))
        self.n_parameters = 2 * leaves - self.n_trees  # a tree with L leaves has L - 1 split nodes
        self.training = False
        self._model_digest: str | None = None

    def __repr__(self) -> str:
        return (
            f"PixelClassifier(num_phases={self.num_phases}, trees={self.n_trees}, features={self.n_features}, "
            f"tile={self.img_size}, unlabeled_phases={list(self.unlabeled_phases)})"
        )

    @property
    def n_features(self) -> int:
        """Feature channels ``F`` of :meth:`embed`."""
        return n_features(self.sigmas)

    @property
    def config(self) -> dict[str, Any]:
        """The settings that describe this model (for run files and reports)."""
        return {
            "kind": self.kind,
            "img_size": self.img_size,
            "num_phases": self.num_phases,
            "guidance": self.guidance,
            "finetune": None,
            "feature_set": FEATURE_SET,
            "sigmas": list(self.sigmas),
            "unlabeled_phases": list(self.unlabeled_phases),
        }

    # -- torch-module look-alikes (CPU only, nothing to train by gradient) ---------------------------------------
    def eval(self) -> PixelClassifier:
        return self.train(False)

    def train(self, mode: bool = True) -> PixelClassifier:
        self.training = bool(mode)
        return self

    def to(self, *args: Any, **kwargs: Any) -> PixelClassifier:
        return self

    def parameters(self, recurse: bool = True) -> Iterator[Any]:
        return iter(())

    # -- the model contract --------------------------------------------------------------------------------------
    def preprocess(self, gray: torch.Tensor) -> torch.Tensor:
        """(B, H, W) or (B, 1, H, W) grey images in [0, 1] -> (B, 1, H, W) float, intensities unchanged.

        No per-tile normalisation: the tiles of one micrograph must see the same intensity scale.
        """
        if gray.ndim == 3:
            gray = gray[:, None]
        if gray.ndim != 4 or gray.shape[1] != 1:
            raise ValueError(f"preprocess expects (B, 1, H, W) or (B, H, W) grey images, got {tuple(gray.shape)}")
        return gray if gray.is_floating_point() else gray.float()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) preprocessed images -> (B, F, H, W) float32 :func:`pixel_features` (what tiles cache)."""
        import torch

        images = self.preprocess(images)
        arrays = images.detach().float().cpu().numpy()
        feats = np.stack([pixel_features(a[0], sigmas=self.sigmas) for a in arrays])
        return torch.from_numpy(feats).to(images.device)

    def decode(
        self,
        embeddings: torch.Tensor,
        ratios: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        out_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Classify features: (B, F, H, W) -> (B, K, H', W') log-probabilities (softmax gives the probabilities).

        Parameters
        ----------
        embeddings
            (B, F, H, W) from :meth:`embed`.
        ratios, boxes
            Not supported: must be ``None``.
        out_size
            ``(H', W')`` of the result, default ``(H, W)``; resized bilinearly when different.

        Returns
        -------
        torch.Tensor
            (B, K, H', W') float32 on the device of ``embeddings``; phases never labelled get :data:`LOG_ZERO`
            (probability exactly 0).
        """
        import torch
        import torch.nn.functional as F

        self._check_prompts(ratios, boxes)
        if embeddings.ndim != 4 or embeddings.shape[1] != self.n_features:
            raise ValueError(f"decode expects (B, {self.n_features}, H, W) features, got {tuple(embeddings.shape)}")
        feats = embeddings.detach().float().cpu().numpy()
        out = torch.from_numpy(np.stack([self._predict(f, log=True) for f in feats]))
        if out_size is not None and tuple(out_size) != tuple(out.shape[2:]):
            out = F.interpolate(out, size=tuple(out_size), mode="bilinear", align_corners=False)
        return out.to(embeddings.device)

    def forward(
        self, images: torch.Tensor, ratios: torch.Tensor | None = None, boxes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Classify preprocessed images (B, 1, H, W) into (B, K, H, W) log-probabilities (see :meth:`decode`)."""
        self._check_prompts(ratios, boxes)
        return self.decode(self.embed(images), out_size=tuple(images.shape[-2:]))

    __call__ = forward

    def predict_proba_features(self, features: np.ndarray) -> np.ndarray:
        """Phase probabilities (K, H, W) float32 of one image's (F, H, W) features (the live preview; no torch)."""
        features = np.asarray(features)
        if features.ndim != 3 or features.shape[0] != self.n_features:
            raise ValueError(f"expected ({self.n_features}, H, W) features, got shape {features.shape}")
        return self._predict(features, log=False)

    def _check_prompts(self, ratios: object, boxes: object) -> None:
        if ratios is not None:
            raise ValueError("this model was built without phase-fraction guidance (guidance='none')")
        if boxes is not None:
            raise MetalsegError("box prompts need a SAM model; the classical pixel classifier has no prompt encoder")

    def _predict(self, features: np.ndarray, log: bool) -> np.ndarray:
        """(F, H, W) features -> (K, H, W) float32 log-probabilities (``log``) or probabilities.

        LightGBM's raw scores are turned into (log-)probabilities in float64, chunk by chunk.
        """
        f, h, w = features.shape
        flat = features.reshape(f, -1)
        n = flat.shape[1]
        out = np.empty((self.num_phases, n), np.float32)
        out[list(self.unlabeled_phases)] = LOG_ZERO if log else 0.0
        labeled = list(self.labeled_phases)
        threads = _num_threads()
        for start in range(0, n, _CHUNK):
            rows = np.ascontiguousarray(flat[:, start : start + _CHUNK].T, dtype=np.float32)
            raw = np.asarray(self._booster.predict(rows, raw_score=True, num_threads=threads), np.float64)
            if self.binary:
                lp = np.stack([-np.logaddexp(0.0, raw), -np.logaddexp(0.0, -raw)])
            else:
                raw -= raw.max(axis=1, keepdims=True)
                raw -= np.log(np.exp(raw).sum(axis=1, keepdims=True))
                lp = raw.T
            out[labeled, start : start + rows.shape[0]] = lp if log else np.exp(lp)
        return out.reshape(self.num_phases, h, w)

    def signature(self, scope: Literal["model", "encoder"] = "model") -> str:
        """A string identifying the computation, for caches.

        ``model``: a hash of the model text (trees and header); ``encoder``: only what :meth:`embed` depends on
        (:data:`FEATURE_SET`, the sigmas and the tile size), not the trees, so refitting keeps cached features.
        """
        if scope == "encoder":
            key = repr((FEATURE_SET, self.sigmas, TRUNCATE, self.img_size)).encode()
            return f"classical-{self.img_size}-enc-{hashlib.sha256(key).hexdigest()[:16]}"
        if scope == "model":
            if self._model_digest is None:
                self._model_digest = hashlib.sha256(self.to_text().encode("utf-8")).hexdigest()
            return f"classical-{self.img_size}-k{self.num_phases}-none-{self._model_digest[:16]}"
        raise ValueError(f"scope must be 'model' or 'encoder', got {scope!r}")

    # -- storage -------------------------------------------------------------------------------------------------
    def to_text(self) -> str:
        """The stored form: ``# napari-metalseg classical v1 {json header}`` then LightGBM's ``model_to_string``.

        The header holds ``num_phases``, ``feature_set``, ``sigmas``, ``tile_size``, ``labeled_phases``,
        ``unlabeled_phases``, ``objective``, ``n_features``, the ``lightgbm`` version that wrote the model and
        ``model_sha256``, the SHA-256 of the LightGBM text (truncation and edits are detected on loading).
        """
        return _compose({key: value for key, value in self._header.items() if key != "model_sha256"}, self._body)

    @classmethod
    def from_text(cls, text: str, source: str) -> PixelClassifier:
        """Parse :meth:`to_text` output; ``source`` (a file name) is named in every error.

        Raises
        ------
        MetalsegError
            When ``text`` is not our header followed by the matching LightGBM text model.
        """
        if not isinstance(text, str):
            raise MetalsegError(f"{source}: expected text, got {type(text).__name__}")
        if not text:
            raise MetalsegError(f"{source}: the file is empty, not a classical pixel classifier")
        if "\x00" in text:
            raise MetalsegError(f"{source}: contains NUL characters; not a classical pixel classifier text file")
        first, _, body = text.partition("\n")
        if not first.startswith(HEADER_PREFIX):
            raise MetalsegError(
                f"{source}: not a napari-metalseg classical pixel classifier (the first line must "
                f"start with {HEADER_PREFIX.strip()!r})"
            )
        version, _, raw_header = first[len(HEADER_PREFIX) :].partition(" ")
        if version != FORMAT_VERSION:
            raise MetalsegError(
                f"{source}: classical model format {version[:20]!r} is not supported (this "
                f"napari-metalseg reads {FORMAT_VERSION})"
            )
        header = _parse_header(raw_header, source)
        if hashlib.sha256(body.encode("utf-8")).hexdigest() != header["model_sha256"]:
            raise MetalsegError(
                f"{source}: the LightGBM model text does not match its header checksum (truncated or modified file)"
            )
        booster = _parse_booster(body, header, source)
        expected_trees = 1 if header["objective"] == "binary" else len(header["labeled_phases"])
        if booster.num_feature() != header["n_features"] or booster.num_model_per_iteration() != expected_trees:
            raise MetalsegError(
                f"{source}: the LightGBM model has {booster.num_feature()} features and "
                f"{booster.num_model_per_iteration()} tree(s) per round; the header expects {header['n_features']} "
                f"and {expected_trees}"
            )
        return cls(booster=booster, header=header, body=body)


def _parse_header(raw: str, source: str) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise MetalsegError(f"{source}: the header line is not valid JSON ({exc.msg})") from None
    if not isinstance(header, dict):
        raise MetalsegError(f"{source}: the header must be a JSON object")
    missing = sorted(_HEADER_KEYS - set(header))
    if missing:
        raise MetalsegError(f"{source}: the header lacks {', '.join(missing)}")

    def bad(what: str) -> MetalsegError:
        return MetalsegError(f"{source}: header {what}")

    k = header["num_phases"]
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= MAX_PHASES:
        raise bad(f"num_phases {k!r} is not an integer in 2..{MAX_PHASES}")
    if header["feature_set"] != FEATURE_SET:
        raise bad(
            f"feature_set {header['feature_set']!r} is not supported (this napari-metalseg computes {FEATURE_SET!r})"
        )
    sigmas = header["sigmas"]
    if not isinstance(sigmas, list) or not all(isinstance(s, int | float) and not isinstance(s, bool) for s in sigmas):
        raise bad(f"sigmas {sigmas!r} is not a list of numbers")
    try:
        header["sigmas"] = list(_check_sigmas(sigmas))
    except MetalsegError as exc:
        raise bad(str(exc)) from None
    tile = header["tile_size"]
    if isinstance(tile, bool) or not isinstance(tile, int) or not 16 <= tile <= _MAX_TILE:
        raise bad(f"tile_size {tile!r} is not an integer in 16..{_MAX_TILE}")
    phases = []
    for key in ("labeled_phases", "unlabeled_phases"):
        value = header[key]
        if not isinstance(value, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in value):
            raise bad(f"{key} {value!r} is not a list of phase indices")
        phases.append(value)
    labeled, unlabeled = phases
    if sorted(labeled + unlabeled) != list(range(k)) or labeled != sorted(labeled) or len(labeled) < 2:
        raise bad(
            f"labeled_phases {labeled} and unlabeled_phases {unlabeled} do not split phases 0..{k - 1} "
            "(at least two labelled)"
        )
    objective = "binary" if len(labeled) == 2 else "multiclass"
    if header["objective"] != objective:
        raise bad(f"objective {header['objective']!r} does not fit {len(labeled)} labelled phases ({objective!r})")
    if header["n_features"] != n_features(header["sigmas"]):
        raise bad(
            f"n_features {header['n_features']!r} does not fit {len(sigmas)} sigmas ({n_features(header['sigmas'])})"
        )
    digest = header["model_sha256"]
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise bad("model_sha256 is not a SHA-256 hex digest")
    return header


def _parse_booster(body: str, header: dict[str, Any], source: str) -> Any:
    import lightgbm as lgb

    try:
        _check_model_text(body, header)
    except _Malformed as exc:
        raise MetalsegError(f"{source}: not a valid LightGBM text model of this classifier ({exc})") from None
    try:
        booster = lgb.Booster(model_str=body)
    except Exception as exc:  # LightGBMError, or a failure in lightgbm's Python part
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MetalsegError(f"{source}: the LightGBM model text cannot be read ({reason[:200]})") from None
    return booster


class _Malformed(Exception):
    """The LightGBM text breaks a rule of :func:`_check_model_text` (the message says which)."""


_MODEL_KEYS = (
    "version",
    "num_class",
    "num_tree_per_iteration",
    "label_index",
    "max_feature_idx",
    "objective",
    "feature_names",
    "feature_infos",
    "tree_sizes",
)
_TREE_KEYS = (
    "num_leaves",
    "num_cat",
    "split_feature",
    "split_gain",
    "threshold",
    "decision_type",
    "left_child",
    "right_child",
    "leaf_value",
    "leaf_weight",
    "leaf_count",
    "internal_value",
    "internal_weight",
    "internal_count",
    "is_linear",
    "shrinkage",
)
_INT = re.compile(r"-?[0-9]{1,10}")
_FLOAT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")
_TAIL = re.compile(
    r"|end of trees|feature_importances:|[A-Za-z0-9_@.]+=[0-9]+|parameters:|\[[a-z0-9_]+: [^\n]*\]"
    r"|end of parameters|pandas_categorical:null"
)
_MAX_LEAVES = 1 << 17


def _check_model_text(body: str, header: dict[str, Any]) -> None:
    """Check that ``body`` is a complete LightGBM text model of the shape the header describes.

    LightGBM's own parser trusts its input (it reads trees at the offsets of ``tree_sizes`` and follows child
    indices unchecked, and some errors abort the process), so every tree is checked here first: the fields
    LightGBM writes, in its order, with the right number of finite values, split features below ``F``, no
    categorical or linear trees, and child links that form one tree from the root.
    """
    if not body.isascii() or "\r" in body:
        raise _Malformed("it must be plain ASCII with LF line ends")
    start = body.find("\nTree=")
    if not body.startswith("tree\n") or start < 0:
        raise _Malformed("it must start with 'tree' and hold trees")
    fields: dict[str, str] = {}
    for line in body[5:start].split("\n"):
        key, sep, value = line.partition("=")
        if not line:
            continue
        if not sep or key not in _MODEL_KEYS or key in fields:
            raise _Malformed(f"unexpected line {line[:60]!r}")
        fields[key] = value
    missing = [key for key in _MODEL_KEYS if key not in fields]
    if missing:
        raise _Malformed(f"{', '.join(missing)} missing")
    n_feat, n_labeled = header["n_features"], len(header["labeled_phases"])
    per_round = 1 if header["objective"] == "binary" else n_labeled
    expected = {
        "version": "v4",
        "num_class": str(per_round),
        "num_tree_per_iteration": str(per_round),
        "label_index": "0",
        "max_feature_idx": str(n_feat - 1),
        "objective": "binary sigmoid:1" if per_round == 1 else f"multiclass num_class:{n_labeled}",
        "feature_names": " ".join(feature_names(header["sigmas"])),
    }
    for key, value in expected.items():
        if fields[key] != value:
            raise _Malformed(f"{key}={fields[key][:60]!r}, expected {value[:60]!r}")
    if len(fields["feature_infos"].split(" ")) != n_feat:
        raise _Malformed(f"feature_infos must describe {n_feat} features")
    sizes = fields["tree_sizes"].split(" ")
    if not all(re.fullmatch(r"[1-9][0-9]{0,8}", size) for size in sizes) or len(sizes) % per_round:
        raise _Malformed(f"tree_sizes must be a multiple of {per_round} positive sizes")
    pos = start + 1
    for i, size in enumerate(sizes):
        segment = body[pos : pos + int(size)]
        if len(segment) != int(size):
            raise _Malformed(f"the text ends inside tree {i} (truncated)")
        _check_tree(segment, i, n_feat)
        pos += int(size)
    tail = body[pos:].split("\n")
    if tail[0] != "end of trees" or not all(_TAIL.fullmatch(line) for line in tail):
        raise _Malformed("the trees must be followed by 'end of trees', feature importances and parameters only")


def _check_tree(segment: str, index: int, n_feat: int) -> None:
    title = f"Tree={index}\n"
    lines = segment[len(title) :].rstrip("\n").split("\n")
    if (
        not segment.startswith(title)
        or not segment.endswith("\n\n")
        or len(lines) != len(_TREE_KEYS)
        or not all(line.startswith(f"{key}=") for line, key in zip(lines, _TREE_KEYS, strict=True))
    ):
        raise _Malformed(f"tree {index} does not hold the fields {', '.join(_TREE_KEYS)} in this order")
    values = {key: line[len(key) + 1 :] for line, key in zip(lines, _TREE_KEYS, strict=True)}

    def numbers(key: str, count: int | tuple[int, ...], kind: type) -> list:
        tokens = values[key].split(" ") if values[key] else []
        if len(tokens) not in (count if isinstance(count, tuple) else (count,)):
            raise _Malformed(f"tree {index}: {key} must have {count} values")
        pattern = _FLOAT if kind is float else _INT
        out = [kind(t) if pattern.fullmatch(t) else None for t in tokens]
        if any(v is None or (kind is float and not math.isfinite(v)) for v in out):
            raise _Malformed(f"tree {index}: {key} holds a value that is not a finite {kind.__name__}")
        return out

    leaves = numbers("num_leaves", 1, int)[0]
    if not 1 <= leaves <= _MAX_LEAVES:
        raise _Malformed(f"tree {index}: num_leaves {leaves} out of range")
    if values["num_cat"] != "0" or values["is_linear"] != "0":
        raise _Malformed(f"tree {index}: categorical and linear trees are not used by this classifier")
    numbers("leaf_value", leaves, float)
    numbers("shrinkage", 1, float)
    nodes = leaves - 1
    numbers("leaf_weight", (0, 1) if leaves == 1 else leaves, float)
    numbers("leaf_count", leaves, int)
    for key in ("split_gain", "threshold", "internal_value", "internal_weight"):
        numbers(key, nodes, float)
    numbers("internal_count", nodes, int)
    if any(not 0 <= f < n_feat for f in numbers("split_feature", nodes, int)):
        raise _Malformed(f"tree {index}: a split feature is not below {n_feat}")
    if any(d not in (0, 2, 4, 6, 8, 10) for d in numbers("decision_type", nodes, int)):
        raise _Malformed(f"tree {index}: unsupported decision_type")
    left, right = numbers("left_child", nodes, int), numbers("right_child", nodes, int)
    if nodes:  # every internal node and every leaf reached exactly once from the root
        seen_nodes, seen_leaves, stack = {0}, set(), [0]
        while stack:
            node = stack.pop()
            for child in (left[node], right[node]):
                if child >= 0:
                    if child >= nodes or child in seen_nodes:
                        raise _Malformed(f"tree {index}: child links do not form a tree")
                    seen_nodes.add(child)
                    stack.append(child)
                else:
                    if ~child >= leaves or ~child in seen_leaves:
                        raise _Malformed(f"tree {index}: child links do not form a tree")
                    seen_leaves.add(~child)
        if len(seen_nodes) != nodes or len(seen_leaves) != leaves:
            raise _Malformed(f"tree {index}: child links do not form a tree")


# -- files -------------------------------------------------------------------------------------------------------
def save_classifier(model: PixelClassifier, path: str | Path) -> Path:
    """Write ``model.to_text()`` to ``path`` atomically (plain UTF-8 text; never pickle)."""
    from napari_metalseg.io.atomic import atomic_write_text

    path = Path(path)
    atomic_write_text(path, model.to_text())
    return path


def load_classifier(path: str | Path) -> PixelClassifier:
    """Read a classifier written by :func:`save_classifier`.

    The file is read as bytes and decoded as strict UTF-8; only our header followed by the LightGBM text model it
    describes is accepted. Nothing is ever unpickled.

    Raises
    ------
    MetalsegError
        Naming ``path``: missing or unreadable, binary (e.g. a pickle), empty, too large, wrong header or
        version, or truncated / modified / unreadable model text.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > _MAX_FILE_BYTES:
            raise MetalsegError(
                f"{path}: {size} bytes is too large for a classical pixel classifier "
                f"(at most {_MAX_FILE_BYTES >> 20} MiB)"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise MetalsegError(f"{path}: cannot read the classifier ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise MetalsegError(
            f"{path}: not a text file (byte {exc.start} is not UTF-8); a classical pixel "
            "classifier is plain text (pickles and other binary files are refused)"
        ) from None
    return PixelClassifier.from_text(text, str(path))
