"""Phase-fraction quantification a metallurgist can report: area fractions, ASTM E562 point counts, field statistics
(mean, s, 95 % CI, % relative accuracy), island morphology and, when a ground truth exists, predicted vs true.

GUI-free (numpy, scipy, scikit-image; matplotlib only for :meth:`Report.figure`), so the CLI and the napari widget
call the same functions. See ``docs/quantify.md`` for the methods written for metallurgists.

Conventions
-----------
* A *field* is one mask (one micrograph): ``uint8``, phase index ``0..K-1`` or :data:`~napari_metalseg.phases.UNLABELED`
  (255). Unlabeled pixels are left out of every number.
* **Area fraction** of a phase = its pixels / labelled pixels of the field.
* **Point fraction** ``P_P`` (ASTM E562 systematic point count): a regular grid of points ``spacing`` pixels apart,
  centred on the field. Points on unlabeled pixels are not counted. A point is *on a boundary* when one of its four
  edge neighbours (up, down, left, right; unlabeled pixels and pixels outside the field do not count) belongs to
  another phase. A point inside a phase scores 1 for that phase; a point on a boundary scores 1/2 for its own phase
  and the other 1/2 is split equally over the distinct other phases among its neighbours (1/4 each at a triple
  point). ``P_P`` of a phase = its score / number of counted points.
* **Islands**: 8-connected regions of one phase (:func:`skimage.measure.label` with ``connectivity=2``). Area and
  equivalent circle diameter ``ECD = sqrt(4 A / pi)`` are in um^2 / um when the pixel size is known, else in px^2 / px.
  Islands cut by the field edge are measured as they appear.
* **Field statistics** over the ``n`` fields of a sample (ASTM E562 section 10): mean, sample standard deviation
  ``s`` (``n - 1`` in the denominator), ``95 % CI = t(0.975, n - 1) * s / sqrt(n)``, ``%RA = 95 % CI / mean * 100``.
  Fields needed for 10 % RA: the smallest ``n >= 2`` with ``t(0.975, n - 1) * s / sqrt(n) <= 0.10 * mean``, i.e.
  ``n = ceil((t * s / (0.1 * mean))^2)`` solved with ``t`` taken at that same ``n`` (``s`` assumed to stay as
  measured).

Examples
--------
>>> import numpy as np
>>> from napari_metalseg.phases import PhaseSet
>>> mask = np.zeros((40, 40), dtype=np.uint8)
>>> mask[:, 20:] = 1
>>> mask[:8] = 255                       # unlabeled rows are left out
>>> r = quantify_mask(mask, PhaseSet.from_names(["ferrite", "martensite"]), pixel_size_um=0.5, name="f1")
>>> r.fractions
{'ferrite': 0.5, 'martensite': 0.5}
>>> r.islands, r.length_unit
({'ferrite': 1, 'martensite': 1}, 'um')
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_metalseg.errors import MetalsegError
from napari_metalseg.io.atomic import atomic_write_text
from napari_metalseg.phases import UNLABELED, PhaseSet

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from napari_metalseg.data.dataset import Dataset

__all__ = [
    "AUTO_GRID_POINTS",
    "GROUPINGS",
    "TARGET_RA",
    "FieldResult",
    "IslandStats",
    "Report",
    "SampleSummary",
    "check_mask",
    "fields_needed",
    "fraction_statistics",
    "grid_offset",
    "group_fields",
    "island_stats",
    "make_report",
    "point_count",
    "quantify_mask",
    "quantify_masks",
    "resolve_grid_spacing",
    "summarize",
]

AUTO_GRID_POINTS = 256
"""With ``grid_spacing=None`` the spacing is chosen so that a field holds about this many grid points (16 x 16)."""

TARGET_RA = 10.0
"""% relative accuracy above which a sample gets a warning (the usual E562 target)."""

GROUPINGS = ("sample", "magnification", "all")
"""How fields are grouped into samples: metadata ``sample`` column, magnification, or all fields together."""

CONNECTIVITY = 2
"""Island connectivity for :func:`skimage.measure.label` (2 = 8-connected: diagonal neighbours join)."""

_MEASURES = ("area", "points")
_NO_CI = "CI needs >= 2 fields"


# ----------------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------------


@dataclass
class IslandStats:
    """Islands (connected regions) of one phase in one field; sizes in ``unit^2`` / ``unit`` (None: no island)."""

    count: int
    mean_area: float | None
    median_area: float | None
    mean_diameter: float | None
    median_diameter: float | None


@dataclass
class FieldResult:
    """Everything measured on one field (one mask).

    Dictionaries are keyed by phase name in phase order. Values that do not exist are ``None`` (never NaN): the
    point fractions of a field whose grid points all fall on unlabeled pixels, island sizes of a phase without
    islands, true fractions without ground truth.
    """

    image: str
    fractions: dict[str, float]
    point_fractions: dict[str, float | None]
    points: int
    grid_spacing: int
    pixels: dict[str, int]
    islands: dict[str, int]
    mean_island_area: dict[str, float | None]
    median_island_area: dict[str, float | None]
    mean_diameter: dict[str, float | None]
    median_diameter: dict[str, float | None]
    length_unit: str
    magnification: float | None = None
    pixel_size_um: float | None = None
    sample: str = ""
    true_fractions: dict[str, float] | None = None

    @property
    def area_unit(self) -> str:
        """``"um^2"`` or ``"px^2"``."""
        return f"{self.length_unit}^2"

    @property
    def phase_names(self) -> list[str]:
        return list(self.fractions)

    @property
    def labelled_pixels(self) -> int:
        return int(sum(self.pixels.values()))

    @property
    def abs_errors(self) -> dict[str, float] | None:
        """``|area fraction - true fraction|`` per phase, or None without ground truth."""
        if self.true_fractions is None:
            return None
        return {p: abs(self.fractions[p] - self.true_fractions[p]) for p in self.fractions}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (no NaN)."""
        return {
            "image": self.image, "magnification": self.magnification, "pixel_size_um": self.pixel_size_um,
            "sample": self.sample, "length_unit": self.length_unit, "area_unit": self.area_unit,
            "labelled_pixels": self.labelled_pixels, "points": self.points, "grid_spacing_px": self.grid_spacing,
            "fractions": self.fractions, "point_fractions": self.point_fractions, "pixels": self.pixels,
            "islands": self.islands, "mean_island_area": self.mean_island_area,
            "median_island_area": self.median_island_area, "mean_diameter": self.mean_diameter,
            "median_diameter": self.median_diameter, "true_fractions": self.true_fractions,
            "abs_errors": self.abs_errors,
        }


