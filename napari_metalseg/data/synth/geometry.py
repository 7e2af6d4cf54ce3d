"""Geometry of a synthetic microstructure: grains, fragments, phase assignment and rounded interfaces.

Prior-austenite-like grains are a Voronoi tessellation of jittered seeds whose coordinates are warped by smooth
noise; a finer tessellation cuts every grain into fragments (packets/blocks/sheaves); phases go to whole grains,
then to fragments at grain boundaries, then to single fragments; the interphase boundaries are finally rounded
and tuned until every area fraction is within 0.002 of its target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from napari_metalseg.data.synth.noise import hash01, smooth_noise
from napari_metalseg.data.synth.style import FRAGMENT_RATIO, Style


@dataclass
class Micro:
    """A microstructure: the phase mask plus the grain/fragment maps and per-fragment attributes."""

    mask: np.ndarray  # uint8 (H, W) phase index
    grain: np.ndarray  # int32 (H, W) grain label
    frag: np.ndarray  # int32 (H, W) fragment label
    frag_grain: np.ndarray  # grain of each fragment
    frag_phase: np.ndarray  # phase of each fragment
    frag_theta: np.ndarray  # lath orientation of each fragment as a martensite packet/block
    frag_sheaf: np.ndarray  # lath orientation of each fragment as a bainite sheaf
    px_per_um: float


def build_microstructure(
    shape: tuple[int, int], targets: np.ndarray, px_per_um: float, style: Style, rng: np.random.Generator
) -> Micro:
    """Grains, fragments and phases of one image with ``targets`` as phase area fractions."""
    grain_px = style.grain_um * px_per_um
    frag_px = grain_px / FRAGMENT_RATIO
    yy, xx = _grid(shape)
    wy = smooth_noise(rng, shape, 0.7 * grain_px) * (0.10 * grain_px)
    wx = smooth_noise(rng, shape, 0.7 * grain_px) * (0.10 * grain_px)
    fy = smooth_noise(rng, shape, 0.2 * grain_px) * (0.05 * grain_px)
    fx = smooth_noise(rng, shape, 0.2 * grain_px) * (0.05 * grain_px)
    ry = smooth_noise(rng, shape, 0.06 * grain_px) * (0.012 * grain_px)
    rx = smooth_noise(rng, shape, 0.06 * grain_px) * (0.012 * grain_px)
    grain = _voronoi(_jittered_seeds(rng, shape, grain_px), yy + wy + 0.4 * fy, xx + wx + 0.4 * fx)
    cell = _voronoi(_jittered_seeds(rng, shape, frag_px), yy + 0.5 * wy + fy + ry, xx + 0.5 * wx + fx + rx)
    frag, frag_grain, frag_cell, frag_area = _fragments(grain, cell)
    frag_phase = _assign_phases(frag_area, frag_grain, frag_cell, targets, rng)
    packets = _orientations(frag_grain, frag_cell, rng, 4)
    sheaves = _orientations(frag_grain, frag_cell, rng, 2)
    mask = _round_interfaces(frag_phase.astype(np.uint8)[frag], targets, 0.05 * grain_px, rng)
    return Micro(mask, grain, frag, frag_grain, frag_phase, packets, sheaves, px_per_um)


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
            fields[p] += 0.12 * smooth_noise(rng, mask.shape, 1.5 * sigma)
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
    pick = np.minimum((hash01(frag_cell, n_variants) * n_variants).astype(np.int64), n_variants - 1)
    theta = variants[frag_grain, pick]
    return (theta + rng.normal(0, 0.06, size=frag_grain.size)).astype(np.float32)
