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

The package is laid out along those steps: :mod:`~.checks` (argument checks), :mod:`~.style` (length scales and
the random per-image look), :mod:`~.geometry`, :mod:`~.textures`, :mod:`~.imaging`, :mod:`~.noise` (random
fields), :mod:`~.micrograph` (one image and its mask) and :mod:`~.writer` (a dataset folder, as a job).
"""

from napari_metalseg.data.synth.checks import MAX_PHASES, MAX_SIZE, MIN_PHASES, MIN_SIZE
from napari_metalseg.data.synth.micrograph import FIELD_WIDTH_AT_1X_UM, pixel_size_for, synthesize_micrograph
from napari_metalseg.data.synth.writer import (
    DEFAULT_MAGNIFICATIONS,
    DEFAULT_PHASES,
    assign_splits,
    default_fraction_means,
    write_synthetic_dataset,
    write_synthetic_dataset_job,
)

__all__ = [
    "DEFAULT_MAGNIFICATIONS",
    "DEFAULT_PHASES",
    "FIELD_WIDTH_AT_1X_UM",
    "MAX_PHASES",
    "MAX_SIZE",
    "MIN_PHASES",
    "MIN_SIZE",
    "assign_splits",
    "default_fraction_means",
    "pixel_size_for",
    "synthesize_micrograph",
    "write_synthetic_dataset",
    "write_synthetic_dataset_job",
]