@dataclass
class SampleSummary:
    """Field statistics of one sample (group of fields) for one measure (``"area"`` or ``"points"``).

    ``std``, ``ci95``, ``relative_accuracy`` (percent) and ``fields_needed`` are None where they are undefined: with
    one field (the CI needs >= 2 fields) or, for ``relative_accuracy`` / ``fields_needed``, a phase whose mean is 0.
    Morphology (``islands_per_field``, ``mean_island_area``, ``mean_diameter``) pools the islands of all fields:
    mean area = total island area / number of islands, mean ECD = island-weighted mean of the field means.
    """

    sample: str
    n_fields: int
    fields: list[str]
    mean: dict[str, float]
    std: dict[str, float | None]
    ci95: dict[str, float | None]
    relative_accuracy: dict[str, float | None]
    fields_needed: dict[str, int | None]
    warnings: list[str]
    measure: str = "area"
    t: float | None = None
    true_mean: dict[str, float] | None = None
    islands_per_field: dict[str, float] = field(default_factory=dict)
    mean_island_area: dict[str, float | None] = field(default_factory=dict)
    mean_diameter: dict[str, float | None] = field(default_factory=dict)
    length_unit: str | None = None

    def stats_dict(self) -> dict[str, Any]:
        return {"n_fields": self.n_fields, "t": self.t, "mean": self.mean, "std": self.std, "ci95": self.ci95,
                "relative_accuracy_pct": self.relative_accuracy, "fields_needed_for_10pct_ra": self.fields_needed}


# ----------------------------------------------------------------------------------------------------
# one field
# ----------------------------------------------------------------------------------------------------


def quantify_mask(
    mask: np.ndarray,
    phases: PhaseSet | Sequence[str],
    pixel_size_um: float | None = None,
    grid_spacing: int | None = None,
    name: str = "",
    magnification: float | None = None,
    sample: str = "",
    true_fractions: Mapping[str, float] | Sequence[float] | None = None,
    offset: tuple[int, int] | None = None,
) -> FieldResult:
    """Measure one field: area fractions, E562 point fractions and island morphology.

    Parameters
    ----------
    mask : ndarray
        2-D mask, phase index ``0..K-1`` or 255 (unlabeled).
    phases : PhaseSet or sequence of str
        The K phases (order = index).
    pixel_size_um : float, optional
        Micrometres per pixel; island sizes are then in um^2 / um, else in px^2 / px.
    grid_spacing : int, optional
        Point-count grid spacing in pixels; None chooses one giving about :data:`AUTO_GRID_POINTS` points.
    name : str
        Field name, used in error messages and reports.
    magnification, sample : optional
        Carried into the result for grouping.
    true_fractions : mapping or sequence, optional
        Ground-truth fraction of each phase (by name or in phase order).
    offset : (int, int), optional
        Grid origin ``(row, col)``; default centres the grid (see :func:`grid_offset`).

    Returns
    -------
    FieldResult

    Raises
    ------
    MetalsegError
        When the mask holds values that are not phases (``>= K`` and not 255) or has no labelled pixel.

    Examples
    --------
    >>> import numpy as np
    >>> mask = np.zeros((10, 10), dtype=np.uint8)
    >>> mask[3:5, 3:5] = 1
    >>> r = quantify_mask(mask, ["ferrite", "martensite"], pixel_size_um=0.5)
    >>> r.fractions["martensite"], r.mean_island_area["martensite"], r.area_unit
    (0.04, 1.0, 'um^2')
    """
    phases = _as_phases(phases)
    names = phases.names
    k = len(phases)
    mask = check_mask(mask, k, name)
    counts = _pixel_counts(mask, k)
    total = int(counts.sum())
    if total == 0:
        raise MetalsegError(f"{name or 'mask'}: no labelled pixels (every pixel is 255 = unlabeled)")
    pixel_size_um = _check_pixel_size(pixel_size_um, name)
    spacing = resolve_grid_spacing(mask.shape, grid_spacing)
    pp, n_points = point_count(mask, k, spacing, offset)
    islands = island_stats(mask, k, pixel_size_um)
    return FieldResult(
        image=name,
        fractions={p: float(c) / total for p, c in zip(names, counts)},
        point_fractions={p: (float(v) if n_points else None) for p, v in zip(names, pp)},
        points=n_points,
        grid_spacing=spacing,
        pixels={p: int(c) for p, c in zip(names, counts)},
        islands={p: s.count for p, s in zip(names, islands)},
        mean_island_area={p: s.mean_area for p, s in zip(names, islands)},
        median_island_area={p: s.median_area for p, s in zip(names, islands)},
        mean_diameter={p: s.mean_diameter for p, s in zip(names, islands)},
        median_diameter={p: s.median_diameter for p, s in zip(names, islands)},
        length_unit="um" if pixel_size_um else "px",
        magnification=magnification,
        pixel_size_um=pixel_size_um,
        sample=sample,
        true_fractions=_check_truth(true_fractions, names, name),
    )


def check_mask(mask: np.ndarray, num_phases: int, name: str = "") -> np.ndarray:
    """Return ``mask`` as a 2-D array, or raise naming ``name`` when a value is not a phase index nor 255."""
    mask = np.asarray(mask)
    where = name or "mask"
    if mask.ndim != 2:
        raise MetalsegError(f"{where}: mask must be 2-D, got shape {mask.shape}")
    if mask.dtype.kind not in "ui":
        raise MetalsegError(f"{where}: mask must hold integers (phase index or 255), got {mask.dtype}")
    bad = np.unique(mask[((mask >= num_phases) | (mask < 0)) & (mask != UNLABELED)])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:8]) + (" ..." if bad.size > 8 else "")
        raise MetalsegError(f"{where}: label values {shown} are not phases 0..{num_phases - 1} or 255 (unlabeled); "
                            f"is it a mask of another phase set?")
    return mask


