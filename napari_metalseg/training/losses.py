"""The training objective: cross-entropy + soft Dice over the labelled pixels, with deep supervision.

In a distributed run (``reduce`` given) the loss is that of the global batch, the crops of every rank together: its
sums (cross-entropy, labelled pixels, Dice intersections and sizes) are summed over the ranks, and each rank
back-propagates a first-order surrogate whose gradient is its exact share of the global batch's gradient, times the
number of ranks (DistributedDataParallel averages the ranks' gradients). So N processes with B crops each take the
steps one process takes with N x B crops.
"""

from __future__ import annotations

from collections.abc import Callable

from napari_metalseg.phases import UNLABELED


def deep_supervision_loss(outputs, target, num_phases: int, aux_weight: float = 0.4, reduce: Callable | None = None):
    """Loss of a model output: a logits tensor, or ``[main, aux, ...]`` (deep supervision) where every auxiliary
    output is upsampled to the target size and weighted by ``aux_weight``; ``reduce``: see
    :func:`segmentation_loss`."""
    import torch.nn.functional as F

    if not isinstance(outputs, (list, tuple)):
        return segmentation_loss(outputs.float(), target, num_phases, reduce=reduce)
    loss = segmentation_loss(outputs[0].float(), target, num_phases, reduce=reduce)
    for aux in outputs[1:]:
        if tuple(aux.shape[2:]) != tuple(target.shape[1:]):
            aux = F.interpolate(aux.float(), size=tuple(target.shape[1:]), mode="bilinear", align_corners=False)
        loss = loss + aux_weight * segmentation_loss(aux.float(), target, num_phases, reduce=reduce)
    return loss


def segmentation_loss(logits, target, num_phases: int, reduce: Callable | None = None):
    """Cross-entropy + soft Dice, both ignoring unlabeled (255) pixels.

    Parameters
    ----------
    logits : torch.Tensor
        (B, K, H, W).
    target : torch.Tensor
        (B, H, W) phase ids, 255 unlabeled.
    num_phases : int
    reduce : callable, optional
        ``(tensor) -> (sum of the tensor over the ranks, number of ranks)``, without gradient
        (:func:`napari_metalseg.distributed.sum_over_ranks`): the loss of the global batch (module docstring).
    """
    import torch
    import torch.nn.functional as F

    valid = target != UNLABELED
    ce_sum = F.cross_entropy(logits, target, ignore_index=UNLABELED, reduction="sum")
    count = valid.sum().to(ce_sum.dtype)
    mask = valid.unsqueeze(1).float()
    probs = torch.softmax(logits.float(), dim=1) * mask
    onehot = F.one_hot(torch.where(valid, target, 0), num_phases).permute(0, 3, 1, 2).float() * mask
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    denom = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    if reduce is None:
        dice = (2 * inter + 1) / (denom + 1)
        return ce_sum / count.clamp(min=1) + (1 - dice.mean())
    sums, world = reduce(torch.cat([ce_sum.detach()[None], count[None], inter.detach(), denom.detach()]))
    g_ce, g_count, g_inter, g_denom = sums[0], sums[1].clamp(min=1), sums[2 : 2 + num_phases], sums[2 + num_phases :]
    value = g_ce / g_count + (1 - ((2 * g_inter + 1) / (g_denom + 1)).mean())
    # d value / d (this rank's sums), applied to them: its gradient is this rank's share of the global gradient
    share = ce_sum / g_count - (2 * inter / (g_denom + 1) - (2 * g_inter + 1) * denom / (g_denom + 1) ** 2).mean()
    surrogate = world * share
    return surrogate - surrogate.detach() + value
