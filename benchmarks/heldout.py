"""Held-out SEM-like micrographs of nital-etched multiphase steel with exact phase masks.

This is an *independent* generator: it shares no code with ``napari_metalseg.data.synth`` and starts from its own
physical picture, so that models trained on the project's synthetic data can be scored on data that does not share
that generator's quirks.

Physical picture
----------------
* **Grains.** Ferrite / prior-austenite grains come from a Johnson-Mehl-like tessellation: jittered nuclei with
  random nucleation times (additively weighted Voronoi, curved boundaries), sampled on a coordinate grid that is
  warped by smooth noise so the boundaries meander.
* **Phases.** Bainite takes whole grains (chosen in random order until the target fraction is reached; the last
  grain is cut by a wavy front). Martensite forms where austenite formed during intercritical annealing: along grain
  boundaries and preferentially at triple junctions; a boundary-proximity score plus smooth noise is thresholded to
  give the target fraction, so islands sit at junctions for low fractions and link into a network for high ones.
  Martensite islands are split into blocks with lath variants (0/60/120 degrees relative to the parent grain);
  bainite grains are split into packets, each with one lath direction and either upper-bainite carbide streaks
  (parallel to the laths) or lower-bainite carbides (tilted ~60 degrees inside the laths).
* **Etching and SE contrast.** Nital etches ferrite down, so ferrite is low and darker; martensite stands proud,
  bainite in between; carbides stand up and are bright. The secondary-electron signal is a material term plus an
  edge term (gradient magnitude of the height: bright rims at steps and grooves) plus a detector-side term
  (directional slope: one side of each step brighter). Per-region brightness varies (grain orientation, local
  etching), so the phases' intensity distributions overlap and texture/context are needed to tell them apart.
* **Imaging.** Scan-line jitter (row offsets, applied to the mask too), defocus blur (slightly astigmatic), a
  low-frequency brightness gradient, optional line-wise charging tails, shot noise (Poisson), Gaussian read noise,
  operator contrast/brightness and 8-bit quantisation.

Feature sizes are physical (micrometres) and converted with the pixel size implied by the magnification
(:func:`pixel_size_um`), so higher magnification gives bigger features in pixels.

Usage::

    python benchmarks/heldout.py --out DIR --n 12 --size 384 --seed 100 [--phases 2|3] [--split test]

or from Python: :func:`generate`, :func:`write_heldout`, :func:`scribble_mask`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage, signal
from scipy.spatial import cKDTree

PHASE_NAMES = ("ferrite", "martensite", "bainite")
"""Phase names in the project's default order (index 0, 1, 2)."""

FERRITE, MARTENSITE, BAINITE = 0, 1, 2
UNLABELED = 255

SCAN_WIDTH_MM = 127.0
"""Reference field width at 1x (a 127 mm print), imaged with :data:`SCAN_PIXELS` pixels across."""
SCAN_PIXELS = 1024


def pixel_size_um(magnification: float) -> float:
    """Pixel size (micrometres) at ``magnification``: a 127 mm / magnification wide field on a 1024 px scan."""
    if not magnification or magnification <= 0:
        raise ValueError(f"magnification must be positive, got {magnification!r}")
    return SCAN_WIDTH_MM * 1000.0 / (float(magnification) * SCAN_PIXELS)


# --------------------------------------------------------------------------------------------------------------
# Random fields
# --------------------------------------------------------------------------------------------------------------


def _freqs(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None, :]


def _filtered_noise(rng: np.random.Generator, shape: tuple[int, int], filt: np.ndarray) -> np.ndarray:
    """White noise filtered in the Fourier domain, zero mean and unit standard deviation."""
    spec = np.fft.rfft2(rng.standard_normal(shape)) * filt
    out = np.fft.irfft2(spec, s=shape)
    out -= out.mean()
    sd = out.std()
    return out / sd if sd > 0 else out


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Isotropic Gaussian-correlated noise with correlation length ``sigma`` pixels."""
    fy, fx = _freqs(shape)
    return _filtered_noise(rng, shape, np.exp(-2 * math.pi**2 * sigma**2 * (fy**2 + fx**2)))


def _rotated(shape: tuple[int, int], angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies along the direction ``angle`` (x to the right, y down) and across it."""
    fy, fx = _freqs(shape)
    c, s = math.cos(angle), math.sin(angle)
    return fx * c + fy * s, -fx * s + fy * c


def _oriented_noise(rng, shape, angle: float, sigma_along: float, sigma_across: float) -> np.ndarray:
    """Noise elongated along ``angle``: streaks ~``sigma_along`` long and ~``sigma_across`` wide (pixels)."""
    fa, fc = _rotated(shape, angle)
    filt = np.exp(-2 * math.pi**2 * (sigma_along**2 * fa**2 + sigma_across**2 * fc**2))
    return _filtered_noise(rng, shape, filt)