def _pixel_counts(mask: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(mask[mask != UNLABELED].ravel().astype(np.int64), minlength=k)[:k]


def resolve_grid_spacing(shape: tuple[int, ...], grid_spacing: int | None) -> int:
    """The grid spacing in pixels: ``grid_spacing`` checked, or for None ``round(sqrt(H * W / 256))`` (>= 1).

    >>> resolve_grid_spacing((96, 96), None), resolve_grid_spacing((512, 512), None), resolve_grid_spacing((5, 5), 16)
    (6, 32, 16)
    """
    if grid_spacing is None:
        return max(1, int(round(math.sqrt(shape[0] * shape[1] / AUTO_GRID_POINTS))))
    return _check_spacing(grid_spacing)


def _check_spacing(spacing: object) -> int:
    if isinstance(spacing, bool) or not isinstance(spacing, (int, np.integer)) or spacing < 1:
        raise MetalsegError(f"grid spacing must be a positive whole number of pixels, got {spacing!r}")
    return int(spacing)


def grid_offset(shape: tuple[int, ...], spacing: int) -> tuple[int, int]:
    """Default grid origin ``(row, col)``: ``((H - 1) % spacing) // 2``, which centres the grid in the field."""
    return ((shape[0] - 1) % spacing) // 2, ((shape[1] - 1) % spacing) // 2


def point_count(mask: np.ndarray, num_phases: int, spacing: int,
                offset: tuple[int, int] | None = None) -> tuple[np.ndarray, int]:
    """ASTM E562 systematic point count on a regular grid, with the 1/2 rule for points on a boundary.

    Grid points are at rows ``offset[0] + i * spacing`` and columns ``offset[1] + j * spacing``. Points on
    unlabeled pixels (255) are not counted. A point whose 4-neighbourhood (unlabeled pixels and pixels outside the
    field ignored) holds another phase is on a boundary: it scores 1/2 for its own phase and 1/2 split equally over
    the distinct other phases among its neighbours; any other point scores 1 for its phase.

    Parameters
    ----------
    mask : ndarray
        2-D mask (phase index ``0..K-1`` or 255).
    num_phases : int
        K.
    spacing : int
        Grid spacing in pixels (>= 1).
    offset : (int, int), optional
        Grid origin; default :func:`grid_offset` (centred grid).

    Returns
    -------
    point_fractions : ndarray of float, shape (K,)
        ``P_P`` per phase: score / counted points (all 0 when no point was counted).
    n_points : int
        Number of counted grid points (on labelled pixels).

    Examples
    --------
    >>> import numpy as np
    >>> mask = np.array([[0, 0, 1, 1]] * 3, dtype=np.uint8)
    >>> pp, n = point_count(mask, 2, spacing=10, offset=(1, 1))   # one point, next to phase 1
    >>> pp.tolist(), n
    ([0.5, 0.5], 1)
    """
    mask = check_mask(mask, num_phases)
    spacing = _check_spacing(spacing)
    oy, ox = grid_offset(mask.shape, spacing) if offset is None else _check_offset(offset)
    padded = np.pad(mask.astype(np.int64), 1, constant_values=UNLABELED)
    yy, xx = np.meshgrid(np.arange(oy, mask.shape[0], spacing) + 1, np.arange(ox, mask.shape[1], spacing) + 1,
                         indexing="ij")
    own = padded[yy, xx].ravel()
    keep = own != UNLABELED
    own, yy, xx = own[keep], yy.ravel()[keep], xx.ravel()[keep]
    n = int(own.size)
    if n == 0:
        return np.zeros(num_phases), 0
    neighbours = np.stack([padded[yy - 1, xx], padded[yy + 1, xx], padded[yy, xx - 1], padded[yy, xx + 1]])
    other = (neighbours != own) & (neighbours != UNLABELED)
    touching = np.zeros((n, num_phases), dtype=bool)
    touching[np.broadcast_to(np.arange(n), neighbours.shape)[other], neighbours[other]] = True
    n_other = touching.sum(axis=1)
    on_boundary = n_other > 0
    score = np.bincount(own, weights=np.where(on_boundary, 0.5, 1.0), minlength=num_phases)[:num_phases]
    score = score + (touching * np.where(on_boundary, 0.5 / np.maximum(n_other, 1), 0.0)[:, None]).sum(axis=0)
    return score / n, n


def _check_offset(offset: object) -> tuple[int, int]:
    try:
        oy, ox = (int(v) for v in offset)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise MetalsegError(f"grid offset must be two whole numbers (row, col), got {offset!r}") from None
    if oy < 0 or ox < 0:
        raise MetalsegError(f"grid offset must be >= 0, got {offset!r}")
    return oy, ox


def island_stats(mask: np.ndarray, num_phases: int, pixel_size_um: float | None = None) -> list[IslandStats]:
    """Islands of each phase: 8-connected regions (``skimage.measure.label``, ``connectivity=2``).

    Areas are ``pixels * pixel_size_um**2`` (um^2) or pixels (px^2) without a pixel size; the equivalent circle
    diameter of an island is ``sqrt(4 * area / pi)``. Mean and median are over the islands of the field.

    Examples
    --------
    >>> import numpy as np
    >>> mask = np.zeros((30, 30), dtype=np.uint8)
    >>> mask[5:15, 5:15] = 1
    >>> s = island_stats(mask, 2, pixel_size_um=0.5)[1]
    >>> s.count, s.mean_area, round(s.mean_diameter, 4)
    (1, 25.0, 5.6419)
    """
    from skimage import measure

    scale = float(pixel_size_um) ** 2 if pixel_size_um else 1.0
    out = []
    for k in range(num_phases):
        labels, n = measure.label(mask == k, connectivity=CONNECTIVITY, return_num=True)
        if n == 0:
            out.append(IslandStats(0, None, None, None, None))
            continue
        areas = np.bincount(labels.ravel())[1:].astype(np.float64) * scale
        diameters = np.sqrt(4.0 * areas / np.pi)
        out.append(IslandStats(int(n), float(areas.mean()), float(np.median(areas)), float(diameters.mean()),
                               float(np.median(diameters))))
    return out


# ----------------------------------------------------------------------------------------------------
# statistics over fields
# ----------------------------------------------------------------------------------------------------


def _t975(dof: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, dof))


def fields_needed(mean: float, std: float, target_ra: float = TARGET_RA) -> int | None:
    """Fields needed for ``target_ra`` % relative accuracy, assuming the field-to-field ``std`` stays as measured.

    The smallest ``n >= 2`` with ``t(0.975, n - 1) * std / sqrt(n) <= target_ra / 100 * mean``: E562's
    ``n = (t * s / (%RA / 100 * mean))^2`` solved with ``t`` taken at that same ``n``. None when ``mean <= 0``.

    >>> fields_needed(0.31, 0.025819889)
    6
    """
    if mean <= 0 or not math.isfinite(mean) or not math.isfinite(std):
        return None
    limit = target_ra / 100.0 * mean
    estimate = math.ceil((1.959964 * std / limit) ** 2)  # normal approximation: a lower bound (t > z)
    if estimate > 100_000:  # t is z to 5 digits here; skip the search
        return estimate
    from scipy import stats

    ns = np.arange(2, max(64, 2 * estimate + 8))
    ok = stats.t.ppf(0.975, ns - 1) * std / np.sqrt(ns) <= limit
    return int(ns[np.argmax(ok)])


