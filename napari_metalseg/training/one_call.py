"""Training the families fitted in one call (the classical pixel classifier): fit, validate, write the run."""

from __future__ import annotations

import time
from collections.abc import Iterator

from napari_metalseg.progress import ProgressEvent
from napari_metalseg.runs import ENDED, RESUME, STEPS_DONE, TRAIN_SECONDS
from napari_metalseg.training.plan import RunPlan
from napari_metalseg.training.validation import metrics_of, validate

CLASSICAL_FIT = {"n_estimators": 60, "num_leaves": 31, "learning_rate": 0.15, "max_pixels": 120_000}
"""LightGBM settings of a trained classical classifier: more and larger trees than the live preview's, which must
refit within a second (docs/quality.md compares both)."""


def fit_companion(plan: RunPlan) -> Iterator[ProgressEvent]:
    """Fit the classical pixel classifier a CNN is pooled with (spec ``pooled``) on the contrast-stretched training
    images and write it as the run's classifier file (``"info"`` events; ``load_run`` pools the two).

    A resumed run keeps the classifier it already has. Only rank 0 of a distributed run fits it (it writes the run).
    """
    from dataclasses import replace

    from napari_metalseg.data.samples import normalize_contrast
    from napari_metalseg.models.classical import fit_classifier, save_classifier
    from napari_metalseg.models.cnn import MIN_PREDICT_SIZE
    from napari_metalseg.models.registry import CLASSIFIER

    path = plan.out / CLASSIFIER
    if plan.rank != 0 or (path.is_file() and (plan.out / RESUME).is_file()):
        return  # rank 0 writes the run
    t0 = time.perf_counter()
    yield ProgressEvent("info", message=f"fitting the classical pixel classifier pooled with the {plan.config.model}")
    stretched = [replace(s, image=normalize_contrast(s.image)) for s in plan.samples]
    tile = max(plan.config.img_size, MIN_PREDICT_SIZE)  # the tile the pooled model predicts at
    model = fit_classifier(stretched, len(plan.phases), tile_size=tile, seed=plan.config.seed, **CLASSICAL_FIT)
    seconds = time.perf_counter() - t0
    plan.out.mkdir(parents=True, exist_ok=True)
    save_classifier(model, path)
    yield ProgressEvent(
        "info", metrics={"seconds": seconds}, message=f"classical pixel classifier fitted in {seconds:.1f} s"
    )


def fit_once(plan: RunPlan) -> Iterator[ProgressEvent]:
    """Fit the classical pixel classifier of ``plan`` on its labelled pixels, validate it and write the run.

    Yields the events of :func:`napari_metalseg.training.train` (one ``"train"`` step: the fit).
    """
    from napari_metalseg.models.classical import fit_classifier
    from napari_metalseg.runs import save_run

    config, samples, phases = plan.config, plan.samples, plan.phases
    if config.init_from is not None:
        yield ProgressEvent(
            "info",
            message=f"{config.model}: nothing to initialise from {config.init_from} (a classifier is refitted, "
            "not trained further): fitting it again on the labelled pixels",
        )
    t0 = time.perf_counter()
    yield ProgressEvent("info", message=f"{config.model}: fitting on the labelled pixels of {len(samples)} image(s)")
    model = fit_classifier(samples, len(phases), tile_size=config.img_size, seed=config.seed, **CLASSICAL_FIT)
    seconds = time.perf_counter() - t0
    history = [{"step": 1, "seconds": round(seconds, 3)}]
    yield ProgressEvent(
        "train",
        1,
        1,
        metrics={"seconds": seconds, "parameters": model.n_parameters},
        message=f"fitted in {seconds:.1f} s",
    )
    metrics: dict = {}
    if plan.rank == 0:
        metrics = metrics_of(validate(model, plan.val_set or samples, phases, "cpu"), plan.source)
        history.append({"step": 1, **metrics})
        training = plan.training | {
            "fit_seconds": seconds,
            STEPS_DONE: 1,
            TRAIN_SECONDS: round(seconds, 3),
            ENDED: "steps",
        }
        save_run(plan.out, plan.spec, model, training=training, metrics=metrics, history=history)
        yield ProgressEvent(
            "validate", 1, 1, metrics=metrics, message=f"{metrics['source']} mean Dice {metrics['mean_dice']:.2f}%"
        )
    yield ProgressEvent("done", 1, 1, metrics=metrics, message=str(plan.out))
