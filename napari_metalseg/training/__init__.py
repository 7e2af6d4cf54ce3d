"""The trainer: one GUI-agnostic job driven by the CLI and the napari worker alike.

:func:`train` is a job (:mod:`napari_metalseg.progress`): a generator of
:class:`~napari_metalseg.progress.ProgressEvent` that returns the run directory. It honours a cooperative stop
request and a wall-clock budget, validates periodically, keeps the best validated model in the run directory
(atomically), records the steps it actually did, can resume, and can start from the weights of another run
(``TrainConfig.init_from``). It trains every family of :mod:`napari_metalseg.models.registry` the same way: the
gradient families (SAM, the CNNs) through one loop, the classical pixel classifier through its one-call fit.
Under ``torchrun`` it trains with DistributedDataParallel (:mod:`napari_metalseg.distributed`): each rank draws its
own crops of the global batch, gradients are all-reduced, the ranks stop together, only rank 0 validates and writes.

Modules
-------
:mod:`.config`
    :class:`TrainConfig` (validated settings with each family's defaults), :func:`model_spec`, :func:`use_bf16`,
    :func:`checkpoint_kind`.
:mod:`.plan`
    :func:`~.plan.plan_run`: rank, device, seeds, what validates, the provenance the run records.
:mod:`.loop`
    The gradient loop; :mod:`.batches` (crops, ratios, boxes), :mod:`.losses`, :mod:`.schedule` (learning rate,
    the run's clock), :mod:`.checkpoints` (best model, history, resume state), :mod:`.validation`.
:mod:`.one_call`
    The one-call fit of the classical pixel classifier.

The trainer leaves torch's CPU thread count as it finds it; a caller that limits it (the napari Training dock) wraps
the job in :func:`napari_metalseg.threads.torch_threads`, the only code that sets it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from napari_metalseg.data.samples import Sample
from napari_metalseg.models.registry import family_of
from napari_metalseg.phases import PhaseSet
from napari_metalseg.progress import Job, ProgressEvent
from napari_metalseg.training.batches import box_from_mask
from napari_metalseg.training.config import UNTIL_BUDGET, TrainConfig, checkpoint_kind, model_spec, use_bf16
from napari_metalseg.training.losses import deep_supervision_loss, segmentation_loss
from napari_metalseg.training.one_call import CLASSICAL_FIT
from napari_metalseg.training.schedule import lr_factor, time_lr_factor
from napari_metalseg.training.validation import validate

__all__ = [
    "CLASSICAL_FIT",
    "UNTIL_BUDGET",
    "TrainConfig",
    "box_from_mask",
    "checkpoint_kind",
    "deep_supervision_loss",
    "lr_factor",
    "model_spec",
    "segmentation_loss",
    "time_lr_factor",
    "train",
    "use_bf16",
    "validate",
]


def train(
    samples: list[Sample],
    phases: PhaseSet,
    out: str | Path,
    config: TrainConfig,
    val_samples: list[Sample] | None = None,
    stop: Callable[[], bool] | None = None,
    resume: bool = False,
    export_full: bool = False,
) -> Job[Path]:
    """Train a phase-segmentation model; yields progress events; writes the run directory ``out``.

    Parameters
    ----------
    samples : list of Sample
        Training images with (partial) masks; unlabeled pixels (255) are ignored by the loss.
    phases : PhaseSet
    out : path
        Run directory (:mod:`napari_metalseg.runs`: configuration, weights, metrics history, resume state).
    config : TrainConfig
    val_samples : list of Sample, optional
        Held-out images for validation; the best validated model is kept. Without them, ``config.holdout`` of the
        labelled pixels (whole 32 px squares) are set aside for validation instead
        (:func:`~napari_metalseg.data.samples.holdout_pixels`); with ``holdout=0`` the last model is kept.
    stop : callable, optional
        Polled every step; when it returns True the run saves and ends with a ``"stopped"`` event.
    resume : bool
        Continue from the run's resume state when it exists (not with ``config.init_from``, which starts a new run
        from the weights of another run).
    export_full : bool
        Also write ``model_full.safetensors``: LoRA merged into the base, a stand-alone model.

    Yields
    ------
    ProgressEvent
        ``"info"`` (set-up, the run it is initialised from), ``"train"`` (every step: loss, lr), ``"validate"``
        (Dice per phase and magnification), then ``"done"`` or ``"stopped"`` (``step``: the optimizer steps done,
        as the run's configuration records them) with the run directory in ``message``.

    Returns
    -------
    Path
        The run directory (also when stopped).

    Raises
    ------
    MetalsegError
        Without training images, when the loss diverges (the last good run is kept), or when ``config.init_from``
        is not a run of the model to train (or goes with ``resume``).
    """
    from napari_metalseg.errors import MetalsegError
    from napari_metalseg.training.plan import plan_run

    if resume and config.init_from is not None:
        raise MetalsegError(
            f"init_from {config.init_from}: does not go with resume (resume continues the interrupted run in {out}; "
            "init_from starts a new run from the weights of another one): choose one"
        )
    from napari_metalseg.distributed import process_group

    with process_group(config.device) as device:
        plan = plan_run(samples, phases, out, config, val_samples, device=device)
        yield ProgressEvent("info", message=plan.scale_note)
        if family_of(config.model).gradient:
            from napari_metalseg.training.loop import fit_gradient

            yield from fit_gradient(plan, stop=stop, resume=resume, export_full=export_full)
        else:
            from napari_metalseg.training.one_call import fit_once

            yield from fit_once(plan)
    return plan.out