def fraction_statistics(values: Sequence[float], target_ra: float = TARGET_RA) -> dict[str, Any]:
    """E562 field statistics of one phase: mean, s, t, 95 % CI, % RA and fields needed for ``target_ra``.

    With one value only the mean is defined; the others are None (the CI needs >= 2 fields).

    >>> s = fraction_statistics([0.30, 0.34, 0.32, 0.28])
    >>> round(s["mean"], 4), round(s["std"], 6), round(s["ci95"], 5), round(s["relative_accuracy"], 2)
    (0.31, 0.02582, 0.04109, 13.25)
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise MetalsegError("no field values to summarise")
    mean = float(x.mean())
    out: dict[str, Any] = {"mean": mean, "std": None, "t": None, "ci95": None, "relative_accuracy": None,
                           "fields_needed": None}
    if x.size < 2:
        return out
    std = float(x.std(ddof=1))
    t = _t975(x.size - 1)
    ci = t * std / math.sqrt(x.size)
    out.update(std=std, t=t, ci95=ci)
    if mean > 0:
        out.update(relative_accuracy=ci / mean * 100.0, fields_needed=fields_needed(mean, std, target_ra))
    return out


def _group_key(f: FieldResult, by: str) -> str:
    if by == "magnification":
        return f"x{f.magnification:g}" if f.magnification else "unknown magnification"
    if by == "all":
        return "all"
    return f.sample or "(no sample)"


def _check_by(by: object) -> str:
    if by not in GROUPINGS:
        raise MetalsegError(f"grouping {by!r} is not one of {', '.join(GROUPINGS)}")
    return str(by)


def group_fields(fields: Iterable[FieldResult], by: str = "sample") -> dict[str, list[FieldResult]]:
    """Fields per sample in order of first appearance (numeric order of magnification for ``by="magnification"``)."""
    by = _check_by(by)
    groups: dict[str, list[FieldResult]] = {}
    for f in fields:
        groups.setdefault(_group_key(f, by), []).append(f)
    if by == "magnification":
        return dict(sorted(groups.items(), key=lambda kv: (kv[1][0].magnification or math.inf, kv[0])))
    return groups


def summarize(fields: Sequence[FieldResult], by: str = "sample", measure: str = "area",
              target_ra: float = TARGET_RA) -> list[SampleSummary]:
    """Per-sample statistics over fields (see the module docstring for the formulas).

    Parameters
    ----------
    fields : sequence of FieldResult
        Fields of one phase set.
    by : {"sample", "magnification", "all"}
        Grouping: the fields' ``sample``, their magnification (``x3000``), or one group of all fields.
    measure : {"area", "points"}
        Summarise area fractions or E562 point fractions (fields without counted points are left out).
    target_ra : float
        % RA above which a warning is added (default 10).

    Returns
    -------
    list of SampleSummary

    Examples
    --------
    >>> import numpy as np
    >>> fields = []
    >>> for i, k in enumerate([30, 34, 32, 28]):
    ...     m = np.zeros(100, dtype=np.uint8); m[:k] = 1
    ...     fields.append(quantify_mask(m.reshape(10, 10), ["ferrite", "martensite"], name=f"f{i}", sample="A"))
    >>> s = summarize(fields)[0]
    >>> round(s.mean["martensite"], 4), round(s.relative_accuracy["martensite"], 2), s.fields_needed["martensite"]
    (0.31, 13.25, 6)
    """
    if measure not in _MEASURES:
        raise MetalsegError(f"measure {measure!r} is not one of {', '.join(_MEASURES)}")
    if not fields:
        raise MetalsegError("no fields to summarise")
    names = fields[0].phase_names
    for f in fields:
        if f.phase_names != names:
            raise MetalsegError(f"{f.image}: phases {f.phase_names} differ from {names} of {fields[0].image}")
    out = []
    for key, members in group_fields(fields, by).items():
        if measure == "points":
            members = [f for f in members if f.points > 0]
            if not members:
                continue
        out.append(_summarize_group(key, members, names, measure, target_ra))
    return out


def _summarize_group(key: str, members: list[FieldResult], names: list[str], measure: str,
                     target_ra: float) -> SampleSummary:
    stats = {}
    for p in names:
        values = [(f.fractions[p] if measure == "area" else f.point_fractions[p]) for f in members]
        stats[p] = fraction_statistics(values, target_ra)  # type: ignore[arg-type]
    summary = SampleSummary(
        sample=key, n_fields=len(members), fields=[f.image for f in members], measure=measure,
        mean={p: s["mean"] for p, s in stats.items()}, std={p: s["std"] for p, s in stats.items()},
        ci95={p: s["ci95"] for p, s in stats.items()},
        relative_accuracy={p: s["relative_accuracy"] for p, s in stats.items()},
        fields_needed={p: s["fields_needed"] for p, s in stats.items()},
        t=next(iter(stats.values()))["t"], warnings=[],
    )
    summary.warnings = _warnings(summary, names, target_ra)
    truths = [f.true_fractions for f in members if f.true_fractions is not None]
    if truths:
        summary.true_mean = {p: float(np.mean([t[p] for t in truths])) for p in names}
    _add_morphology(summary, members, names)
    return summary


def _warnings(s: SampleSummary, names: list[str], target_ra: float) -> list[str]:
    what = "area fraction" if s.measure == "area" else "point count"
    if s.n_fields < 2:
        return [f"{s.sample}: 1 field only, {_NO_CI} ({what})"]
    out = []
    for p in names:
        ra = s.relative_accuracy[p]
        if ra is not None and ra > target_ra:
            out.append(f"{s.sample}, {p} ({what}): %RA {ra:.1f} % > {target_ra:g} % with {s.n_fields} fields; "
                       f"about {s.fields_needed[p]} fields are needed for {target_ra:g} % RA")
    return out


def _add_morphology(s: SampleSummary, members: list[FieldResult], names: list[str]) -> None:
    units = {f.length_unit for f in members}
    s.length_unit = units.pop() if len(units) == 1 else None
    for p in names:
        n = sum(f.islands[p] for f in members)
        s.islands_per_field[p] = n / len(members)
        if n == 0 or s.length_unit is None:
            s.mean_island_area[p] = s.mean_diameter[p] = None
            continue
        s.mean_island_area[p] = sum(f.mean_island_area[p] * f.islands[p] for f in members if f.islands[p]) / n
        s.mean_diameter[p] = sum(f.mean_diameter[p] * f.islands[p] for f in members if f.islands[p]) / n


# ----------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------


@dataclass
class Report:
    """Fields, per-sample summaries (area fractions and E562 point counts) and everything to write them.

    Build one with :func:`quantify_masks` (folders) or :func:`make_report` (fields measured in memory).
    """

    phases: PhaseSet
    fields: list[FieldResult]
    samples: list[SampleSummary]
    point_samples: list[SampleSummary]
    by: str = "sample"
    source: str = ""
    skipped: list[str] = field(default_factory=list)

    @property
    def has_truth(self) -> bool:
        return any(f.true_fractions is not None for f in self.fields)

    @property
    def warnings(self) -> list[str]:
        """Skipped fields, then the area-fraction warnings (samples with %RA > 10 % or one field)."""
        return [*self.skipped, *(w for s in self.samples for w in s.warnings)]

    # -- tables -------------------------------------------------------------------------------------

    def field_rows(self) -> list[dict[str, Any]]:
        """One dict per field with the CSV columns (see :meth:`to_csv`)."""
        return [_field_row(f, self.phases.names, self.has_truth) for f in self.fields]

    def sample_rows(self) -> list[dict[str, Any]]:
        """One dict per sample with the summary CSV columns (see :meth:`summary_csv`)."""
        points = {s.sample: s for s in self.point_samples}
        return [_sample_row(s, points.get(s.sample), self.phases.names, self.by) for s in self.samples]

    def to_csv(self, path: str | Path) -> None:
        """Write one row per field, atomically.

        Columns: ``image, magnification, pixel_size_um, sample``, then per phase ``<phase>_fraction`` (0..1),
        ``<phase>_point_fraction``, ``<phase>_pixels``, ``<phase>_islands``, ``<phase>_mean_island_area``,
        ``<phase>_median_island_area``, ``<phase>_mean_diameter``, ``<phase>_median_diameter`` (and
        ``<phase>_true_fraction``, ``<phase>_abs_error`` when a ground truth exists), then ``length_unit`` (``um`` or
        ``px``; areas are in its square), ``labelled_pixels``, ``points``, ``grid_spacing_px``. Undefined values are
        empty cells.
        """
        atomic_write_text(path, _csv_text(self.field_rows()))

    def summary_csv(self, path: str | Path) -> None:
        """Write one row per sample, atomically.

        Columns: ``sample, grouped_by, n_fields``, then per phase ``<phase>_mean, <phase>_std, <phase>_ci95,
        <phase>_rel_accuracy_pct, <phase>_fields_needed`` (area fractions), the same with ``_point_`` for the E562
        point count (``<phase>_point_mean`` ...), ``<phase>_true_mean`` with a ground truth,
        ``<phase>_islands_per_field, <phase>_mean_island_area, <phase>_mean_diameter``, then ``length_unit``.
        Undefined values (CI of a one-field sample) are empty cells.
        """
        atomic_write_text(path, _csv_text(self.sample_rows()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: phases, grouping, fields, samples (area, point count, morphology), warnings."""
        points = {s.sample: s for s in self.point_samples}
        return _clean({
            "source": self.source, "grouped_by": self.by, "phases": self.phases.to_json(),
            "fields": [f.to_dict() for f in self.fields],
            "samples": [_sample_dict(s, points.get(s.sample)) for s in self.samples],
            "skipped": self.skipped, "warnings": self.warnings,
        })

    def to_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON, atomically (undefined values are null, never NaN)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    def table(self) -> str:
        """The terminal report: fractions per sample with 95 % CI and %RA, morphology, truth, warnings."""
        return _format_report(self)

    # -- chart --------------------------------------------------------------------------------------

    def figure(self) -> Figure:
        """Bar chart of mean area fraction per phase per sample with 95 % CI error bars (matplotlib Figure).

        Uses the object-oriented matplotlib API only (no pyplot), so it neither needs nor changes a GUI backend.
        """
        return _bar_chart(self)

    def plot(self, path: str | Path, dpi: int = 150) -> None:
        """Save :meth:`figure` as an image (format from the suffix, e.g. ``.png``), atomically."""
        from napari_metalseg.io.atomic import atomic_path

        fig = self.figure()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".").lower() or "png")


