"""Labelled images in memory, and the random crops training draws from them (numpy only, no torch).

A :class:`Sample` is what training and validation consume, whether it came from a dataset folder or from napari
layers. :class:`CropSampler` draws class-balanced random crops with scale, flip/rot90 and intensity augmentation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import UNLABELED, phase_fractions, phase_pixel_counts
from napari_metalseg.tiles import row_bands


@dataclass
class Sample:
    """One labelled micrograph: ``image`` float32 HxW in [0, 1], ``mask`` uint8 (phase index, 255 unlabeled)."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    magnification: float | None = None
    pixel_size_um: float | None = None

    def __post_init__(self) -> None:
        if self.image.shape != self.mask.shape:
            raise MetalsegError(f"{self.name}: image shape {self.image.shape} != mask shape {self.mask.shape}")


def load_samples(items: Iterable) -> list[Sample]:
    """Read dataset items (with masks) into :class:`Sample` objects."""
    samples = []
    for item in items:
        mask = item.read_mask()
        if mask is None:
            continue
        micrograph = item.read_image()
        samples.append(Sample(item.name, micrograph.image, mask, micrograph.magnification, micrograph.pixel_size_um))
    return samples


def normalize_contrast(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Stretch a micrograph's intensities so its ``low`` / ``high`` percentiles become 0 / 1 (clipped to [0, 1]).

    Computed over the whole micrograph, so every tile and every training crop of it sees the same mapping (a
    per-tile standardisation changes with what the tile holds). A flat image maps to 0.5.
    """
    image = np.asarray(image)
    bounds = contrast_bounds(image, low, high)
    out = np.empty(image.shape, np.float32)  # in bands: a huge 8-bit mosaic gets one float copy, no temporaries
    for band in row_bands(*image.shape):
        _stretch(image[band], bounds, out[band])
    return out


def contrast_bounds(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[float, float] | None:
    """The intensities :func:`normalize_contrast` maps to 0 and 1 (percentiles of about 512 x 512 pixels spread
    over the micrograph), or ``None`` for a flat image."""
    sample = image[:: max(1, image.shape[0] // 512), :: max(1, image.shape[1] // 512)].astype(np.float32)
    lo, hi = np.percentile(sample, (low, high))
    return (lo, hi) if hi - lo > 1e-6 else None


def _stretch(values: np.ndarray, bounds: tuple[float, float] | None, out: np.ndarray) -> np.ndarray:
    """``values`` mapped by ``bounds`` (:func:`contrast_bounds`) into the float32 array ``out``."""
    if bounds is None:
        out[...] = 0.5
        return out
    lo, hi = bounds
    np.subtract(values, lo, out=out, dtype=np.float32)
    np.divide(out, hi - lo, out=out, casting="unsafe")
    return np.clip(out, 0.0, 1.0, out=out)


class StretchedImage:
    """A micrograph seen through :func:`normalize_contrast`, computed only on the parts read (``image[rows, cols]``,
    :meth:`mean`), with the same values: a huge mosaic is predicted tile by tile without a float copy of it.

    Parameters
    ----------
    image : numpy.ndarray
        The 2-D micrograph (any real dtype).
    """

    def __init__(self, image: np.ndarray) -> None:
        self.image = np.asarray(image)
        self.bounds = contrast_bounds(self.image)
        self.shape = self.image.shape
        self.size = self.image.size

    def __getitem__(self, key) -> np.ndarray:
        part = self.image[key]
        return _stretch(part, self.bounds, np.empty(np.shape(part), np.float32))

    def mean(self) -> float:
        """The mean of the stretched micrograph (computed in bands)."""
        total = sum(float(self[band].sum(dtype=np.float64)) for band in row_bands(*self.shape))
        return total / max(1, self.size)


HELD_OUT = "held-out pixels"
"""What validates a run whose validation pixels :func:`holdout_pixels` set aside (``RunPlan.source``, the ``source`` of
a run's metrics)."""


def holdout_pixels(
    samples: list[Sample], num_phases: int, fraction: float = 0.1, block: int = 32, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Set aside labelled pixels for validation when there are no validation images.

    The labelled area of every image is cut into ``block`` x ``block`` squares; about ``fraction`` of the squares that
    hold labels go to validation (whole squares, so validation pixels are not the immediate neighbours of training
    pixels), the rest stay for training. A phase is never held out completely: squares holding the last training
    pixels of a phase stay in training.

    Returns
    -------
    train, val : list of Sample
        The same images with complementary masks (255 elsewhere); ``val`` is empty when nothing could be set aside.
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    left = np.zeros(num_phases, np.int64)
    for s in samples:
        left += phase_pixel_counts(s.mask, num_phases)
    for s in samples:
        h, w = s.mask.shape
        gy, gx = -(-h // block), -(-w // block)
        pad = np.full((gy * block, gx * block), UNLABELED, np.uint8)
        pad[:h, :w] = s.mask
        cells = pad.reshape(gy, block, gx, block).swapaxes(1, 2).reshape(gy * gx, block * block)
        labelled = np.nonzero((cells != UNLABELED).any(1))[0]
        chosen = np.zeros(gy * gx, bool)
        for c in rng.permutation(labelled)[: int(round(fraction * len(labelled)))]:
            counts = phase_pixel_counts(cells[c], num_phases)
            if np.all((left - counts > 0) | (counts == 0)):
                chosen[c] = True
                left -= counts
        held = np.repeat(np.repeat(chosen.reshape(gy, gx), block, 0), block, 1)[:h, :w]
        if not held.any():
            train.append(s)
            continue
        train.append(
            Sample(
                s.name, s.image, np.where(held, UNLABELED, s.mask).astype(np.uint8), s.magnification, s.pixel_size_um
            )
        )
        val.append(
            Sample(
                s.name, s.image, np.where(held, s.mask, UNLABELED).astype(np.uint8), s.magnification, s.pixel_size_um
            )
        )
    return train, val


class Crop(NamedTuple):
    """One training crop and the phase fractions of the micrograph it was cut from."""

    image: np.ndarray
    """float32, size x size."""
    mask: np.ndarray
    """uint8, size x size (255: unlabeled)."""
    fractions: np.ndarray
    """(K,) area fractions of the labelled pixels of the whole source micrograph: what a user gives for that
    micrograph at prediction time, whatever part of it the crop shows."""


class CropSampler:
    """Class-balanced random crops of ``size`` x ``size`` with augmentation.

    A crop is centred (with jitter) on a labelled pixel of a phase drawn uniformly among the phases present, so
    rare phases are seen as often as the matrix. Augmentation: scale jitter, flips and rot90, gamma / contrast /
    brightness jitter, Gaussian noise and blur. Pixels outside the image after scaling are unlabeled.

    Parameters
    ----------
    samples : list of Sample
    size : int
        Crop size in pixels (the model input size).
    num_phases : int
    seed : int
        Seed of this sampler's generator (use a different one per distributed rank).
    scale_range : (float, float)
        Range of the random zoom factor (log-uniform).
    augment : bool
        Intensity and geometric augmentation on or off.
    """

    def __init__(
        self,
        samples: list[Sample],
        size: int,
        num_phases: int,
        seed: int = 0,
        scale_range: tuple[float, float] = (0.75, 1.33),
        augment: bool = True,
    ) -> None:
        if not samples:
            raise MetalsegError("no labelled images to train on")
        self.samples = samples
        self.size = size
        self.num_phases = num_phases
        self.rng = np.random.default_rng(seed)
        self.scale_range = scale_range
        self.augment = augment
        # coordinates of labelled pixels per phase, subsampled to bound memory
        self._where: list[list[np.ndarray]] = []
        for s in samples:
            per_phase = []
            for k in range(num_phases):
                ys, xs = np.nonzero(s.mask == k)
                if ys.size > 4096:
                    pick = self.rng.choice(ys.size, 4096, replace=False)
                    ys, xs = ys[pick], xs[pick]
                per_phase.append(np.stack([ys, xs], 1))
            self._where.append(per_phase)
        self.fractions = [phase_fractions(s.mask, num_phases) for s in samples]
        self.present = [k for k in range(num_phases) if any(len(w[k]) for w in self._where)]
        if not self.present:
            raise MetalsegError("the training masks contain no labelled pixels")

    def sample(self, rng: np.random.Generator | None = None) -> Crop:
        """One augmented :class:`Crop`, drawn with ``rng`` (default: the sampler's own generator)."""
        rng = self.rng if rng is None else rng
        phase = self.present[rng.integers(len(self.present))]
        candidates = [i for i, w in enumerate(self._where) if len(w[phase])]
        i = candidates[rng.integers(len(candidates))]
        s = self.samples[i]
        cy, cx = self._where[i][phase][rng.integers(len(self._where[i][phase]))]
        lo, hi = np.log(self.scale_range[0]), np.log(self.scale_range[1])
        scale = float(np.exp(rng.uniform(lo, hi))) if self.augment else 1.0
        src = max(8, int(round(self.size / scale)))
        jitter = src // 3
        y0 = int(cy) - src // 2 + int(rng.integers(-jitter, jitter + 1))
        x0 = int(cx) - src // 2 + int(rng.integers(-jitter, jitter + 1))
        image, mask = _crop_padded(s.image, s.mask, y0, x0, src)
        if src != self.size:
            zoom = self.size / src
            image = ndimage.zoom(image, zoom, order=1)[: self.size, : self.size]
            mask = ndimage.zoom(mask, zoom, order=0)[: self.size, : self.size]
            image, mask = _pad_to(image, mask, self.size)
        if self.augment:
            image, mask = _geometric(image, mask, rng)
            image = _intensity(image, rng)
        return Crop(image.astype(np.float32), mask, self.fractions[i])


def _geometric(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    k = int(rng.integers(4))
    image, mask = np.rot90(image, k), np.rot90(mask, k)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def _intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = np.clip(image, 0, 1) ** float(np.exp(rng.uniform(-0.4, 0.4)))
    image = (image - image.mean()) * rng.uniform(0.7, 1.4) + image.mean() + rng.uniform(-0.1, 0.1)
    if rng.random() < 0.3:
        image = ndimage.gaussian_filter(image, rng.uniform(0.3, 1.2))
    if rng.random() < 0.5:
        image = image + rng.normal(0, rng.uniform(0.005, 0.04), image.shape)
    return np.clip(image, 0, 1)


def _crop_padded(image: np.ndarray, mask: np.ndarray, y0: int, x0: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop [y0:y0+size, x0:x0+size]; outside the image: the crop's mean intensity and unlabeled mask."""
    h, w = image.shape
    ys, xs, ye, xe = max(0, y0), max(0, x0), min(h, y0 + size), min(w, x0 + size)
    inner = image[ys:ye, xs:xe]
    out_img = np.full((size, size), float(inner.mean()) if inner.size else 0.5, np.float32)
    out_mask = np.full((size, size), UNLABELED, np.uint8)
    if inner.size:
        out_img[ys - y0 : ye - y0, xs - x0 : xe - x0] = inner
        out_mask[ys - y0 : ye - y0, xs - x0 : xe - x0] = mask[ys:ye, xs:xe]
    return out_img, out_mask


def _pad_to(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape
    if h == size and w == size:
        return image, mask
    out_img = np.full((size, size), float(image.mean()), np.float32)
    out_mask = np.full((size, size), UNLABELED, np.uint8)
    out_img[:h, :w] = image
    out_mask[:h, :w] = mask
    return out_img, out_mask
