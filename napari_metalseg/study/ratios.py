"""The ratio-effect study (the seed's slide "Effects of Ratio Encoding"): one guided run, several ratio vectors."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from napari_metalseg.data.samples import Sample
from napari_metalseg.errors import MetalsegError
from napari_metalseg.io.atomic import atomic_write_text
from napari_metalseg.phases import PhaseSet, phase_fractions

SEED_RATIOS = ((0.1, 0.7, 0.2), (0.1, 0.5, 0.4), (0.4, 0.5, 0.1))
"""The seed's ratio vectors (matrix/ferrite, martensite, bainite)."""


def default_ratio_vectors(num_phases: int) -> list[tuple[str, np.ndarray | None]]:
    """``none``, ``true`` and the seed's three vectors adapted to ``num_phases`` (truncated or padded with the
    remainder spread evenly, renormalised)."""
    vectors: list[tuple[str, np.ndarray | None]] = [("none", None), ("true", None)]
    for v in SEED_RATIOS:
        arr = np.array(v[:num_phases], float)
        if num_phases > len(v):
            arr = np.concatenate([arr, np.full(num_phases - len(v), 0.1)])
        arr = arr / arr.sum()
        vectors.append(("[" + ", ".join(f"{x:.2f}" for x in arr) + "]", arr))
    return vectors


@dataclass
class RatioEffect:
    """One ratio vector's result: its label and values, mean Dice (%), mean predicted and true fractions."""

    label: str
    ratio: list[float] | None
    dice: float
    fractions: list[float]
    true_fractions: list[float] = field(default_factory=list)


def ratio_effect(
    run: str | Path,
    samples: list[Sample],
    out: str | Path,
    vectors: Sequence[tuple[str, np.ndarray | None]] | None = None,
    device: str = "auto",
) -> list[RatioEffect]:
    """Predict ``samples`` with one guided run under several ratio vectors; write ratio_effect.json/.md/.png.

    ``("true", None)`` stands for each image's true phase fractions, ``("none", None)`` for no guidance. The figure
    shows the first sample: the micrograph, its target and each vector's prediction with its Dice. The fractions go
    through the guidance encoder only (``match_fractions=False``), the effect the study measured.
    """
    from napari_metalseg.metrics import Evaluation
    from napari_metalseg.predict import Predictor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.from_run(run, device=device)
    phases = predictor.phases
    if not predictor.guided:
        raise MetalsegError(
            f"{run}: trained without ratio guidance; the ratio study needs a guided run "
            "(train with ratio or spatial guidance)"
        )
    if not samples:
        raise MetalsegError("the ratio study needs labelled test images")
    vectors = list(vectors) if vectors is not None else default_ratio_vectors(len(phases))
    effects, shown = [], []
    truth = [phase_fractions(s.mask, len(phases)) for s in samples]
    for label, vector in vectors:
        evaluation = Evaluation(phases.names)
        fractions = []
        for s, t in zip(samples, truth):
            r = t if label == "true" else vector
            phase_map = predictor.predict(  # the encoder's effect alone
                s.image, ratios=r, match_fractions=False, pixel_size_um=s.pixel_size_um
            )
            evaluation.add(s.name, phase_map.labels, s.mask, s.magnification)
            fractions.append(phase_map.fractions())
            if s is samples[0]:
                shown.append((label, phase_map.labels, evaluation.images[-1].mean_dice))
        effects.append(
            RatioEffect(
                label,
                None if vector is None else [float(x) for x in vector],
                round(evaluation.average, 2),
                np.mean(fractions, 0).round(4).tolist(),
                np.mean(truth, 0).round(4).tolist(),
            )
        )
    atomic_write_text(out / "ratio_effect.json", json.dumps([asdict(e) for e in effects], indent=2) + "\n")
    lines = ["| ratio given | mean Dice (%) | predicted fractions | true fractions |", "|---|---|---|---|"]
    for e in effects:
        lines.append(
            f"| {e.label} | {e.dice:.2f} | {', '.join(f'{x:.3f}' for x in e.fractions)} | "
            f"{', '.join(f'{x:.3f}' for x in e.true_fractions)} |"
        )
    atomic_write_text(
        out / "ratio_effect.md",
        f"# Ratio effect ({Path(run).name}; phases {', '.join(phases.names)})\n\n" + "\n".join(lines) + "\n",
    )
    _ratio_figure(samples[0], shown, phases, out / "ratio_effect.png")
    return effects


def _ratio_figure(sample: Sample, shown, phases: PhaseSet, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from napari_metalseg.io.atomic import atomic_path

    cmap = ListedColormap(phases.rgb())
    n = len(shown) + 2
    fig, axes = plt.subplots(1, n, figsize=(2.3 * n, 3.1))
    axes[0].imshow(sample.image, cmap="gray")
    axes[0].set_title("micrograph", fontsize=8)
    target = np.ma.masked_equal(sample.mask, 255)
    axes[1].imshow(target, cmap=cmap, vmin=-0.5, vmax=len(phases) - 0.5, interpolation="nearest")
    axes[1].set_title("target", fontsize=8)
    for ax, (label, labels, dice) in zip(axes[2:], shown):
        ax.imshow(labels, cmap=cmap, vmin=-0.5, vmax=len(phases) - 0.5, interpolation="nearest")
        ax.set_title(f"{label}\nDice {dice:.2f}", fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
