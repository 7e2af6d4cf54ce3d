"""Synthetic SEM micrographs of multiphase steels with exact ground-truth phase masks (numpy/scipy only).

The generator builds a microstructure first and renders an image from it, so the mask is exact by
construction:

1. *Geometry.* Prior-austenite-like grains are a Voronoi tessellation of jittered seeds whose coordinates
   are warped by smooth noise (curved boundaries). A second, finer tessellation cuts every grain into
   *fragments* (packets/blocks/sheaves). Phases go to whole grains first, then to fragments at triple
   junctions and grain boundaries (island-like second phase, as in dual-phase steels), then to single
   fragments. Interphase boundaries are then rounded and roughened (argmax over blurred, noise-perturbed
   phase indicators) with one offset per phase tuned until every area fraction is within 0.002 of its target.
2. *Material.* Each phase gets a secondary-electron "albedo" and a relief (height) field: flat, slightly
   darker ferrite with faint orientation contrast; raised martensite with packets of fine laths and bright
   lath boundaries; bainite sheaves of parallel laths with aligned carbide films; generic lamellar
   (pearlite-like) and globular (spheroidite-like) variants for phases 4 and 5. Mean brightness per phase is
   randomised per image so that phases overlap in brightness and differ mainly in texture.
3. *Imaging.* The SEM edge effect (brightness grows with surface slope), grain-boundary etch grooves, a
   shading component from the detector side, inclusions and dust, a low-frequency brightness gradient,
   defocus blur, shot noise, scan-line noise and an operator-like contrast stretch. None of this touches the
   mask.

Physical lengths are in micrometres and converted with :func:`pixel_size_for`, so magnification scales every
feature proportionally (5000x features are 5000/2700 = 1.85x larger in pixels than 2700x).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import PhaseSet

__all__ = [
    "DEFAULT_MAGNIFICATIONS",
    "DEFAULT_PHASES",
    "default_fraction_means",
    "pixel_size_for",
    "synthesize_micrograph",
    "write_synthetic_dataset",
]

DEFAULT_PHASES = PhaseSet.from_names(["ferrite", "martensite", "bainite"], ["#4477aa", "#ee6677", "#ccbb44"])
DEFAULT_MAGNIFICATIONS = (2700, 3000, 5000)

MIN_SIZE = 64
MAX_SIZE = 8192
MIN_PHASES = 2
MAX_PHASES = 5
FIELD_WIDTH_AT_1X_UM = 127_000.0
"""Field width at 1x (the 127 mm Polaroid convention most SEMs still use to define magnification)."""

_FRACTION_SUM_TOL = 0.01
_MAX_SEEDS = 400_000
_DIRICHLET_CONCENTRATION = 30.0
_FRACTION_MEANS = {
    2: (0.65, 0.35),
    3: (0.55, 0.30, 0.15),
    4: (0.50, 0.25, 0.15, 0.10),
    5: (0.45, 0.20, 0.15, 0.10, 0.10),
}
_SPLITS = ("train", "val", "test")

# Physical length scales in micrometres.
_GRAIN_UM = 6.0  # mean prior-austenite / ferrite grain spacing
_FRAGMENT_RATIO = 2.6  # grain spacing / fragment (packet, block, sheaf) spacing
_MART_LATH_UM = 0.45  # martensite lath period
_BAIN_LATH_UM = 0.85  # bainite lath period
_LAMELLA_UM = 0.32  # lamellar variant (pearlite-like) period
_CARBIDE_UM = 0.07  # carbide half-width
_GROOVE_UM = 0.035  # grain-boundary groove width (sigma)
_RAMP_UM = 0.05  # width of the relief step at phase boundaries (sigma)


# ----------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------


def pixel_size_for(magnification: float, size: int) -> float:
    """Pixel size in micrometres of a ``size`` pixels wide SEM frame at ``magnification``.

    The field width is ``127 mm / magnification`` (the usual SEM magnification convention: 127 mm is the width
    of the reference print), sampled with ``size`` pixels. A 1024 px frame at 3000x has 0.0413 um pixels.

    Parameters
    ----------
    magnification : float
        Nominal SEM magnification (e.g. 3000 for 3000x).
    size : int
        Image width in pixels.

    Returns
    -------
    float
        Micrometres per pixel.
    """
    magnification = _check_magnification(magnification)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise MetalsegError(f"image width must be a positive integer number of pixels, got {size!r}")
    return FIELD_WIDTH_AT_1X_UM / magnification / int(size)


def default_fraction_means(k: int) -> tuple[float, ...]:
    """Mean phase fractions that random datasets are drawn around, for ``k`` phases (2..5)."""
    if k not in _FRACTION_MEANS:
        raise MetalsegError(f"synthetic data supports {MIN_PHASES}..{MAX_PHASES} phases, got {k}")
    return _FRACTION_MEANS[k]


def synthesize_micrograph(
    size: int | tuple[int, int],
    fractions: Sequence[float] = (0.5, 0.3, 0.2),
    magnification: float = 3000,
    seed: int | np.random.Generator = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Make one synthetic SEM micrograph of a multiphase steel and its exact phase mask.

    Parameters
    ----------
    size : int or (int, int)
        Image size in pixels: ``S`` for ``S x S`` or ``(height, width)``; each at least 64.
    fractions : sequence of float
        Target area fraction of each phase (2..5 phases, non-negative, summing to 1). Phase 0 renders as
        ferrite (matrix), 1 as martensite, 2 as bainite, 3 as a lamellar (pearlite-like) and 4 as a globular
        carbide (spheroidite-like) constituent. Achieved fractions are within about 0.002 of the targets.
    magnification : float
        SEM magnification; sets the pixel size (see :func:`pixel_size_for`) and so the size of every feature.
    seed : int or numpy.random.Generator
        Random seed; the same seed gives identical arrays.

    Returns
    -------
    image : numpy.ndarray
        ``float32`` array of shape ``(H, W)`` with values in ``[0, 1]``.
    mask : numpy.ndarray
        ``uint8`` array of shape ``(H, W)`` with phase indices ``0..K-1`` (every pixel labelled).

    Raises
    ------
    MetalsegError
        On a bad size, fractions, magnification or seed.
    """
    shape = _check_size(size)
    targets = _check_fractions(fractions)
    magnification = _check_magnification(magnification)
    rng = _make_rng(seed)
    px_um = pixel_size_for(magnification, shape[1])
    _check_feature_count(shape, px_um, magnification)

    style = _Style.draw(rng, len(targets))
    micro = _build_microstructure(shape, targets, 1.0 / px_um, style, rng)
    image = _render(micro, style, rng)
    return image, micro.mask


