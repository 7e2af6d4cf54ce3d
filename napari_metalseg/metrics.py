"""Segmentation metrics: confusion matrix, Dice and IoU per phase, mean Dice, grouping by magnification, where the
wrong pixels lie (distance to the reference's phase boundaries), and the seed study's table format.

Conventions: masks hold phase indices ``0..K-1``; pixels where the *target* is :data:`~napari_metalseg.phases.UNLABELED`
(255) are ignored. Dice of a phase is ``2 TP / (2 TP + FP + FN)``; a phase absent from both target and prediction of
an image has no Dice (NaN) and is left out of that image's mean. Mean Dice is reported in percent, as in the seed
study. A group's score (one magnification) is the mean over its images of the per-image mean Dice; the table's
``Avg.`` column is the mean of the magnification columns, as in the study's tables.

Examples
--------
>>> import numpy as np
>>> target = np.array([[0, 0, 1, 1]], dtype=np.uint8)
>>> pred = np.array([[0, 1, 1, 1]], dtype=np.uint8)
>>> cm = confusion_matrix(pred, target, num_phases=2)
>>> dice_per_phase(cm).round(4).tolist()
[0.6667, 0.8]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import UNLABELED


def confusion_matrix(
    pred: np.ndarray, target: np.ndarray, num_phases: int, ignore_index: int = UNLABELED
) -> np.ndarray:
    """Confusion matrix ``cm[true, predicted]`` over the labelled pixels of ``target``.

    Parameters
    ----------
    pred, target : ndarray
        Integer masks of the same shape; ``pred`` in ``0..K-1``, ``target`` in ``0..K-1`` or ``ignore_index``.
    num_phases : int
        K.
    ignore_index : int
        Target value of unlabeled pixels.

    Returns
    -------
    ndarray of int64, shape (K, K)
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise MetalsegError(f"prediction shape {pred.shape} != target shape {target.shape}")
    valid = target != ignore_index
    t = target[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    if t.size and (t.max() >= num_phases or t.min() < 0):
        raise MetalsegError(f"target holds values outside 0..{num_phases - 1} and {ignore_index}")
    if p.size and (p.max() >= num_phases or p.min() < 0):
        raise MetalsegError(f"prediction holds values outside 0..{num_phases - 1}")
    return np.bincount(t * num_phases + p, minlength=num_phases * num_phases).reshape(num_phases, num_phases)


def dice_per_phase(cm: np.ndarray) -> np.ndarray:
    """Dice of each phase from a confusion matrix (NaN for a phase absent from target and prediction)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # (TP + FP) + (TP + FN)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def iou_per_phase(cm: np.ndarray) -> np.ndarray:
    """Intersection over union of each phase (NaN for a phase absent from target and prediction)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_dice(cm: np.ndarray) -> float:
    """Mean Dice over the phases present (in target or prediction), in percent; NaN when nothing is labelled."""
    dice = dice_per_phase(cm)
    return float(np.nanmean(dice) * 100) if np.isfinite(dice).any() else float("nan")


def pixel_accuracy(cm: np.ndarray) -> float:
    cm = np.asarray(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


BOUNDARY_BANDS = (2.0, 5.0, 10.0)
"""Upper edges (px) of the distance bands of :func:`errors_by_boundary_distance`: 0-2, 2-5, 5-10 and over 10 px."""


def boundary_distance(target: np.ndarray, ignore_index: int = UNLABELED) -> np.ndarray:
    """Distance (px) of every pixel to the nearest boundary between two phases of ``target``.

    A boundary pixel is a labelled pixel with a 4-neighbour of another labelled phase (distance 0); the edge of an
    unlabeled region is no boundary. Without any boundary every distance is infinite.
    """
    from scipy import ndimage as ndi

    target = np.asarray(target)
    edge = np.zeros(target.shape, bool)
    for axis in range(target.ndim):
        a = [slice(None)] * target.ndim
        b = [slice(None)] * target.ndim
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        left, right = target[tuple(a)], target[tuple(b)]
        differs = (left != right) & (left != ignore_index) & (right != ignore_index)
        edge[tuple(a)] |= differs
        edge[tuple(b)] |= differs
    if not edge.any():
        return np.full(target.shape, np.inf)
    return ndi.distance_transform_edt(~edge)


def errors_by_boundary_distance(
    pred: np.ndarray, target: np.ndarray, ignore_index: int = UNLABELED
) -> tuple[np.ndarray, np.ndarray]:
    """Wrong and labelled pixels of ``target`` per distance band to its phase boundaries (:data:`BOUNDARY_BANDS`).

    Wrong pixels near a boundary are a boundary placed a little off; wrong pixels far from every boundary are a
    region given the wrong phase.

    Returns
    -------
    wrong, labelled : ndarray of int64, shape (len(BOUNDARY_BANDS) + 1,)
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise MetalsegError(f"prediction shape {pred.shape} != target shape {target.shape}")
    valid = target != ignore_index
    band = np.searchsorted(np.asarray(BOUNDARY_BANDS), boundary_distance(target, ignore_index)[valid], side="right")
    n = len(BOUNDARY_BANDS) + 1
    wrong = np.bincount(band[pred[valid] != target[valid]], minlength=n).astype(np.int64)
    return wrong, np.bincount(band, minlength=n).astype(np.int64)


def band_labels() -> list[str]:
    """Names of the distance bands: ``"0-2 px"`` ... ``"over 10 px"``."""
    edges = (0.0, *BOUNDARY_BANDS)
    return [f"{lo:g}-{hi:g} px" for lo, hi in zip(edges, edges[1:])] + [f"over {BOUNDARY_BANDS[-1]:g} px"]


@dataclass
class ImageScore:
    """Scores of one image (``wrong``/``labelled``: pixels per band of :func:`errors_by_boundary_distance`)."""

    name: str
    magnification: float | None
    confusion: np.ndarray
    wrong: np.ndarray | None = None
    labelled: np.ndarray | None = None

    @property
    def dice(self) -> np.ndarray:
        return dice_per_phase(self.confusion)

    @property
    def mean_dice(self) -> float:
        return mean_dice(self.confusion)


@dataclass
class Evaluation:
    """Scores of a set of images: per image, per magnification, and overall; with ``boundaries``, also where the
    wrong pixels lie (:func:`errors_by_boundary_distance`: a distance transform per image, 0.3 s for 2048 x 1536, so
    not in training's validation or the live preview)."""

    phase_names: list[str]
    images: list[ImageScore] = field(default_factory=list)
    boundaries: bool = False

    def add(self, name: str, pred: np.ndarray, target: np.ndarray, magnification: float | None = None) -> ImageScore:
        cm = confusion_matrix(pred, target, len(self.phase_names))
        bands = errors_by_boundary_distance(pred, target) if self.boundaries else (None, None)
        score = ImageScore(name, magnification, cm, *bands)
        self.images.append(score)
        return score

    @property
    def confusion(self) -> np.ndarray:
        k = len(self.phase_names)
        return sum((s.confusion for s in self.images), np.zeros((k, k), dtype=np.int64))

    def by_magnification(self) -> dict[str, float]:
        """Mean Dice (%) per magnification label (``"x3000"``, or ``"unknown"``), ordered by magnification."""
        groups: dict[float | None, list[float]] = {}
        for score in self.images:
            groups.setdefault(score.magnification, []).append(score.mean_dice)
        ordered = sorted(groups, key=lambda m: (m is None, m or 0))
        return {magnification_label(m): _nanmean(groups[m]) for m in ordered}

    @property
    def average(self) -> float:
        """The table's ``Avg.``: mean over magnification groups of their mean Dice (%)."""
        return _nanmean(list(self.by_magnification().values()))

    def dice_per_phase(self) -> dict[str, float]:
        """Dice (%) per phase: mean over images where the phase occurs."""
        stacked = np.array([s.dice for s in self.images]) if self.images else np.zeros((0, len(self.phase_names)))
        return {
            n: _nanmean(list(stacked[:, i])) * 100 if len(stacked) else float("nan")
            for i, n in enumerate(self.phase_names)
        }

    def errors_by_boundary(self, images: Sequence[ImageScore] | None = None) -> dict[str, dict[str, float]]:
        """Where the wrong pixels of every image (or of ``images``) lie, per distance band to the reference's phase
        boundaries: the band's ``share`` of all wrong pixels (%) and its ``error_rate``, the wrong pixels among its
        labelled ones (%); NaN without any wrong (or labelled) pixel, and for images scored without ``boundaries``."""
        scored = [s for s in (self.images if images is None else images) if s.wrong is not None]
        n = len(BOUNDARY_BANDS) + 1
        wrong = sum((s.wrong for s in scored), np.zeros(n, np.int64))
        labelled = sum((s.labelled for s in scored), np.zeros(n, np.int64))
        share = wrong * 100.0 / wrong.sum() if wrong.sum() else np.full(n, np.nan)
        rate = np.divide(wrong * 100.0, labelled, out=np.full(n, np.nan), where=labelled > 0)
        return {band: {"share": float(share[i]), "error_rate": float(rate[i])} for i, band in enumerate(band_labels())}

    def format_errors_by_boundary(self) -> str:
        """One line: the share of the wrong pixels in each distance band (:meth:`errors_by_boundary`)."""
        parts = [
            f"{band} {v['share']:.1f} % ({v['error_rate']:.1f} % of those pixels wrong)"
            if np.isfinite(v["error_rate"])
            else f"{band}: no labelled pixels"
            for band, v in self.errors_by_boundary().items()
        ]
        return "wrong pixels by distance to the reference's phase boundaries: " + "; ".join(parts)

    def to_dict(self) -> dict:
        return {
            "phases": self.phase_names,
            "mean_dice": self.average,
            "by_magnification": self.by_magnification(),
            "dice_per_phase": self.dice_per_phase(),
            "iou_per_phase": dict(zip(self.phase_names, (iou_per_phase(self.confusion) * 100).tolist())),
            "pixel_accuracy": pixel_accuracy(self.confusion),
            "confusion_matrix": self.confusion.tolist(),
            **({"errors_by_boundary": self.errors_by_boundary()} if self.boundaries else {}),
            "images": [
                {
                    "name": s.name,
                    "magnification": s.magnification,
                    "mean_dice": s.mean_dice,
                    "dice": dict(zip(self.phase_names, (s.dice * 100).tolist())),
                    **({"errors_by_boundary": self.errors_by_boundary([s])} if self.boundaries else {}),
                }
                for s in self.images
            ],
        }


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


def magnification_label(magnification: float | None) -> str:
    """``3000 -> "x3000"``; ``None -> "unknown"``."""
    return "unknown" if magnification is None else f"x{magnification:g}"


def format_seed_table(
    rows: Mapping[str, Mapping[str, float]], columns: Iterable[str] | None = None, decimals: int = 2
) -> str:
    """Format scores like the seed study's tables: one row per model, one column per magnification, then ``Avg.``.

    Parameters
    ----------
    rows : mapping
        ``{model name: {magnification label: mean Dice %}}`` (e.g. from :meth:`Evaluation.by_magnification`).
    columns : iterable of str, optional
        Column order; default: every label seen, in first-seen order.
    decimals : int
        Digits after the point.

    Examples
    --------
    >>> print(format_seed_table({"LoRA-SAM (512)": {"x2700": 86.02, "x3000": 79.43, "x5000": 87.80}}))
    Model           x2700  x3000  x5000   Avg.
    LoRA-SAM (512)  86.02  79.43  87.80  84.42
    """
    if columns is None:
        columns = []
        for scores in rows.values():
            columns.extend(c for c in scores if c not in columns)
    columns = list(columns)
    header = ["Model", *columns, "Avg."]
    table = [header]
    for name, scores in rows.items():
        values = [scores.get(c, float("nan")) for c in columns]
        avg = _nanmean(values)
        table.append([name, *(_fmt(v, decimals) for v in values), _fmt(avg, decimals)])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = []
    for r in table:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _fmt(value: float, decimals: int) -> str:
    return "-" if not np.isfinite(value) else f"{value:.{decimals}f}"
