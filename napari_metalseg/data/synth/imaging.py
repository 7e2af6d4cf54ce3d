"""Imaging of a synthetic microstructure: relief, SEM edge effect, grooves, inclusions, blur and noise.

None of this touches the phase mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_metalseg.data.synth.geometry import Micro
from napari_metalseg.data.synth.noise import fine_noise, smooth_noise
from napari_metalseg.data.synth.style import GROOVE_UM, RAMP_UM, Style
from napari_metalseg.data.synth.textures import TEXTURES, PhaseContext


def render(micro: Micro, style: Style, rng: np.random.Generator) -> np.ndarray:
    """The SEM image (``float32`` in ``[0, 1]``) of a microstructure under a per-image style."""
    shape = micro.mask.shape
    ppu = micro.px_per_um
    albedo = np.empty(shape, dtype=np.float32)
    height = np.zeros(shape, dtype=np.float32)
    jitter = smooth_noise(rng, shape, max(4.0, 4.0 * style.mart_lath_um * ppu))
    n_grains = int(micro.frag_grain.max()) + 1
    rough = fine_noise(rng, shape, max(0.5, 0.035 * ppu)).ravel()
    grain_offset = rng.normal(0.0, style.grain_contrast, size=n_grains).astype(np.float32)
    flat_mask = micro.mask.ravel()
    for p in range(len(style.albedo)):
        idx = np.flatnonzero(flat_mask == p)
        if idx.size == 0:
            continue
        ctx = PhaseContext(micro, idx, jitter.ravel()[idx], rough[idx], ppu, sheaf=p == 2)
        alb, hgt = TEXTURES[min(p, len(TEXTURES) - 1)](ctx, style, rng)
        albedo.ravel()[idx] = style.albedo[p] + alb + grain_offset[micro.frag_grain[micro.frag.ravel()[idx]]]
        height.ravel()[idx] = hgt
    plateau = ndimage.gaussian_filter(style.relief[micro.mask], max(0.6, RAMP_UM * ppu))
    groove = _grooves(micro, ppu) * _etch_strength(rng, shape, 0.5 * style.grain_um * ppu)
    height += plateau - style.groove_depth * groove
    albedo += 0.015 * smooth_noise(rng, shape, 2.5 * ppu) - 0.12 * groove
    signal = albedo + _se_topography(height, ppu, style)
    signal = _add_inclusions(signal, rng, ppu)
    return _imaging(signal, style, rng)


def _grooves(micro: Micro, ppu: float) -> np.ndarray:
    """Etched grain-boundary and interphase grooves (0..1, 1 at the boundary centre)."""
    lines = _edges(micro.grain) | _edges(micro.mask)
    sigma = max(0.6, GROOVE_UM * ppu)
    groove = ndimage.gaussian_filter(lines.astype(np.float32), sigma)
    return np.minimum(groove * (2.0 * sigma), 1.0)


def _etch_strength(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Slowly varying etch strength in 0.25..1 so that grooves are deep in places and faint in others."""
    return np.clip(0.65 + 0.3 * smooth_noise(rng, shape, scale), 0.25, 1.0)


def _edges(labels: np.ndarray) -> np.ndarray:
    out = np.zeros(labels.shape, dtype=bool)
    dx = labels[:, 1:] != labels[:, :-1]
    dy = labels[1:, :] != labels[:-1, :]
    out[:, 1:] |= dx
    out[1:, :] |= dy
    return out


def _se_topography(height: np.ndarray, ppu: float, style: Style) -> np.ndarray:
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


def _imaging(signal: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    """Brightness gradient, defocus, shot noise, scan-line noise, then the operator's contrast setting."""
    shape = signal.shape
    yy = np.linspace(-0.5, 0.5, shape[0], dtype=np.float32)[:, None]
    xx = np.linspace(-0.5, 0.5, shape[1], dtype=np.float32)[None, :]
    low = smooth_noise(rng, shape, 0.35 * max(shape))
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
