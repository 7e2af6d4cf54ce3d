"""The job of the Training dock: train, then load the trained model and predict the current image.

Runs in the dock's worker thread (:meth:`~napari_metalseg._widgets.base.JobRunner.start_job`); GUI-free apart from
the CPU thread share it leaves to the GUI (:func:`training_threads`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_metalseg.phases import PhaseSet
from napari_metalseg.progress import Job, ProgressEvent

if TYPE_CHECKING:  # pragma: no cover
    from napari_metalseg.data.samples import Sample
    from napari_metalseg.predict import PhaseMap
    from napari_metalseg.training import TrainConfig

log = logging.getLogger(__name__)

THREADS_ENV = "METALSEG_TRAIN_THREADS"
"""Environment variable: torch CPU threads of a training run started from napari (default: CPU cores - 1)."""


def training_threads() -> int:
    """CPU threads for torch while training from napari: :data:`THREADS_ENV`, else the usable cores minus one.

    One core stays free for the GUI thread: with every core busy, torch's OpenMP workers spin-wait on one another
    whenever the GUI thread runs, and a training step on 2 cores took 10-20x longer than with 1 thread.
    """
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            log.warning("%s=%r is not a whole number; ignored", THREADS_ENV, env)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


@dataclass(kw_only=True)
class TrainingResult:
    """What the job hands back to the GUI thread when a run ends (done or stopped); ``steps_done`` and ``summary``
    are what the run's configuration records (:meth:`~napari_metalseg.runs.RunConfig.training_summary`)."""

    run_dir: Path
    model: Any
    phases: PhaseSet
    device: str
    last: ProgressEvent
    phase_map: PhaseMap | None
    metrics: dict | None = None
    steps_done: int | None = None
    summary: str = ""


def training_job(
    samples: list[Sample],
    phases: PhaseSet,
    out: Path,
    config: TrainConfig,
    val_samples: list[Sample] | None,
    stop: Any,
    resume: bool = False,
    image: np.ndarray | None = None,
    pixel_size_um: float | None = None,
) -> Job[TrainingResult | None]:
    """Job: yields the trainer's events, then loads the run and predicts ``image`` (of pixel size ``pixel_size_um``,
    when known: at the run's working scale).

    Torch's CPU threads are limited to :func:`training_threads` while it trains (restored after, also when the
    job is cancelled).

    Returns
    -------
    TrainingResult or None
        None when training produced no final event (nothing to load).
    """
    from napari_metalseg.threads import torch_threads
    from napari_metalseg.training import train

    last = None
    with torch_threads(training_threads()):  # leave the GUI a core while the training runs
        for event in train(samples, phases, out, config, val_samples=val_samples, stop=stop, resume=resume):
            last = event
            yield event
    if last is None or last.kind not in ("done", "stopped"):
        return None
    from napari_metalseg.predict import Predictor, resolve_device
    from napari_metalseg.runs import load_run

    yield ProgressEvent("info", last.step, last.total, message="loading the trained model")
    device = resolve_device(config.device)
    model, run_config = load_run(out, device=device)
    run_phases = run_config.spec.phase_set
    phase_map = None
    if image is not None:
        yield ProgressEvent("info", last.step, last.total, message="predicting the current image")
        phase_map = Predictor(model, run_phases, device=device).predict(image, pixel_size_um=pixel_size_um)
    return TrainingResult(
        run_dir=Path(out),
        model=model,
        phases=run_phases,
        device=device,
        last=last,
        phase_map=phase_map,
        metrics=dict(run_config.metrics),
        steps_done=run_config.steps_done,
        summary=run_config.training_summary(),
    )