def _stripes(rng, shape, angle: float, period: float, sigma_along: float, rel_bw: float = 0.3) -> np.ndarray:
    """Quasi-periodic stripes running along ``angle`` with spacing ``period`` pixels (laths)."""
    fa, fc = _rotated(shape, angle)
    f0 = 1.0 / max(period, 2.05)
    filt = np.exp(-((np.abs(fc) - f0) ** 2) / (2 * (rel_bw * f0) ** 2))
    filt *= np.exp(-2 * math.pi**2 * sigma_along**2 * fa**2)
    return _filtered_noise(rng, shape, filt)


# --------------------------------------------------------------------------------------------------------------
# Tessellation
# --------------------------------------------------------------------------------------------------------------


def _tessellation(
    rng,
    shape,
    cell: float,
    warp: float = 0.12,
    weight: float = 0.3,
    k: int = 4,
    distances: bool = True,
    where: np.ndarray | None = None,
):
    """Johnson-Mehl-like grains on a warped grid.

    Returns ``(label, gb, tj)``: grain label per pixel (non-negative ints, not contiguous), approximate distance
    (px) to the nearest grain boundary and to the nearest triple junction (``None`` when ``distances`` is False).
    With ``where`` (and ``distances`` False) only those pixels are labelled; the others get label 0.
    """
    h, w = shape
    cell = float(max(cell, 3.0))
    pad = cell * 1.5
    ny = max(int(math.ceil((h + 2 * pad) / cell)), 1)
    nx = max(int(math.ceil((w + 2 * pad) / cell)), 1)
    gy, gx = np.mgrid[0:ny, 0:nx].astype(float)
    pts = np.stack(
        [(gy + rng.uniform(0, 1, gy.shape)) * cell - pad, (gx + rng.uniform(0, 1, gx.shape)) * cell - pad], axis=-1
    ).reshape(-1, 2)
    # Johnson-Mehl: nuclei born at random times grow at equal speed -> distance minus a per-nucleus head start.
    head = rng.uniform(0.0, weight * cell, len(pts))
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    if warp > 0:
        yy = yy + warp * cell * _smooth_noise(rng, shape, 0.8 * cell)
        xx = xx + warp * cell * _smooth_noise(rng, shape, 0.8 * cell)
    sel = np.ones(h * w, bool) if where is None or distances else np.asarray(where, bool).ravel()
    tree = cKDTree(pts)
    kk = min(k if distances else (3 if weight > 0 else 1), len(pts))
    dist, idx = tree.query(np.stack([yy.ravel()[sel], xx.ravel()[sel]], axis=1), k=kk)
    if kk == 1:
        dist, idx = dist[:, None], idx[:, None]
    dw = dist - head[idx]
    order = np.argsort(dw, axis=1) if kk > 1 else np.zeros(dw.shape, np.intp)
    label = np.zeros(h * w, np.int64)
    label[sel] = np.take_along_axis(idx, order[:, :1], axis=1)[:, 0]
    label = label.reshape(shape)
    if not distances:
        return label, None, None
    ds = np.take_along_axis(dw, order, axis=1)
    d1 = ds[:, 0]
    d2 = ds[:, 1] if kk > 1 else d1 + cell
    d3 = ds[:, 2] if kk > 2 else d2 + cell
    gb = (0.5 * (d2 - d1)).reshape(shape)
    tj = (0.5 * (d3 - d1)).reshape(shape)
    return label, gb, tj


