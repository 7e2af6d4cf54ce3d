"""Pseudo-labels from the weight average: what a run trained on scribbles learns from the pixels nobody labelled.

Scribbles leave most of a micrograph unlabelled. Each step, the moving average of the weights
(:class:`~napari_metalseg.training.averaging.WeightAverage`, the "teacher") labels the unlabelled pixels of the batch;
where it is sure (probability >= :data:`~napari_metalseg.models.registry.PSEUDO_CONFIDENCE`) the network is also
trained towards its phase, with the weight ``TrainConfig.pseudo``, normalised by all unlabelled pixels of the batch (so
the term grows as the teacher grows sure). The teacher sees the crop mirrored, so the two never agree by
construction. Only pixels of the micrograph the user left unlabelled take pseudo-labels: pixels held out for
validation and the padding outside a micrograph never do. In a distributed run the term is that of the global batch,
as the supervised loss is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from napari_metalseg.data.samples import Sample
from napari_metalseg.models.registry import PSEUDO_CONFIDENCE
from napari_metalseg.phases import UNLABELED

OPEN = 254
"""Training-mask value of a micrograph pixel the user left unlabelled (it may take a pseudo-label); 255 stays for
pixels that never do (held out for validation, padding)."""


def mark_open(samples: list[Sample], held_out: list[Sample] | None = None) -> list[Sample]:
    """``samples`` with their unlabelled pixels set to :data:`OPEN`, except those labelled in the sample of the same
    name in ``held_out`` (the pixels set aside for validation)."""
    held = {s.name: s.mask != UNLABELED for s in held_out or []}
    marked = []
    for s in samples:
        open_ = s.mask == UNLABELED
        if s.name in held:  # the same micrograph: held-out pixels are unlabelled in its training mask
            open_ &= ~held[s.name]
        marked.append(replace(s, mask=np.where(open_, OPEN, s.mask).astype(np.uint8)))
    return marked


def split_target(target):
    """``(target, open)`` of a batch's target tensor: :data:`OPEN` pixels turned unlabelled for the supervised loss,
    and the boolean map of them."""
    import torch

    open_ = target == OPEN
    return torch.where(open_, UNLABELED, target), open_


def teacher_labels(model, average, x, open_, *, ratios=None, boxes=None, amp: bool = False):
    """Pseudo-labels (B, H, W) of the pixels ``open_`` where the weight average, shown the mirrored crop ``x``, is
    sure of a phase; :data:`~napari_metalseg.phases.UNLABELED` elsewhere. The model is left in training mode."""
    import torch

    with average.applied(), torch.no_grad():
        model.eval()
        try:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                guess = model(x.flip(-1), ratios=ratios, boxes=boxes)
        finally:
            model.train()
    guess = (guess[0] if isinstance(guess, (list, tuple)) else guess).float().flip(-1)
    confidence, labels = torch.softmax(guess, 1).max(1)
    return torch.where(open_ & (confidence >= PSEUDO_CONFIDENCE), labels, UNLABELED)


def pseudo_label_loss(logits, labels, open_count, reduce: Callable | None = None):
    """Cross-entropy of ``logits`` (B, K, H, W) against the pseudo-labels ``labels``, summed and divided by the number
    of unlabelled pixels ``open_count``; with ``reduce`` (as in
    :func:`~napari_metalseg.training.losses.segmentation_loss`) that of the global batch: both sums are summed over the
    ranks, and each rank back-propagates its share."""
    import torch
    import torch.nn.functional as F

    ce = F.cross_entropy(logits.float(), labels, ignore_index=UNLABELED, reduction="sum")
    if reduce is None:
        return ce / open_count.clamp(min=1)
    sums, world = reduce(torch.stack([ce.detach(), open_count.to(ce.dtype)]))
    total = sums[1].clamp(min=1)
    surrogate = world * ce / total  # DistributedDataParallel averages the ranks' gradients
    return surrogate - surrogate.detach() + sums[0] / total