def make_report(fields: Sequence[FieldResult], phases: PhaseSet | Sequence[str], by: str = "sample",
                source: str = "", skipped: Sequence[str] = ()) -> Report:
    """Summarise measured fields into a :class:`Report` (area fractions and E562 point counts).

    >>> import numpy as np
    >>> m = np.zeros((8, 8), dtype=np.uint8); m[:, 4:] = 1
    >>> report = make_report([quantify_mask(m, ["a", "b"], name="f1", sample="S")], ["a", "b"])
    >>> "CI needs >= 2 fields" in report.table()
    True
    """
    phases = _as_phases(phases)
    by = _check_by(by)
    if not fields:
        raise MetalsegError("no fields to report")
    for f in fields:
        if f.phase_names != phases.names:
            raise MetalsegError(f"{f.image}: phases {f.phase_names} differ from {phases.names}")
    return Report(phases=phases, fields=list(fields), samples=summarize(fields, by, "area"),
                  point_samples=summarize(fields, by, "points"), by=by, source=source, skipped=list(skipped))


def _num(value: Any) -> Any:
    """Plain Python number or None (NaN/inf become None)."""
    if value is None:
        return None
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def _field_row(f: FieldResult, names: list[str], truth: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"image": f.image, "magnification": f.magnification, "pixel_size_um": f.pixel_size_um,
                           "sample": f.sample}
    errors = f.abs_errors
    for p in names:
        row.update({f"{p}_fraction": f.fractions[p], f"{p}_point_fraction": f.point_fractions[p],
                    f"{p}_pixels": f.pixels[p], f"{p}_islands": f.islands[p],
                    f"{p}_mean_island_area": f.mean_island_area[p], f"{p}_median_island_area": f.median_island_area[p],
                    f"{p}_mean_diameter": f.mean_diameter[p], f"{p}_median_diameter": f.median_diameter[p]})
        if truth:
            row[f"{p}_true_fraction"] = f.true_fractions[p] if f.true_fractions else None
            row[f"{p}_abs_error"] = errors[p] if errors else None
    row.update({"length_unit": f.length_unit, "labelled_pixels": f.labelled_pixels, "points": f.points,
                "grid_spacing_px": f.grid_spacing})
    return row


