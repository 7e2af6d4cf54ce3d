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

from napari_metalseg.quantify.fields import (
    AUTO_GRID_POINTS,
    GROUPINGS,
    TARGET_RA,
    FieldResult,
    IslandStats,
    check_mask,
    grid_offset,
    island_stats,
    point_count,
    quantify_mask,
    resolve_grid_spacing,
)
from napari_metalseg.quantify.report import Report, make_report
from napari_metalseg.quantify.sources import quantify_masks, quantify_masks_job
from napari_metalseg.quantify.statistics import (
    SampleSummary,
    fields_needed,
    fraction_statistics,
    group_fields,
    summarize,
)

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
    "quantify_masks_job",
    "resolve_grid_spacing",
    "summarize",
]
