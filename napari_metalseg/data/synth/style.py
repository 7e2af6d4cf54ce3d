"""Physical length scales of the synthetic microstructures and the random per-image look (:class:`Style`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Physical length scales in micrometres.
GRAIN_UM = 6.0  # mean prior-austenite / ferrite grain spacing
FRAGMENT_RATIO = 2.6  # grain spacing / fragment (packet, block, sheaf) spacing
MART_LATH_UM = 0.45  # martensite lath period
BAIN_LATH_UM = 0.85  # bainite lath period
LAMELLA_UM = 0.32  # lamellar variant (pearlite-like) period
CARBIDE_UM = 0.07  # carbide half-width
GROOVE_UM = 0.035  # grain-boundary groove width (sigma)
RAMP_UM = 0.05  # width of the relief step at phase boundaries (sigma)


@dataclass
class Style:
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
    def draw(cls, rng: np.random.Generator, k: int) -> Style:
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
            grain_um=GRAIN_UM * float(np.exp(rng.normal(0.0, 0.15))),
            albedo=np.array(base[:k], dtype=np.float32),
            relief=np.array(relief[:k], dtype=np.float32),
            grain_contrast=u(0.015, 0.05),
            mart_lath_um=MART_LATH_UM * u(0.85, 1.2),
            bain_lath_um=BAIN_LATH_UM * u(0.85, 1.25),
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