def _sample_row(s: SampleSummary, pts: SampleSummary | None, names: list[str], by: str) -> dict[str, Any]:
    row: dict[str, Any] = {"sample": s.sample, "grouped_by": by, "n_fields": s.n_fields}
    for p in names:
        for prefix, st in (("", s), ("point_", pts)):
            row.update({f"{p}_{prefix}mean": st.mean[p] if st else None, f"{p}_{prefix}std": st.std[p] if st else None,
                        f"{p}_{prefix}ci95": st.ci95[p] if st else None,
                        f"{p}_{prefix}rel_accuracy_pct": st.relative_accuracy[p] if st else None,
                        f"{p}_{prefix}fields_needed": st.fields_needed[p] if st else None})
        if s.true_mean is not None:
            row[f"{p}_true_mean"] = s.true_mean[p]
        row.update({f"{p}_islands_per_field": s.islands_per_field[p], f"{p}_mean_island_area": s.mean_island_area[p],
                    f"{p}_mean_diameter": s.mean_diameter[p]})
    row["length_unit"] = s.length_unit
    return row


def _sample_dict(s: SampleSummary, pts: SampleSummary | None) -> dict[str, Any]:
    return {
        "sample": s.sample, "n_fields": s.n_fields, "fields": s.fields,
        "area_fraction": s.stats_dict(), "point_fraction": pts.stats_dict() if pts else None,
        "true_mean": s.true_mean,
        "morphology": {"length_unit": s.length_unit, "islands_per_field": s.islands_per_field,
                       "mean_island_area": s.mean_island_area, "mean_diameter": s.mean_diameter},
        "warnings": s.warnings + (pts.warnings if pts and s.n_fields >= 2 else []),
    }


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return _num(obj)


