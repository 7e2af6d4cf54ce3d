"""Training batches: random crops of the labelled micrographs, with the guidance inputs drawn from their masks
(the noisy phase fractions of the micrograph each crop comes from, box prompts around one phase region)."""

from __future__ import annotations

import numpy as np

from napari_metalseg.data.samples import CropSampler
from napari_metalseg.phases import UNLABELED
from napari_metalseg.training.config import TrainConfig
from napari_metalseg.training.pseudo import OPEN


def box_from_mask(mask: np.ndarray, rng: np.random.Generator, jitter: float = 0.1) -> np.ndarray | None:
    """A box prompt around one ground-truth phase region of ``mask``, with jitter (x0, y0, x1, y1)."""
    from scipy import ndimage

    present = [k for k in np.unique(mask) if k not in (UNLABELED, OPEN)]
    if not present:
        return None
    phase = present[rng.integers(len(present))]
    regions, n = ndimage.label(mask == phase)
    objects = ndimage.find_objects(regions)
    sl = objects[int(rng.integers(n))]
    y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
    bh, bw = y1 - y0, x1 - x0
    h, w = mask.shape
    d = rng.uniform(-jitter, jitter, 4) * np.array([bw, bh, bw, bh])
    box = np.array([x0, y0, x1, y1], float) + d
    box[[0, 2]] = np.clip(box[[0, 2]], 0, w)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, h)
    if box[2] - box[0] < 4 or box[3] - box[1] < 4:
        box = np.array([max(0, x0 - 2), max(0, y0 - 2), min(w, x1 + 2), min(h, y1 + 2)], float)
    return box


def make_batch(
    sampler: CropSampler, config: TrainConfig, num_phases: int, *, step: int, rank: int = 0, world: int = 1
) -> tuple:
    """The crops of ``rank`` for optimizer step ``step``: ``config.batch_size`` of the ``world * batch_size`` crops of
    the global batch.

    Every crop is drawn with its own generator, seeded by ``config.seed``, ``step`` and the crop's place in the global
    batch; whether the batch carries phase ratios or boxes is drawn with one seeded by ``config.seed`` and ``step``
    alone. So the ranks of a distributed run draw different crops, and together exactly those one process draws with
    the same global batch; a resumed run draws the crops the uninterrupted one would have.

    Returns
    -------
    tuple
        Images (B, H, W), targets (B, H, W), ratios (B, K) or None, boxes (B, 4) or None. With boxes, the targets
        outside each box are unlabeled.
    """
    first = rank * config.batch_size
    rngs = [np.random.default_rng([config.seed, step, first + i]) for i in range(config.batch_size)]
    shared = np.random.default_rng([config.seed, step])
    crops = [sampler.sample(rng) for rng in rngs]
    images = np.stack([c.image for c in crops])
    masks = np.stack([c.mask for c in crops])
    ratios = None
    if config.encoder_guidance != "none" and shared.random() >= config.ratio_dropout:
        vectors = []
        for crop, rng in zip(crops, rngs, strict=True):  # the micrograph's fractions, as given at prediction
            r = np.clip(crop.fractions + rng.normal(0, config.ratio_noise, num_phases), 0, None)
            vectors.append(r / max(r.sum(), 1e-6))
        ratios = np.stack(vectors).astype(np.float32)
    boxes = None
    if config.uses_boxes and shared.random() < config.box_probability:
        found = [box_from_mask(m, rng) for m, rng in zip(masks, rngs, strict=True)]
        if all(b is not None for b in found):
            boxes = np.stack(found).astype(np.float32)
            for m, b in zip(masks, boxes, strict=True):  # the loss only sees the inside of the box
                inside = np.zeros(m.shape, bool)
                inside[int(b[1]) : int(np.ceil(b[3])), int(b[0]) : int(np.ceil(b[2]))] = True
                m[~inside] = UNLABELED
    return images, masks, ratios, boxes
