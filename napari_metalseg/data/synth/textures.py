"""Material textures of the synthetic phases: secondary-electron albedo and relief of each phase's pixels.

Flat ferrite with faint etch variation; martensite packets of fine laths with bright lath boundaries; bainite
sheaves with aligned carbide films; lamellar (pearlite-like) and globular (spheroidite-like) variants.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_metalseg.data.synth.geometry import Micro
from napari_metalseg.data.synth.noise import hash01, smooth_noise
from napari_metalseg.data.synth.style import CARBIDE_UM, LAMELLA_UM, Style


@dataclass
class PhaseContext:
    """Pixels of one phase (flat indices) with their coordinates, fragment and lath frame."""

    micro: Micro
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


def _ferrite(ctx: PhaseContext, style: Style, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flat, smooth matrix with faint low-frequency etch variation."""
    alb = 0.012 * ctx.jitter
    return alb, np.zeros_like(alb)


def _martensite(ctx: PhaseContext, style: Style, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Packets of fine laths of uneven width.

    A network of bright lath boundaries, lath-to-lath and block-to-block contrast, broken lath ends and fine
    etch roughness.
    """
    period = max(2.2, style.mart_lath_um * ctx.ppu) * (0.85 + 0.3 * hash01(ctx.frag, 3))
    lath_i, _, edge = _laths(ctx, period, 0.3, 5)
    seg_len = period * (2.5 + 5.0 * hash01(ctx.frag, lath_i, 7))
    seg = np.floor(ctx.v / seg_len + 5.0 * hash01(ctx.frag, lath_i, 9)).astype(np.int64)
    strength = 0.3 + 0.7 * hash01(ctx.frag, lath_i, seg, 8)
    ridge = np.exp(-((edge / np.maximum(0.7, 0.14 * period)) ** 2)) * strength
    var = hash01(ctx.frag, lath_i, seg) - 0.5
    block = hash01(ctx.frag, 41) - 0.5
    alb = 0.22 * ridge + 0.14 * var + 0.10 * block + 0.02 * ctx.rough
    hgt = 0.35 * ridge + 0.12 * var + 0.05 * ctx.rough
    return alb.astype(np.float32), hgt.astype(np.float32)


def _laths(ctx: PhaseContext, period: float, bend: float, key: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: index of its lath, position across the lath (0..1), distance (px) to the nearest lath boundary."""
    phi = _lath_phase(ctx, period, bend, key)
    lath = np.floor(phi)
    t = phi - lath
    return lath.astype(np.int64), t, np.minimum(t, 1.0 - t) * period


def _lath_phase(ctx: PhaseContext, period: float, bend: float, key: int) -> np.ndarray:
    """Lath coordinate (one unit per lath) across the laths, with uneven lath widths and gentle bending."""
    h1, h2, h3 = (hash01(ctx.frag, key + j) for j in range(3))
    lam1, lam2 = period * (2.3 + 1.5 * h1), period * (5.0 + 4.0 * h2)
    uneven = (0.22 * lam1 / period / 2.6) * np.sin(2 * np.pi * (ctx.u / lam1 + h2)) + (
        0.5 * lam2 / period / 7.0
    ) * np.sin(2 * np.pi * (ctx.u / lam2 + h1))
    return ctx.u / period + uneven + bend * ctx.jitter + 13.0 * h3


def _bainite(ctx: PhaseContext, style: Style, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sheaves of long parallel ferrite laths with aligned, broken carbide films on the lath boundaries."""
    period = max(3.0, style.bain_lath_um * ctx.ppu) * (0.85 + 0.3 * hash01(ctx.frag, 13))
    lath_i, t, edge = _laths(ctx, period, 0.12, 17)
    width = max(0.7, CARBIDE_UM * ctx.ppu)
    dash_len = ctx.ppu * (0.8 + 2.0 * hash01(ctx.frag, lath_i, 19))
    sv = ctx.v / dash_len + 11.0 * hash01(ctx.frag, lath_i, 23)
    si = np.floor(sv)
    sf = sv - si
    si_i = si.astype(np.int64)
    keep = hash01(ctx.frag, lath_i, si_i) < style.carbide_density
    fill = 0.45 + 0.5 * hash01(lath_i, si_i, 29)
    along = np.clip(np.minimum(sf, fill - sf) * dash_len / (1.5 * width), 0.0, 1.0)
    thick = 0.6 + 0.8 * hash01(ctx.frag, lath_i, si_i, 27)
    carbide = np.exp(-((edge / (width * thick)) ** 2)) * along * keep
    line = np.exp(-((edge / max(0.6, 0.03 * ctx.ppu)) ** 2))
    dome = 4.0 * t * (1.0 - t)
    var = hash01(ctx.frag, lath_i, 31) - 0.5
    alb = 0.32 * carbide + 0.10 * line + 0.06 * var - 0.04 * dome + 0.015 * ctx.rough
    hgt = 0.45 * carbide + 0.20 * line + 0.15 * dome + 0.04 * ctx.rough
    return alb.astype(np.float32), hgt.astype(np.float32)


def _lamellar(ctx: PhaseContext, style: Style, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Generic variant: colonies of thin, bright, curved lamellae (pearlite-like)."""
    period = max(2.5, LAMELLA_UM * ctx.ppu)
    phi = ctx.u / period + 0.9 * ctx.jitter + 7.0 * hash01(ctx.frag, 37)
    t = phi - np.floor(phi)
    ridge = np.exp(-(((t - 0.5) / 0.16) ** 2))
    return (0.28 * ridge - 0.08).astype(np.float32), (0.3 * ridge).astype(np.float32)


def _globular(ctx: PhaseContext, style: Style, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Generic variant: dense fine globular carbides in a ferritic matrix (spheroidite-like)."""
    blobs = smooth_noise(rng, ctx.micro.mask.shape, max(1.5, 0.18 * ctx.ppu)).ravel()[ctx.idx]
    dots = np.clip((blobs - 0.9) * 2.5, 0.0, 1.0)
    return (0.32 * dots - 0.04).astype(np.float32), (0.5 * dots).astype(np.float32)


TEXTURES = (_ferrite, _martensite, _bainite, _lamellar, _globular)
