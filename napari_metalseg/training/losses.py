"""The training objective: cross-entropy + soft Dice over the labelled pixels, with deep supervision."""

from __future__ import annotations

from napari_metalseg.phases import UNLABELED


def deep_supervision_loss(outputs, target, num_phases: int, aux_weight: float = 0.4):
    """Loss of a model output: a logits tensor, or ``[main, aux, ...]`` (deep supervision) where every auxiliary
    output is upsampled to the target size and weighted by ``aux_weight``."""
    import torch.nn.functional as F

    if not isinstance(outputs, (list, tuple)):
        return segmentation_loss(outputs.float(), target, num_phases)
    loss = segmentation_loss(outputs[0].float(), target, num_phases)
    for aux in outputs[1:]:
        if tuple(aux.shape[2:]) != tuple(target.shape[1:]):
            aux = F.interpolate(aux.float(), size=tuple(target.shape[1:]), mode="bilinear", align_corners=False)
        loss = loss + aux_weight * segmentation_loss(aux.float(), target, num_phases)
    return loss


def segmentation_loss(logits, target, num_phases: int):
    """Cross-entropy + soft Dice, both ignoring unlabeled (255) pixels."""
    import torch
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, target, ignore_index=UNLABELED) if (target != UNLABELED).any() else logits.sum() * 0
    valid = (target != UNLABELED).unsqueeze(1).float()
    probs = torch.softmax(logits.float(), dim=1) * valid
    onehot = F.one_hot(torch.where(target == UNLABELED, 0, target), num_phases).permute(0, 3, 1, 2).float() * valid
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    denom = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    dice = (2 * inter + 1) / (denom + 1)
    return ce + (1 - dice.mean())