def write_synthetic_dataset(
    out: str | Path,
    n: int,
    size: int,
    seed: int = 0,
    fractions: Sequence[float] | None = None,
    magnifications: Sequence[float] = DEFAULT_MAGNIFICATIONS,
    phases: PhaseSet = DEFAULT_PHASES,
    splits: Sequence[float] = (0.6, 0.2, 0.2),
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic dataset folder in the standard format.

    Writes ``images/synth_NNNN.png`` (8-bit), ``masks/synth_NNNN.png``, ``phases.json`` and ``metadata.csv``
    with the columns ``name, magnification, pixel_size_um, split, sample, true_fraction_<phase>...`` where the
    true fractions are measured on the written masks.

    Parameters
    ----------
    out : path
        Dataset folder to create; it must not already contain a dataset unless ``overwrite`` is set.
    n : int
        Number of images (>= 1).
    size : int
        Width and height of every image in pixels (>= 64).
    seed : int
        Master seed; image ``i`` depends only on ``seed`` and ``i`` (not on ``n``).
    fractions : sequence of float, optional
        Fixed target fractions for every image. When None, each image draws its own from a Dirichlet
        distribution around :func:`default_fraction_means`.
    magnifications : sequence of float
        Magnifications cycled over the images.
    phases : PhaseSet
        Phase names and colours (2..5 phases; order = phase index, see :func:`synthesize_micrograph`).
    splits : (float, float, float)
        Train/val/test proportions. Assignment is deterministic for ``(n, seed)``; with ``n >= 3`` every split
        with a non-zero proportion gets at least one image.
    progress : callable, optional
        Called as ``progress(done, n)`` after each image.
    overwrite : bool
        Replace a synthetic dataset already in ``out`` (its ``synth_*`` images and masks, ``phases.json`` and
        ``metadata.csv``). A folder holding any other image or mask is never overwritten.

    Returns
    -------
    pathlib.Path
        The dataset folder.
    """
    from napari_metalseg.data.dataset import write_item, write_metadata

    out = Path(out)
    n = _check_count(n)
    shape = _check_size(size)
    seed = _check_seed_int(seed)
    if not isinstance(phases, PhaseSet):
        raise MetalsegError(f"phases must be a PhaseSet, got {type(phases).__name__}")
    k = len(phases)
    if not MIN_PHASES <= k <= MAX_PHASES:
        raise MetalsegError(
            f"synthetic data supports {MIN_PHASES}..{MAX_PHASES} phases, got {k} ({', '.join(phases.names)})"
        )
    fixed = None
    if fractions is not None:
        fixed = _check_fractions(fractions)
        if len(fixed) != k:
            raise MetalsegError(f"{len(fixed)} fractions given for {k} phases ({', '.join(phases.names)})")
    mags = _check_magnifications(magnifications)
    split_of = assign_splits(n, splits, seed)
    for mag in mags:
        _check_feature_count(shape, pixel_size_for(mag, shape[1]), mag)
    _check_target(out, overwrite)

    out.mkdir(parents=True, exist_ok=True)
    phases.save(out / "phases.json")
    children = np.random.SeedSequence(seed).spawn(n)
    rows = []
    for i, child in enumerate(children):
        rng = np.random.default_rng(child)
        target = fixed if fixed is not None else _draw_fractions(rng, k)
        mag = mags[i % len(mags)]
        image, mask = synthesize_micrograph(shape, target, mag, rng)
        name = f"synth_{i:04d}"
        write_item(out, name, image, mask)
        measured = np.bincount(mask.ravel(), minlength=k)[:k] / mask.size
        row = {
            "name": name,
            "magnification": _plain_number(mag),
            "pixel_size_um": round(pixel_size_for(mag, shape[1]), 6),
            "split": split_of[i],
            "sample": f"synth-s{seed}-{i:04d}",
        }
        row.update({f"true_fraction_{p}": round(float(f), 6) for p, f in zip(phases.names, measured)})
        rows.append(row)
        if progress is not None:
            progress(i + 1, n)
    write_metadata(out, rows)
    return out


def assign_splits(n: int, splits: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0) -> list[str]:
    """Deterministic train/val/test labels for ``n`` items.

    Counts follow ``splits`` by largest remainder; when ``n`` allows it, every split with a non-zero
    proportion gets at least one item. The order is a seeded shuffle so splits mix magnifications.
    """
    n = _check_count(n)
    props = _check_splits(splits)
    raw = props * n
    counts = np.floor(raw).astype(int)
    for j in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[j] += 1
    wanted = np.flatnonzero(props > 0)
    if n >= len(wanted):
        for j in wanted:
            if counts[j] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[j] += 1
    labels = np.repeat(np.array(_SPLITS), counts)
    order = np.random.default_rng([seed, 7]).permutation(n)
    return [str(labels[j]) for j in order]


# ----------------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------------


def _check_size(size: object) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        dims = (int(size), int(size))
    elif (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)
    ):
        dims = (int(size[0]), int(size[1]))
    else:
        raise MetalsegError(f"size must be an integer or a (height, width) pair of integers, got {size!r}")
    if min(dims) < MIN_SIZE or max(dims) > MAX_SIZE:
        raise MetalsegError(f"size {dims[0]}x{dims[1]} is out of range: each side must be {MIN_SIZE}..{MAX_SIZE} px")
    return dims


def _check_fractions(fractions: object) -> np.ndarray:
    try:
        values = np.asarray(fractions, dtype=float)
    except (TypeError, ValueError):
        raise MetalsegError(f"fractions must be a list of numbers, got {fractions!r}") from None
    if values.ndim != 1 or not MIN_PHASES <= values.size <= MAX_PHASES:
        raise MetalsegError(f"fractions must list {MIN_PHASES}..{MAX_PHASES} phase fractions, got {fractions!r}")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise MetalsegError(f"fractions must be non-negative numbers, got {_fmt_list(values)}")
    total = float(values.sum())
    if abs(total - 1.0) > _FRACTION_SUM_TOL:
        raise MetalsegError(f"fractions must sum to 1, got {_fmt_list(values)} (sum {total:.4g})")
    return values / total


def _check_magnification(magnification: object) -> float:
    try:
        value = float(magnification)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise MetalsegError(f"magnification must be a number, got {magnification!r}") from None
    if isinstance(magnification, bool) or not math.isfinite(value) or value <= 0:
        raise MetalsegError(f"magnification must be a positive number, got {magnification!r}")
    return value


def _check_magnifications(magnifications: object) -> list[float]:
    if isinstance(magnifications, (int, float)):
        magnifications = [magnifications]
    if isinstance(magnifications, str):
        raise MetalsegError(f"magnifications must be a list of numbers, got the string {magnifications!r}")
    try:
        mags = [_check_magnification(m) for m in magnifications]  # type: ignore[union-attr]
    except TypeError:
        raise MetalsegError(f"magnifications must be a list of numbers, got {magnifications!r}") from None
    if not mags:
        raise MetalsegError("magnifications must list at least one magnification")
    return mags


def _check_feature_count(shape: tuple[int, int], px_um: float, magnification: float) -> None:
    spacing = _GRAIN_UM / _FRAGMENT_RATIO / px_um
    seeds = (shape[0] / spacing + 6) * (shape[1] / spacing + 6)
    if spacing < 2.0 or seeds > _MAX_SEEDS:
        raise MetalsegError(
            f"magnification {magnification:g}x is too low for a {shape[1]} px wide image: "
            f"grains would be {_GRAIN_UM / px_um:.1f} px; use a higher magnification"
        )


def _check_count(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise MetalsegError(f"number of images must be a positive integer, got {n!r}")
    return int(n)


def _check_seed_int(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MetalsegError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _make_rng(seed: object) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(_check_seed_int(seed))


def _check_splits(splits: object) -> np.ndarray:
    try:
        props = np.asarray(splits, dtype=float)
    except (TypeError, ValueError):
        raise MetalsegError(f"splits must be three numbers (train, val, test), got {splits!r}") from None
    if props.shape != (3,) or not np.all(np.isfinite(props)) or np.any(props < 0) or props.sum() <= 0:
        raise MetalsegError(f"splits must be three non-negative numbers (train, val, test), got {splits!r}")
    return props / props.sum()


def _check_target(out: Path, overwrite: bool) -> None:
    """Refuse to write into an existing dataset; with ``overwrite``, clear a previous synthetic one."""
    if out.exists() and not out.is_dir():
        raise MetalsegError(f"{out}: exists and is not a folder")
    taken = [p for p in ("images", "masks", "metadata.csv", "phases.json") if (out / p).exists()]
    if not taken:
        return
    if not overwrite:
        raise MetalsegError(
            f"{out}: already contains a dataset ({', '.join(taken)}); choose a new or empty folder or overwrite it"
        )
    old = [f for d in ("images", "masks") if (out / d).is_dir() for f in sorted((out / d).iterdir())]
    foreign = [
        f"{f.parent.name}/{f.name}" for f in old if not (f.name.lstrip(".").startswith("synth_") and f.suffix == ".png")
    ]
    if foreign:
        raise MetalsegError(f"{out}: not overwriting: {len(foreign)} file(s) are not synthetic, e.g. {foreign[0]}")
    for f in old:
        f.unlink()


def _fmt_list(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _plain_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def _draw_fractions(rng: np.random.Generator, k: int) -> np.ndarray:
    means = np.asarray(default_fraction_means(k))
    return rng.dirichlet(means * _DIRICHLET_CONCENTRATION)


# ----------------------------------------------------------------------------------------------------
# per-image look
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Style:
    """Random per-image rendering parameters (domain randomisation of etching and imaging conditions)."""

    grain_um: float
    albedo: np.ndarray  # base secondary-electron yield per phase
    relief: np.ndarray  # height of each phase above ferrite (0.1 um units)
    grain_contrast: float  # std of per-grain orientation contrast
    mart_lath_um: float
    bain_lath_um: float
    carbide_density: float
    edge_gain: float
    shade_gain: float
    shade_dir: float
    groove_depth: float
    gradient: tuple[float, float]
    blur_px: float
    dose: float
    line_noise: float

    @classmethod
    def draw(cls, rng: np.random.Generator, k: int) -> _Style:
        u = rng.uniform
        ferrite = u(0.22, 0.36)
        base = [
            ferrite,
            ferrite + u(-0.08, 0.10),
            ferrite + u(-0.08, 0.08),
            ferrite + u(-0.06, 0.08),
            ferrite + u(-0.06, 0.08),
        ]
        relief = [0.0, u(0.7, 1.3), u(0.4, 0.9), u(0.3, 0.7), u(0.2, 0.6)]
        return cls(
            grain_um=_GRAIN_UM * float(np.exp(rng.normal(0.0, 0.15))),
            albedo=np.array(base[:k], dtype=np.float32),
            relief=np.array(relief[:k], dtype=np.float32),
            grain_contrast=u(0.015, 0.05),
            mart_lath_um=_MART_LATH_UM * u(0.85, 1.2),
            bain_lath_um=_BAIN_LATH_UM * u(0.85, 1.25),
            carbide_density=u(0.6, 0.9),
            edge_gain=u(0.25, 0.45),
            shade_gain=u(0.03, 0.10),
            shade_dir=u(0, 2 * np.pi),
            groove_depth=u(0.6, 1.2),
            gradient=(u(-0.12, 0.12), u(-0.12, 0.12)),
            blur_px=u(0.45, 1.0),
            dose=u(60.0, 250.0),
            line_noise=u(0.003, 0.012),
        )


# ----------------------------------------------------------------------------------------------------
# geometry: grains, fragments, phase assignment
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Micro:
    """A microstructure: the phase mask plus the grain/fragment maps and per-fragment attributes."""

    mask: np.ndarray  # uint8 (H, W) phase index
    grain: np.ndarray  # int32 (H, W) grain label
    frag: np.ndarray  # int32 (H, W) fragment label
    frag_grain: np.ndarray  # grain of each fragment
    frag_phase: np.ndarray  # phase of each fragment
    frag_theta: np.ndarray  # lath orientation of each fragment as a martensite packet/block
    frag_sheaf: np.ndarray  # lath orientation of each fragment as a bainite sheaf
    px_per_um: float


def _build_microstructure(
    shape: tuple[int, int], targets: np.ndarray, px_per_um: float, style: _Style, rng: np.random.Generator
) -> _Micro:
    grain_px = style.grain_um * px_per_um
    frag_px = grain_px / _FRAGMENT_RATIO
    yy, xx = _grid(shape)
    wy = _smooth_noise(rng, shape, 0.7 * grain_px) * (0.10 * grain_px)
    wx = _smooth_noise(rng, shape, 0.7 * grain_px) * (0.10 * grain_px)
    fy = _smooth_noise(rng, shape, 0.2 * grain_px) * (0.05 * grain_px)
    fx = _smooth_noise(rng, shape, 0.2 * grain_px) * (0.05 * grain_px)
    ry = _smooth_noise(rng, shape, 0.06 * grain_px) * (0.012 * grain_px)
    rx = _smooth_noise(rng, shape, 0.06 * grain_px) * (0.012 * grain_px)
    grain = _voronoi(_jittered_seeds(rng, shape, grain_px), yy + wy + 0.4 * fy, xx + wx + 0.4 * fx)
    cell = _voronoi(_jittered_seeds(rng, shape, frag_px), yy + 0.5 * wy + fy + ry, xx + 0.5 * wx + fx + rx)
    frag, frag_grain, frag_cell, frag_area = _fragments(grain, cell)
    frag_phase = _assign_phases(frag_area, frag_grain, frag_cell, targets, rng)
    packets = _orientations(frag_grain, frag_cell, rng, 4)
    sheaves = _orientations(frag_grain, frag_cell, rng, 2)
    mask = _round_interfaces(frag_phase.astype(np.uint8)[frag], targets, 0.05 * grain_px, rng)
    return _Micro(mask, grain, frag, frag_grain, frag_phase, packets, sheaves, px_per_um)


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.meshgrid(np.arange(shape[0], dtype=np.float32), np.arange(shape[1], dtype=np.float32), indexing="ij")
    return yy, xx


def _jittered_seeds(rng: np.random.Generator, shape: tuple[int, int], spacing: float) -> np.ndarray:
    """Seeds on a jittered square grid covering the image plus a margin of two spacings."""
    margin = 2.0 * spacing
    ys = np.arange(-margin, shape[0] + margin, spacing)
    xs = np.arange(-margin, shape[1] + margin, spacing)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    pts = np.column_stack([gy.ravel(), gx.ravel()])
    return pts + rng.uniform(-0.45, 0.45, size=pts.shape) * spacing


def _voronoi(seeds: np.ndarray, qy: np.ndarray, qx: np.ndarray) -> np.ndarray:
    _, idx = cKDTree(seeds).query(np.column_stack([qy.ravel(), qx.ravel()]))
    return idx.astype(np.int32).reshape(qy.shape)


def _fragments(grain: np.ndarray, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Intersect the two tessellations: fragment map and, per fragment, its grain, cell and area in pixels."""
    n_cell = int(cell.max()) + 1
    code = grain.astype(np.int64) * n_cell + cell
    if (int(grain.max()) + 1) * n_cell <= 8_000_000:
        counts = np.bincount(code.ravel())
        present = np.flatnonzero(counts)
        lut = np.zeros(counts.size, dtype=np.int32)
        lut[present] = np.arange(present.size, dtype=np.int32)
        frag = lut[code]
        area = counts[present]
    else:
        present, inverse, area = np.unique(code.ravel(), return_inverse=True, return_counts=True)
        frag = inverse.astype(np.int32).reshape(grain.shape)
    frag_grain = (present // n_cell).astype(np.int32)
    frag_cell = (present % n_cell).astype(np.int32)
    return frag, frag_grain, frag_cell, area.astype(np.int64)


def _assign_phases(
    area: np.ndarray, frag_grain: np.ndarray, frag_cell: np.ndarray, targets: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Phase of every fragment so that the phase areas match ``targets`` (fractions) closely.

    The largest phase is the matrix. Every other phase takes whole grains up to a random share of its target,
    then whole cells that sit on grain boundaries (triple junctions first; islands), then single fragments.
    """
    total = float(area.sum())
    goal = targets * total
    matrix = int(np.argmax(targets))
    phase = np.full(area.size, matrix, dtype=np.int32)
    others = [p for p in np.argsort(-targets, kind="stable") if p != matrix and goal[p] > 0]
    grain_units = _group(frag_grain)
    cell_units = _group(frag_cell)
    n_grains_in_cell = np.array([np.unique(frag_grain[u]).size for u in cell_units], dtype=np.int32)
    cell_order = np.lexsort((rng.random(len(cell_units)), -np.minimum(n_grains_in_cell, 3)))
    for p in others:
        share = rng.uniform(0.35, 0.9)
        grains = [grain_units[g] for g in rng.permutation(len(grain_units))]
        have = _take_units(phase, area, grains, matrix, p, 0.0, share * goal[p], whole=True)
        cells = [cell_units[c] for c in cell_order]
        have = _take_units(phase, area, cells, matrix, p, have, goal[p], whole=False)
        singles = [np.array([f]) for f in rng.permutation(area.size)]
        _take_units(phase, area, singles, matrix, p, have, goal[p], whole=True)
    return phase


def _group(labels: np.ndarray) -> list[np.ndarray]:
    """Indices of ``labels`` grouped by value (one array per value 0..max, possibly empty)."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(int(labels.max()) + 2))
    return [order[bounds[i] : bounds[i + 1]] for i in range(bounds.size - 1)]


def _take_units(
    phase: np.ndarray,
    area: np.ndarray,
    units: list[np.ndarray],
    matrix: int,
    p: int,
    have: float,
    goal: float,
    whole: bool,
) -> float:
    """Move units (fragment index arrays) from the matrix to phase ``p`` while that brings it nearer ``goal``.

    ``whole=True`` takes a unit only when all its fragments are still matrix; otherwise its matrix fragments.
    """
    for unit in units:
        if goal - have <= 0.5:
            break
        if unit.size == 0:
            continue
        free = phase[unit] == matrix
        if whole and not free.all():
            continue
        take = unit[free]
        gain = float(area[take].sum())
        if gain > 0 and abs(have + gain - goal) < abs(have - goal):
            phase[take] = p
            have += gain
    return have


def _round_interfaces(mask: np.ndarray, targets: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Round and roughen the interphase boundaries, then tune them so every phase hits its target fraction.

    Each phase's indicator is blurred and perturbed with smooth noise; the new mask is the argmax over phases
    plus one offset per phase, adjusted until all area fractions are within 0.002 of the targets.
    """
    k = targets.size
    fields = np.full((k,) + mask.shape, -1.0, dtype=np.float32)
    for p in range(k):
        if targets[p] > 0:
            fields[p] = ndimage.gaussian_filter((mask == p).astype(np.float32), sigma, truncate=2.5)
            fields[p] += 0.12 * _smooth_noise(rng, mask.shape, 1.5 * sigma)
    offsets = np.zeros((k, 1, 1), dtype=np.float32)
    best, best_err = mask, np.inf
    for _ in range(20):
        out = np.argmax(fields + offsets, axis=0).astype(np.uint8)
        err = targets - np.bincount(out.ravel(), minlength=k)[:k] / out.size
        if np.abs(err).max() < best_err:
            best, best_err = out, float(np.abs(err).max())
        if best_err < 0.002:
            break
        offsets[:, 0, 0] += (1.5 * err).astype(np.float32)
    return best


def _orientations(
    frag_grain: np.ndarray, frag_cell: np.ndarray, rng: np.random.Generator, n_variants: int
) -> np.ndarray:
    """Lath orientation per fragment: each grain has ``n_variants`` (packets, sheaves); fragments pick one."""
    n_grains = int(frag_grain.max()) + 1
    variants = rng.uniform(0, np.pi, size=(n_grains, n_variants))
    pick = np.minimum((_hash01(frag_cell, n_variants) * n_variants).astype(np.int64), n_variants - 1)
    theta = variants[frag_grain, pick]
    return (theta + rng.normal(0, 0.06, size=frag_grain.size)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------


def _render(micro: _Micro, style: _Style, rng: np.random.Generator) -> np.ndarray:
    shape = micro.mask.shape
    ppu = micro.px_per_um
    albedo = np.empty(shape, dtype=np.float32)
    height = np.zeros(shape, dtype=np.float32)
    jitter = _smooth_noise(rng, shape, max(4.0, 4.0 * style.mart_lath_um * ppu))
    n_grains = int(micro.frag_grain.max()) + 1
    rough = _fine_noise(rng, shape, max(0.5, 0.035 * ppu)).ravel()
    grain_offset = rng.normal(0.0, style.grain_contrast, size=n_grains).astype(np.float32)
    flat_mask = micro.mask.ravel()
    for p in range(len(style.albedo)):
        idx = np.flatnonzero(flat_mask == p)
        if idx.size == 0:
            continue
        ctx = _PhaseContext(micro, idx, jitter.ravel()[idx], rough[idx], ppu, sheaf=p == 2)
        alb, hgt = _TEXTURES[min(p, len(_TEXTURES) - 1)](ctx, style, rng)
        albedo.ravel()[idx] = style.albedo[p] + alb + grain_offset[micro.frag_grain[micro.frag.ravel()[idx]]]
        height.ravel()[idx] = hgt
    plateau = ndimage.gaussian_filter(style.relief[micro.mask], max(0.6, _RAMP_UM * ppu))
    groove = _grooves(micro, ppu) * _etch_strength(rng, shape, 0.5 * style.grain_um * ppu)
    height += plateau - style.groove_depth * groove
    albedo += 0.015 * _smooth_noise(rng, shape, 2.5 * ppu) - 0.12 * groove
    signal = albedo + _se_topography(height, ppu, style)
    signal = _add_inclusions(signal, rng, ppu)
    return _imaging(signal, style, rng)


@dataclass
class _PhaseContext:
    """Pixels of one phase (flat indices) with their coordinates, fragment and lath frame."""

    micro: _Micro
    idx: np.ndarray
    jitter: np.ndarray  # smooth noise (lath bending, faint etch variation)
    rough: np.ndarray  # fine noise (etch roughness)
    ppu: float
    sheaf: bool = False

    def __post_init__(self) -> None:
        width = self.micro.mask.shape[1]
        self.y = (self.idx // width).astype(np.float32)
        self.x = (self.idx % width).astype(np.float32)
        self.frag = self.micro.frag.ravel()[self.idx]
        theta = (self.micro.frag_sheaf if self.sheaf else self.micro.frag_theta)[self.frag]
        c, s = np.cos(theta), np.sin(theta)
        self.u = self.x * c + self.y * s  # across the laths
        self.v = -self.x * s + self.y * c  # along the laths


def _ferrite(ctx: _PhaseContext, style: _Style, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flat, smooth matrix with faint low-frequency etch variation."""
    alb = 0.012 * ctx.jitter
    return alb, np.zeros_like(alb)


def _martensite(ctx: _PhaseContext, style: _Style, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Packets of fine laths of uneven width.

    A network of bright lath boundaries, lath-to-lath and block-to-block contrast, broken lath ends and fine
    etch roughness.
    """
    period = max(2.2, style.mart_lath_um * ctx.ppu) * (0.85 + 0.3 * _hash01(ctx.frag, 3))
    lath_i, _, edge = _laths(ctx, period, 0.3, 5)
    seg_len = period * (2.5 + 5.0 * _hash01(ctx.frag, lath_i, 7))
    seg = np.floor(ctx.v / seg_len + 5.0 * _hash01(ctx.frag, lath_i, 9)).astype(np.int64)
    strength = 0.3 + 0.7 * _hash01(ctx.frag, lath_i, seg, 8)
    ridge = np.exp(-((edge / np.maximum(0.7, 0.14 * period)) ** 2)) * strength
    var = _hash01(ctx.frag, lath_i, seg) - 0.5
    block = _hash01(ctx.frag, 41) - 0.5
    alb = 0.22 * ridge + 0.14 * var + 0.10 * block + 0.02 * ctx.rough
    hgt = 0.35 * ridge + 0.12 * var + 0.05 * ctx.rough
    return alb.astype(np.float32), hgt.astype(np.float32)


def _laths(ctx: _PhaseContext, period: float, bend: float, key: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: index of its lath, position across the lath (0..1), distance (px) to the nearest lath boundary."""
    phi = _lath_phase(ctx, period, bend, key)
    lath = np.floor(phi)
    t = phi - lath
    return lath.astype(np.int64), t, np.minimum(t, 1.0 - t) * period


def _lath_phase(ctx: _PhaseContext, period: float, bend: float, key: int) -> np.ndarray:
    """Lath coordinate (one unit per lath) across the laths, with uneven lath widths and gentle bending."""
    h1, h2, h3 = (_hash01(ctx.frag, key + j) for j in range(3))
    lam1, lam2 = period * (2.3 + 1.5 * h1), period * (5.0 + 4.0 * h2)
    uneven = (0.22 * lam1 / period / 2.6) * np.sin(2 * np.pi * (ctx.u / lam1 + h2)) + (
        0.5 * lam2 / period / 7.0
    ) * np.sin(2 * np.pi * (ctx.u / lam2 + h1))
    return ctx.u / period + uneven + bend * ctx.jitter + 13.0 * h3


def _bainite(ctx: _PhaseContext, style: _Style, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sheaves of long parallel ferrite laths with aligned, broken carbide films on the lath boundaries."""
    period = max(3.0, style.bain_lath_um * ctx.ppu) * (0.85 + 0.3 * _hash01(ctx.frag, 13))
    lath_i, t, edge = _laths(ctx, period, 0.12, 17)
    width = max(0.7, _CARBIDE_UM * ctx.ppu)
    dash_len = ctx.ppu * (0.8 + 2.0 * _hash01(ctx.frag, lath_i, 19))
    sv = ctx.v / dash_len + 11.0 * _hash01(ctx.frag, lath_i, 23)
    si = np.floor(sv)
    sf = sv - si
    si_i = si.astype(np.int64)
    keep = _hash01(ctx.frag, lath_i, si_i) < style.carbide_density
    fill = 0.45 + 0.5 * _hash01(lath_i, si_i, 29)
    along = np.clip(np.minimum(sf, fill - sf) * dash_len / (1.5 * width), 0.0, 1.0)
    thick = 0.6 + 0.8 * _hash01(ctx.frag, lath_i, si_i, 27)
    carbide = np.exp(-((edge / (width * thick)) ** 2)) * along * keep
    line = np.exp(-((edge / max(0.6, 0.03 * ctx.ppu)) ** 2))
    dome = 4.0 * t * (1.0 - t)
    var = _hash01(ctx.frag, lath_i, 31) - 0.5
    alb = 0.32 * carbide + 0.10 * line + 0.06 * var - 0.04 * dome + 0.015 * ctx.rough
    hgt = 0.45 * carbide + 0.20 * line + 0.15 * dome + 0.04 * ctx.rough
    return alb.astype(np.float32), hgt.astype(np.float32)


def _lamellar(ctx: _PhaseContext, style: _Style, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Generic variant: colonies of thin, bright, curved lamellae (pearlite-like)."""
    period = max(2.5, _LAMELLA_UM * ctx.ppu)
    phi = ctx.u / period + 0.9 * ctx.jitter + 7.0 * _hash01(ctx.frag, 37)
    t = phi - np.floor(phi)
    ridge = np.exp(-(((t - 0.5) / 0.16) ** 2))
    return (0.28 * ridge - 0.08).astype(np.float32), (0.3 * ridge).astype(np.float32)


def _globular(ctx: _PhaseContext, style: _Style, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Generic variant: dense fine globular carbides in a ferritic matrix (spheroidite-like)."""
    blobs = _smooth_noise(rng, ctx.micro.mask.shape, max(1.5, 0.18 * ctx.ppu)).ravel()[ctx.idx]
    dots = np.clip((blobs - 0.9) * 2.5, 0.0, 1.0)
    return (0.32 * dots - 0.04).astype(np.float32), (0.5 * dots).astype(np.float32)


_TEXTURES = (_ferrite, _martensite, _bainite, _lamellar, _globular)


def _grooves(micro: _Micro, ppu: float) -> np.ndarray:
    """Etched grain-boundary and interphase grooves (0..1, 1 at the boundary centre)."""
    lines = _edges(micro.grain) | _edges(micro.mask)
    sigma = max(0.6, _GROOVE_UM * ppu)
    groove = ndimage.gaussian_filter(lines.astype(np.float32), sigma)
    return np.minimum(groove * (2.0 * sigma), 1.0)


def _etch_strength(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Slowly varying etch strength in 0.25..1 so that grooves are deep in places and faint in others."""
    return np.clip(0.65 + 0.3 * _smooth_noise(rng, shape, scale), 0.25, 1.0)


def _edges(labels: np.ndarray) -> np.ndarray:
    out = np.zeros(labels.shape, dtype=bool)
    dx = labels[:, 1:] != labels[:, :-1]
    dy = labels[1:, :] != labels[:-1, :]
    out[:, 1:] |= dx
    out[1:, :] |= dy
    return out


def _se_topography(height: np.ndarray, ppu: float, style: _Style) -> np.ndarray:
    """Secondary-electron contrast from relief: edge brightening with slope, plus detector-side shading."""
    gy, gx = np.gradient(height)
    scale = 0.1 * ppu  # height units are 0.1 um: slope per unit lateral 0.1 um
    slope = np.hypot(gx, gy) * scale
    shade = (np.cos(style.shade_dir) * gx + np.sin(style.shade_dir) * gy) * scale
    return style.edge_gain * np.tanh(1.2 * slope) + style.shade_gain * np.tanh(shade)


def _add_inclusions(signal: np.ndarray, rng: np.random.Generator, ppu: float) -> np.ndarray:
    """A few dark pits (inclusions pulled out during polishing) with bright rims, and rare bright dust."""
    shape = signal.shape
    area_um2 = shape[0] * shape[1] / ppu**2
    for _ in range(rng.poisson(area_um2 / 1000.0)):
        r = max(1.2, rng.uniform(0.12, 0.5) * ppu)
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        sl, d = _disk_patch(shape, cy, cx, 2.0 * r)
        if sl is None:
            continue
        pit = np.clip(1.0 - d / r, 0.0, 1.0) ** 0.5
        rim = np.exp(-(((d - r) / max(0.8, 0.25 * r)) ** 2))
        signal[sl] = signal[sl] * (1.0 - 0.75 * pit) + 0.25 * rim
    for _ in range(rng.poisson(area_um2 / 1500.0)):
        r = max(1.0, rng.uniform(0.1, 0.35) * ppu)
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        sl, d = _disk_patch(shape, cy, cx, 1.5 * r)
        if sl is None:
            continue
        signal[sl] += 0.45 * np.exp(-((d / r) ** 2))
    return signal


def _disk_patch(shape: tuple[int, int], cy: float, cx: float, radius: float):
    y0, y1 = max(0, int(cy - radius)), min(shape[0], int(cy + radius) + 2)
    x0, x1 = max(0, int(cx - radius)), min(shape[1], int(cx + radius) + 2)
    if y0 >= y1 or x0 >= x1:
        return None, None
    yy, xx = np.mgrid[y0:y1, x0:x1]
    return (slice(y0, y1), slice(x0, x1)), np.hypot(yy - cy, xx - cx).astype(np.float32)


def _imaging(signal: np.ndarray, style: _Style, rng: np.random.Generator) -> np.ndarray:
    """Brightness gradient, defocus, shot noise, scan-line noise, then the operator's contrast setting."""
    shape = signal.shape
    yy = np.linspace(-0.5, 0.5, shape[0], dtype=np.float32)[:, None]
    xx = np.linspace(-0.5, 0.5, shape[1], dtype=np.float32)[None, :]
    low = _smooth_noise(rng, shape, 0.35 * max(shape))
    signal = signal * (1.0 + style.gradient[0] * yy + style.gradient[1] * xx + 0.04 * low)
    signal = ndimage.gaussian_filter(np.clip(signal, 0.0, None), style.blur_px)
    counts = rng.poisson(signal * style.dose).astype(np.float32) / style.dose
    rows = rng.normal(0.0, style.line_noise, size=(shape[0], 1)).astype(np.float32)
    rows += ndimage.gaussian_filter1d(rng.normal(0.0, 2.0 * style.line_noise, size=shape[0]), 8.0)[:, None]
    counts += rows.astype(np.float32)
    lo, hi = np.percentile(counts, [0.2, 99.8])
    lo_out, hi_out = rng.uniform(0.0, 0.08), rng.uniform(0.88, 1.0)
    image = (counts - lo) * ((hi_out - lo_out) / max(hi - lo, 1e-6)) + lo_out
    return np.clip(image, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# noise helpers
# ----------------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth Gaussian-like noise with correlation length ~``scale`` px and unit standard deviation (float32).

    White noise on a coarse grid (spacing ``scale``) interpolated with cubic B-splines, done as two small
    matrix products so it costs about as much as one pass over the image.
    """
    scale = max(float(scale), 1.0)
    gh, gw = int(math.ceil(shape[0] / scale)) + 4, int(math.ceil(shape[1] / scale)) + 4
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    my = _bspline_matrix(shape[0], gh, scale, rng.uniform(0, scale))
    mx = _bspline_matrix(shape[1], gw, scale, rng.uniform(0, scale))
    out = (my @ coarse) @ mx.T
    return out / (float(out.std()) + 1e-12)


def _bspline_matrix(n_out: int, n_in: int, scale: float, offset: float) -> np.ndarray:
    """(n_out, n_in) matrix that samples a cubic B-spline through ``n_in`` knots every ``1/scale`` knot."""
    pos = (np.arange(n_out) + offset) / scale + 1.0
    i0 = np.floor(pos).astype(np.int64)
    f = pos - i0
    weights = ((1 - f) ** 3 / 6, (3 * f**3 - 6 * f**2 + 4) / 6, (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6, f**3 / 6)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    rows = np.arange(n_out)
    for j, w in enumerate(weights):
        np.add.at(m, (rows, np.clip(i0 - 1 + j, 0, n_in - 1)), w.astype(np.float32))
    return m


def _fine_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Blurred white noise with unit standard deviation (float32)."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return noise / (noise.std() + 1e-12)


def _hash01(*keys: np.ndarray | int) -> np.ndarray:
    """Deterministic pseudo-random numbers in [0, 1) from integer keys (vectorised; a 32-bit mixing hash)."""
    mask = np.uint64(0xFFFFFFFF)
    h = np.zeros(np.broadcast(*[np.asarray(k) for k in keys]).shape, dtype=np.uint64)
    for i, key in enumerate(keys):
        k = np.asarray(key).astype(np.int64).astype(np.uint64) & mask
        h = ((h ^ k) * np.uint64(0x9E3779B1 + 2 * i)) & mask
        h ^= h >> np.uint64(15)
        h = (h * np.uint64(0x2C1B3C6D)) & mask
        h ^= h >> np.uint64(12)
    return (h & mask).astype(np.float64) / 4294967296.0