def _compact(label: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel non-negative integer labels to 0..n-1."""
    present = np.bincount(label.ravel()) > 0
    lut = np.cumsum(present) - 1
    return lut[label], int(present.sum())


# --------------------------------------------------------------------------------------------------------------
# Microstructure
# --------------------------------------------------------------------------------------------------------------


def _target_fractions(rng, fractions, k: int) -> np.ndarray:
    if fractions is not None:
        f = np.asarray(fractions, dtype=float).ravel()
        if f.size == k - 1:
            f = np.concatenate([[1.0 - f.sum()], f])
        if f.size != k or np.any(f < 0) or f.sum() <= 0:
            raise ValueError(
                f"fractions must be {k} non-negative numbers (ferrite, martensite[, bainite]), got {fractions!r}"
            )
        return f / f.sum()
    if k == 2:
        m = rng.uniform(0.1, 0.5)
        return np.array([1 - m, m])
    while True:
        m, b = rng.uniform(0.08, 0.38), rng.uniform(0.05, 0.32)
        if m + b <= 0.62:
            return np.array([1 - m - b, m, b])


def _microstructure(rng, shape, s: float, f: np.ndarray, k: int) -> dict:
    """Phase mask plus the region maps the renderer needs; ``s`` = pixels per micrometre."""
    h, w = shape
    n = h * w
    grain_um = rng.uniform(3.0, 6.0)
    cell = max(grain_um * s, 10.0)
    grains, gb, tj = _tessellation(rng, shape, cell, warp=rng.uniform(0.08, 0.16), weight=rng.uniform(0.05, 0.2))
    grains, n_grains = _compact(grains)
    mask = np.zeros(shape, np.uint8)

    # ---- bainite: whole grains in random order, the last one cut by a wavy front
    bain = np.zeros(shape, bool)
    if k >= 3 and f[BAINITE] > 0:
        target = f[BAINITE] * n
        areas = np.bincount(grains.ravel(), minlength=n_grains)
        acc = 0.0
        for g in rng.permutation(n_grains):
            a = areas[g]
            if a == 0:
                continue
            if acc + a <= target:
                bain |= grains == g
                acc += a
            else:
                need = int(round(target - acc))
                if need > 0:
                    inside = grains == g
                    yy, xx = np.nonzero(inside)
                    ang = rng.uniform(0, 2 * math.pi)
                    front = xx * math.cos(ang) + yy * math.sin(ang)
                    wav = _smooth_noise(rng, shape, 0.3 * cell)[inside] * 0.12 * cell
                    t = front + wav
                    sel = np.argsort(t)[:need]
                    bain[yy[sel], xx[sel]] = True
                break
        mask[bain] = BAINITE

    # ---- martensite: boundary / triple-junction proximity + noise, thresholded to the target fraction
    mart = np.zeros(shape, bool)
    if f[MARTENSITE] > 0:
        # which boundaries carry austenite (large-scale) and ragged island outlines (small-scale)
        scale = 0.45 * s
        coarse = _smooth_noise(rng, shape, rng.uniform(0.6, 1.0) * s)
        fine = _smooth_noise(rng, shape, max(1.5, rng.uniform(0.2, 0.35) * s))
        score = (
            -gb / scale
            - rng.uniform(0.6, 1.2) * tj / scale
            + rng.uniform(1.0, 2.0) * coarse
            + rng.uniform(0.15, 0.35) * fine
        )
        score[bain] = -np.inf
        eligible = int((~bain).sum())
        min_area = max(6, int((0.3 * s) ** 2))
        target = f[MARTENSITE] * n
        want = target
        for _ in range(3):
            cnt = int(np.clip(round(want), 1, eligible)) if eligible else 0
            if cnt == 0:
                break
            thr = np.partition(score.ravel(), n - cnt)[n - cnt]
            mart = score >= thr
            mart = _remove_small(mart, min_area)
            mart = ~_remove_small(~mart, min_area) & ~bain
            got = int(mart.sum())
            if abs(got - target) <= 0.005 * n:
                break
            want = max(1.0, want + (target - got))
        if not mart.any():  # the phase was asked for: keep at least the best spot
            mart = score >= np.partition(score.ravel(), n - max(int(target), min_area))[n - max(int(target), min_area)]
        mask[mart] = MARTENSITE

    return {"mask": mask, "grains": grains, "gb": gb, "tj": tj, "cell": cell, "grain_um": grain_um}


def _remove_small(binary: np.ndarray, min_area: int) -> np.ndarray:
    lab, nlab = ndimage.label(binary)
    if nlab == 0:
        return binary
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_area
    keep[0] = False
    return keep[lab]


# --------------------------------------------------------------------------------------------------------------
# Rendering (SE contrast of an etched surface)
# --------------------------------------------------------------------------------------------------------------


def _per_region(rng, label: np.ndarray, sd: float, n: int | None = None) -> np.ndarray:
    lab, nlab = _compact(label) if n is None else (label, n)
    return rng.normal(0.0, sd, nlab)[lab]


def _render(rng, micro: dict, s: float) -> np.ndarray:
    mask, grains, gb = micro["mask"], micro["grains"], micro["gb"]
    shape = mask.shape
    cell = micro["cell"]
    is_m = mask == MARTENSITE
    is_b = mask == BAINITE

    # ---- contrast of this specimen / etch
    base_f = rng.uniform(0.22, 0.34)
    base_m = base_f + rng.uniform(0.05, 0.16)
    base_b = base_f + rng.uniform(0.02, 0.1)
    region_sd = rng.uniform(0.045, 0.075)
    edge_gain = rng.uniform(0.5, 1.1)
    side_gain = rng.uniform(0.15, 0.45)
    side_angle = rng.uniform(0, 2 * math.pi)
    sigma_edge = max(0.7, rng.uniform(0.03, 0.06) * s)

    height = np.zeros(shape)
    material = np.full(shape, base_f) + _per_region(rng, grains, 0.6 * region_sd)
    # faint etch shading inside ferrite grains
    material += 0.02 * _smooth_noise(rng, shape, 0.8 * s)

    # ---- ferrite grain-boundary grooves
    groove_w = max(0.7, rng.uniform(0.02, 0.04) * s)
    groove = np.exp(-((gb / groove_w) ** 2))
    height -= rng.uniform(0.25, 0.6) * groove * (mask == FERRITE)
    material -= 0.05 * groove * (mask == FERRITE)

    # ---- martensite: proud islands, block / lath texture
    if is_m.any():
        ms = ndimage.gaussian_filter(is_m.astype(float), sigma_edge)
        height += rng.uniform(0.8, 1.2) * ms
        islands, nisl = ndimage.label(is_m)
        off = rng.normal(0.0, region_sd, nisl + 1)
        off[0] = 0.0
        blocks_cell = max(5.0, rng.uniform(0.6, 1.2) * s)
        blocks, _, _ = _tessellation(rng, shape, blocks_cell, warp=0.15, weight=0.0, distances=False, where=is_m)
        blocks, nbl = _compact(blocks)
        key, nkey = _compact(grains.astype(np.int64) * nbl + blocks)
        n_var = 6
        a0 = rng.uniform(0, math.pi)
        grain_var = rng.integers(0, n_var, grains.max() + 1)
        # block variant: the parent grain's lath direction, or turned by 60 / 120 degrees
        key_grain = np.zeros(nkey, np.int64)
        key_grain[key.ravel()] = grains.ravel()
        variant = ((grain_var[key_grain] + 2 * rng.integers(0, 3, nkey)) % n_var)[key]
        lath_period = max(2.2, rng.uniform(0.15, 0.28) * s)
        laths = np.zeros(shape)
        for v in np.unique(variant[is_m]):
            sel = is_m & (variant == v)
            field = _stripes(rng, shape, a0 + v * math.pi / n_var, lath_period, rng.uniform(0.3, 0.8) * s, 0.5)
            laths[sel] = field[sel]
        # blocky mottling and sharper lath boundaries
        mottle = _smooth_noise(rng, shape, max(1.0, 0.12 * s))
        tex = np.tanh(1.3 * laths) + 0.5 * mottle
        tex = ndimage.gaussian_filter(tex * is_m, 0.5)
        height += rng.uniform(0.1, 0.22) * tex
        material += ms * (base_m - base_f + off[islands]) + rng.uniform(0.03, 0.07) * tex
        # thin etched block boundaries inside the islands
        bb = _boundaries(key) & is_m
        height -= 0.15 * ndimage.gaussian_filter(bb.astype(float), 0.6)

    # ---- bainite: packets of parallel laths with carbides
    if is_b.any():
        bs = ndimage.gaussian_filter(is_b.astype(float), sigma_edge)
        height += rng.uniform(0.35, 0.6) * bs
        packets, _, _ = _tessellation(
            rng, shape, max(8.0, cell / rng.uniform(1.5, 2.5)), warp=0.15, weight=0.0, distances=False, where=is_b
        )
        packets, npk = _compact(packets)
        key, nkey = _compact(grains.astype(np.int64) * npk + packets)
        n_var = 5
        a0 = rng.uniform(0, math.pi)
        variant = rng.integers(0, n_var, nkey)[key]
        lower = (rng.random(nkey) < rng.uniform(0.0, 1.0))[key]
        off = _per_region(rng, key, region_sd)
        period = max(3.0, rng.uniform(0.25, 0.45) * s)
        density = rng.uniform(0.5, 1.0)
        carbides = np.zeros(shape)
        laths = np.zeros(shape)
        for v in np.unique(variant[is_b]):
            sel = is_b & (variant == v)
            ang = a0 + v * math.pi / n_var
            rows = _stripes(rng, shape, ang, period, rng.uniform(1.0, 2.5) * s, 0.25)
            laths[sel] = rows[sel]
            for is_lower in (False, True):
                sub = sel & (lower == is_lower)
                if not sub.any():
                    continue
                if is_lower:  # short platelets inside the laths, tilted ~60 degrees to the lath axis
                    dash_ang = ang + math.radians(rng.uniform(55, 65)) * rng.choice([-1, 1])
                    length = max(1.5, rng.uniform(0.1, 0.25) * s)
                    width = max(0.6, rng.uniform(0.02, 0.04) * s)
                    sites = sub & (rows < -0.3)
                else:  # streaks and strings of particles along the lath boundaries
                    dash_ang = ang
                    length = max(2.0, rng.uniform(0.12, 0.35) * s)
                    width = max(0.6, rng.uniform(0.02, 0.04) * s)
                    sites = sub & (rows > 0.9)
                prob = density * 1.2 / (length * max(1.0, width))
                carbides += _dashes(rng, sites, prob, dash_ang, length, width)
        carbides = (1.0 - np.exp(-1.5 * carbides)) * is_b
        lath_relief = ndimage.gaussian_filter(np.tanh(laths) * is_b, 0.5)
        height += rng.uniform(0.06, 0.14) * lath_relief + rng.uniform(0.4, 0.7) * carbides
        material += bs * (base_b - base_f + off) + rng.uniform(0.2, 0.35) * carbides + 0.03 * lath_relief

    # ---- a few etch pits in the ferrite
    n_pits = rng.poisson(shape[0] * shape[1] / (s * s) * 0.02)
    if n_pits:
        pits = np.zeros(shape)
        py, px = rng.integers(0, shape[0], n_pits), rng.integers(0, shape[1], n_pits)
        pits[py, px] = 1.0
        pits *= mask == FERRITE
        pits = ndimage.gaussian_filter(pits, max(0.6, 0.04 * s))
        pits /= max(pits.max(), 1e-9)
        height -= 0.5 * pits

    # ---- surface roughness and optional polishing scratches (all phases)
    height += 0.03 * _smooth_noise(rng, shape, 1.0)
    if rng.random() < 0.4:
        scratch = _oriented_noise(rng, shape, rng.uniform(0, math.pi), 3 * cell, 0.8)
        height -= rng.uniform(0.03, 0.08) * np.clip(scratch - 1.5, 0, None)

    # ---- SE signal: material + edge brightening + detector-side slope term
    hs = ndimage.gaussian_filter(height, 0.6)
    gy, gx = np.gradient(hs)
    gmag = np.hypot(gy, gx)
    slope = gx * math.cos(side_angle) + gy * math.sin(side_angle)
    se = material + edge_gain * np.tanh(gmag * 1.5) + side_gain * slope
    return se


def _dashes(rng, sites: np.ndarray, prob: float, angle: float, length: float, width: float) -> np.ndarray:
    """Short particles (anisotropic Gaussians ``length`` x ``width`` px along ``angle``) at random ``sites``."""
    shape = sites.shape
    imp = (rng.random(shape) < prob) & sites
    if not imp.any():
        return np.zeros(shape)
    imp = imp * rng.uniform(0.5, 1.0, shape)
    sa, sc = length / 2.5, width / 2.0
    fa, fc = _rotated(shape, angle)
    filt = np.exp(-2 * math.pi**2 * (sa**2 * fa**2 + sc**2 * fc**2))
    out = np.fft.irfft2(np.fft.rfft2(imp) * filt, s=shape)
    return np.clip(out * (2 * math.pi * sa * sc), 0.0, None)


def _boundaries(label: np.ndarray) -> np.ndarray:
    b = np.zeros(label.shape, bool)
    b[:-1] |= label[:-1] != label[1:]
    b[:, :-1] |= label[:, :-1] != label[:, 1:]
    return b


# --------------------------------------------------------------------------------------------------------------
# Imaging
# --------------------------------------------------------------------------------------------------------------


def _image(rng, se: np.ndarray, mask: np.ndarray, s: float, quantize: bool) -> tuple[np.ndarray, np.ndarray]:
    h, w = se.shape

    # scan-line jitter: smooth wander plus occasional jumps, applied to image (sub-pixel) and mask (nearest)
    amp = rng.uniform(0.0, 0.8)
    offs = amp * ndimage.gaussian_filter1d(rng.standard_normal(h), rng.uniform(1, 4)) * 2.0
    jumps = rng.random(h) < rng.uniform(0.0, 0.03)
    offs += jumps * rng.normal(0, 0.8, h)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    xs = xx - offs[:, None]
    se = ndimage.map_coordinates(se, [yy, xs], order=1, mode="nearest")
    mask = ndimage.map_coordinates(mask, [yy, xs], order=0, mode="nearest").astype(np.uint8)

    # defocus / probe size (slightly astigmatic)
    sig = rng.uniform(0.5, 1.1)
    se = ndimage.gaussian_filter(se, (sig * rng.uniform(0.85, 1.15), sig * rng.uniform(0.85, 1.15)))

    # low-frequency brightness gradient and charging
    ramp_ang = rng.uniform(0, 2 * math.pi)
    ramp = (xx / w - 0.5) * math.cos(ramp_ang) + (yy / h - 0.5) * math.sin(ramp_ang)
    lowf = _smooth_noise(rng, se.shape, max(h, w) / 3)
    se = se * (1 + rng.uniform(0.0, 0.15) * lowf) + rng.uniform(0.0, 0.12) * ramp
    if rng.random() < 0.35:  # line-wise charging: bright features leave a tail to the right
        a = rng.uniform(0.85, 0.97)
        tail = signal.lfilter([1 - a], [1, -a], se - np.median(se), axis=1)
        se = se + rng.uniform(0.05, 0.2) * np.clip(tail, 0, None)

    # detector noise: shot noise and read noise (slightly correlated along the scan)
    se = np.clip(se, 0.0, None)
    electrons = rng.uniform(30, 150)
    se = rng.poisson(se * electrons) / electrons
    read = rng.normal(0.0, rng.uniform(0.004, 0.02), se.shape)
    se = se + ndimage.gaussian_filter1d(read, rng.uniform(0.3, 0.8), axis=1) * 1.5
    se *= 1.0 + rng.normal(0.0, rng.uniform(0.0, 0.01), (h, 1))  # line-to-line gain

    # operator's contrast / brightness
    lo_p, hi_p = np.percentile(se, [0.5, 99.7])
    lo, hi = rng.uniform(0.02, 0.12), rng.uniform(0.82, 0.97)
    img = lo + (se - lo_p) * (hi - lo) / max(hi_p - lo_p, 1e-6)
    img = np.clip(img, 0.0, 1.0)
    if quantize:
        img = np.round(img * 255.0) / 255.0
    return img.astype(np.float32), mask


# --------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------


def generate(
    *,
    size: int | tuple[int, int] = 384,
    seed: int | np.random.SeedSequence | None,
    fractions: Sequence[float] | None = None,
    magnification: float = 3500,
    phases: int = 3,
    quantize: bool = True,
    return_info: bool = False,
):
    """One SEM-like micrograph of etched steel and its exact phase mask.

    Parameters
    ----------
    size : int or (height, width)
    seed : int, SeedSequence or None
        Same seed and arguments -> identical output.
    fractions : K numbers (ferrite, martensite[, bainite]), optional
        Target area fractions (normalised to sum 1); approximately honoured (bainite by choosing grains, martensite
        by thresholding). ``None`` draws them at random. ``K - 1`` numbers are taken as the non-ferrite ones.
    magnification : float
        Sets the pixel size (:func:`pixel_size_um`) and so the feature size in pixels.
    phases : 2 or 3
        3: ferrite, martensite, bainite; 2: ferrite, martensite (dual-phase steel).
    quantize : bool
        Round to 256 grey levels, like an 8-bit SEM image.
    return_info : bool
        Also return a dict with the target and achieved fractions, pixel size and grain size.

    Returns
    -------
    image : float32 (H, W) in [0, 1]
    mask : uint8 (H, W), values 0..K-1
    info : dict (only with ``return_info``)
    """
    if phases not in (2, 3):
        raise ValueError(f"phases must be 2 or 3, got {phases!r}")
    h, w = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if h < 16 or w < 16:
        raise ValueError(f"size must be at least 16 x 16, got {h} x {w}")
    rng = np.random.default_rng(seed)
    px_um = pixel_size_um(magnification)
    s = 1.0 / px_um
    f = _target_fractions(rng, fractions, phases)
    micro = _microstructure(rng, (h, w), s, f, phases)
    se = _render(rng, micro, s)
    image, mask = _image(rng, se, micro["mask"], s, quantize)
    if not return_info:
        return image, mask
    got = np.bincount(mask.ravel(), minlength=phases)[:phases] / mask.size
    info = {
        "magnification": float(magnification),
        "pixel_size_um": px_um,
        "grain_size_um": float(micro["grain_um"]),
        "target_fractions": dict(zip(PHASE_NAMES[:phases], (float(x) for x in f))),
        "fractions": dict(zip(PHASE_NAMES[:phases], (float(x) for x in got))),
    }
    return image, mask, info


def write_heldout(
    root: str | Path,
    *,
    n: int,
    size: int = 384,
    seed: int = 0,
    magnifications: Sequence[float] = (2000, 3500, 6000),
    fractions: Sequence[float] | None = None,
    phases: int = 3,
    split: str = "test",
    prefix: str = "heldout",
) -> Path:
    """Write ``n`` generated micrographs into a dataset folder (the project's format), all in ``split``.

    Image ``i`` uses magnification ``magnifications[i % len(magnifications)]`` and an independent seed derived from
    ``seed`` and ``i``. Existing rows of ``metadata.csv`` are kept. Returns ``root``.
    """
    from napari_metalseg.data.dataset import new_dataset, read_metadata, write_item, write_metadata

    if n < 1:
        raise ValueError("n must be >= 1")
    if not magnifications:
        raise ValueError("magnifications must not be empty")
    root = Path(root)
    names = list(PHASE_NAMES[:phases])
    new_dataset(root, names)
    rows = read_metadata(root)
    seeds = np.random.SeedSequence(seed).spawn(n)
    for i in range(n):
        mag = float(magnifications[i % len(magnifications)])
        image, mask, info = generate(
            size=size, seed=seeds[i], fractions=fractions, magnification=mag, phases=phases, return_info=True
        )
        name = f"{prefix}_{i:03d}_x{mag:g}"
        write_item(root, name, image, mask)
        row = {
            "name": name,
            "magnification": mag,
            "pixel_size_um": info["pixel_size_um"],
            "split": split,
            "source": "heldout",
            "grain_size_um": round(info["grain_size_um"], 3),
        }
        for phase, value in info["fractions"].items():
            row[f"fraction_{phase}"] = round(value, 4)
        rows[name] = row
    write_metadata(root, rows.values())
    return root


# --------------------------------------------------------------------------------------------------------------
# Scribbles
# --------------------------------------------------------------------------------------------------------------


def _disk_offsets(radius: float) -> tuple[np.ndarray, np.ndarray]:
    r = int(math.ceil(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dy**2 + dx**2 <= radius**2 + 1e-9
    return dy[keep], dx[keep]


def scribble_mask(mask: np.ndarray, fraction: float = 0.1, seed: int | None = 0, width: int = 3) -> np.ndarray:
    """Sparse annotation like a user's brush strokes: labels of ``mask`` along random smooth strokes, 255 elsewhere.

    Strokes (gently curving random walks, ``width`` px wide) are drawn inside each phase's region shrunk by the
    brush radius plus a pixel, so they never touch or cross a phase boundary, until about ``fraction`` of the pixels
    are labelled. Every phase present gets strokes: the budget is shared roughly in proportion to area, with a floor
    for small phases (a budget a phase cannot take goes to the others). Phases too thin for the brush get a thinner
    one (down to single pixels at their most interior points).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError("mask must be 2-D")
    if not 0 < fraction <= 1:
        raise ValueError("fraction must be in (0, 1]")
    rng = np.random.default_rng(seed)
    h, w = mask.shape
    total = h * w
    out = np.full(mask.shape, UNLABELED, np.uint8)
    present = [int(p) for p in np.unique(mask) if p != UNLABELED]
    if not present:
        return out
    areas = np.array([(mask == p).sum() for p in present], float)
    weights = np.maximum(areas / areas.sum(), 0.5 / len(present) * 0.5)  # proportional, with a floor
    weights /= weights.sum()
    budgets = weights * fraction * total

    radius0 = max(0.0, (width - 1) / 2.0)
    # draw small budgets first so the leftovers of phases that cannot take their share go to the big ones
    order = np.argsort(budgets)
    carry = 0.0
    for j, pi in enumerate(order):
        p = present[pi]
        region = mask == p
        budget = budgets[pi] + carry
        drawn = _scribble_phase(rng, region, out, p, budget, radius0, h, w)
        carry = max(0.0, budget - drawn) if j < len(order) - 1 else 0.0
    return out


def _scribble_phase(rng, region, out, p, budget, radius0, h, w) -> int:
    """Draw strokes of phase ``p`` into ``out`` until ``budget`` new pixels; returns the number drawn."""
    drawn = 0
    radius = radius0
    dist = ndimage.distance_transform_edt(region)
    while True:
        # the brush centre must stay where the whole brush fits inside the region, a pixel clear of its edge
        # when there is room (users keep strokes inside the boundary), else touching it
        core = dist > radius + 1.5
        if not core.any():
            core = dist > radius + 0.5
        if core.any() or radius <= 0:
            break
        radius = max(0.0, radius - 0.5)
    if not core.any():
        core = dist >= dist.max() - 1e-9  # single pixels at the most interior points
    dy, dx = _disk_offsets(radius)
    cy, cx = np.nonzero(core)
    step = 1.0
    fails = 0
    typical = max(10, int(0.25 * math.sqrt(core.sum())) + 10)
    while drawn < budget and fails < 200:
        i = rng.integers(len(cy))
        y, x = float(cy[i]), float(cx[i])
        heading = rng.uniform(0, 2 * math.pi)
        turn = rng.normal(0, 0.03)  # a gently curving hand movement
        length = int(rng.integers(max(4, typical // 3), typical * 2 + 1))
        remaining = budget - drawn
        # a stroke adds ~ (2r + 1) px per step: do not overshoot much
        length = max(1, min(length, int(remaining / max(1.0, 2 * radius + 1)) + 1))
        pts_y, pts_x = [int(round(y))], [int(round(x))]
        for _ in range(length):
            moved = False
            wobble = heading + turn + rng.normal(0, 0.05)
            # ahead if possible, else veer gradually away from the phase boundary, else stop
            for dev in (0.0, 0.35, -0.35, 0.7, -0.7, 1.1, -1.1):
                hd = wobble + dev
                ny, nx = y + step * math.sin(hd), x + step * math.cos(hd)
                iy, ix = int(round(ny)), int(round(nx))
                if 0 <= iy < h and 0 <= ix < w and core[iy, ix]:
                    y, x, heading = ny, nx, hd
                    moved = True
                    break
            if not moved:
                break
            turn = float(np.clip(0.95 * turn + rng.normal(0, 0.01), -0.15, 0.15))
            pts_y.append(iy)
            pts_x.append(ix)
        py = (np.asarray(pts_y)[:, None] + dy[None, :]).ravel()
        px = (np.asarray(pts_x)[:, None] + dx[None, :]).ravel()
        ok = (py >= 0) & (py < h) & (px >= 0) & (px < w)
        py, px = py[ok], px[ok]
        ok = region[py, px] & (out[py, px] == UNLABELED)
        new = np.unique(py[ok] * w + px[ok])
        if new.size == 0:
            fails += 1
            continue
        out.ravel()[new] = p
        drawn += int(new.size)
    return drawn


# --------------------------------------------------------------------------------------------------------------
# Montage and CLI
# --------------------------------------------------------------------------------------------------------------


def save_montage(
    path: str | Path,
    *,
    n: int = 6,
    size: int = 384,
    seed: int = 100,
    magnifications: Sequence[float] = (2000, 3500, 6000),
    phases: int = 3,
    per_row: int = 3,
) -> Path:
    """PNG montage: ``n`` generated images, each followed by its coloured mask, ``per_row`` pairs per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    colors = ["#4477aa", "#ee6677", "#228833"][:phases]
    rows = int(math.ceil(n / per_row))
    fig, axes = plt.subplots(rows, 2 * per_row, figsize=(4 * per_row * 1.55, 3.45 * rows), squeeze=False)
    seeds = np.random.SeedSequence(seed).spawn(n)
    for i in range(n):
        mag = magnifications[i % len(magnifications)]
        image, mask, info = generate(size=size, seed=seeds[i], magnification=mag, phases=phases, return_info=True)
        ax_i, ax_m = axes[i // per_row, 2 * (i % per_row)], axes[i // per_row, 2 * (i % per_row) + 1]
        ax_i.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        fr = ", ".join(f"{k[0].upper()} {v:.2f}" for k, v in info["fractions"].items())
        ax_i.set_title(f"x{mag:g} ({info['pixel_size_um'] * 1000:.0f} nm/px)", fontsize=9)
        ax_m.imshow(mask, cmap=ListedColormap(colors), vmin=0, vmax=phases - 1, interpolation="nearest")
        ax_m.set_title(fr, fontsize=9)
        for ax in (ax_i, ax_m):
            ax.set_xticks([])
            ax.set_yticks([])
    for j in range(n, rows * per_row):
        axes[j // per_row, 2 * (j % per_row)].axis("off")
        axes[j // per_row, 2 * (j % per_row) + 1].axis("off")
    names = ", ".join(f"{c}={nm}" for c, nm in zip(("blue", "red", "green"), PHASE_NAMES[:phases]))
    fig.suptitle(f"benchmarks/heldout.py examples (mask colours: {names})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a held-out dataset of SEM-like etched-steel micrographs.")
    parser.add_argument("--out", required=True, help="dataset folder to write (created if missing)")
    parser.add_argument("--n", type=int, default=12, help="number of images (default 12)")
    parser.add_argument("--size", type=int, default=384, help="image side in pixels (default 384)")
    parser.add_argument("--seed", type=int, default=100, help="random seed (default 100)")
    parser.add_argument(
        "--phases",
        type=int,
        choices=(2, 3),
        default=3,
        help="3: ferrite, martensite, bainite; 2: ferrite, martensite (default 3)",
    )
    parser.add_argument("--split", choices=("train", "val", "test"), default="test", help="split (default test)")
    parser.add_argument(
        "--magnifications",
        default="2000,3500,6000",
        help="comma-separated magnifications, cycled (default 2000,3500,6000)",
    )
    parser.add_argument(
        "--fractions",
        default=None,
        help="comma-separated target fractions ferrite,martensite[,bainite] (default: random)",
    )
    parser.add_argument("--montage", default=None, help="also save a PNG montage of 6 examples here")
    args = parser.parse_args(argv)
    mags = [float(m) for m in args.magnifications.split(",") if m.strip()]
    fractions = [float(x) for x in args.fractions.split(",")] if args.fractions else None
    t0 = time.perf_counter()
    root = write_heldout(
        args.out,
        n=args.n,
        size=args.size,
        seed=args.seed,
        magnifications=mags,
        fractions=fractions,
        phases=args.phases,
        split=args.split,
    )
    print(f"wrote {args.n} images to {root} in {time.perf_counter() - t0:.1f} s")
    if args.montage:
        print(f"montage: {save_montage(args.montage, seed=args.seed, magnifications=mags, phases=args.phases)}")
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a script: make the repository root importable
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
