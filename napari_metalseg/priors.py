"""Phase-fraction priors: shift a phase map's logits so that its labels have the phase fractions the user gives.

A metallurgist often knows the phase fractions of a micrograph before segmenting it (point counting after ASTM E562,
the lever rule, dilatometry). A model trained on a few micrographs is usually biased towards the fractions it was
trained on: it labels too much or too little of a phase. Given the fractions, one constant per phase is added to the
logits, the same everywhere, chosen so that the most probable phase of each pixel covers the given fractions. This is
a change of the prior of Bayes' rule: ``p'(k | x) ∝ p(k | x) exp(b_k)``. It moves only the pixels the model was least
sure of, whatever the model.
"""

from __future__ import annotations

import numpy as np

MAX_PIXELS = 1 << 16
"""The most map pixels the biases are fitted on (an even grid of a larger map's pixels)."""


def fraction_biases(logits, fractions: np.ndarray, *, tolerance: float = 0.002, max_iter: int = 50):
    """Per-phase biases ``b`` (K,) such that the phase fractions of ``argmax(logits + b)`` are ``fractions``.

    Parameters
    ----------
    logits : torch.Tensor
        (K, H, W) logits or log-probabilities of one micrograph (no padding).
    fractions : ndarray
        (K,) target phase fractions, summing to 1.
    tolerance : float
        Stop when every phase's fraction is within this of its target.
    max_iter : int
        At most this many rounds over the phases; the biases with the smallest largest error are returned.

    Returns
    -------
    torch.Tensor
        (K,) float32 biases, summing to 0.

    Notes
    -----
    Coordinate updates on the labels of at most :data:`MAX_PIXELS` map pixels: phase ``k`` wins a pixel where its
    biased logit exceeds the others' largest, so its bias is set to the quantile of that difference at which it wins
    the fraction ``fractions[k]`` of the pixels, the other biases held; phases in turn until every fraction is within
    ``tolerance``. A phase with target 0 is pushed out of the map; a phase the model never predicts is pushed in.
    """
    import torch

    k = logits.shape[0]
    step = max(1, int(np.ceil(np.sqrt(logits[0].numel() / MAX_PIXELS))))
    flat = logits[:, ::step, ::step].reshape(k, -1).double()  # an even grid of pixels
    n = flat.shape[1]
    target = torch.as_tensor(np.asarray(fractions, np.float64), dtype=torch.float64)
    bias = torch.zeros(k, dtype=torch.float64)
    best, best_error = bias.clone(), float("inf")
    for _ in range(max_iter):
        labels = torch.argmax(flat + bias[:, None], 0)
        error = float((torch.bincount(labels, minlength=k).double() / n - target).abs().max())
        if error < best_error:
            best, best_error = bias.clone(), error
        if error <= tolerance:
            break
        for j in range(k):
            shifted = flat + bias[:, None]
            shifted[j] = -torch.inf
            margin = shifted.max(0).values - flat[j]  # phase j wins the pixels where its bias exceeds the margin
            wins = int(round(float(target[j]) * n))
            if wins <= 0:
                bias[j] = margin.min() - 1.0
            elif wins >= n:
                bias[j] = margin.max() + 1.0
            else:  # between the margins of the last pixel won and the first one lost
                last_won = torch.kthvalue(margin, wins).values
                lost = margin[margin > last_won]
                bias[j] = (last_won + (lost.min() if lost.numel() else last_won + 1.0)) / 2
        bias -= bias.mean()
    return best.float()
