"""What a gradient run keeps in its directory: the best validated model, the history, the resume state and the steps
actually done."""

from __future__ import annotations

import math

from napari_metalseg.runs import (
    ENDED,
    KEPT_STEP,
    RESUME,
    STEPS_DONE,
    TRAIN_SECONDS,
    is_run,
    read_history,
    save_run,
    update_training,
    write_history,
)
from napari_metalseg.training.plan import RunPlan


class RunKeeper:
    """Keep a gradient run's directory: the model worth keeping, its metrics history and the resume state.

    With validation images the best validated model is kept (and the first one, so a run directory always
    exists); validating on the training images, the last one. Only rank 0 writes; every file is written
    atomically (:func:`~napari_metalseg.runs.save_run`).

    Parameters
    ----------
    plan : RunPlan
        The run.
    model : torch.nn.Module
        The model in training.
    optimizer : torch.optim.Optimizer
        Its optimizer (saved with the resume state).
    average : WeightAverage, optional
        The moving average of its weights (saved with the resume state; the loop applies it to the model before a
        validation or a save).

    Attributes
    ----------
    history : list of dict
        One entry per step (loss, lr, seconds) and per validation (metrics); written as ``metrics.json``.
    best : float
        Best mean Dice so far (-1 before the first validation).
    last_metrics : dict
        Metrics of the last validation.
    """

    def __init__(self, *, plan: RunPlan, model, optimizer, average=None) -> None:
        self.plan = plan
        self.model = model
        self.optimizer = optimizer
        self.average = average
        self.history: list[dict] = []
        self.best = -1.0
        self.last_metrics: dict = {}

    def save(self, metrics: dict, step: int) -> None:
        """Write the model's trainable state after ``step`` optimizer steps, the run configuration with ``metrics``
        (and the step, as the steps done so far and the kept model's) and the history."""
        from napari_metalseg.models.lora import trainable_state_dict

        if self.plan.rank == 0:
            plan = self.plan
            state = trainable_state_dict(self.model)
            training = plan.training | {STEPS_DONE: step, KEPT_STEP: step}
            save_run(plan.out, plan.spec, state, training=training, metrics=metrics, history=self.history)

    def finish(self, step: int, seconds: float, ended: str) -> None:
        """Record in the run's configuration how it ended: ``step`` optimizer steps done in ``seconds`` of training,
        ``ended`` one of :data:`~napari_metalseg.runs.ENDINGS` (the planned ``steps`` stay what they were), and write
        the whole history (the steps after the kept model's too)."""
        if self.plan.rank == 0 and is_run(self.plan.out):
            write_history(self.plan.out, self.history)
            update_training(self.plan.out, **{STEPS_DONE: step, TRAIN_SECONDS: round(seconds, 3), ENDED: ended})

    def save_resume(self, step: int, seconds: float) -> None:
        """Write the resume state after ``step`` optimizer steps and ``seconds`` of training, and the history so far."""
        if self.plan.rank != 0:
            return
        import torch

        from napari_metalseg.io.atomic import atomic_path
        from napari_metalseg.models.lora import trainable_state_dict

        state = {
            "model": trainable_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "step": step,
            "best": self.best,
            "seconds": seconds,
        }
        if self.average is not None:
            state["average"] = self.average.state_dict()
        with atomic_path(self.plan.out / RESUME) as tmp:
            torch.save(state, tmp)
        if is_run(self.plan.out):  # the history a resumed run continues
            write_history(self.plan.out, self.history)

    def resume(self) -> tuple[int, float] | None:
        """Load the resume state into the model and the optimizer.

        Returns
        -------
        tuple or None
            ``(step, seconds)`` trained so far, or ``None`` when the run has no resume state.
        """
        path = self.plan.out / RESUME
        if not path.is_file():
            return None
        import torch

        from napari_metalseg.models.lora import load_trainable_state_dict

        state = torch.load(path, map_location=self.plan.device, weights_only=True)
        load_trainable_state_dict(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.average is not None:
            if "average" in state:
                self.average.load_state_dict(state["average"])
            else:  # saved before runs kept an average
                self.average.reset()
        self.best = float(state["best"])
        step = int(state["step"])
        self.history = [entry for entry in read_history(self.plan.out) if entry.get("step", 0) <= step]
        return step, float(state.get("seconds", 0.0))

    def keep_on_stop(self, step: int) -> None:
        """On a stop request after ``step`` steps: save the current model unless a validated one is kept already."""
        if self.plan.val_set is None or not is_run(self.plan.out):
            self.save(self.last_metrics, step)

    def record_final(self, metrics: dict, spec=None, **provenance) -> None:
        """Record in the run's configuration, in one write, the metrics of its final model, with ``spec`` (the model
        it keeps, when that is not the one trained: a CNN without its classical companion) and ``provenance`` added
        to its training record; the saved weights are kept."""
        from dataclasses import replace

        from napari_metalseg.runs import read_run_config, write_run_config

        self.last_metrics = metrics
        if self.plan.rank == 0:
            config = read_run_config(self.plan.out)
            config = replace(
                config, spec=spec or config.spec, training={**config.training, **provenance}, metrics=metrics
            )
            write_run_config(self.plan.out, config)

    def validated(self, step: int, metrics: dict) -> None:
        """Record a validation after ``step``; save the model if it is the one to keep."""
        self.last_metrics = metrics
        self.history.append({"step": step, **metrics})
        score = metrics["mean_dice"]
        if self.plan.val_set is None or score > self.best or not is_run(self.plan.out):
            self.best = max(self.best, score) if math.isfinite(score) else self.best
            self.save(metrics, step)