def _csv_text(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return buf.getvalue()


def _cell(value: Any) -> str:
    value = _num(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


# ----------------------------------------------------------------------------------------------------
# terminal table
# ----------------------------------------------------------------------------------------------------


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{100.0 * value:.{digits}f}"


def _mean_ci(s: SampleSummary | None, p: str) -> str:
    if s is None:
        return "-"
    if s.ci95[p] is None:
        return f"{_pct(s.mean[p])} ({_NO_CI})"
    return f"{_pct(s.mean[p])} ± {_pct(s.ci95[p])}"


def _ra(s: SampleSummary | None, p: str) -> str:
    if s is None or s.relative_accuracy[p] is None:
        return "-"
    return f"{s.relative_accuracy[p]:.1f}"


def _render_table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _fractions_block(report: Report) -> list[str]:
    points = {s.sample: s for s in report.point_samples}
    rows = []
    for s in report.samples:
        for i, p in enumerate(report.phases.names):
            pts = points.get(s.sample)
            rows.append([s.sample if i == 0 else "", str(s.n_fields) if i == 0 else "", p, _mean_ci(s, p), _ra(s, p),
                         _mean_ci(pts, p), _ra(pts, p)])
    header = ["sample", "fields", "phase", "area %  (mean ± 95% CI)", "%RA", "E562 P_P %  (mean ± 95% CI)", "%RA"]
    return _render_table(header, rows, {1, 4, 6})


def _size(value: float | None, unit: str | None) -> str:
    return "-" if value is None or unit is None else f"{value:.4g} {unit}"


def _morphology_block(report: Report) -> list[str]:
    rows = []
    for s in report.samples:
        unit = s.length_unit
        for i, p in enumerate(report.phases.names):
            rows.append([s.sample if i == 0 else "", p, f"{s.islands_per_field[p]:.1f}",
                         _size(s.mean_island_area[p], f"{unit}^2" if unit else None), _size(s.mean_diameter[p], unit)])
    return _render_table(["sample", "phase", "islands/field", "mean island area", "mean ECD"], rows, {2, 3, 4})


def _truth_block(report: Report) -> list[str]:
    with_truth = [f for f in report.fields if f.true_fractions is not None]
    rows = []
    for p in report.phases.names:
        errors = [f.abs_errors[p] for f in with_truth]  # type: ignore[index]
        rows.append([p, _pct(float(np.mean([f.fractions[p] for f in with_truth]))),
                     _pct(float(np.mean([f.true_fractions[p] for f in with_truth]))),  # type: ignore[index]
                     _pct(float(np.mean(errors))), _pct(float(np.max(errors)))])
    header = ["phase", "predicted %", "true %", "mean |error| (pp)", "max |error| (pp)"]
    return [f"Predicted vs true area fraction ({len(with_truth)} of {len(report.fields)} fields have ground truth)",
            *_render_table(header, rows, {1, 2, 3, 4})]


def _grid_note(report: Report) -> str:
    spacings = sorted({f.grid_spacing for f in report.fields})
    points = [f.points for f in report.fields]
    grid = f"{spacings[0]} px" if len(spacings) == 1 else f"{spacings[0]}..{spacings[-1]} px"
    counts = f"{min(points)}" if min(points) == max(points) else f"{min(points)}..{max(points)}"
    return f"E562 P_P = point count on a grid of {grid} spacing, {counts} points per field"


def _format_report(report: Report) -> str:
    n_samples = len(report.samples)
    lines = [f"Phase fractions: {len(report.fields)} field(s), {n_samples} sample(s) grouped by {report.by}"
             + (f", from {report.source}" if report.source else ""),
             "area % = share of labelled pixels; " + _grid_note(report),
             "95% CI = t(0.975, n-1) * s / sqrt(n); %RA = 95% CI / mean * 100", ""]
    lines += _fractions_block(report)
    lines += ["", "Morphology (8-connected islands, pooled over the fields of each sample)"]
    lines += _morphology_block(report)
    if report.has_truth:
        lines += ["", *_truth_block(report)]
    warnings = report.warnings
    if warnings:
        lines += ["", f"Warnings ({len(warnings)})", *(f"  - {w}" for w in warnings)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# chart
# ----------------------------------------------------------------------------------------------------


def _bar_chart(report: Report) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names, samples = report.phases.names, report.samples
    n_s, n_p = len(samples), len(names)
    fig = Figure(figsize=(max(5.5, 2.2 + 0.45 * n_s * n_p + 0.4 * n_s), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / n_p
    handles = []
    for j, (p, color) in enumerate(zip(names, report.phases.colors)):
        pos = np.arange(n_s) - 0.4 + width * (j + 0.5)
        handles.append(_phase_bars(ax, report, p, color, pos, width))
        truth = _truth_marks(ax, samples, p, pos, width)
    if report.has_truth:
        handles.append(truth)
    ax.set_xticks(np.arange(n_s), [f"{s.sample}\nn = {s.n_fields}" for s in samples], fontsize=9)
    ax.set_ylabel("area fraction (%)")
    top = max(100 * max(f.fractions.values()) for f in report.fields)
    ax.set_ylim(0, min(105.0, top * 1.15 + 2))
    ax.grid(axis="y", color="0.88", zorder=0)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    title = "Phase fractions: mean ± 95 % CI (dots: single fields)"
    if any(s.n_fields < 2 for s in samples):
        title += "\nno error bar: CI needs >= 2 fields"
    ax.set_title(title, fontsize=10)
    ax.legend(handles=handles, frameon=False, fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _phase_bars(ax: Any, report: Report, phase: str, color: str, pos: np.ndarray, width: float) -> Any:
    samples = report.samples
    means = np.array([100 * s.mean[phase] for s in samples])
    has_ci = np.array([s.ci95[phase] is not None for s in samples])
    bars = ax.bar(pos, means, width * 0.92, color=color, edgecolor="black", linewidth=0.6, label=phase, zorder=2)
    if has_ci.any():
        ci = np.array([100 * (s.ci95[phase] or 0.0) for s in samples])
        ax.errorbar(pos[has_ci], means[has_ci], yerr=ci[has_ci], fmt="none", ecolor="black", elinewidth=1.1,
                    capsize=3, zorder=4)
    rng = np.random.default_rng(0)
    by_name = {f.image: f for f in report.fields}
    for i, s in enumerate(samples):
        values = [100 * by_name[name].fractions[phase] for name in s.fields]
        jitter = rng.uniform(-0.2, 0.2, len(values)) * width
        ax.scatter(pos[i] + jitter, values, s=10, color="white", edgecolor="black", linewidth=0.5, zorder=3)
    return bars


def _truth_marks(ax: Any, samples: list[SampleSummary], phase: str, pos: np.ndarray, width: float) -> Any:
    idx = [i for i, s in enumerate(samples) if s.true_mean is not None]
    if not idx:
        return None
    values = [100 * samples[i].true_mean[phase] for i in idx]  # type: ignore[index]
    return ax.hlines(values, pos[idx] - 0.46 * width, pos[idx] + 0.46 * width, colors="black", linestyles="--",
                     linewidth=1.6, zorder=5, label="true (mean)")


# ----------------------------------------------------------------------------------------------------
# folders
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Source:
    """A mask file to quantify, with what metadata says about it."""

    name: str
    path: Path
    magnification: float | None = None
    pixel_size_um: float | None = None
    sample: str = ""
    true_fractions: dict[str, float] | None = None


def quantify_masks(
    source: str | Path | Dataset,
    phases: PhaseSet | str | Path | None = None,
    by: str = "sample",
    grid_spacing: int | None = None,
    truth: str | Path | None = None,
    pixel_size_um: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Quantify every mask of a dataset or folder and summarise per sample.

    Parameters
    ----------
    source : path or Dataset
        A dataset folder (``masks/``, ``phases.json``, optional ``metadata.csv``), a plain folder of mask PNGs
        (with ``phases.json``, optional ``metadata.csv``), a folder of sub-folders of mask PNGs (one sub-folder per
        sample), a single mask PNG, or a loaded :class:`~napari_metalseg.data.dataset.Dataset`.
    phases : PhaseSet or path, optional
        Overrides the folder's ``phases.json`` (needed when the folder has none).
    by : {"sample", "magnification", "all"}
        Grouping. ``sample`` uses metadata.csv's ``sample`` column; fields without one belong to a sample named
        after their folder (the dataset folder, or the sub-folder).
    grid_spacing : int, optional
        E562 grid spacing in pixels; None: about 256 points per field.
    truth : path, optional
        Folder (or dataset) of true masks with the same names; otherwise ``true_fraction_<phase>`` metadata columns
        are used when present for every phase.
    pixel_size_um : float, optional
        Pixel size for fields whose metadata.csv has none.
    progress : callable, optional
        Called as ``progress(done, total)`` after each field.

    Returns
    -------
    Report

    Raises
    ------
    MetalsegError
        No masks, no phases.json, a mask value that is not a phase (naming the file), every mask empty, a bad
        metadata value, a missing true mask, a bad grouping. Empty masks (all 255) are skipped with a warning.
    """
    by = _check_by(by)
    if grid_spacing is not None:
        _check_spacing(grid_spacing)
    sources, phase_set, label = _collect(source, phases, pixel_size_um)
    if truth is not None:
        _attach_truth(sources, Path(truth), phase_set)
    fields, skipped = [], []
    for i, src in enumerate(sources):
        field_result = _quantify_source(src, phase_set, grid_spacing)
        if field_result is None:
            skipped.append(f"{src.name}: no labelled pixels (all 255 = unlabeled); skipped")
        else:
            fields.append(field_result)
        if progress is not None:
            progress(i + 1, len(sources))
    if not fields:
        raise MetalsegError(f"{label}: every mask is empty (all pixels 255 = unlabeled); nothing to quantify")
    return make_report(fields, phase_set, by=by, source=label, skipped=skipped)


def _quantify_source(src: _Source, phases: PhaseSet, grid_spacing: int | None) -> FieldResult | None:
    from napari_metalseg.data.dataset import read_mask

    mask = check_mask(read_mask(src.path), len(phases), str(src.path))
    if not (mask != UNLABELED).any():
        return None
    return quantify_mask(mask, phases, pixel_size_um=src.pixel_size_um, grid_spacing=grid_spacing, name=src.name,
                         magnification=src.magnification, sample=src.sample, true_fractions=src.true_fractions)


def _collect(source: Any, phases: Any, pixel_size_um: float | None) -> tuple[list[_Source], PhaseSet, str]:
    from napari_metalseg.data.dataset import Dataset

    pixel_size_um = _check_pixel_size(pixel_size_um, "pixel size")
    if isinstance(source, Dataset):
        return _from_dataset(source, phases, pixel_size_um)
    path = Path(source)
    if path.is_file():
        root, files = path.parent, [(path.stem, path, "")]
    elif path.is_dir():
        root = path
        files = _mask_files(path / "masks" if (path / "masks").is_dir() else path)
    else:
        raise MetalsegError(f"{path}: no such mask file or folder")
    phase_set = _resolve_phases(phases, root, files)
    meta = _read_meta(root)
    folder = root.resolve().name
    sources = [_source_from_meta(name, p, meta, phase_set, sub or folder, pixel_size_um) for name, p, sub in files]
    return sources, phase_set, str(path)


def _from_dataset(ds: Dataset, phases: Any, pixel_size_um: float | None) -> tuple[list[_Source], PhaseSet, str]:
    phase_set = _as_phases(phases) if phases is not None else ds.phases
    items = ds.labelled
    if not items:
        raise MetalsegError(f"{ds.root}: the dataset has no masks")
    folder = Path(ds.root).resolve().name
    sources = []
    for item in items:
        src = _source_from_row(item.name, item.mask_path, item.extra, phase_set, folder, pixel_size_um)
        src.magnification = item.magnification
        src.pixel_size_um = item.pixel_size_um or pixel_size_um
        sources.append(src)
    return sources, phase_set, str(ds.root)


def _mask_files(folder: Path) -> list[tuple[str, Path, str]]:
    """(name, path, sub-folder) of the mask PNGs in ``folder``, or one level down when it has none itself."""
    def pngs(d: Path) -> list[Path]:
        return sorted(p for p in d.glob("*.png") if not p.name.startswith(".") and p.is_file())

    direct = pngs(folder)
    if direct:
        return [(p.stem, p, "") for p in direct]
    files = [(f"{sub.name}/{p.stem}", p, sub.name) for sub in sorted(folder.iterdir())
             if sub.is_dir() and not sub.name.startswith(".") for p in pngs(sub)]
    if not files:
        raise MetalsegError(f"{folder}: no mask PNGs (expected DATASET/masks/<name>.png or a folder of <name>.png)")
    return files


def _resolve_phases(phases: Any, root: Path, files: list[tuple[str, Path, str]]) -> PhaseSet:
    if phases is not None:
        return _as_phases(phases)
    for candidate in (root / "phases.json", files[0][1].parent / "phases.json"):
        if candidate.is_file():
            return PhaseSet.load(candidate)
    raise MetalsegError(f"{root / 'phases.json'}: phases.json is missing (put it next to the masks or pass --phases)")


def _read_meta(root: Path) -> dict[str, dict[str, str]]:
    from napari_metalseg.data.dataset import read_metadata

    return read_metadata(root)


def _source_from_meta(name: str, path: Path, meta: dict[str, dict[str, str]], phases: PhaseSet, folder: str,
                      pixel_size_um: float | None) -> _Source:
    row = meta.get(name) or meta.get(path.stem) or {}
    src = _source_from_row(name, path, row, phases, folder, pixel_size_um)
    src.magnification = _meta_number(row, "magnification", name)
    src.pixel_size_um = _meta_number(row, "pixel_size_um", name) or pixel_size_um
    return src


def _source_from_row(name: str, path: Path | None, row: Mapping[str, str], phases: PhaseSet, folder: str,
                     pixel_size_um: float | None) -> _Source:
    return _Source(name=name, path=Path(str(path)), pixel_size_um=pixel_size_um,
                   sample=(row.get("sample") or "").strip() or folder, true_fractions=_meta_truth(row, phases, name))


def _meta_number(row: Mapping[str, str], column: str, name: str) -> float | None:
    text = (row.get(column) or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise MetalsegError(f"metadata.csv: {name}: {column} {text!r} is not a positive number")
    return value


def _meta_truth(row: Mapping[str, str], phases: PhaseSet, name: str) -> dict[str, float] | None:
    texts = {p: (row.get(f"true_fraction_{p}") or "").strip() for p in phases.names}
    if not all(texts.values()):
        return None
    out = {}
    for p, text in texts.items():
        try:
            out[p] = float(text)
        except ValueError:
            out[p] = math.nan
        if not 0.0 <= out[p] <= 1.0:
            raise MetalsegError(f"metadata.csv: {name}: true_fraction_{p} {text!r} is not a fraction in 0..1")
    return out


def _attach_truth(sources: list[_Source], truth: Path, phases: PhaseSet) -> None:
    from napari_metalseg.data.dataset import read_mask

    if not truth.is_dir():
        raise MetalsegError(f"{truth}: truth folder does not exist")
    folder = truth / "masks" if (truth / "masks").is_dir() else truth
    truth_phases = truth / "phases.json"
    if truth_phases.is_file() and PhaseSet.load(truth_phases).names != phases.names:
        raise MetalsegError(f"{truth_phases}: phases {PhaseSet.load(truth_phases).names} differ from the "
                            f"predicted masks' {phases.names}")
    for src in sources:
        path = folder / f"{src.name}.png"
        if not path.is_file():
            raise MetalsegError(f"{path}: no true mask for {src.name} (--truth needs one mask per field, same name)")
        mask = check_mask(read_mask(path), len(phases), str(path))
        counts = _pixel_counts(mask, len(phases))
        if counts.sum() == 0:
            raise MetalsegError(f"{path}: the true mask has no labelled pixels")
        src.true_fractions = {p: float(c) / float(counts.sum()) for p, c in zip(phases.names, counts)}


# ----------------------------------------------------------------------------------------------------
# small checks
# ----------------------------------------------------------------------------------------------------


def _as_phases(phases: Any) -> PhaseSet:
    if isinstance(phases, PhaseSet):
        return phases
    if isinstance(phases, (str, Path)):
        return PhaseSet.load(phases)
    if isinstance(phases, Sequence) and phases and all(isinstance(p, str) for p in phases):
        return PhaseSet.from_names(list(phases))
    raise MetalsegError(f"phases must be a PhaseSet, a phases.json path or a list of names, got {phases!r}")


def _check_pixel_size(value: object, where: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise MetalsegError(f"{where or 'mask'}: pixel size {value!r} um is not a positive number")
    return number


def _check_truth(truth: Mapping[str, float] | Sequence[float] | None, names: list[str],
                 where: str) -> dict[str, float] | None:
    if truth is None:
        return None
    if isinstance(truth, Mapping):
        missing = [p for p in names if p not in truth]
        if missing:
            raise MetalsegError(f"{where or 'mask'}: true fractions lack phase(s) {', '.join(missing)}")
        values = [truth[p] for p in names]
    else:
        values = list(truth)
        if len(values) != len(names):
            raise MetalsegError(f"{where or 'mask'}: {len(values)} true fractions for {len(names)} phases")
    out = {p: float(v) for p, v in zip(names, values)}
    if not all(0.0 <= v <= 1.0 for v in out.values()):
        raise MetalsegError(f"{where or 'mask'}: true fractions must be in 0..1, got {out}")
    return out
