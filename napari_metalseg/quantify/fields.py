"""Measurements of one field (one mask): area fractions, the ASTM E562 point count, islands."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import UNLABELED, PhaseSet, phase_pixel_counts

if TYPE_CHECKING:  # pragma: no cover
    pass


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
            "image": self.image,
            "magnification": self.magnification,
            "pixel_size_um": self.pixel_size_um,
            "sample": self.sample,
            "length_unit": self.length_unit,
            "area_unit": self.area_unit,
            "labelled_pixels": self.labelled_pixels,
            "points": self.points,
            "grid_spacing_px": self.grid_spacing,
            "fractions": self.fractions,
            "point_fractions": self.point_fractions,
            "pixels": self.pixels,
            "islands": self.islands,
            "mean_island_area": self.mean_island_area,
            "median_island_area": self.median_island_area,
            "mean_diameter": self.mean_diameter,
            "median_diameter": self.median_diameter,
            "true_fractions": self.true_fractions,
            "abs_errors": self.abs_errors,
        }


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
    counts = phase_pixel_counts(mask, k)
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
        raise MetalsegError(
            f"{where}: label values {shown} are not phases 0..{num_phases - 1} or 255 (unlabeled); "
            f"is it a mask of another phase set?"
        )
    return mask


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


def point_count(
    mask: np.ndarray, num_phases: int, spacing: int, offset: tuple[int, int] | None = None
) -> tuple[np.ndarray, int]:
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
    yy, xx = np.meshgrid(
        np.arange(oy, mask.shape[0], spacing) + 1, np.arange(ox, mask.shape[1], spacing) + 1, indexing="ij"
    )
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
        out.append(
            IslandStats(
                int(n),
                float(areas.mean()),
                float(np.median(areas)),
                float(diameters.mean()),
                float(np.median(diameters)),
            )
        )
    return out


# ----------------------------------------------------------------------------------------------------
# statistics over fields
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


def _check_truth(
    truth: Mapping[str, float] | Sequence[float] | None, names: list[str], where: str
) -> dict[str, float] | None:
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
