"""Validation of a model in training: Dice per phase and magnification on whole (tiled) images."""

from __future__ import annotations

from napari_metalseg.data.samples import Sample
from napari_metalseg.phases import PhaseSet, phase_fractions


def validate(
    model,
    samples: list[Sample],
    phases: PhaseSet,
    device: str,
    ratios: bool = False,
    *,
    bf16: bool | None = None,
    match_fractions: bool = True,
    boundaries: bool = False,
):
    """Evaluate ``model`` on whole images (tiled); with ``ratios`` each image gets its true phase fractions (its
    labels get them too unless ``match_fractions`` is False: then only a guided model's encoder reads them); ``bf16``
    as in :class:`~napari_metalseg.predict.Predictor` (None: the default precision of prediction). Each image is
    predicted at the model's working scale when it states its pixel size (:mod:`napari_metalseg.data.scale`) and
    scored at its own pixels. ``boundaries``: also where the wrong pixels lie
    (:class:`~napari_metalseg.metrics.Evaluation`)."""
    from napari_metalseg.metrics import Evaluation
    from napari_metalseg.predict import Predictor

    predictor = Predictor(model, phases, device=device, cache_size=0, bf16=bf16)
    evaluation = Evaluation(phases.names, boundaries=boundaries)
    for s in samples:
        r = phase_fractions(s.mask, len(phases)) if ratios else None
        labels = predictor.predict(
            s.image, ratios=r, match_fractions=match_fractions, pixel_size_um=s.pixel_size_um
        ).labels
        evaluation.add(s.name, labels, s.mask, s.magnification)
    return evaluation


def metrics_of(evaluation, source: str) -> dict:
    """The metrics a run records of an :class:`~napari_metalseg.metrics.Evaluation` on ``source`` images."""
    return {
        "source": source,
        "mean_dice": evaluation.average,
        "by_magnification": evaluation.by_magnification(),
        "dice_per_phase": evaluation.dice_per_phase(),
    }
